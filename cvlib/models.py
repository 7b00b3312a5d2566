"""Models built by name: ``build_model(**model_settings)``.

Activations and initializers are named in :mod:`cvlib.vocabulary`; this module resolves
each name to its Keras layer or initializer. An unknown name is a ValueError listing
the names there are.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import keras

from cvlib.config import ModelConfig, build_section
from cvlib.layers import CenteredSigmoid, FusedBatchNormalization, Maxout
from cvlib.vocabulary import ACTIVATIONS, INITIALIZERS, Activation

NUM_CLASSES = 10
INPUT_SHAPE = (32, 32, 3)
# The slope of leaky_relu for x < 0: the CS231n notes' 0.01 (Keras's default is 0.3).
LEAKY_SLOPE = 0.01

# Layers made for activations that Keras's Activation layer does not compute by name.
# Each makes the layer, given its name and the spatial axes of its input ((1, 2) after a
# conv, None after a dense layer).
LayerFactory = Callable[[str, "tuple[int, ...] | None"], keras.layers.Layer]
ACTIVATION_LAYERS: dict[str, LayerFactory] = {
    "relu": lambda name, spatial_axes: keras.layers.ReLU(name=name),
    "leaky_relu": lambda name, spatial_axes: keras.layers.LeakyReLU(
        negative_slope=LEAKY_SLOPE, name=name),
    # One learned slope per unit: per channel for conv maps, as in He et al. 2015.
    "prelu": lambda name, spatial_axes: keras.layers.PReLU(shared_axes=spatial_axes, name=name),
    "elu": lambda name, spatial_axes: keras.layers.ELU(alpha=1.0, name=name),
    "maxout": lambda name, spatial_axes: Maxout(pieces=ACTIVATIONS["maxout"].pieces, name=name),
    "centered_sigmoid": lambda name, spatial_axes: CenteredSigmoid(name=name),
}


def activation_layer(activation: Activation, name: str,
                     spatial_axes: tuple[int, ...] | None) -> keras.layers.Layer:
    """The Keras layer of a vocabulary activation.

    Raises:
        ValueError: for an activation with neither a layer here nor a Keras function.
    """
    if activation.name in ACTIVATION_LAYERS:
        return ACTIVATION_LAYERS[activation.name](name, spatial_axes)
    if activation.keras_function is None:
        raise ValueError(f"activation {activation.name!r} names no Keras function and has "
                         f"no layer in cvlib.models.ACTIVATION_LAYERS")
    return keras.layers.Activation(activation.keras_function, name=name)


def make_initializer(name: str) -> keras.initializers.Initializer:
    """A fresh Keras initializer for a vocabulary initializer: one object per layer,
    because a seeded initializer reused across layers gives every layer the same weights.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    entry = INITIALIZERS[name]
    if entry.stddev is not None:
        return keras.initializers.RandomNormal(mean=0.0, stddev=entry.stddev)
    return keras.initializers.VarianceScaling(
        scale=entry.scale, mode=entry.fan,
        distribution="truncated_normal" if entry.truncated else "untruncated_normal")


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
    facts = ACTIVATIONS[activation]
    x = make_linear(units * facts.pieces, name=f"{prefix}_{role}", use_bias=bn != "before",
                    kernel_initializer=make_initializer(initializer))(x)
    if bn == "before":
        x = FusedBatchNormalization(momentum=BN_MOMENTUM, name=f"{prefix}_bn")(x)
    spatial_axes = tuple(range(1, len(x.shape) - 1)) or None
    x = activation_layer(facts, f"{prefix}_act", spatial_axes)(x)
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
            activation, initializer, logits_initializer, bn, precision. Missing keys take their defaults.

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
                                kernel_initializer=make_initializer(
                                    config.logits_initializer or config.initializer))(x)
    return keras.Model(inputs, logits,
                       name=f"{config.arch}_{config.activation}_{config.initializer}_{config.bn}")
