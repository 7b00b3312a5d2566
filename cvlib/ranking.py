"""How far a ranking over seeds can be trusted: each cell's 95% confidence interval of its
mean, and which cells cannot be told apart from the best.

Both use the t distribution (scipy.stats): the interval is mean ± t(0.975, n-1)·s/√n, and
a cell is *tied* with the best when Welch's t-test (unequal variances) of its seeds'
values against the best cell's gives p ≥ 0.05. Cells with one seed are *untested*.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

# Two-sided level of the intervals and of the test against the best cell.
ALPHA = 0.05
BEST, TIED, BELOW, UNTESTED = "best", "tied", "below", "untested"
# What the ``vs_best`` column says, for the table's note.
VS_BEST_MEANING = (f"vs_best: {TIED} = cannot be told apart from the {BEST} cell (Welch's "
                   f"t-test over seeds, p >= {ALPHA}), {BELOW} = worse (p < {ALPHA}), "
                   f"{UNTESTED} = one seed, or not a result")


def confidence_interval(values: Sequence[float]) -> tuple[float, float]:
    """The 95% confidence interval of the mean of a cell's seeds' values.

    Args:
        values: One value per seed (NaN values are left out).

    Returns:
        (low, high); (NaN, NaN) with fewer than two values.
    """
    finite = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if len(finite) < 2:
        return math.nan, math.nan
    mean, error = finite.mean(), stats.sem(finite)
    if error == 0:
        return float(mean), float(mean)
    low, high = stats.t.interval(1 - ALPHA, len(finite) - 1, loc=mean, scale=error)
    return float(low), float(high)


def compare_to_best(samples: Sequence[Sequence[float] | None]) -> list[str]:
    """Label each cell against the cell with the highest mean among those with two or
    more values.

    Args:
        samples: Each cell's values over its seeds, higher is better; None for a cell
            that is no result (diverged, failed) and takes no part.

    Returns:
        One of BEST, TIED, BELOW, UNTESTED per cell, in order.
    """
    tested = {index: np.asarray(values, dtype=float) for index, values in enumerate(samples)
              if values is not None and len(values) >= 2 and not np.isnan(values).any()}
    if not tested:
        return [UNTESTED] * len(samples)
    best = max(tested, key=lambda index: (tested[index].mean(), -index))
    labels = []
    for index in range(len(samples)):
        if index == best:
            labels.append(BEST)
        elif index not in tested:
            labels.append(UNTESTED)
        else:
            labels.append(TIED if _tied(tested[index], tested[best]) else BELOW)
    return labels


def _tied(values: np.ndarray, best: np.ndarray) -> bool:
    """Whether Welch's t-test cannot tell two cells' means apart at ALPHA."""
    if values.std() == 0 and best.std() == 0:  # no spread: the t statistic is undefined
        return bool(values.mean() == best.mean())
    return bool(stats.ttest_ind(values, best, equal_var=False).pvalue >= ALPHA)
