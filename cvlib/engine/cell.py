"""The trainer side of the engine: train one task and report what happens as events.
Runs in a worker process or in the command's own; knows Keras, not MLflow."""
from __future__ import annotations

import os
import socket
import traceback

from cvlib.data import DataCache
from cvlib.engine.events import (
    CellFailed,
    CellFinished,
    CellStarted,
    Emit,
    FiguresReady,
    MetricsLogged,
    SeriesLogged,
    StageResult,
    Task,
)
from cvlib.errors import StoreUnavailable
from cvlib.tracking.schema import ACCURACY, BATCH_PREFIX, LOSS


def execute_cell(task: Task, data: DataCache, emit: Emit, trained_on: str = "") -> None:
    """Train one task and report it as events; never raises for the cell.

    Args:
        task: The cell, and the stage of it to train.
        data: The process's data cache.
        emit: Receives the events. A stage that continues a checkpoint reports to the
            run its first stage opened, so it sends no CellStarted.
        trained_on: Where it trains, for its run (default: this host and process).
    """
    import keras

    from cvlib.training import train_cell

    key = task.key
    try:
        dataset = data.get(task.cell.data)
        if task.stage is None or task.stage.start_epoch == 0:
            emit(CellStarted(key, dataset.params))
        result = train_cell(task.cell, dataset,
                            lambda metrics, step: emit(MetricsLogged(key, metrics, step)),
                            stage=task.stage, final_measure=task.final_measure)
        if result.batches is not None and len(result.batches):
            steps = result.batches["step"].tolist()
            emit(SeriesLogged(key, {f"{BATCH_PREFIX}{name}":
                                    list(zip(steps, result.batches[name].tolist()))
                                    for name in (LOSS, ACCURACY)}))
        emit(FiguresReady(key, result.history, result.stats))
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
