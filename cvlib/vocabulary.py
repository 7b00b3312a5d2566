"""The names a grid file may use for activations, initializers and BN placements, with
the facts the rest of cvlib needs about each. Keras-free, so that a grid file is
checked in well under a second.

One entry per name: :mod:`cvlib.config` takes the valid names from here, :mod:`cvlib.models`
resolves each to its Keras layer or initializer, :mod:`cvlib.stats` reads the saturation
bounds, and :mod:`cvlib.engine.scheduling` the cost weights.
Adding an activation is one entry here plus, unless Keras's ``Activation`` layer computes
it by name, its layer in ``cvlib.models``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name, in registration order; an unknown name is a ValueError that
    lists the valid ones (as timm's registries do)."""

    def __init__(self, kind: str, entries: list[T]):
        self.kind = kind
        self._entries = {entry.name: entry for entry in entries}

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; valid: "
                             f"{', '.join(self._entries)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        return iter(self._entries.values())

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)


@dataclass(frozen=True)
class Activation:
    """A nonlinearity and what the statistics and the scheduler know about it."""

    # The name in grid files and run names.
    name: str
    # Keras's name for the function when ``keras.layers.Activation`` computes it; None
    # when cvlib.models builds a layer of its own for it.
    keras_function: str | None = None
    # (low, high) of a bounded function: outputs within SATURATION_MARGIN of them count
    # as saturated. None for unbounded functions.
    bounds: tuple[float, float] | None = None
    # Linear pieces per unit (maxout's k): the layer before it has this many times the units.
    pieces: int = 1
    # An image pass's time relative to a ReLU cell's, on 2 CPU cores (in the seed grid at
    # 30,000 images, `benchmarks/halving.py`, a maxout cell took 774-1,006 s against ReLU's
    # 181-267 s); the scheduler starts costly cells first.
    cost: float = 1.0


@dataclass(frozen=True)
class Initializer:
    """A kernel initializer: zero-mean normal weights with a fixed or a fan-scaled std."""

    # The name in grid files and run names.
    name: str
    # The lecture's formula.
    formula: str
    # Fixed std (``stddev * randn``), or None for a variance-scaled one.
    stddev: float | None = None
    # Variance scaling: variance = scale / fan, fan = fan_in or the mean of fan_in and fan_out.
    scale: float = 1.0
    fan: str = "fan_in"
    # Whether draws beyond 2 std are redrawn (Keras's glorot_normal does this).
    truncated: bool = False


@dataclass(frozen=True)
class BnPlacement:
    """Where BatchNormalization sits relative to the activation."""

    name: str
    # An image pass's time relative to a cell without BN (about 1.3x on 2 CPU cores).
    cost: float = 1.0


ACTIVATIONS: Registry[Activation] = Registry("activation", [
    Activation("relu"),
    # Slope 0.01, as in the CS231n notes (Keras's default is 0.3).
    Activation("leaky_relu"),
    # One learned slope per unit (per channel for conv maps, as in He et al. 2015).
    Activation("prelu"),
    Activation("elu"),
    Activation("maxout", pieces=2, cost=3.5),
    Activation("tanh", keras_function="tanh", bounds=(-1.0, 1.0)),
    Activation("sigmoid", keras_function="sigmoid", bounds=(0.0, 1.0)),
    # sigmoid(x) - 0.5: sigmoid's shape and saturation, zero-centered outputs (the
    # control that separates centering from saturation in `cvlib claims`).
    Activation("centered_sigmoid", bounds=(-0.5, 0.5)),
    Activation("selu", keras_function="selu"),
    Activation("gelu", keras_function="gelu"),
    Activation("swish", keras_function="silu"),
])

INITIALIZERS: Registry[Initializer] = Registry("initializer", [
    Initializer("small_gaussian", "0.01 * randn", stddev=0.01),
    Initializer("unit_gaussian", "1.0 * randn", stddev=1.0),
    Initializer("xavier", "randn / sqrt(fan_in)", scale=1.0),
    Initializer("glorot", "truncated randn * sqrt(2 / (fan_in + fan_out))", scale=1.0,
                fan="fan_avg", truncated=True),
    Initializer("he", "randn / sqrt(fan_in / 2)", scale=2.0),
])

BN_PLACEMENTS: Registry[BnPlacement] = Registry("bn placement", [
    BnPlacement("none"),
    BnPlacement("before", cost=1.3),
    BnPlacement("after", cost=1.3),
])

# Outputs within this margin of a bounded activation's bounds count as saturated.
SATURATION_MARGIN = 0.01
