"""The tests of the notes' claims, from measured figures to verdicts: plain functions,
so that tests can feed them synthetic figures. How per-seed judgments become a verdict
with its reason is :mod:`cvlib.studies.judgments`.

No function here answers true or false from a figure that is NaN or infinite.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from cvlib.studies.judgments import (
    DOES_NOT_HOLD,
    HOLDS,
    Judgment,
    Unknown,
    Verdict,
    agreement,
    inconclusive,
    judged,
    unusable,
)

# Two step counts closer than this factor count as no difference.
SPEED_MARGIN = 1.1
# Two accuracies closer than this count as no difference.
ACCURACY_MARGIN = 0.01


# --- Initialization at depth (CS231n lecture 6): activation statistics per layer. ---

def std_ratio(stds: Sequence[float]) -> float:
    """Activation std of the last layer over that of the first (NaN when the first is
    not positive)."""
    return float(stds[-1] / stds[0]) if stds[0] > 0 else math.nan


def _by_std_ratio(stds: np.ndarray, test: Callable[[float], bool]) -> bool | Unknown:
    ratio = std_ratio(stds)
    return test(ratio) if math.isfinite(ratio) else Unknown("the first layer's std is 0")


@judged
def collapses(stds: np.ndarray, limit: float = 1e-3) -> bool | Unknown:
    """The std collapses toward zero: last/first below ``limit``."""
    return _by_std_ratio(stds, lambda ratio: ratio < limit)


@judged
def saturated_everywhere(saturated: np.ndarray, minimum: float = 0.8) -> bool:
    """More than ``minimum`` of the outputs are saturated in every layer."""
    return saturated.min() > minimum


@judged
def stds_within(stds: np.ndarray, low: float = 0.1, high: float = 1.0) -> bool:
    """Every layer's std lies within [low, high]."""
    return low <= stds.min() and stds.max() <= high


@judged
def decays(stds: np.ndarray, limit: float = 0.1) -> bool | Unknown:
    """The std decays with depth: last/first below ``limit``."""
    return _by_std_ratio(stds, lambda ratio: ratio < limit)


@judged
def holds_steady(stds: np.ndarray, factor: float = 3.0) -> bool | Unknown:
    """The std holds with depth: last/first within [1/factor, factor]."""
    return _by_std_ratio(stds, lambda ratio: 1 / factor <= ratio <= factor)


# --- Speed: gradient steps to a fixed training accuracy. ---

def trailing_mean(values: Sequence[float], window: int) -> np.ndarray:
    """The mean of each run of ``window`` consecutive values; entry i covers steps
    i+1 .. i+window, and is NaN when one of them is. Empty when there are fewer values."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < window:
        return np.array([])
    return np.convolve(values, np.ones(window) / window, mode="valid")


def steps_to_accuracy(accuracies: Sequence[float], threshold: float,
                      window: int) -> int | None | Unknown:
    """The first step at which the training accuracy, averaged over the last ``window``
    steps' batches, reaches ``threshold``.

    Args:
        accuracies: Each step's batch accuracy (before that step's update), from step 1.
        threshold: The accuracy to reach.
        window: Steps averaged; single batches are too noisy to time a crossing.

    Returns:
        The step (from 1); None if it was not reached in the steps given; Unknown when
        no step was logged (a failed run) or an accuracy before the crossing is not
        finite (a diverged run): whether it would have got there cannot be told.
    """
    values = np.asarray(accuracies, dtype=np.float64)
    if not len(values):
        return Unknown("no training step logged")
    reached = np.flatnonzero(trailing_mean(values, window) >= threshold)
    step = int(reached[0]) + window if len(reached) else None
    broken = np.flatnonzero(~np.isfinite(values))
    if len(broken) and (step is None or broken[0] < step):
        return Unknown(f"the training accuracy is not finite from step {broken[0] + 1}")
    return step


@dataclass(frozen=True)
class Ratio:
    """How many times more steps the slow network needed than the fast one, as an
    interval: exact when both reached the accuracy, a bound when one did not, and
    no interval (NaN, with the reason) when a run cannot tell."""

    low: float
    high: float
    reason: str = ""

    def above(self, factor: float) -> Judgment:
        """True if the ratio surely exceeds factor, False if surely not, else Unknown."""
        if self.reason:
            return Unknown(self.reason)
        if self.low > factor:
            return True
        if self.high <= factor:
            return False
        return Unknown(f"{self} cannot tell whether above {factor:g}x")

    def __str__(self) -> str:
        if self.reason:
            return "n/a"
        if self.low == self.high:
            return f"{self.low:.2g}x"
        if math.isinf(self.high):
            return f">{self.low:.2g}x" if self.low > 0 else "?"
        return f"<{self.high:.2g}x"


def step_ratio(fast: int | None | Unknown, slow: int | None | Unknown, budget_fast: int,
               budget_slow: int) -> Ratio:
    """steps(slow) / steps(fast), with a network that did not reach the accuracy
    counted as needing more than its budget.

    Args:
        fast: Steps the (supposedly) faster network needed, None, or Unknown.
        slow: Steps the other one needed, None, or Unknown.
        budget_fast: Steps the faster network trained.
        budget_slow: Steps the other one trained.

    Returns:
        The Ratio; without an interval when either count is Unknown or a network that
        did not get there trained no step.
    """
    for steps, budget in ((fast, budget_fast), (slow, budget_slow)):
        if isinstance(steps, Unknown):
            return Ratio(math.nan, math.nan, steps.reason)
        if steps is None and budget <= 0:
            return Ratio(math.nan, math.nan, "no training step logged")
    if fast is not None and slow is not None:
        return Ratio(slow / fast, slow / fast)
    if fast is not None:
        return Ratio(budget_slow / fast, math.inf)
    if slow is not None:
        return Ratio(0.0, slow / budget_fast)
    return Ratio(0.0, math.inf)


def faster_by(ratios: Sequence[Ratio], factor: float) -> Verdict:
    """Verdict on "the fast network needs over ``factor`` times fewer steps"."""
    return agreement([ratio.above(factor) for ratio in ratios])


def _faster(ratio: Ratio, margin: float) -> Judgment:
    above = ratio.above(margin)
    if above is True or ratio.reason:
        return above
    if ratio.high < 1 / margin:
        return False
    return Unknown(f"{ratio}: no difference beyond {margin:g}x either way")


def faster(ratios: Sequence[Ratio], margin: float = SPEED_MARGIN) -> Verdict:
    """Verdict on "the fast network needs fewer steps", a difference under ``margin``
    counting as none (so as unknown, not as false)."""
    return agreement([_faster(ratio, margin) for ratio in ratios])


def slowest(ratios_to_others: Sequence[Sequence[Ratio]], margin: float = SPEED_MARGIN) -> Verdict:
    """Verdict on "this network is the slowest", from its ratios to each other network
    per seed (steps(this) / steps(other)); a seed with a ratio that has no interval
    cannot tell."""
    per_seed: list[Judgment] = []
    for ratios in ratios_to_others:
        answers = [ratio.above(margin) for ratio in ratios]
        missing = next((ratio for ratio in ratios if ratio.reason), None)
        if missing is not None:
            per_seed.append(Unknown(missing.reason))
        elif all(answer is True for answer in answers):
            per_seed.append(True)
        elif any(ratio.high < 1 / margin for ratio in ratios):
            per_seed.append(False)
        else:
            per_seed.append(Unknown(f"{', '.join(map(str, ratios))}: not slower than every "
                                    f"other by {margin:g}x"))
    return agreement(per_seed)


# --- Batch normalization. ---

def spread(accuracies: Sequence[float]) -> float:
    """Max minus min: how much the accuracy depends on the initializer; NaN when any
    accuracy is (a failed cell)."""
    values = np.asarray(accuracies, dtype=np.float64)
    return float(values.max() - values.min()) if values.size else math.nan


def much_smaller_spread(spreads_bn: Sequence[float], spreads_plain: Sequence[float],
                        factor: float = 2.0) -> Verdict:
    """Verdict on "with BN the spread is much smaller" (at most 1/factor of it), per seed."""
    smaller = judged(lambda pair: pair[0] <= pair[1] / factor)
    return agreement([smaller((bn, plain)) for bn, plain in zip(spreads_bn, spreads_plain)])


def better(first: Sequence[float], second: Sequence[float],
           margin: float = ACCURACY_MARGIN) -> Verdict:
    """Verdict on "first scores higher than second", per seed; a difference under
    ``margin`` counts as unknown."""
    @judged
    def higher(pair: np.ndarray) -> bool | Unknown:
        difference = pair[0] - pair[1]
        if abs(difference) <= margin:
            return Unknown(f"{difference:+.3f}: within {margin:g}")
        return difference > 0
    return agreement([higher((a, b)) for a, b in zip(first, second)])


def batch_independent(max_difference: float, same_classes: float,
                      tolerance: float = 1e-3) -> Verdict:
    """Verdict on "in inference mode an image's prediction does not depend on its batch".

    Args:
        max_difference: The largest logit difference alone vs in a batch.
        same_classes: 1.0 when every image got the same class both ways, 0.0 if not.
        tolerance: Differences up to this count as none (float rounding).
    """
    same = judged(lambda pair: pair[0] <= tolerance and pair[1] == 1.0)
    return agreement([same((max_difference, same_classes))], labels=["the test cell"])


# --- Learning rate. ---

@judged
def in_range(value: np.ndarray, low: float, high: float, near: float = 3.0) -> bool:
    """The one figure in ``value`` lies in [low, high], or within a factor ``near`` of it."""
    return bool(low / near <= value.item() <= high * near)


# --- Activation functions: cost, gradient signs, vanishing gradients, dead units. ---

# An op-time ratio above this counts as "more expensive", below NO_COST_RATIO as not.
COST_RATIO, NO_COST_RATIO = 1.25, 1.1


def costlier(ratios: Sequence[float], high: float = COST_RATIO,
             low: float = NO_COST_RATIO) -> Verdict:
    """Verdict on "this function costs more than ReLU", from time ratios (its/ReLU's),
    one per seed; a ratio between ``low`` and ``high`` cannot tell."""
    @judged
    def costs_more(ratio: np.ndarray) -> bool | Unknown:
        if ratio.item() > high:
            return True
        if ratio.item() < low:
            return False
        return Unknown(f"{ratio.item():.2f}x lies between {low:g}x and {high:g}x")
    return agreement([costs_more([ratio]) for ratio in ratios])


def single_signed(uncentered: Sequence[float], centered: Sequence[Sequence[float]],
                  high: float = 0.9, low: float = 0.1) -> Verdict:
    """Verdict on "an uncentered activation makes a unit's weight gradient single-signed,
    a centered one does not", per seed.

    Args:
        uncentered: Per seed, the single-sign fraction after sigmoid.
        centered: Per seed, the fractions after each zero-centered activation.
        high: Above it, the gradients count as single-signed.
        low: Below it, as not.
    """
    @judged
    def signed(fractions: np.ndarray) -> bool | Unknown:
        fraction, others = fractions[0], fractions[1:].max()
        if fraction >= high and others <= low:
            return True
        if fraction <= low or others >= high:
            return False
        return Unknown(f"{fraction:.0%} after sigmoid, at most {others:.0%} centered: "
                       f"between {low:.0%} and {high:.0%}")
    return agreement([signed([fraction, *others]) if len(others) else Unknown("no figure")
                      for fraction, others in zip(uncentered, centered)])


def vanishes(bounded: Sequence[float], rectified: Sequence[float],
             vanished: float = 0.01, kept: float = 0.1) -> Verdict:
    """Verdict on "the gradient vanishes through sigmoid layers, not through ReLU + He",
    from first/last-layer gradient-norm ratios per seed: True when sigmoid's is below
    ``vanished`` and ReLU's at least ``kept``; False when sigmoid's is at least ``kept``."""
    @judged
    def vanish(pair: np.ndarray) -> bool | Unknown:
        ratio, reference = pair
        if ratio < vanished and reference >= kept:
            return True
        if ratio >= kept:
            return False
        return Unknown(f"sigmoid {ratio:.2g}, relu + He {reference:.2g}: neither vanishes "
                       f"alone (< {vanished:g}) nor holds (>= {kept:g})")
    return agreement([vanish((ratio, reference)) for ratio, reference in zip(bounded, rectified)])


# A unit fraction at most this counts as "none died".
DEAD_LIMIT = 0.01


def only_relu_dies(relu: Sequence[float], others: Sequence[Sequence[float]],
                   limit: float = DEAD_LIMIT) -> Verdict:
    """Verdict on "ReLU units can die, the others' do not", from dead-unit fractions per
    seed: True when ReLU lost more than ``limit`` and no other more than ``limit``;
    False when another lost more; unknown when ReLU lost none (nothing to compare).
    """
    @judged
    def dies(fractions: np.ndarray) -> bool | Unknown:
        if fractions[1:].max(initial=0.0) > limit:
            return False
        if fractions[0] > limit:
            return True
        return Unknown(f"no ReLU unit died (at most {limit:.0%}): nothing to compare")
    return agreement([dies([dead, *other]) for dead, other in zip(relu, others)])


def doubles(ratios: Sequence[float]) -> Verdict:
    """Verdict on "maxout doubles the parameters", from the exact parameter ratio
    (maxout's over ReLU's) of each layer that feeds an activation."""
    problem = unusable(ratios)
    if problem is not None:
        return inconclusive(problem.reason)
    return Verdict(HOLDS if all(ratio == 2.0 for ratio in ratios) else DOES_NOT_HOLD)


# --- Initialization by depth: trains or stays at chance after a fixed budget. ---

# Training accuracy at least TRAINS counts as training; below FAILS as near chance (0.1).
TRAINS, FAILS = 0.25, 0.15


def fine_only_when_shallow(small: Sequence[dict[int, float]], he: Sequence[dict[int, float]],
                           trains: float = TRAINS, fails: float = FAILS) -> Verdict:
    """Verdict on "0.01*randn is fine for small networks, not for deep ones", per seed.

    Args:
        small: Per seed, training accuracy by depth with 0.01*randn.
        he: Per seed, the same with He.

    Returns:
        holds when, in every seed, 0.01*randn trains at the smallest depth and stays
        near chance at the largest while He trains at every depth; does not hold when
        every seed contradicts it (0.01*randn trains deep, fails shallow, or He fails).
    """
    per_seed: list[Judgment] = []
    for by_depth, reference in zip(small, he):
        problem = unusable([*by_depth.values(), *reference.values()])
        if problem is not None or not by_depth or not reference:
            per_seed.append(problem or Unknown("no figure"))
            continue
        shallow, deep = by_depth[min(by_depth)], by_depth[max(by_depth)]
        he_worst = min(reference.values())
        if shallow >= trains and deep < fails and he_worst >= trains:
            per_seed.append(True)
        elif deep >= trains or shallow < fails or he_worst < fails:
            per_seed.append(False)
        else:
            per_seed.append(Unknown(f"0.01*randn {shallow:.2f} shallow, {deep:.2f} deep, He "
                                    f"at least {he_worst:.2f}: between {fails:g} and {trains:g}"))
    return agreement(per_seed)


# --- Preprocessing: step counts that agree within the noise. ---

AGREE_FACTOR, DISAGREE_FACTOR = 1.25, 1.5


def agree(ratios: Sequence[Sequence[Ratio]], within: float = AGREE_FACTOR,
          beyond: float = DISAGREE_FACTOR) -> Verdict:
    """Verdict on "these variants train as fast as the reference", from each seed's step
    ratios (variant/reference): True when every ratio lies within [1/within, within];
    False when any surely lies beyond [1/beyond, beyond]; else unknown."""
    per_seed: list[Judgment] = []
    for seed_ratios in ratios:
        missing = next((ratio for ratio in seed_ratios if ratio.reason), None)
        if not seed_ratios or missing is not None:
            per_seed.append(Unknown(missing.reason if missing else "no ratio"))
        elif all(ratio.low >= 1 / within and ratio.high <= within for ratio in seed_ratios):
            per_seed.append(True)
        elif any(ratio.low > beyond or ratio.high < 1 / beyond for ratio in seed_ratios):
            per_seed.append(False)
        else:
            per_seed.append(Unknown(f"{', '.join(map(str, seed_ratios))}: neither all within "
                                    f"{within:g}x nor one beyond {beyond:g}x"))
    return agreement(per_seed)
