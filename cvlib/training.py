"""Compile and fit one cell. Knows Keras, not MLflow: metrics leave through a
``log_metrics(metrics, step)`` function that the caller supplies."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import keras
import pandas as pd

from cvlib.config import Cell, TrainConfig
from cvlib.data import Dataset
from cvlib.models import build_model
from cvlib.stats import StatsCallback, StatsRecorder

# log_metrics(metrics, step): step 0 is the initialized model, step k the end of epoch k.
LogMetrics = Callable[[dict[str, float], int], None]


@dataclass
class CellResult:
    """What one trained cell achieved."""

    # Keras's per-epoch history (loss, accuracy, val_loss, val_accuracy, ...).
    history: dict[str, list[float]]
    # Loss and accuracy on the test split, after the last epoch.
    test_loss: float
    test_accuracy: float
    # Epochs actually trained.
    epochs: int
    # The statistics' long table (layer, step, statistic, value, bin edges), or None.
    stats: pd.DataFrame | None = None

    @property
    def val_accuracy(self) -> float | None:
        """Validation accuracy after the last epoch (or of the initialized model)."""
        values = self.history.get("val_accuracy")
        return values[-1] if values else None


class EpochMetrics(keras.callbacks.Callback):
    """Adds epoch time and training throughput to each epoch's metrics and
    forwards them to ``log_metrics``, with the epoch number (from 1) as step."""

    def __init__(self, log_metrics: LogMetrics, train_images: int):
        super().__init__()
        self.log_metrics = log_metrics
        self.train_images = train_images

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._train_end = None

    def on_test_begin(self, logs=None):
        # fit() validates after the training steps: their end is this moment.
        self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        train_seconds = (self._train_end or now) - self._epoch_start
        metrics = {key: float(value) for key, value in (logs or {}).items()}
        metrics["epoch_time_s"] = now - self._epoch_start
        metrics["images_per_s"] = self.train_images / train_seconds
        self.log_metrics(metrics, epoch + 1)


def make_optimizer(train: TrainConfig) -> keras.optimizers.Optimizer:
    """The optimizer a train config names (sgd with momentum, or adam)."""
    weight_decay = train.weight_decay or None
    if train.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=train.learning_rate,
                                    momentum=train.momentum, weight_decay=weight_decay)
    return keras.optimizers.Adam(learning_rate=train.learning_rate, weight_decay=weight_decay)


def compile_model(model: keras.Model, train: TrainConfig) -> keras.Model:
    """Compile for 10-way classification from logits, with accuracy."""
    model.compile(optimizer=make_optimizer(train),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def train_cell(cell: Cell, dataset: Dataset, log_metrics: LogMetrics,
               callbacks: Sequence[keras.callbacks.Callback] = ()) -> CellResult:
    """Build, compile and fit one cell, then evaluate it on the test split.

    Args:
        cell: The cell's settings and seed.
        dataset: Preprocessed splits.
        log_metrics: Receives per-epoch metrics (step = epoch) and, at the end,
            ``test_loss`` and ``test_accuracy``. With ``epochs: 0`` it receives the
            initialized model's ``val_loss`` and ``val_accuracy`` at step 0.
        callbacks: Further Keras callbacks for fit.

    Returns:
        The CellResult.
    """
    keras.utils.set_random_seed(cell.seed)
    model = compile_model(build_model(**dataclasses.asdict(cell.model)), cell.train)
    validation = (dataset.x_val, dataset.y_val)
    recorder = None
    if cell.train.stats_every:
        probe = slice(0, cell.train.stats_probe)  # the val split's order is already shuffled
        recorder = StatsRecorder(model, dataset.x_val[probe], dataset.y_val[probe],
                                 cell.model.activation, every=cell.train.stats_every)
        # Before EpochMetrics: the statistics join the epoch's logs and its one log call.
        callbacks = [StatsCallback(recorder, log_metrics), *callbacks]
    if cell.train.epochs > 0:
        history = model.fit(
            dataset.x_train, dataset.y_train, validation_data=validation,
            epochs=cell.train.epochs, batch_size=cell.train.batch_size, verbose=0,
            callbacks=[*callbacks, EpochMetrics(log_metrics, len(dataset.x_train))]).history
    else:
        initial = model.evaluate(*validation, batch_size=cell.train.batch_size,
                                 verbose=0, return_dict=True)
        history = {f"val_{key}": [float(value)] for key, value in initial.items()}
        step_zero = {key: values[0] for key, values in history.items()}
        log_metrics({**step_zero, **(recorder.measure(0) if recorder else {})}, 0)
    test = model.evaluate(dataset.x_test, dataset.y_test, batch_size=cell.train.batch_size,
                          verbose=0, return_dict=True)
    result = CellResult(history=history, test_loss=float(test["loss"]),
                        test_accuracy=float(test["accuracy"]), epochs=len(history.get("loss", [])),
                        stats=recorder.table() if recorder else None)
    log_metrics({"test_loss": result.test_loss, "test_accuracy": result.test_accuracy,
                 **(recorder.summary() if recorder else {})}, result.epochs)
    return result
