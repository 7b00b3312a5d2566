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


@keras.saving.register_keras_serializable(package="cvlib")
class CenteredSigmoid(keras.layers.Layer):
    """sigmoid(x) - 0.5: the logistic function moved down to be zero-centered, with
    sigmoid's slope and saturation unchanged (it equals tanh(x / 2) / 2)."""

    def call(self, inputs):
        return ops.sigmoid(inputs) - 0.5

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="cvlib")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras's BatchNormalization, computed by TensorFlow's fused kernel.

    Keras 3 normalizes with separate moment, subtract and scale ops; TensorFlow's
    ``FusedBatchNormV3`` (oneDNN on CPU) does the forward and backward passes in
    one kernel each. Same weights, momentum, epsilon and moving-average update as
    the parent (biased batch variance), so results match it to float precision.
    Other backends, masks, renorm or a non-last axis use the parent's code.
    """

    def call(self, inputs, training=None, mask=None):
        if (keras.backend.backend() != "tensorflow" or mask is not None or self.renorm
                or self.axis not in (-1, len(inputs.shape) - 1)
                or not (self.center and self.scale) or len(inputs.shape) not in (2, 4)):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        images = inputs if len(inputs.shape) == 4 else tf.reshape(inputs, [-1, 1, 1, channels])
        if images.dtype != tf.bfloat16:  # the kernel takes bfloat16 (mixed precision) as is
            images = tf.cast(images, "float32")
        if training and self.trainable:
            outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
                x=images, scale=self.gamma.value, offset=self.beta.value,
                mean=tf.constant([], tf.float32), variance=tf.constant([], tf.float32),
                epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC",
                is_training=True)
            # The kernel returns the unbiased variance; Keras averages the biased one.
            count = tf.cast(tf.size(images) // channels, tf.float32)
            variance = variance * (count - 1.0) / count
            self.moving_mean.assign(self.moving_mean * self.momentum
                                    + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum
                                        + variance * (1.0 - self.momentum))
        else:
            outputs, *_ = tf.raw_ops.FusedBatchNormV3(
                x=images, scale=self.gamma.value, offset=self.beta.value,
                mean=self.moving_mean.value, variance=self.moving_variance.value,
                epsilon=self.epsilon, data_format="NHWC", is_training=False)
        if len(inputs.shape) == 2:
            outputs = tf.reshape(outputs, [-1, channels])
        return ops.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(package="cvlib")
class Preprocessing(keras.layers.Layer):
    """A cell's input preprocessing (cvlib.data) as a layer: raw uint8 images to the
    floats its model was trained on, by the same float32 operations in the same order
    (divide by 255, subtract the mean, divide by the standard deviation), so that a
    saved model scores exactly what its cell measured.

    Args:
        mean: The training split's mean (per channel, or an image); None: none.
        std: Its standard deviation per channel; None: none.
    """

    def __init__(self, mean=None, std=None, **kwargs):
        super().__init__(**kwargs)
        self.mean = None if mean is None else ops.convert_to_numpy(mean).astype("float32")
        self.std = None if std is None else ops.convert_to_numpy(std).astype("float32")

    def call(self, inputs):
        images = ops.divide(ops.cast(inputs, "float32"), ops.cast(255.0, "float32"))
        if self.mean is not None:
            images = ops.subtract(images, self.mean)
        if self.std is not None:
            images = ops.divide(images, self.std)
        return images

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(),
                "mean": None if self.mean is None else self.mean.tolist(),
                "std": None if self.std is None else self.std.tolist()}
