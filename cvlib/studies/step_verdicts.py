"""The speed claims' tests, from gradient steps to a fixed training accuracy: plain
functions, so that tests can feed them synthetic step counts.

A network that does not reach the accuracy within its budget is censored: its step count
is only a lower bound (the budget), and a ratio with it is an interval open on one side.
Such a ratio decides a claim only where the whole interval lies on one side of the
claim's bound; elsewhere the claim is unknown, and the reason says to raise the budget
(more steps would turn the bound into a count).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cvlib.studies.judgments import Judgment, Unknown, Verdict, agreement

# Two step counts closer than this factor count as no difference.
SPEED_MARGIN = 1.1
# "No faster": no variant needs NO_FASTER times fewer steps; a variant that surely needs
# FASTER times fewer steps contradicts it (between the two lies the noise).
NO_FASTER, FASTER = 1.25, 1.5


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

    @property
    def censored(self) -> bool:
        """Whether a network did not reach the accuracy in its budget, so that the ratio is
        only a bound (``>8x``, ``<0.25x``, or ``?`` when neither did)."""
        return not self.reason and (self.low == 0.0 or math.isinf(self.high))

    def undecided(self, question: str, gap: str) -> Unknown:
        """Why the ratio answers a claim neither way.

        Args:
            question: What it cannot tell, e.g. ``whether it is above 3x``.
            gap: Why an exact ratio cannot tell (it lies between the claim's bounds).

        Returns:
            The run's reason when it has no interval; for a bound, that it cannot tell and
            that a larger budget would; else ``gap``.
        """
        if self.reason:
            return Unknown(self.reason)
        if self.low == 0.0 and math.isinf(self.high):
            return Unknown(f"neither network reached the accuracy within its budget, so "
                           f"nothing tells {question}: raise the budget")
        if self.censored:
            return Unknown(f"{self} is only a bound (a network did not reach the accuracy "
                           f"within its budget) and cannot tell {question}: raise the budget")
        return Unknown(f"{self}: {gap}")

    def above(self, factor: float) -> Judgment:
        """True if the ratio surely exceeds factor, False if surely not, else Unknown."""
        if self.reason:
            return Unknown(self.reason)
        if self.low > factor:
            return True
        if self.high <= factor:
            return False
        return self.undecided(f"whether it is above {factor:g}x", "")

    def within(self, low: float, high: float) -> Judgment:
        """True if the ratio surely lies in [low, high], False if surely outside, else
        Unknown."""
        if self.reason:
            return Unknown(self.reason)
        if low <= self.low and self.high <= high:
            return True
        if self.high < low or self.low > high:
            return False
        return self.undecided(f"whether it lies within [{low:g}x, {high:g}x]", "")

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


def about(ratios: Sequence[Ratio], claimed: float, tolerance: float) -> Verdict:
    """Verdict on "the fast network needs about ``claimed`` times fewer steps": each
    seed's ratio within [claimed/tolerance, claimed*tolerance]. A bound above the lower
    end cannot tell: a network that never got there may be far more than ``claimed``
    times slower."""
    return agreement([ratio.within(claimed / tolerance, claimed * tolerance)
                      for ratio in ratios])


def _faster(ratio: Ratio, margin: float) -> Judgment:
    above = ratio.above(margin)
    if above is True or isinstance(above, Unknown):
        return above
    if ratio.high < 1 / margin:
        return False
    return ratio.undecided(f"whether it is above {margin:g}x",
                           f"no difference beyond {margin:g}x either way")


def faster(ratios: Sequence[Ratio], margin: float = SPEED_MARGIN) -> Verdict:
    """Verdict on "the fast network needs fewer steps", one-sided: True where the slow
    one needs over ``margin`` times more, False where it surely needs ``margin`` times
    fewer; a difference under ``margin`` either way counts as none (so as unknown,
    not as false)."""
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
            undecided = [ratio for ratio, answer in zip(ratios, answers) if answer is not True]
            bound = next((ratio for ratio in undecided if ratio.censored), None)
            per_seed.append(bound.undecided(f"whether it is above {margin:g}x", "")
                            if bound is not None else
                            Unknown(f"{', '.join(map(str, ratios))}: not slower than every "
                                    f"other by {margin:g}x"))
    return agreement(per_seed)


def no_faster(ratios: Sequence[Sequence[Ratio]], within: float = NO_FASTER,
              beyond: float = FASTER) -> Verdict:
    """Verdict on "these variants train no faster than the reference", one-sided: a
    slower variant agrees with it.

    Args:
        ratios: Per seed, each variant's steps over the reference's.
        within: True when no variant needs ``within`` times fewer steps (every ratio at
            least 1/within) in the seed.
        beyond: False when a variant surely needs ``beyond`` times fewer (a ratio below
            1/beyond); between the two the seed cannot tell.
    """
    per_seed: list[Judgment] = []
    for seed_ratios in ratios:
        missing = next((ratio for ratio in seed_ratios if ratio.reason), None)
        if not seed_ratios or missing is not None:
            per_seed.append(Unknown(missing.reason if missing else "no ratio"))
        elif all(ratio.low >= 1 / within for ratio in seed_ratios):
            per_seed.append(True)
        elif any(ratio.high < 1 / beyond for ratio in seed_ratios):
            per_seed.append(False)
        else:
            undecided = [ratio for ratio in seed_ratios if ratio.low < 1 / within]
            bound = next((ratio for ratio in undecided if ratio.censored), None)
            question = f"whether a variant needs {within:g}x fewer steps"
            per_seed.append(bound.undecided(question, "") if bound is not None else Unknown(
                f"{', '.join(map(str, seed_ratios))}: a variant needs between {within:g}x "
                f"and {beyond:g}x fewer steps"))
    return agreement(per_seed)
