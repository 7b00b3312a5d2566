"""Search spaces: the ``space:`` section of a grid file, read and validated.

``space:`` maps the dotted keys that ``grid:`` takes (``train.learning_rate``) to what a
search samples for them: a list (a choice among its values), or one of
``{uniform: [a, b]}``, ``{loguniform: [a, b]}``, ``{int: [a, b]}``, ``{logint: [a, b]}``.
Each value and bound is checked against the setting's own constraints by the caller
(:mod:`cvlib.grids` builds a cell with it); this module checks the shape and the order of
the bounds. Optuna-free: the engine's search (:mod:`cvlib.engine.search`) turns a
:class:`Dimension` into Optuna's distribution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cvlib.errors import did_you_mean
from cvlib.fields import ConfigError

CHOICE = "choice"
RANGES = ("uniform", "loguniform", "int", "logint")
LOG_RANGES = ("loguniform", "logint")
INT_RANGES = ("int", "logint")
# Sampled floats keep this many significant digits: readable run names and cell hashes
# that a value read back from the store reproduces.
SIGNIFICANT_DIGITS = 3


@dataclass(frozen=True)
class Dimension:
    """One searched setting."""

    # The dotted key, e.g. ``train.learning_rate``.
    key: str
    # CHOICE, or one of RANGES.
    kind: str
    # A choice's values, or a range's (low, high).
    values: tuple

    @property
    def is_choice(self) -> bool:
        """Whether the dimension is a list of values to choose from."""
        return self.kind == CHOICE

    def rounded(self, value: Any) -> Any:
        """A sampled value as a cell takes it: a float range's value with
        SIGNIFICANT_DIGITS significant digits, kept within the bounds."""
        if self.kind not in ("uniform", "loguniform"):
            return value
        low, high = self.values
        return min(max(float(f"{value:.{SIGNIFICANT_DIGITS}g}"), low), high)

    def holds(self, value: Any) -> bool:
        """Whether a value is one the dimension may sample."""
        if self.is_choice:
            return value in self.values
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind in INT_RANGES and value != int(value):
            return False
        return self.values[0] <= value <= self.values[1]

    def describe(self) -> str:
        """The dimension as one line's part, e.g. ``train.learning_rate loguniform
        [0.0001, 0.1]``."""
        if self.is_choice:
            return f"{self.key} one of {list(self.values)}"
        return f"{self.key} {self.kind} [{self.values[0]}, {self.values[1]}]"


def parse_dimension(key: str, raw: Any) -> Dimension:
    """Read one ``space:`` entry (its key is checked by the caller).

    Args:
        key: The dotted key.
        raw: A non-empty list, or a one-key mapping of a range kind to ``[low, high]``.

    Returns:
        The Dimension.

    Raises:
        ConfigError: for any other shape, or bounds out of order or not positive where
            the range is logarithmic.
    """
    if isinstance(raw, list):
        if not raw:
            raise ConfigError(f"space.{key} must be a non-empty list of values or a range "
                              f"({_RANGE_WORDS})")
        return Dimension(key, CHOICE, tuple(raw))
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ConfigError(f"space.{key} must be a list of values or one range "
                          f"({_RANGE_WORDS}), got {raw!r}")
    ((kind, bounds),) = raw.items()
    if kind not in RANGES:
        raise ConfigError(f"unknown range {kind!r} of space.{key}; valid: "
                          f"{', '.join(RANGES)}{did_you_mean(str(kind), RANGES)}")
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise ConfigError(f"space.{key}: {kind} takes [low, high], got {bounds!r}")
    low, high = (_bound(key, kind, bound) for bound in bounds)
    if not low < high:
        raise ConfigError(f"space.{key}: {kind} needs low < high, got [{low}, {high}]")
    if kind in LOG_RANGES and low <= 0:
        raise ConfigError(f"space.{key}: {kind} needs low > 0, got {low}")
    return Dimension(key, kind, (low, high))


def _bound(key: str, kind: str, bound: Any) -> float | int:
    """One bound as a number of the range's type."""
    if isinstance(bound, str):  # YAML 1.1 reads 1e-3 as text
        try:
            bound = float(bound)
        except ValueError:
            pass
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or \
            not math.isfinite(bound):
        raise ConfigError(f"space.{key}: {kind} bounds must be numbers, got {bound!r}")
    if kind in INT_RANGES:
        if bound != int(bound):
            raise ConfigError(f"space.{key}: {kind} bounds must be integers, got {bound!r}")
        return int(bound)
    return float(bound)


_RANGE_WORDS = "{uniform: [a, b]}, {loguniform: [a, b]}, {int: [a, b]}, {logint: [a, b]}"
