"""The Keras callbacks of a cell's fit: they measure and forward, and decide nothing
about tracking. Epoch metrics with timings, the divergence stop, and each gradient
step's own batch figures."""
from __future__ import annotations

import math
import time
from typing import Callable

import keras
import numpy as np
import pandas as pd

from cvlib.tracking.schema import EPOCH_TIME, IMAGES_PER_S

# log_metrics(metrics, step): step 0 is the initialized model, step k the end of epoch k.
LogMetrics = Callable[[dict[str, float], int], None]


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
        metrics[EPOCH_TIME] = now - self._epoch_start
        metrics[IMAGES_PER_S] = self.train_images / train_seconds
        self.log_metrics(metrics, epoch + 1)


class DivergenceStop(keras.callbacks.Callback):
    """Stops training when the loss diverges, and says when and why.

    Diverged: the loss is NaN or infinite (checked after every batch), or the epoch's
    loss exceeds ``factor`` times the initial loss (the CS231n rule of thumb for a
    learning-rate search). The initial loss is the cell's first batch's, computed
    before any update.

    Args:
        factor: How many times the initial loss an epoch's loss may reach.
        initial_loss: The cell's initial loss, when an earlier stage of its training
            measured it (successive halving continues a cell from a checkpoint); None:
            this fit's first batch.
    """

    def __init__(self, factor: float = 3.0, initial_loss: float | None = None):
        super().__init__()
        self.factor = factor
        self.initial_loss = initial_loss
        self.diverged_at: int | None = None
        self.reason: str | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if self.initial_loss is None:
            self.initial_loss = loss
        if not math.isfinite(loss):
            self._stop(f"loss became {loss} in epoch {self._epoch}")

    def on_epoch_end(self, epoch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if self.diverged_at is None and math.isfinite(loss) and self.initial_loss and \
                loss > self.factor * self.initial_loss:
            self._stop(f"epoch {epoch + 1} loss {loss:.4g} exceeds {self.factor:g}x the "
                       f"initial loss {self.initial_loss:.4g}")

    def _stop(self, reason: str) -> None:
        if self.diverged_at is None:
            self.diverged_at, self.reason = self._epoch, reason
        self.model.stop_training = True


class BatchRecord(keras.callbacks.Callback):
    """Records the running loss and accuracy that fit reports after every batch.

    Keras reports means over the epoch so far; :func:`per_batch_figures` turns the
    rows into each batch's own figures.
    """

    def __init__(self):
        super().__init__()
        self.rows: list[tuple[int, float, float]] = []  # (epoch, running loss, running acc)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        self.rows.append((self._epoch, float(logs.get("loss", np.nan)),
                          float(logs.get("accuracy", np.nan))))


def per_batch_figures(rows: list[tuple[int, float, float]], train_images: int,
                      batch_size: int, steps_before: int = 0) -> pd.DataFrame:
    """Each batch's own loss and accuracy, from the running epoch means fit reports.

    Keras's figures after batch k of an epoch are sample-weighted means over the
    epoch's first k batches (N_k images); batch k's own figure is therefore
    (m_k N_k - m_{k-1} N_{k-1}) / n_k. The last batch of an epoch may be smaller.

    Args:
        rows: BatchRecord.rows: (epoch, running loss, running accuracy) per batch.
        train_images: Images per epoch.
        batch_size: Images per full batch.
        steps_before: Steps trained before these rows (a continued halving rung).

    Returns:
        Columns step (from steps_before + 1, across epochs), loss and accuracy.
    """
    table = pd.DataFrame(rows, columns=["epoch", "loss", "accuracy"])
    index = table.groupby("epoch").cumcount().to_numpy()
    seen = np.minimum((index + 1) * batch_size, train_images).astype(np.float64)
    seen_before = np.where(index > 0, np.minimum(index * batch_size, train_images), 0)
    for column in ("loss", "accuracy"):
        total = table[column].to_numpy(np.float64) * seen
        total_before = np.where(index > 0, np.roll(total, 1), 0.0)
        with np.errstate(invalid="ignore"):  # inf - inf of a diverged run stays NaN
            table[column] = (total - total_before) / (seen - seen_before)
    table.insert(0, "step", np.arange(steps_before + 1, steps_before + len(table) + 1))
    return table.drop(columns="epoch")
