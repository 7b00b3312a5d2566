"""Declared constraints on config dataclass fields, and the check that enforces them.

A field declares its default and what is valid (choices, a minimum) with
:func:`spec`; the dataclass's ``__post_init__`` calls :func:`validate`, which
raises ConfigError with a one-line message naming what would be valid.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any

from cvlib.errors import CvlibError, did_you_mean


class ConfigError(CvlibError, ValueError):
    """A grid file or setting that cannot be run; the message says what to fix."""


def spec(default: Any, *, choices: tuple | None = None, minimum: float | None = None,
          exclusive_minimum: bool = False, optional: bool = False, section: type | None = None):
    """A dataclass field with the constraints that :func:`validate` checks.

    Args:
        default: The field's default (a list becomes a tuple).
        choices: The valid values, if only some are.
        minimum: The smallest valid value (of each item, for a list).
        exclusive_minimum: The minimum itself is not valid.
        optional: None is valid too.
        section: The field is a nested section: a mapping built into this dataclass
            with :func:`build_dataclass`.
    """
    metadata = {"choices": choices, "minimum": minimum,
                "exclusive_minimum": exclusive_minimum, "optional": optional,
                "section": section}
    if isinstance(default, (list, tuple)):
        return field(default=tuple(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def build_dataclass(cls: type, raw: Any, section: str):
    """Build a section's dataclass from a mapping, rejecting unknown keys with the valid
    ones.

    Args:
        cls: The section's dataclass.
        raw: Its keys and values, as written in a grid file.
        section: Its dotted name in a grid file, for the messages (``search.confirm``).

    Returns:
        The validated dataclass.

    Raises:
        ConfigError: for an unknown key or an invalid value, naming the valid ones.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"'{section}' must be a mapping of keys to values, got {raw!r}")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(valid), key=str)
    if unknown:
        raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(f'{section}.{k}' for k in unknown)}; "
                          f"valid keys of '{section}': {', '.join(valid)}"
                          f"{did_you_mean(f'{section}.{unknown[0]}', [f'{section}.{k}' for k in valid])}")
    return cls(**raw)


def validate(instance, section: str) -> None:
    """Check every field's type and constraints, storing normalised values.

    Args:
        instance: A frozen dataclass whose fields were declared with :func:`spec`.
        section: Its name in a grid file, for the messages (``train`` -> ``train.epochs``).

    Lists become tuples (so configs stay hashable), ints given for floats become
    floats, and strings such as ``1e-3`` (which YAML 1.1 reads as text) become floats.
    """
    for spec in dataclasses.fields(instance):
        value = getattr(instance, spec.name)
        meta, key = spec.metadata, f"{section}.{spec.name}"
        if value is None and meta.get("optional"):
            continue
        if meta.get("section") is not None:
            if not isinstance(value, meta["section"]):
                value = build_dataclass(meta["section"], value, key)
            object.__setattr__(instance, spec.name, value)
            continue
        expected = type(spec.default) if spec.default is not None else \
            str if meta.get("choices") else int
        if expected is tuple:
            if not isinstance(value, (list, tuple)) or not value:
                raise ConfigError(f"{key} must be a non-empty list, got {value!r}")
            value = tuple(_checked_value(key, item, int, meta) for item in value)
        else:
            value = _checked_value(key, value, expected, meta)
        object.__setattr__(instance, spec.name, value)


def _checked_value(key: str, value: Any, expected: type, meta) -> Any:
    """Return value as the expected type, or raise ConfigError naming what is valid."""
    if expected is float and not isinstance(value, bool):
        if isinstance(value, int):
            value = float(value)
        elif isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, expected):
        raise ConfigError(f"{key} must be {_TYPE_WORDS[expected]}, got {value!r}")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"unknown {key} {value!r}; valid: {', '.join(choices)}"
                          f"{did_you_mean(value, choices)}")
    minimum = meta.get("minimum")
    if minimum is not None:
        if meta.get("exclusive_minimum") and value <= minimum:
            raise ConfigError(f"{key} must be above {minimum}, got {value!r}")
        if value < minimum:
            raise ConfigError(f"{key} must be at least {minimum}, got {value!r}")
    return value


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string"}
