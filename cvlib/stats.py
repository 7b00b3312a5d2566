"""What happens inside the network: activation, gradient and update statistics.

Measured on a fixed probe batch of validation images, side-effect free (BN's moving
statistics are not touched), once at initialization (step 0) and at the end of every
``stats_every``-th epoch:

- for every ``*_act`` and ``*_bn`` layer: mean, std, ``saturated`` (fraction of
  outputs within 0.01 of a bounded function's bounds), ``dead`` (``*_act`` layers:
  the fraction of units, channels for conv maps, through which no gradient passes for
  any probe image, :func:`dead_units`) and a histogram (of an evenly strided sample of
  at most ~262,144 outputs; the other statistics use every output);
- for every kernel: the gradient norm on one batch, and the update-to-weight ratio
  ||dW|| / ||W|| of the epoch's last step.

The recorder holds the logic; the Keras callback only forwards fit's events to it.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from cvlib.tracking.schema import (
    ACTIVATION_PREFIX,
    GRADIENT_PREFIX,
    STATS_SUMMARY,
    UPDATE_RATIO_PREFIX,
)
from cvlib.vocabulary import ACTIVATIONS, SATURATION_MARGIN

HISTOGRAM_BINS = 40
HISTOGRAM_SAMPLE = 262_144
GRADIENT_BATCH = 128
ACTIVATION_STATISTICS = ("mean", "std", "saturated", "dead")


def probed_layers(model: keras.Model) -> list[str]:
    """Names of the layers whose outputs are measured: every ``*_act`` and ``*_bn``."""
    return [layer.name for layer in model.layers if layer.name.endswith(("_act", "_bn"))]


def kernel_layers(model: keras.Model) -> list[str]:
    """Names of the layers with a kernel (conv, dense, logits), in depth order."""
    return [layer.name for layer in model.layers if getattr(layer, "kernel", None) is not None]


def _histogram_stride(shape) -> int:
    """A stride that keeps about HISTOGRAM_SAMPLE values and visits every channel.

    The histogram is the one costly reduction (a 500-image probe of a 32-channel
    32x32 map holds 16 million values), and its shape does not need them all. A
    stride sharing a factor with the channel count would sample some channels only.
    """
    size, channels = int(np.prod(shape)), int(shape[-1])
    stride = max(1, size // HISTOGRAM_SAMPLE)
    while math.gcd(stride, channels) != 1:
        stride += 1
    return stride


def dead_units(layer: keras.layers.Layer, inputs: tf.Tensor) -> tf.Tensor:
    """Which units of an activation layer are dead on these inputs: no gradient passes
    through them, as the layer's local derivative is 0 for every input (every image and,
    for a conv map, every position).

    The one definition of a dead unit, for the statistics and for the claims' probe. It
    asks the function itself, so it holds for any activation: ReLU's units whose input
    is negative everywhere are dead; Leaky ReLU, PReLU (unless its slope is 0), ELU,
    SELU, GELU and swish keep a nonzero slope there; maxout passes the gradient to the
    larger of each unit's pieces; a saturating function counts only where its
    derivative is exactly 0 in the layer's precision.

    Args:
        layer: An activation layer (maxout's inputs hold ``pieces`` channels per unit).
        inputs: Its inputs, (batch, ..., channels).

    Returns:
        A bool tensor, one entry per unit (output channel).
    """
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = layer(inputs)
        total = tf.reduce_sum(tf.cast(outputs, tf.float32))
    # The gradient of the sum is each input's local derivative (elementwise functions);
    # maxout's goes to the larger of each unit's pieces.
    slopes = tf.abs(tf.cast(tape.gradient(total, inputs), tf.float32))
    units = outputs.shape[-1]
    per_unit = tf.reduce_max(tf.reshape(slopes, [-1, units, inputs.shape[-1] // units]),
                             axis=[0, 2])
    return tf.equal(per_unit, 0.0)


def _activation_summary(outputs: tf.Tensor, activation: str | None,
                        dead: tf.Tensor | None) -> dict[str, tf.Tensor]:
    """Mean, std, saturated and dead fractions, and a histogram of one layer's outputs.

    Args:
        outputs: (batch, ..., units) outputs of a layer.
        activation: The activation's name for ``*_act`` layers, None for BN outputs.
        dead: For ``*_act`` layers, :func:`dead_units` on its inputs; None for BN.
    """
    outputs = tf.cast(outputs, tf.float32)  # bfloat16 under mixed precision
    values = tf.reshape(outputs, [-1])
    # Exploding initializations overflow to inf (and then NaN): the histogram takes the
    # finite values only, as TensorFlow's histogram kernel crashes the process on a
    # non-finite range. Mean and std report the overflow as it is.
    sample = values[::_histogram_stride(outputs.shape)]
    sample = tf.boolean_mask(sample, tf.math.is_finite(sample))
    any_finite = tf.size(sample) > 0
    low = tf.where(any_finite, tf.reduce_min(sample), 0.0)
    high = tf.where(any_finite, tf.reduce_max(sample), 0.0)
    summary = {"mean": tf.reduce_mean(values), "std": tf.math.reduce_std(values),
               "saturated": tf.constant(0.0), "dead": tf.constant(0.0),
               "hist_low": low, "hist_high": high,
               "hist": tf.histogram_fixed_width(sample, tf.stack([low, high + 1e-6]),
                                                nbins=HISTOGRAM_BINS)}
    facts = ACTIVATIONS[activation] if activation is not None else None
    if facts is not None and facts.bounds is not None:
        lower, upper = facts.bounds
        saturated = (values < lower + SATURATION_MARGIN) | (values > upper - SATURATION_MARGIN)
        summary["saturated"] = tf.reduce_mean(tf.cast(saturated, tf.float32))
    if dead is not None:
        summary["dead"] = tf.reduce_mean(tf.cast(dead, tf.float32))
    return summary


# A model's measuring function, traced once per model: a cached compiled model
# (cvlib.training.ModelCache) serves many cells.
_MEASURING_FUNCTIONS: "weakref.WeakKeyDictionary[keras.Model, Any]" = weakref.WeakKeyDictionary()


def _measuring_function(model: keras.Model, layers: list[str], activation: str):
    """The tf.function that takes a model's statistics on a probe batch."""
    activations = [name for name in layers if name.endswith("_act")]
    probe = keras.Model(model.input, {
        "outputs": {name: model.get_layer(name).output for name in layers},
        "inputs": {name: model.get_layer(name).input for name in activations}})
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    kinds = [activation if name in activations else None for name in layers]
    # Weakly: the cache's value must not keep its key, the model, alive.
    model_ref = weakref.ref(model)
    del model

    # One graph per model: the forward pass and the reductions run in TensorFlow
    # (tens of millions of values), and only small summaries reach Python. Its Python
    # control flow is static, so AutoGraph's conversion would only slow the trace.
    @tf.function(autograph=False)
    def measure(images, grad_images, grad_labels):
        model = model_ref()  # runs when traced only
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        # stateless_call: BN normalizes with batch statistics, as in training,
        # without updating its moving averages.
        probed, _ = probe.stateless_call(
            [v.value for v in probe.trainable_variables],
            [v.value for v in probe.non_trainable_variables], images, training=True)
        dead = {name: dead_units(model.get_layer(name), probed["inputs"][name])
                for name in activations}
        summaries = [_activation_summary(probed["outputs"][name], kind, dead.get(name))
                     for name, kind in zip(layers, kinds)]
        with tf.GradientTape() as tape:
            tape.watch(trainable)
            logits, _ = model.stateless_call(trainable, non_trainable, grad_images,
                                             training=True)
            batch_loss = loss(grad_labels, logits)
        gradients = tape.gradient(batch_loss, trainable)
        norms = {v.path: tf.norm(g) for v, g in zip(model.trainable_variables, gradients)
                 if g is not None}
        return summaries, norms

    return measure


@dataclass
class StatsRecorder:
    """Measures a model's inside on a probe batch and keeps every figure.

    Args:
        model: The model being trained.
        probe_images: The fixed probe batch (the same images at every step).
        probe_labels: Their labels, for the gradient norms.
        activation: The model's activation name (for saturation and dead units).
        every: Measure at the end of every ``every``-th epoch (and at step 0).
    """

    model: keras.Model
    probe_images: np.ndarray
    probe_labels: np.ndarray
    activation: str
    every: int = 1
    # One dict per (layer, step, statistic): the long table behind the artifacts.
    rows: list[dict[str, Any]] = field(default_factory=list)
    # Steps (epochs) measured so far.
    steps: list[int] = field(default_factory=list)

    def __post_init__(self):
        self._layers = probed_layers(self.model)
        self._kernels = kernel_layers(self.model)
        if self.model not in _MEASURING_FUNCTIONS:
            _MEASURING_FUNCTIONS[self.model] = _measuring_function(
                self.model, self._layers, self.activation)
        self._measure = _MEASURING_FUNCTIONS[self.model]
        self._kernel_paths = {self.model.get_layer(name).kernel.path: name
                              for name in self._kernels}
        self._weights_before: dict[str, np.ndarray] | None = None

    def due(self, step: int, last_step: int) -> bool:
        """Whether statistics are taken at this step (0, every ``every``-th, and the last)."""
        return step == 0 or step % self.every == 0 or step == last_step

    def snapshot_kernels(self) -> None:
        """Copy the kernels before the epoch's last step, for the update ratio."""
        self._weights_before = {name: self.model.get_layer(name).kernel.numpy()
                                for name in self._kernels}

    def measure(self, step: int) -> dict[str, float]:
        """Take every statistic at this step.

        Returns:
            The scalar metrics (``act/<layer>/<stat>``, ``grad/<layer>/norm``,
            ``update_ratio/<layer>``) for this step; histograms go to ``rows``.
        """
        grad_images = self.probe_images[:GRADIENT_BATCH]
        grad_labels = self.probe_labels[:GRADIENT_BATCH]
        summaries, norms = self._measure(self.probe_images, grad_images, grad_labels)
        figures = []  # (layer, statistic, metric key, value)
        for name, summary in zip(self._layers, summaries):
            summary = {key: value.numpy() for key, value in summary.items()}
            figures += [(name, statistic, f"{ACTIVATION_PREFIX}{name}/{statistic}",
                         float(summary[statistic]))
                        for statistic in ACTIVATION_STATISTICS]
            edges = np.linspace(summary["hist_low"], summary["hist_high"], HISTOGRAM_BINS + 1)
            self.rows.extend({"layer": name, "step": step, "statistic": "hist_count",
                              "value": float(count), "bin_low": float(lo), "bin_high": float(hi)}
                             for count, lo, hi in zip(summary["hist"], edges[:-1], edges[1:]))
        figures += [(self._kernel_paths[path], "grad_norm",
                     f"{GRADIENT_PREFIX}{self._kernel_paths[path]}/norm", float(norm))
                    for path, norm in norms.items() if path in self._kernel_paths]
        if self._weights_before is not None:
            for name, before in self._weights_before.items():
                change = self.model.get_layer(name).kernel.numpy() - before
                ratio = np.linalg.norm(change) / max(np.linalg.norm(before), 1e-12)
                figures.append((name, "update_ratio", f"{UPDATE_RATIO_PREFIX}{name}", float(ratio)))
            self._weights_before = None
        self.rows.extend({"layer": layer, "step": step, "statistic": statistic, "value": value}
                         for layer, statistic, _, value in figures)
        self.steps.append(step)
        return {key: value for _, _, key, value in figures}

    def table(self) -> pd.DataFrame:
        """Every figure taken: layer, step, statistic, value (bin edges for histograms)."""
        return pd.DataFrame(self.rows, columns=["layer", "step", "statistic", "value",
                                                "bin_low", "bin_high"])

    def summary(self) -> dict[str, float]:
        """Headline figures of the last step, for the UI's columns: the activation std
        of the first and last ``*_act`` layers, and the worst saturation and dead fraction."""
        if not self.steps:
            return {}
        table = self.table()
        last = table[(table["step"] == self.steps[-1])
                     & table["layer"].str.endswith("_act")].set_index(["statistic", "layer"])
        act_layers = [name for name in self._layers if name.endswith("_act")]
        figures = (last.loc[("std", act_layers[0]), "value"],
                   last.loc[("std", act_layers[-1]), "value"],
                   last.loc["saturated", "value"].max(), last.loc["dead", "value"].max())
        return {key: float(value) for key, value in zip(STATS_SUMMARY, figures)}


class StatsCallback(keras.callbacks.Callback):
    """Forwards fit's events to a StatsRecorder and adds its figures to the epoch's
    logs, so that they are logged in the same call as loss and accuracy. Place it
    before the callback that logs. Step 0 is logged through ``log_metrics``."""

    def __init__(self, recorder: StatsRecorder, log_metrics, initial_step: bool = True):
        super().__init__()
        self.recorder = recorder
        self.log_metrics = log_metrics
        self.initial_step = initial_step  # False when training continues a checkpoint

    def on_train_begin(self, logs=None):
        if self.initial_step:
            self.log_metrics(self.recorder.measure(0), 0)

    def on_train_batch_begin(self, batch, logs=None):
        epoch_ends = batch == self.params["steps"] - 1
        if epoch_ends and self.recorder.due(self._epoch + 1, self.params["epochs"]):
            self.recorder.snapshot_kernels()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if self.recorder.due(epoch + 1, self.params["epochs"]):
            logs.update(self.recorder.measure(epoch + 1))
