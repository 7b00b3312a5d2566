"""Run a grid: every cell in one process, each in its own MLflow child run.

A failure in one cell is recorded in its run and never stops the grid.
"""
from __future__ import annotations

import gc
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

from cvlib.config import Cell, Grid
from cvlib.data import DataCache


@dataclass
class GridSummary:
    """How a grid run went."""

    # Run names of the cells that finished, and of those that raised.
    finished: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    # MLflow ids of the experiment and the grid's parent run.
    experiment_id: str = ""
    parent_run_id: str = ""


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def format_cell(cell: Cell) -> str:
    """A cell's varied settings, for progress lines and --dry-run."""
    settings = cell.settings()
    shown = [f"{key.split('.', 1)[1]}={settings[key]}" for key in cell.varied]
    return " ".join(shown + [f"seed={cell.seed}"])


def run_grid(grid: Grid, tracking_uri: str, experiment: str | None = None,
             data_dir: str | None = None, echo: Callable[[str], None] = print) -> GridSummary:
    """Train every cell of a grid and log each to MLflow.

    Args:
        grid: The validated grid.
        tracking_uri: The MLflow store.
        experiment: Experiment name; defaults to the grid's name.
        data_dir: CIFAR-10 folder (else $CVLIB_DATA_DIR, else Keras's download).
        echo: Receives one progress line per cell.

    Returns:
        The GridSummary.
    """
    # Imported here so that config errors and --dry-run never wait for TensorFlow.
    import keras

    from cvlib.plots import write_cell_artifacts
    from cvlib.tracking import Tracker
    from cvlib.training import train_cell

    cells = grid.cells()
    data = DataCache(data_dir)
    data.get(cells[0].data)  # a data error ends the run here, before anything is logged
    tracker = Tracker(tracking_uri)
    summary = GridSummary()
    started = time.perf_counter()
    with tracker.grid_run(grid, experiment) as (experiment_id, parent_run_id):
        summary.experiment_id, summary.parent_run_id = experiment_id, parent_run_id
        for index, cell in enumerate(cells, start=1):
            cell_started = time.perf_counter()
            try:
                dataset = data.get(cell.data)
                with tracker.cell_run(experiment_id, parent_run_id, cell, grid.name,
                                      params=dataset.params) as run:
                    result = train_cell(cell, dataset, run.log_metrics)
                    with tempfile.TemporaryDirectory() as folder:
                        write_cell_artifacts(result.history, result.stats, folder)
                        run.log_artifacts(folder)
                outcome = (f"val_acc={result.val_accuracy:.3f} "
                           f"test_acc={result.test_accuracy:.3f}")
                summary.finished.append(cell.name)
            except Exception as error:  # one bad cell must not end the grid
                outcome = f"FAILED {type(error).__name__}: {error}"
                summary.failed.append(cell.name)
            finally:
                keras.backend.clear_session(free_memory=False)
                gc.collect()
            elapsed = time.perf_counter() - started
            remaining = elapsed / index * (len(cells) - index)
            echo(f"[{index}/{len(cells)}] {cell.name}  {format_cell(cell)}  {outcome}  "
                 f"({time.perf_counter() - cell_started:.1f} s; elapsed {_clock(elapsed)}, "
                 f"left ~{_clock(remaining)})")
    return summary
