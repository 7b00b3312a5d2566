"""The tests of the notes' claims, from measured figures to verdicts: plain functions,
so that tests can feed them synthetic figures. How per-seed judgments become a verdict
with its reason is :mod:`cvlib.studies.judgments`; the speed claims' tests, on step counts
that may be censored, are :mod:`cvlib.studies.step_verdicts`.

No function here answers true or false from a figure that is NaN or infinite.
"""
from __future__ import annotations

import math
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
    ``vanished`` and ReLU's at least ``kept``; False when either half is surely wrong:
    sigmoid's at least ``kept``, or ReLU's below ``vanished``."""
    @judged
    def vanish(pair: np.ndarray) -> bool | Unknown:
        ratio, reference = pair
        if ratio < vanished and reference >= kept:
            return True
        if ratio >= kept or reference < vanished:
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
