"""How a claim's verdict is formed: the claim is judged once per seed (or per search) as
true, false, or :class:`Unknown` with the reason the figures cannot tell (a figure that is
NaN or infinite, as a failed or diverged run leaves it; neither network reaching the
accuracy in the budget; a difference inside the noise margin). The :class:`Verdict` is
``holds`` when every seed says true, ``does not hold`` when every seed says false, and
``inconclusive`` otherwise, with its reason: which seeds cannot tell and why, or that the
seeds disagree. The tests of each claim are in :mod:`cvlib.studies.verdicts`.
"""
from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np

HOLDS, DOES_NOT_HOLD, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


@dataclass(frozen=True)
class Unknown:
    """A judgment that cannot tell, and why."""

    reason: str


# True, False, or why neither.
Judgment = Union[bool, Unknown]


@dataclass(frozen=True)
class Verdict:
    """A claim's verdict: ``kind`` is HOLDS, DOES_NOT_HOLD or INCONCLUSIVE; an
    inconclusive verdict always says why, the others never need to."""

    kind: str
    reason: str = ""

    def __post_init__(self):
        if self.kind not in (HOLDS, DOES_NOT_HOLD, INCONCLUSIVE):
            raise ValueError(f"unknown verdict {self.kind!r}")
        if (self.kind == INCONCLUSIVE) != bool(self.reason):
            raise ValueError(f"a verdict has a reason exactly when it is {INCONCLUSIVE}: "
                             f"{self.kind!r}, {self.reason!r}")

    def __str__(self) -> str:
        """The verdict as a reader sees it, e.g. ``inconclusive: tanh-s1 failed``."""
        return f"{self.kind}: {self.reason}" if self.reason else self.kind


def inconclusive(reason: str) -> Verdict:
    """An inconclusive verdict, saying why."""
    return Verdict(INCONCLUSIVE, reason)


def agreement(judgments: Sequence[Judgment], labels: Sequence[str] | None = None) -> Verdict:
    """The verdict from the claim's truth in each seed (see the module docstring).

    Args:
        judgments: One per seed (or per search, ...).
        labels: What each judgment is about, for the reason; default ``seed 0``,
            ``seed 1``, ... (the studies' seeds are numbered from 0).

    Returns:
        The Verdict; when inconclusive, its reason names the seeds that cannot tell and
        why, else those that say true and false.
    """
    labels = list(labels) if labels is not None else [f"seed {i}" for i in range(len(judgments))]
    if not len(judgments):
        return inconclusive("nothing was measured")
    unknown: dict[str, list[str]] = defaultdict(list)
    answers: dict[bool, list[str]] = {True: [], False: []}
    for label, judgment in zip(labels, judgments):
        if isinstance(judgment, Unknown):
            unknown[judgment.reason].append(label)
        else:
            answers[bool(judgment)].append(label)
    if unknown:
        return inconclusive("; ".join(f"{', '.join(which)}: {reason}"
                                      for reason, which in unknown.items()))
    if not answers[False]:
        return Verdict(HOLDS)
    if not answers[True]:
        return Verdict(DOES_NOT_HOLD)
    return inconclusive(f"true for {', '.join(answers[True])}, "
                        f"false for {', '.join(answers[False])}")


def unusable(figures) -> Unknown | None:
    """Why these figures cannot be judged (none, or one NaN or infinite), or None."""
    values = np.asarray(figures, dtype=np.float64)
    if values.size == 0:
        return Unknown("no figure")
    if np.isnan(values).any():
        return Unknown("a figure is missing (NaN)")
    if not np.isfinite(values).all():
        return Unknown("a figure is infinite")
    return None


def judged(test: Callable[..., bool | Unknown]) -> Callable[..., Judgment]:
    """A test of a sequence of figures, made safe: Unknown when the figures are unusable
    (:func:`unusable`), else the test's answer (given the figures as a float array)."""
    @functools.wraps(test)
    def judge(figures, *args, **kwargs) -> Judgment:
        problem = unusable(figures)
        if problem is not None:
            return problem
        answer = test(np.asarray(figures, dtype=np.float64), *args, **kwargs)
        return answer if isinstance(answer, Unknown) else bool(answer)
    return judge
