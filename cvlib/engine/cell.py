"""The trainer side of the engine: train one task and report what happens as events.
Runs in a worker process, a Ray actor or the command's own process; knows Keras, not
MLflow."""
from __future__ import annotations

import concurrent.futures
import functools
import os
import queue
import socket
import traceback
from typing import Iterator

from cvlib.data import DataCache
from cvlib.engine.events import (
    ENDINGS,
    CellFailed,
    CellFinished,
    CellStarted,
    Emit,
    Event,
    FiguresReady,
    Heartbeat,
    MetricsLogged,
    ModelSaved,
    SeriesLogged,
    StageResult,
    Task,
    TaskTaken,
)
from cvlib.engine.provenance import cell_environment
from cvlib.errors import StoreUnavailable
from cvlib.tracking.schema import ACCURACY, BATCH_PREFIX, LOSS

# A trainer whose cell sent nothing for this long (a long epoch) sends a Heartbeat, far
# within the 30 minutes after which a command on another host judges a silent run dead.
HEARTBEAT_SECONDS = 60.0


def execute_cell(task: Task, data: DataCache, emit: Emit, trained_on: str = "") -> None:
    """Train one task and report it as events; never raises for the cell.

    Args:
        task: The cell, and the stage of it to train.
        data: The process's data cache.
        emit: Receives the events. A stage that continues a checkpoint reports to the
            run its first stage opened, so it sends no CellStarted; but a resumed cell
            (cells.Stage.resumed) does, for the recorder to open its run again.
        trained_on: Where it trains, for its run (default: this host and process).
    """
    import keras

    from cvlib.training import train_cell

    key = task.key
    try:
        dataset = data.get(task.cell.data)
        if task.stage is None or task.stage.start_epoch == 0 or task.stage.resumed:
            emit(CellStarted(key, dataset.params, cell_environment(dataset)))
        result = train_cell(task.cell, dataset,
                            lambda metrics, step: emit(MetricsLogged(key, metrics, step)),
                            stage=task.stage, final_measure=task.final_measure)
        if result.batches is not None and len(result.batches):
            steps = result.batches["step"].tolist()
            emit(SeriesLogged(key, {f"{BATCH_PREFIX}{name}":
                                    list(zip(steps, result.batches[name].tolist()))
                                    for name in (LOSS, ACCURACY)}))
        emit(FiguresReady(key, result.history, result.stats))
        if result.servable is not None:
            from cvlib.tracking.models import model_files  # MLflow, once a cell has a model

            emit(ModelSaved(key, model_files(result.servable, dataset.examples)))
        emit(CellFinished(key, StageResult(
            outcome=result.outcome, epochs=result.epochs, val_accuracy=result.val_accuracy,
            test_accuracy=result.test_accuracy, diverged_at=result.diverged_at,
            divergence=result.divergence, initial_loss=result.initial_loss,
            trained_on=trained_on or f"{socket.gethostname()} pid {os.getpid()}")))
    except StoreUnavailable:  # raised by the recorder of in-process training: ends the grid
        raise
    except Exception as error:  # one bad cell must not end the grid
        emit(CellFailed(key, f"{type(error).__name__}: {error}", traceback.format_exc()))
    finally:
        # Python's own collector frees the old model's cycles; forcing it here cost
        # 0.45 s a cell (docs/design.md; benchmarks/overhead.py checks that memory stays flat).
        keras.backend.clear_session(free_memory=False)


@functools.cache
def _training_thread() -> concurrent.futures.ThreadPoolExecutor:
    """The thread that trains every task of this process: TensorFlow's and Keras's state
    of a thread is built with its first cell, which a new thread per task paid on every
    cell (a tiny cell took 0.83x the time in one thread: benchmarks/process_machinery.py)."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="cell")


def trained_events(task: Task, data: DataCache, trained_on: str = "",
                   heartbeat_seconds: float = HEARTBEAT_SECONDS) -> Iterator[TaskTaken | Event]:
    """Train a task in the process's training thread and yield what happens, as it
    happens: what a worker process or a Ray actor sends back, one mechanism for both.

    Args:
        task: The cell, and the stage of it to train.
        data: The process's data cache.
        trained_on: Where it trains, for its run (default: this host and process).
        heartbeat_seconds: Silence after which a Heartbeat is yielded.

    Yields:
        TaskTaken first, then the task's events (execute_cell's), with a Heartbeat
        whenever none came for ``heartbeat_seconds``; the ending event last.
    """
    yield TaskTaken(task.key)
    events: queue.SimpleQueue = queue.SimpleQueue()
    training = _training_thread().submit(execute_cell, task, data, events.put, trained_on)
    while True:
        try:
            event = events.get(timeout=heartbeat_seconds)
        except queue.Empty:
            yield Heartbeat(task.key)
            continue
        if isinstance(event, ENDINGS):
            training.result()  # the cell's clean-up done
            yield event
            return
        yield event
