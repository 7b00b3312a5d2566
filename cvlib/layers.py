"""Layers that Keras does not ship."""
from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cvlib")
class Maxout(keras.layers.Layer):
    """Maxout (Goodfellow et al. 2013): the max over ``pieces`` linear pieces.

    The pieces are formed by the linear layer before this one (conv or dense),
    which cvlib builds with ``pieces`` times the units it would otherwise have:
    its output channels ``[k * pieces, (k + 1) * pieces)`` are the pieces of
    unit ``k``, and this layer keeps their maximum. Maxout with k=2 therefore
    doubles the parameters (and the compute) of the layer that feeds it.

    Args:
        pieces: Linear pieces per unit; the last input axis must be a multiple of it.
    """

    def __init__(self, pieces: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.pieces = pieces

    def call(self, inputs):
        units = inputs.shape[-1] // self.pieces
        grouped = ops.reshape(inputs, (-1, *inputs.shape[1:-1], units, self.pieces))
        return ops.max(grouped, axis=-1)

    def compute_output_shape(self, input_shape):
        if input_shape[-1] % self.pieces:
            raise ValueError(f"Maxout with {self.pieces} pieces needs a last axis that is "
                             f"a multiple of {self.pieces}, got {input_shape[-1]}")
        return (*input_shape[:-1], input_shape[-1] // self.pieces)

    def get_config(self):
        return {**super().get_config(), "pieces": self.pieces}
