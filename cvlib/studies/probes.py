"""Measurements that `cvlib claims` takes of one cell's model once it is trained (or
initialized, with ``epochs: 0``): the final measures of :func:`cvlib.training.train_cell`.

Each takes the Keras model and its dataset and returns flat named figures, which join
the cell's final metrics; the studies read them back from the runs. They import Keras
when called: the studies that name them run in a process that may never train.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

    from cvlib.data import Dataset

# Validation images on which gradients and local derivatives are measured.
PROBE_IMAGES = 500
# The zig-zag figure: single-example SGD steps on the logits layer, its step size, and
# the two weights of logits unit 0 whose path is recorded (inputs 0 and 1).
ZIGZAG_STEPS = 40
ZIGZAG_LEARNING_RATE = 0.05
# The activation timing: rounds (each times every function once, in rotated order)
# and forward+backward calls per function and round.
TIMING_ROUNDS = 15
TIMING_CALLS = 5
TIMED_ACTIVATIONS = ("relu", "tanh", "sigmoid")


def zigzag_key(weight: int, step: int) -> str:
    """The metric holding weight ``weight`` (0 or 1) of logits unit 0 after ``step`` updates."""
    return f"zigzag/w{weight}/step{step:03d}"


def _logits_inputs(model: keras.Model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The logits layer's inputs (the last activation's outputs) and its outputs."""
    import keras

    logits_layer = model.get_layer("logits")
    probe = keras.Model(model.input, [logits_layer.input, logits_layer.output])
    inputs, logits = probe.predict(images, batch_size=250, verbose=0)
    return inputs.astype(np.float64), logits.astype(np.float64)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def gradient_signs(model: keras.Model, dataset: Dataset) -> dict[str, float]:
    """How often a logits unit's per-example weight gradient has one sign, and the path
    of two of its weights over the first single-example SGD updates.

    The logits layer follows the network's last activation: the gradient on unit j's
    weight i for one image is ``x_i * delta_j``, so when every input x_i is positive
    (sigmoid), all of unit j's weights move the same way at each step.

    Args:
        model: The model (at initialization, in the claims study).
        dataset: Its splits; the first PROBE_IMAGES validation images measure the
            signs, the first ZIGZAG_STEPS training images make the updates.

    Returns:
        ``sign/single_sign_fraction``: of the (image, logits unit) pairs with a nonzero
        gradient, those whose weight gradient has a single sign;
        ``sign/inputs_positive_fraction``: the fraction of positive logits inputs;
        ``zigzag/same_direction_fraction``: of the updates, those that move weights 0
        and 1 of unit 0 the same way; and the path, ``zigzag_key(w, step)``.
    """
    inputs, logits = _logits_inputs(model, dataset.x_val[:PROBE_IMAGES])
    labels = dataset.y_val[:PROBE_IMAGES]
    delta = _softmax(logits)
    delta[np.arange(len(labels)), labels] -= 1.0  # d(cross-entropy)/d(logits)
    gradient = inputs[:, :, None] * delta[:, None, :]  # image, input, unit
    nonzero = np.abs(gradient).max(axis=1) > 0
    single_sign = ((gradient >= 0).all(axis=1) | (gradient <= 0).all(axis=1)) & nonzero
    figures = {"sign/single_sign_fraction": float(single_sign.sum() / max(nonzero.sum(), 1)),
               "sign/inputs_positive_fraction": float((inputs > 0).mean())}

    # Single-example SGD on the logits layer over the initialized network's features:
    # the lecture's picture of one unit's weights, free of the other layers' changes.
    features, _ = _logits_inputs(model, dataset.x_train[:ZIGZAG_STEPS])
    kernel = np.asarray(model.get_layer("logits").kernel, dtype=np.float64).copy()
    bias = np.asarray(model.get_layer("logits").bias, dtype=np.float64).copy()
    path = [kernel[:2, 0].copy()]
    for x, label in zip(features, dataset.y_train[:ZIGZAG_STEPS]):
        step_delta = _softmax((x @ kernel + bias)[None])[0]
        step_delta[label] -= 1.0
        kernel -= ZIGZAG_LEARNING_RATE * np.outer(x, step_delta)
        bias -= ZIGZAG_LEARNING_RATE * step_delta
        path.append(kernel[:2, 0].copy())
    moves = np.diff(np.array(path), axis=0)
    moved = (moves != 0).any(axis=1)
    same = (np.sign(moves[:, 0]) == np.sign(moves[:, 1])) & moved
    figures["zigzag/same_direction_fraction"] = float(same.sum() / max(moved.sum(), 1))
    for step, weights in enumerate(path):
        figures[zigzag_key(0, step)] = float(weights[0])
        figures[zigzag_key(1, step)] = float(weights[1])
    return figures


def dead_units(model: keras.Model, dataset: Dataset) -> dict[str, float]:
    """The units through which no gradient passes for any probe image
    (:func:`cvlib.stats.dead_units`, the definition the ``dead`` statistic uses too).

    Args:
        model: The trained model.
        dataset: Its splits; the first PROBE_IMAGES validation images are the probe.

    Returns:
        ``dead/fraction`` over every unit of every ``*_act`` layer, ``dead/<layer>``
        per layer, and ``dead/negative_fraction``: the units whose input is at most 0
        on every probe image (where a ReLU unit would be dead), alive or not.
    """
    import keras
    import tensorflow as tf

    from cvlib.stats import dead_units as dead_mask

    layers = [layer for layer in model.layers if layer.name.endswith("_act")]
    probe = keras.Model(model.input, [layer.input for layer in layers])
    inputs = probe.predict(dataset.x_val[:PROBE_IMAGES], batch_size=250, verbose=0)
    figures, dead_total, negative_total, units_total = {}, 0, 0, 0
    for layer, layer_inputs in zip(layers, inputs):
        dead = dead_mask(layer, tf.constant(layer_inputs)).numpy()
        units = len(dead)
        largest_input = layer_inputs.reshape(-1, units, layer_inputs.shape[-1] // units).max(
            axis=(0, 2))
        figures[f"dead/{layer.name}"] = float(dead.mean())
        dead_total += int(dead.sum())
        negative_total += int((largest_input <= 0).sum())
        units_total += units
    figures["dead/fraction"] = dead_total / units_total
    figures["dead/negative_fraction"] = negative_total / units_total
    return figures


def parameter_counts(model: keras.Model, dataset: Dataset) -> dict[str, float]:
    """``params/<layer>`` for every layer with weights, and ``params/total``."""
    counts = {f"params/{layer.name}": float(layer.count_params())
              for layer in model.layers if layer.count_params()}
    return {**counts, "params/total": float(model.count_params())}


def activation_timing(model: keras.Model, dataset: Dataset) -> dict[str, float]:
    """Forward+backward time of sigmoid, tanh and ReLU alone, on tensors of this
    model's activation shapes (a training batch of each ``*_act`` layer's input).

    The functions take turns (rotated each round), so that a load that comes and goes
    on the machine falls on all of them; the figures are medians over rounds.

    Returns:
        ``act_time/<function>_ms`` (one forward+backward over every layer's shape) and
        ``act_time/<function>_over_relu`` (the median of the rounds' ratios).
    """
    import keras
    import tensorflow as tf

    del dataset  # the shapes are the model's; the values do not change the time
    generator = np.random.default_rng(0)
    shapes = [(128, *layer.input.shape[1:]) for layer in model.layers
              if layer.name.endswith("_act")]
    tensors = [tf.constant(generator.standard_normal(shape, dtype=np.float32))
               for shape in shapes]
    functions = {name: keras.activations.get(name) for name in TIMED_ACTIVATIONS}

    def timed(function):
        @tf.function
        def forward_backward(values):
            with tf.GradientTape() as tape:
                tape.watch(values)
                total = tf.add_n([tf.reduce_sum(function(v)) for v in values])
            return tape.gradient(total, values)
        forward_backward(tensors)  # trace once, outside the timing
        return forward_backward

    compiled = {name: timed(function) for name, function in functions.items()}
    seconds: dict[str, list[float]] = {name: [] for name in TIMED_ACTIVATIONS}
    for round_index in range(TIMING_ROUNDS):
        order = TIMED_ACTIVATIONS[round_index % 3:] + TIMED_ACTIVATIONS[:round_index % 3]
        for name in order:
            start = time.perf_counter()
            for _ in range(TIMING_CALLS):
                gradients = compiled[name](tensors)
            _ = [g.numpy() for g in gradients[:1]]  # wait for the last call
            seconds[name].append((time.perf_counter() - start) / TIMING_CALLS)
    relu = np.array(seconds["relu"])
    figures = {f"act_time/{name}_ms": float(np.median(values) * 1000)
               for name, values in seconds.items()}
    figures.update({f"act_time/{name}_over_relu": float(np.median(np.array(values) / relu))
                    for name, values in seconds.items() if name != "relu"})
    return figures
