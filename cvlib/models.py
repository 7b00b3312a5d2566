"""Models built by name: ``build_model(**model_settings)``.

Activations and initializers are resolved through small registries (the way
timm's ``get_act_layer`` works): an unknown name is a ValueError listing the
names there are.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Generic, Iterator, TypeVar

import keras

from cvlib.config import ModelConfig, build_section
from cvlib.layers import FusedBatchNormalization, Maxout

T = TypeVar("T")
NUM_CLASSES = 10
INPUT_SHAPE = (32, 32, 3)


class Registry(Generic[T]):
    """Names mapped to factories, with an error that lists the valid names."""

    def __init__(self, kind: str, entries: dict[str, T]):
        self.kind = kind
        self._entries = dict(entries)

    def get(self, name: str) -> T:
        """Return the entry for name.

        Raises:
            ValueError: naming the valid entries when name is unknown.
        """
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; valid: "
                             f"{', '.join(self._entries)}") from None

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)


ActivationFactory = Callable[[str, "tuple[int, ...] | None"], keras.layers.Layer]


def _keras_activation(function: str) -> ActivationFactory:
    return lambda name, spatial_axes: keras.layers.Activation(function, name=name)


# Each entry makes the activation layer, given its name and the spatial axes of
# its input ((1, 2) after a conv, None after a dense layer).
ACTIVATIONS: Registry[ActivationFactory] = Registry("activation", {
    "relu": lambda name, spatial_axes: keras.layers.ReLU(name=name),
    # 0.01 is the slope of the CS231n notes (Keras's default is 0.3).
    "leaky_relu": lambda name, spatial_axes: keras.layers.LeakyReLU(
        negative_slope=0.01, name=name),
    # One learned slope per unit: per channel for conv maps, as in He et al. 2015.
    "prelu": lambda name, spatial_axes: keras.layers.PReLU(
        shared_axes=spatial_axes, name=name),
    "elu": lambda name, spatial_axes: keras.layers.ELU(alpha=1.0, name=name),
    "maxout": lambda name, spatial_axes: Maxout(pieces=MAXOUT_PIECES, name=name),
    "tanh": _keras_activation("tanh"),
    "sigmoid": _keras_activation("sigmoid"),
    "selu": _keras_activation("selu"),
    "gelu": _keras_activation("gelu"),
    "swish": _keras_activation("silu"),
})
MAXOUT_PIECES = 2


def _normal(stddev: float) -> Callable[[], keras.initializers.Initializer]:
    return lambda: keras.initializers.RandomNormal(mean=0.0, stddev=stddev)


def _fan_in_normal(scale: float) -> Callable[[], keras.initializers.Initializer]:
    return lambda: keras.initializers.VarianceScaling(
        scale=scale, mode="fan_in", distribution="untruncated_normal")


# Each entry makes a fresh initializer: one object per layer, because a seeded
# initializer reused across layers would give every layer the same weights.
INITIALIZERS: Registry[Callable[[], keras.initializers.Initializer]] = Registry("initializer", {
    "small_gaussian": _normal(0.01),        # 0.01 * randn
    "unit_gaussian": _normal(1.0),          # 1.0 * randn
    "xavier": _fan_in_normal(1.0),          # randn / sqrt(fan_in)
    "glorot": keras.initializers.GlorotNormal,  # Keras's glorot_normal (fan_avg, truncated)
    "he": _fan_in_normal(2.0),              # randn / sqrt(fan_in / 2)
})

# Moving-average momentum of BatchNormalization's inference statistics. Keras's
# 0.99 needs ~500 steps to forget its initial mean 0 / variance 1, more than a short
# CPU cell takes (2,000 images x 2 epochs is 32 steps), which would make BN cells look
# bad at evaluation for a reason that has nothing to do with BN. 0.9 is PyTorch's.
BN_MOMENTUM = 0.9


def _block(x, prefix: str, role: str, make_linear, units: int, activation: str,
           initializer: str, bn: str):
    """linear -> activation, with BatchNormalization before or after the activation.

    Layers are named ``{prefix}_{role}``, ``{prefix}_bn`` and ``{prefix}_act``. With
    BN before the activation the linear layer has no bias: BN's shift replaces it.
    """
    pieces = MAXOUT_PIECES if activation == "maxout" else 1
    x = make_linear(units * pieces, name=f"{prefix}_{role}", use_bias=bn != "before",
                    kernel_initializer=INITIALIZERS.get(initializer)())(x)
    if bn == "before":
        x = FusedBatchNormalization(momentum=BN_MOMENTUM, name=f"{prefix}_bn")(x)
    spatial_axes = tuple(range(1, len(x.shape) - 1)) or None
    x = ACTIVATIONS.get(activation)(f"{prefix}_act", spatial_axes)(x)
    if bn == "after":
        x = FusedBatchNormalization(momentum=BN_MOMENTUM, name=f"{prefix}_bn")(x)
    return x


def _conv(units: int, **kwargs):
    return keras.layers.Conv2D(units, 3, padding="same", **kwargs)


@contextlib.contextmanager
def _dtype_policy(precision: str) -> Iterator[None]:
    """Layers made inside take this Keras dtype policy (they keep it once made)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_model(**model_settings) -> keras.Model:
    """Build an uncompiled functional model: 32x32x3 images in, 10 logits out.

    Args:
        **model_settings: exactly the keys of a grid file's ``model:`` section
            (see cvlib.config.ModelConfig): arch, widths, dense_units, depth, width,
            activation, initializer, bn, precision. Missing keys take their defaults.

    Returns:
        A keras.Model whose layers are named ``block1_conv``, ``block1_bn``,
        ``block1_act``, ``block1_pool``, ..., ``dense1_dense``, ``dense1_act``, ``logits``.

    Raises:
        ValueError: for an unknown key or name, listing the valid ones.
    """
    config = build_section("model", model_settings)
    with _dtype_policy(config.precision):
        return _build(config)


def _build(config: ModelConfig) -> keras.Model:
    """build_model's network, in the dtype policy in force."""
    block_settings = dict(activation=config.activation, initializer=config.initializer,
                          bn=config.bn)
    inputs = keras.Input(INPUT_SHAPE, name="images")
    x = inputs
    if config.arch == "cnn":
        for index, filters in enumerate(config.widths, start=1):
            x = _block(x, f"block{index}", "conv", _conv, filters, **block_settings)
            x = keras.layers.MaxPooling2D(2, name=f"block{index}_pool")(x)
        x = keras.layers.Flatten(name="flatten")(x)
        hidden = [config.dense_units]
    else:
        x = keras.layers.Flatten(name="flatten")(x)
        hidden = [config.width] * config.depth
    for index, units in enumerate(hidden, start=1):
        x = _block(x, f"dense{index}", "dense", keras.layers.Dense, units, **block_settings)
    # float32 logits under mixed precision, as Keras's guide advises: the softmax and
    # the loss in bfloat16 would round away small differences between classes.
    logits = keras.layers.Dense(NUM_CLASSES, name="logits", dtype="float32",
                                kernel_initializer=INITIALIZERS.get(config.initializer)())(x)
    return keras.Model(inputs, logits,
                       name=f"{config.arch}_{config.activation}_{config.initializer}_{config.bn}")
