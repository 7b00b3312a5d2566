"""Compile and fit one cell. Knows Keras, not MLflow: metrics leave through a
``log_metrics(metrics, step)`` function that the caller supplies."""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import keras
import numpy as np
import pandas as pd

from cvlib.callbacks import BatchRecord, DivergenceStop, EpochMetrics, LogMetrics, per_batch_figures
from cvlib.cells import Cell, Stage
from cvlib.checkpoints import TrainingState, model_file, read_state, write_checkpoint
from cvlib.config import TrainConfig
from cvlib.data import Dataset
from cvlib.feeds import epoch_batches, evaluation_batches
from cvlib.layers import Preprocessing
from cvlib.models import build_model
from cvlib.stats import StatsCallback, StatsRecorder
from cvlib.tracking.schema import DIVERGED, OK, TEST_ACCURACY, TEST_LOSS, VAL_ACCURACY

EVALUATION_BATCH = 1000
# A measurement of the trained model on the cell's data, logged with the final metrics:
# measure(model, dataset) -> {metric: value}. A module-level function, so that it
# reaches worker processes by name.
FinalMeasure = Callable[[keras.Model, Dataset], dict[str, float]]


@dataclass
class CellResult:
    """What one trained cell achieved."""

    # Keras's per-epoch history (loss, accuracy, val_loss, val_accuracy, ...).
    history: dict[str, list[float]]
    # Epochs actually trained.
    epochs: int
    # Loss and accuracy on the test split after the last epoch (None if diverged).
    test_loss: float | None = None
    test_accuracy: float | None = None
    # The statistics' long table (layer, step, statistic, value, bin edges), or None.
    stats: pd.DataFrame | None = None
    # The epoch (from 1) in which training diverged, and why; None if it did not.
    diverged_at: int | None = None
    divergence: str | None = None
    # One row per gradient step: step (from 1), and the loss and accuracy of that
    # step's batch, computed before its update (see per_batch_figures).
    batches: pd.DataFrame | None = None
    # The loss of the cell's first batch before any update: the divergence test's
    # baseline, carried to a later stage (cells.Stage.initial_loss). None: not trained.
    initial_loss: float | None = None
    # The trained model taking raw uint8 images to the 10 class probabilities
    # (servable_model), when the cell's train.save_model asks for it and it did not
    # diverge; None otherwise.
    servable: keras.Model | None = None

    @property
    def outcome(self) -> str:
        """``ok``, or ``diverged`` when training was stopped for a NaN or exploding loss."""
        return OK if self.diverged_at is None else DIVERGED

    @property
    def val_accuracy(self) -> float | None:
        """Validation accuracy after the last epoch (or of the initialized model)."""
        values = self.history.get(VAL_ACCURACY)
        return values[-1] if values else None


def make_optimizer(train: TrainConfig) -> keras.optimizers.Optimizer:
    """The optimizer a train config names (sgd with momentum, or adam)."""
    weight_decay = train.weight_decay or None
    if train.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=train.learning_rate,
                                    momentum=train.momentum, weight_decay=weight_decay)
    return keras.optimizers.Adam(learning_rate=train.learning_rate, weight_decay=weight_decay)


JIT_COMPILE = {"auto": "auto", "xla": True, "graph": False}


def compile_model(model: keras.Model, train: TrainConfig) -> keras.Model:
    """Compile for 10-way classification from logits, with accuracy, in the train
    config's compile mode."""
    model.compile(optimizer=make_optimizer(train),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=JIT_COMPILE[train.compile_mode])
    _build_training_state(model)
    return model


def _build_training_state(model: keras.Model) -> None:
    """Create the optimizer's and the compiled metrics' variables now.

    Without a distribution strategy, Keras creates them inside the first trace of the
    train step, and a tf.function that creates variables is traced twice (once
    creating, once checking that it creates none): about 0.7 s more for every new
    graph on 2 CPU cores. Built beforehand, the step is traced once; the figures do not change.
    """
    model.optimizer.build(model.trainable_variables)
    images = np.zeros((1, *model.input_shape[1:]), "float32")  # one blank example
    model.compute_metrics(images, np.zeros((1,), "int64"), model(images, training=False))
    model.reset_metrics()


class ModelCache:
    """Compiled models kept by graph, reset to each new cell's initial state.

    Keras traces a new model's train and test functions (and cvlib its statistics'
    function) on first use: about 2 s of a 6 s cell on 2 CPU cores. Cells that differ only in
    initializer, learning rate, seed or data share one graph, so a later such cell
    takes the cached model with the weights of its own freshly built model and a
    reset optimizer, and trains exactly as a fresh model would (same figures).

    Args:
        capacity: Graphs kept, least recently used dropped first (0: no reuse).
    """

    def __init__(self, capacity: int = 8):
        self.capacity = capacity
        self._models: collections.OrderedDict[tuple, keras.Model] = collections.OrderedDict()

    def clear(self) -> None:
        """Drop every cached model."""
        self._models.clear()

    @contextlib.contextmanager
    def compiled_model(self, cell: Cell, checkpoint: str | None = None) -> Iterator[keras.Model]:
        """A compiled model in the cell's initial state (weights from the current
        random seed, optimizer at step 0 with the cell's learning rate), or in the
        state a checkpoint saved; kept for later cells when the block raises nothing.

        Args:
            cell: The cell to train.
            checkpoint: A ``.keras`` file of this cell's model (checkpoints.model_file):
                its weights and optimizer state are loaded.

        Yields:
            A cached model of the same graph, reset, or else a new one.
        """
        fresh = build_model(**dataclasses.asdict(cell.model))
        key = cell.graph_key
        model = self._models.pop(key, None)  # out of the cache while in use
        if model is None:
            model = compile_model(fresh, cell.train)
        else:
            model.set_weights(fresh.get_weights())
            for variable in model.optimizer.variables:  # step count, moments
                variable.assign(np.zeros(variable.shape, variable.dtype))
            model.optimizer.learning_rate = cell.train.learning_rate
        if checkpoint:  # the optimizer is built, so its saved state is loaded too
            model.load_weights(checkpoint)
        yield model
        # Only after a cell that raised nothing: a model left mid-failure is not reused.
        if self.capacity:
            self._models[key] = model
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)


# The process's cache: a worker process trains many cells, and so do tests.
MODEL_CACHE = ModelCache()


def servable_model(cell: Cell, model: keras.Model,
                   statistics: dict[str, np.ndarray]) -> keras.Model:
    """A trained model with its preprocessing before it and a softmax after it: raw
    uint8 images in, the 10 class probabilities out.

    The network is built anew from the cell's settings and given the trained weights:
    uncompiled, so that saving it writes no optimizer state (which doubled the file),
    and apart from the compiled model that later cells reuse.

    Args:
        cell: The cell whose model it is.
        model: Its trained model (images preprocessed as cvlib.data does, logits out).
        statistics: The preprocessing's training-split statistics (Dataset.statistics).

    Returns:
        A new functional model with the trained weights.
    """
    network = build_model(**dataclasses.asdict(cell.model))
    network.set_weights(model.get_weights())
    images = keras.Input(network.input_shape[1:], dtype="uint8", name="images")
    preprocessed = Preprocessing(statistics.get("mean"), statistics.get("std"),
                                 name="preprocessing")(images)
    probabilities = keras.layers.Softmax(name="probabilities", dtype="float32")(
        network(preprocessed))
    return keras.Model(images, probabilities, name=f"{network.name}_servable")


def _evaluation_batch(train: TrainConfig) -> int:
    """Evaluation runs in inference mode, where the batch size changes no result:
    larger batches mean fewer steps and faster kernels."""
    return max(train.batch_size, EVALUATION_BATCH)


def train_cell(cell: Cell, dataset: Dataset, log_metrics: LogMetrics,
               stage: Stage | None = None, final_measure: FinalMeasure | None = None,
               models: ModelCache = MODEL_CACHE) -> CellResult:
    """Build, compile and fit one cell, then evaluate it on the test split.

    Args:
        cell: The cell's settings and seed.
        dataset: Preprocessed splits.
        log_metrics: Receives per-epoch metrics (step = epoch) and, at the end,
            ``test_loss`` and ``test_accuracy``. With ``epochs: 0`` it receives the
            initialized model's ``val_loss`` and ``val_accuracy`` at step 0. A resumed
            stage first receives again every call its checkpoint recorded.
        stage: Train only from ``stage.start_epoch`` (continuing the model and
            optimizer saved in ``stage.checkpoint``) to ``stage.end_epoch``, saving the
            checkpoint at the end or every ``stage.checkpoint_every`` epochs; default: all
            of ``cell.train.epochs`` from scratch.
        final_measure: Measures the trained model once more (after the test split and
            the checkpoint); its figures join the final metrics.
        models: Where compiled models are reused from (default: the process's cache).

    Returns:
        The CellResult (of the whole cell, for a resumed stage).

    Raises:
        CorruptCheckpoint: the stage's checkpoint is cut short or altered.
    """
    stage = stage or Stage(0, cell.train.epochs)
    keras.utils.set_random_seed(cell.seed)
    continued = bool(stage.start_epoch and stage.checkpoint)
    restored = read_state(stage.checkpoint) if continued and stage.resumed else None
    with contextlib.ExitStack() as stack:
        weights = stack.enter_context(model_file(stage.checkpoint)) if continued else None
        model = stack.enter_context(models.compiled_model(cell, weights))
        return _fit_and_test(model, cell, dataset, log_metrics, stage, final_measure,
                             restored or TrainingState(stage.start_epoch))


class EpochCheckpoint(keras.callbacks.Callback):
    """Keeps the fit's history and saves the cell's checkpoint after every ``every``-th
    epoch and the last, but not after an epoch that diverged (a resumed cell then trains
    that epoch again, and diverges in it as it did). Place it after every callback that
    logs or measures, so that the epoch's figures are in the state it saves.

    Args:
        path: The checkpoint file.
        every: Epochs between saves (0: none, the history only).
        divergence: The fit's divergence test.
        state: The training state after a number of epochs, given the history so far.
        history: The history of the epochs before the fit (a resumed cell's).
    """

    def __init__(self, path: str | None, every: int, divergence: DivergenceStop,
                 state: Callable[[int, dict[str, list[float]]], TrainingState],
                 history: dict[str, list[float]]):
        super().__init__()
        self.path, self.every, self.divergence, self.state = path, every, divergence, state
        self.history = {key: list(values) for key, values in history.items()}
        self.saved_at: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        done = epoch + 1
        due = self.every and (done % self.every == 0 or done == self.params["epochs"])
        if self.path and due and self.divergence.diverged_at is None:
            write_checkpoint(self.path, self.model, self.state(done, self.history))
            self.saved_at = done


def _fit_and_test(model: keras.Model, cell: Cell, dataset: Dataset, log_metrics: LogMetrics,
                  stage: Stage, final_measure: FinalMeasure | None,
                  restored: TrainingState) -> CellResult:
    """train_cell's work on its compiled model, from the restored figures (none but the
    epoch unless the stage is resumed)."""
    logged: list[list] = []

    def log_and_keep(metrics: dict[str, float], step: int) -> None:
        logged.append([step, metrics])
        log_metrics(metrics, step)

    for step, metrics in restored.logged:
        log_and_keep(metrics, step)
    evaluation_batch = _evaluation_batch(cell.train)
    validation = evaluation_batches(dataset.x_val, dataset.y_val, evaluation_batch)
    callbacks: list[keras.callbacks.Callback] = []
    recorder = None
    if cell.train.stats_every:
        probe = slice(0, cell.train.stats_probe)  # the val split's order is already shuffled
        recorder = StatsRecorder(model, dataset.x_val[probe], dataset.y_val[probe],
                                 cell.model.activation, every=cell.train.stats_every,
                                 rows=list(restored.stats_rows),
                                 steps=list(restored.stats_steps))
        # Before EpochMetrics: the statistics join the epoch's logs and its one log call.
        callbacks.append(StatsCallback(recorder, log_and_keep, stage.start_epoch == 0))
    divergence = DivergenceStop(initial_loss=stage.initial_loss)
    batches = BatchRecord()
    batches.rows = [tuple(row) for row in restored.batch_rows]

    def state(epochs: int, history: dict[str, list[float]]) -> TrainingState:
        return TrainingState(epochs, divergence.initial_loss, history, logged,
                             recorder.rows if recorder else [],
                             recorder.steps if recorder else [],
                             [list(row) for row in batches.rows])

    checkpoint = EpochCheckpoint(stage.checkpoint, stage.checkpoint_every, divergence, state,
                                 restored.history)
    steps_per_epoch = math.ceil(len(dataset.x_train) / cell.train.batch_size)
    trained = 0
    if stage.end_epoch > stage.start_epoch:
        trained = len(model.fit(
            epoch_batches(dataset.x_train, dataset.y_train, cell.train.batch_size, cell.seed,
                          stage.start_epoch, stage.end_epoch),
            steps_per_epoch=steps_per_epoch,
            validation_data=validation, initial_epoch=stage.start_epoch,
            epochs=stage.end_epoch, shuffle=False, verbose=0,
            callbacks=[divergence, batches, *callbacks,
                       EpochMetrics(log_and_keep, len(dataset.x_train)), checkpoint]
        ).history.get("loss", []))
        history = checkpoint.history
    elif stage.end_epoch == 0:
        initial = model.evaluate(validation, verbose=0, return_dict=True)
        history = {f"val_{key}": [float(value)] for key, value in initial.items()}
        step_zero = {key: values[0] for key, values in history.items()}
        log_and_keep({**step_zero, **(recorder.measure(0) if recorder else {})}, 0)
    else:  # resumed after its last epoch: only the test is left
        history = checkpoint.history
    first_epoch = 0 if stage.resumed else stage.start_epoch  # of the figures held
    result = CellResult(history=history, epochs=stage.start_epoch + trained,
                        stats=recorder.table() if recorder else None,
                        diverged_at=divergence.diverged_at, divergence=divergence.reason,
                        initial_loss=divergence.initial_loss,
                        batches=per_batch_figures(
                            batches.rows, len(dataset.x_train), cell.train.batch_size,
                            first_epoch * steps_per_epoch))
    final = recorder.summary() if recorder else {}
    if result.diverged_at is None:  # a diverged model's test figures say nothing
        test = model.evaluate(evaluation_batches(dataset.x_test, dataset.y_test,
                                                 evaluation_batch), verbose=0, return_dict=True)
        result.test_loss, result.test_accuracy = float(test["loss"]), float(test["accuracy"])
        final.update({TEST_LOSS: result.test_loss, TEST_ACCURACY: result.test_accuracy})
        if stage.checkpoint and not stage.checkpoint_every:
            write_checkpoint(stage.checkpoint, model, state(result.epochs, history))
        if cell.train.save_model == "final":
            result.servable = servable_model(cell, model, dataset.statistics)
    if final_measure is not None:
        final.update(final_measure(model, dataset))
    if final:
        log_and_keep(final, result.epochs)
    return result
