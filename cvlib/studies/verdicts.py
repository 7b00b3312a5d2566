"""From measured figures to verdicts on the notes' claims: plain functions, so that
tests can feed them synthetic figures.

A claim is judged once per seed (or per search), as true, false, or unknown
(``None``: the figure cannot tell, e.g. neither network reached the accuracy in the
budget, or a difference inside the noise margin). The verdict is ``holds`` when
every seed says true, ``does not hold`` when every seed says false, and
``inconclusive`` otherwise: when seeds disagree or any seed cannot tell.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

HOLDS, DOES_NOT_HOLD, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
# Two step counts closer than this factor count as no difference.
SPEED_MARGIN = 1.1
# Two accuracies closer than this count as no difference.
ACCURACY_MARGIN = 0.01


def agreement(per_seed: Sequence[bool | None]) -> str:
    """The verdict from the claim's truth in each seed (see the module docstring)."""
    if per_seed and all(value is True for value in per_seed):
        return HOLDS
    if per_seed and all(value is False for value in per_seed):
        return DOES_NOT_HOLD
    return INCONCLUSIVE


def judge(test: Callable[[Sequence[float]], bool], figures: Sequence[float]) -> bool | None:
    """test(figures), or None when a figure is missing (NaN: the run failed)."""
    if not len(figures) or not np.isfinite(np.asarray(figures, dtype=np.float64)).all():
        return None
    return bool(test(figures))


# --- Initialization at depth (CS231n lecture 6): activation statistics per layer. ---

def std_ratio(stds: Sequence[float]) -> float:
    """Activation std of the last layer over that of the first."""
    return stds[-1] / stds[0] if stds[0] > 0 else math.nan


def collapses(stds: Sequence[float], limit: float = 1e-3) -> bool:
    """The std collapses toward zero: last/first below ``limit``."""
    return std_ratio(stds) < limit


def saturated_everywhere(saturated: Sequence[float], minimum: float = 0.8) -> bool:
    """More than ``minimum`` of the outputs are saturated in every layer."""
    return min(saturated) > minimum


def stds_within(stds: Sequence[float], low: float = 0.1, high: float = 1.0) -> bool:
    """Every layer's std lies within [low, high]."""
    return low <= min(stds) and max(stds) <= high


def decays(stds: Sequence[float], limit: float = 0.1) -> bool:
    """The std decays with depth: last/first below ``limit``."""
    return std_ratio(stds) < limit


def holds_steady(stds: Sequence[float], factor: float = 3.0) -> bool:
    """The std holds with depth: last/first within [1/factor, factor]."""
    return 1 / factor <= std_ratio(stds) <= factor


# --- Speed: gradient steps to a fixed training accuracy. ---

def trailing_mean(values: Sequence[float], window: int) -> np.ndarray:
    """The mean of each run of ``window`` consecutive values (NaN counted as 0); entry
    i covers steps i+1 .. i+window. Empty when there are fewer values than that."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float64))
    if len(values) < window:
        return np.array([])
    return np.convolve(values, np.ones(window) / window, mode="valid")


def steps_to_accuracy(accuracies: Sequence[float], threshold: float, window: int) -> int | None:
    """The first step at which the training accuracy, averaged over the last ``window``
    steps' batches, reaches ``threshold``.

    Args:
        accuracies: Each step's batch accuracy (before that step's update), from step 1.
        threshold: The accuracy to reach.
        window: Steps averaged; single batches are too noisy to time a crossing.

    Returns:
        The step (from 1), or None if it was not reached.
    """
    reached = np.flatnonzero(trailing_mean(accuracies, window) >= threshold)
    return int(reached[0]) + window if len(reached) else None


@dataclass(frozen=True)
class Ratio:
    """How many times more steps the slow network needed than the fast one, as an
    interval: exact when both reached the accuracy, a bound when one did not."""

    low: float
    high: float

    def above(self, factor: float) -> bool | None:
        """True if the ratio surely exceeds factor, False if surely not, else None."""
        if self.low > factor:
            return True
        if self.high <= factor:
            return False
        return None

    def __str__(self) -> str:
        if self.low == self.high:
            return f"{self.low:.2g}x"
        if math.isinf(self.high):
            return f">{self.low:.2g}x" if self.low > 0 else "?"
        return f"<{self.high:.2g}x"


def step_ratio(fast: int | None, slow: int | None, budget_fast: int, budget_slow: int) -> Ratio:
    """steps(slow) / steps(fast), with a network that did not reach the accuracy
    counted as needing more than its budget.

    Args:
        fast: Steps the (supposedly) faster network needed, or None.
        slow: Steps the other one needed, or None.
        budget_fast: Steps the faster network trained.
        budget_slow: Steps the other one trained.
    """
    if fast is not None and slow is not None:
        return Ratio(slow / fast, slow / fast)
    if fast is not None:
        return Ratio(budget_slow / fast, math.inf)
    if slow is not None:
        return Ratio(0.0, slow / budget_fast)
    return Ratio(0.0, math.inf)


def faster_by(ratios: Sequence[Ratio], factor: float) -> str:
    """Verdict on "the fast network needs over ``factor`` times fewer steps"."""
    return agreement([ratio.above(factor) for ratio in ratios])


def faster(ratios: Sequence[Ratio], margin: float = SPEED_MARGIN) -> str:
    """Verdict on "the fast network needs fewer steps", a difference under ``margin``
    counting as none (so as unknown, not as false)."""
    per_seed = []
    for ratio in ratios:
        above = ratio.above(margin)
        per_seed.append(True if above else False if ratio.high < 1 / margin else None)
    return agreement(per_seed)


def slowest(ratios_to_others: Sequence[Sequence[Ratio]], margin: float = SPEED_MARGIN) -> str:
    """Verdict on "this network is the slowest", from its ratios to each other network
    per seed (steps(this) / steps(other))."""
    per_seed = []
    for ratios in ratios_to_others:
        answers = [ratio.above(margin) for ratio in ratios]
        per_seed.append(True if all(answers) else
                        False if any(ratio.high < 1 / margin for ratio in ratios) else None)
    return agreement(per_seed)


# --- Batch normalization. ---

def spread(accuracies: Sequence[float]) -> float:
    """Max minus min: how much the accuracy depends on the initializer."""
    return float(np.max(accuracies) - np.min(accuracies))


def much_smaller_spread(spreads_bn: Sequence[float], spreads_plain: Sequence[float],
                        factor: float = 2.0) -> str:
    """Verdict on "with BN the spread is much smaller" (at most 1/factor of it), per seed."""
    return agreement([judge(lambda pair: pair[0] <= pair[1] / factor, (bn, plain))
                      for bn, plain in zip(spreads_bn, spreads_plain)])


def better(first: Sequence[float], second: Sequence[float],
           margin: float = ACCURACY_MARGIN) -> str:
    """Verdict on "first scores higher than second", per seed; a difference under
    ``margin`` counts as unknown."""
    return agreement([True if a - b > margin else False if b - a > margin else None
                      for a, b in zip(first, second)])


def batch_independent(max_difference: float, same_classes: bool, tolerance: float = 1e-3) -> str:
    """Verdict on "in inference mode an image's prediction does not depend on its batch"."""
    return HOLDS if max_difference <= tolerance and same_classes else DOES_NOT_HOLD


# --- Learning rate. ---

def in_range(value: float, low: float, high: float, near: float = 3.0) -> bool:
    """``value`` lies in [low, high], or within a factor ``near`` of it."""
    return low / near <= value <= high * near


# --- Activation functions: cost, gradient signs, vanishing gradients, dead units. ---

# An op-time ratio above this counts as "more expensive", below NO_COST_RATIO as not.
COST_RATIO, NO_COST_RATIO = 1.25, 1.1


def costlier(ratios: Sequence[float], high: float = COST_RATIO,
             low: float = NO_COST_RATIO) -> str:
    """Verdict on "this function costs more than ReLU", from time ratios (its/ReLU's),
    one per measurement; a ratio between ``low`` and ``high`` cannot tell."""
    return agreement([True if ratio > high else False if ratio < low else None
                      for ratio in ratios])


def single_signed(uncentered: Sequence[float], centered: Sequence[Sequence[float]],
                  high: float = 0.9, low: float = 0.1) -> str:
    """Verdict on "an uncentered activation makes a unit's weight gradient single-signed,
    a centered one does not", per seed.

    Args:
        uncentered: Per seed, the single-sign fraction after sigmoid.
        centered: Per seed, the fractions after each zero-centered activation.
        high: Above it, the gradients count as single-signed.
        low: Below it, as not.
    """
    per_seed = []
    for fraction, others in zip(uncentered, centered):
        if fraction >= high and max(others) <= low:
            per_seed.append(True)
        elif fraction <= low or max(others) >= high:
            per_seed.append(False)
        else:
            per_seed.append(None)
    return agreement(per_seed)


def vanishes(bounded: Sequence[float], rectified: Sequence[float],
             vanished: float = 0.01, kept: float = 0.1) -> str:
    """Verdict on "the gradient vanishes through sigmoid layers, not through ReLU + He",
    from first/last-layer gradient-norm ratios per seed: True when sigmoid's is below
    ``vanished`` and ReLU's at least ``kept``; False when sigmoid's is at least ``kept``."""
    per_seed = []
    for ratio, reference in zip(bounded, rectified):
        if not (np.isfinite(ratio) and np.isfinite(reference)):
            per_seed.append(None)
        elif ratio < vanished and reference >= kept:
            per_seed.append(True)
        elif ratio >= kept:
            per_seed.append(False)
        else:
            per_seed.append(None)
    return agreement(per_seed)


# A unit fraction at most this counts as "none died".
DEAD_LIMIT = 0.01


def only_relu_dies(relu: Sequence[float], others: Sequence[Sequence[float]],
                   limit: float = DEAD_LIMIT) -> str:
    """Verdict on "ReLU units can die, the others' do not", from dead-unit fractions per
    seed: True when ReLU lost more than ``limit`` and no other more than ``limit``;
    False when another lost more; unknown when ReLU lost none (nothing to compare).
    """
    per_seed = []
    for dead, other in zip(relu, others):
        if not np.isfinite([dead, *other]).all():
            per_seed.append(None)
        elif max(other) > limit:
            per_seed.append(False)
        else:
            per_seed.append(True if dead > limit else None)
    return agreement(per_seed)


def doubles(ratios: Sequence[float]) -> str:
    """Verdict on "maxout doubles the parameters", from the exact parameter ratio
    (maxout's over ReLU's) of each layer that feeds an activation."""
    return HOLDS if ratios and all(ratio == 2.0 for ratio in ratios) else DOES_NOT_HOLD


# --- Initialization by depth: trains or stays at chance after a fixed budget. ---

# Training accuracy at least TRAINS counts as training; below FAILS as near chance (0.1).
TRAINS, FAILS = 0.25, 0.15


def fine_only_when_shallow(small: Sequence[dict[int, float]], he: Sequence[dict[int, float]],
                           trains: float = TRAINS, fails: float = FAILS) -> str:
    """Verdict on "0.01*randn is fine for small networks, not for deep ones", per seed.

    Args:
        small: Per seed, training accuracy by depth with 0.01*randn.
        he: Per seed, the same with He.

    Returns:
        holds when, in every seed, 0.01*randn trains at the smallest depth and stays
        near chance at the largest while He trains at every depth; does not hold when
        every seed contradicts it (0.01*randn trains deep, fails shallow, or He fails).
    """
    per_seed = []
    for by_depth, reference in zip(small, he):
        figures = [*by_depth.values(), *reference.values()]
        if not figures or not np.isfinite(figures).all():
            per_seed.append(None)
            continue
        shallow, deep = by_depth[min(by_depth)], by_depth[max(by_depth)]
        if shallow >= trains and deep < fails and min(reference.values()) >= trains:
            per_seed.append(True)
        elif deep >= trains or shallow < fails or min(reference.values()) < fails:
            per_seed.append(False)
        else:
            per_seed.append(None)
    return agreement(per_seed)


# --- Preprocessing: step counts that agree within the noise. ---

AGREE_FACTOR, DISAGREE_FACTOR = 1.25, 1.5


def agree(ratios: Sequence[Sequence[Ratio]], within: float = AGREE_FACTOR,
          beyond: float = DISAGREE_FACTOR) -> str:
    """Verdict on "these variants train as fast as the reference", from each seed's step
    ratios (variant/reference): True when every ratio lies within [1/within, within];
    False when any surely lies beyond [1/beyond, beyond]; else unknown."""
    per_seed = []
    for seed_ratios in ratios:
        if all(ratio.low >= 1 / within and ratio.high <= within for ratio in seed_ratios):
            per_seed.append(True)
        elif any(ratio.low > beyond or ratio.high < 1 / beyond for ratio in seed_ratios):
            per_seed.append(False)
        else:
            per_seed.append(None)
    return agreement(per_seed)
