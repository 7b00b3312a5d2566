"""Run a grid: plan what is left, train each cell, record everything in MLflow.

The trainer side (:func:`execute_cell`, in this process or in worker processes)
knows Keras and reports events; the recorder side (:class:`GridRecorder`, always in
this process) turns them into MLflow runs and progress lines. A failure in one cell
is recorded in its run and never stops the grid; SIGINT and SIGTERM end the open
runs as KILLED before the process exits.
"""
from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from cvlib.config import Cell, Grid
from cvlib.data import DataCache
from cvlib.grid_processes import GridProcesses, shared_processes
from cvlib.planning import DEFAULT_STALE_AFTER, Plan, Stage, in_graph_order, plan
from cvlib.plot_writer import PlotWriter
from cvlib.progress import Progress

# emit(event, key, *payload): "started" (params), "metrics" (metrics, step),
# "series" (metric key -> [(step, value)], logged at once), "figures" (Keras's
# history and the statistics' table, for the artifacts), "finished" (summary dict),
# "failed" (message, traceback).
Emit = Callable[..., None]


class GridInterrupted(BaseException):
    """SIGINT or SIGTERM arrived; a BaseException so that no cell's handler eats it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class _StoreWrites:
    """The store writes in progress, and a signal that arrived during one."""

    depth: int = 0
    pending_signal: int | None = None


_STORE_WRITES = _StoreWrites()


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into GridInterrupted in the main thread, at once or,
    during a :func:`store_write`, at its end."""
    def handler(signum, frame):
        if _STORE_WRITES.depth:
            _STORE_WRITES.pending_signal = signum
        else:
            raise GridInterrupted(signum)

    previous = {signum: signal.signal(signum, handler)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def store_write() -> Iterator[None]:
    """A write to the store that SIGINT and SIGTERM wait for: raised inside an
    SQLite transaction, GridInterrupted left the store locked, and marking the
    open runs KILLED then waited out SQLite's lock timeout."""
    _STORE_WRITES.depth += 1
    try:
        yield
    finally:
        _STORE_WRITES.depth -= 1
        if not _STORE_WRITES.depth and _STORE_WRITES.pending_signal is not None:
            signum, _STORE_WRITES.pending_signal = _STORE_WRITES.pending_signal, None
            raise GridInterrupted(signum)


def execute_cell(key: int, cell: Cell, data: DataCache, emit: Emit,
                 stage: Stage | None = None) -> None:
    """Train one cell and report what happens as events; never raises for the cell.

    Args:
        key: The cell's index among the grid's pending cells.
        cell: Its settings.
        data: The process's data cache.
        emit: Receives the events.
        stage: Part of the training only (successive halving's rungs); a stage that
            continues a checkpoint reports to the run its first stage started.
    """
    import keras

    from cvlib.training import train_cell

    try:
        dataset = data.get(cell.data)
        if stage is None or stage.start_epoch == 0:
            emit("started", key, dataset.params)
        result = train_cell(cell, dataset, lambda metrics, step: emit("metrics", key, metrics, step),
                            stage=stage)
        if result.batches is not None and len(result.batches):
            steps = result.batches["step"].tolist()
            emit("series", key, {f"batch/{name}": list(zip(steps, result.batches[name].tolist()))
                                 for name in ("loss", "accuracy")})
        emit("figures", key, result.history, result.stats)
        emit("finished", key, {"outcome": result.outcome, "epochs": result.epochs,
                               "val_accuracy": result.val_accuracy,
                               "test_accuracy": result.test_accuracy,
                               "diverged_at": result.diverged_at,
                               "divergence": result.divergence})
    except Exception as error:  # one bad cell must not end the grid
        emit("failed", key, f"{type(error).__name__}: {error}", traceback.format_exc())
    finally:
        # Python's own collector frees the old model's cycles; forcing it here cost
        # 0.45 s a cell (benchmarks/overhead.py checks that memory stays flat).
        keras.backend.clear_session(free_memory=False)


def _joined(earlier: tuple[dict[str, list[float]], Any] | None,
            history: dict[str, list[float]], stats) -> tuple[dict[str, list[float]], Any]:
    """A continued stage's history and statistics appended to the earlier stages'."""
    if earlier is None:
        return history, stats
    import pandas as pd

    earlier_history, earlier_stats = earlier
    history = {key: earlier_history.get(key, []) + history.get(key, [])
               for key in {**earlier_history, **history}}
    tables = [table for table in (earlier_stats, stats) if table is not None]
    return history, pd.concat(tables, ignore_index=True) if tables else None


@dataclass
class GridSummary:
    """How a grid run went."""

    # The plan it followed (what was done already, run, redone).
    plan: Plan
    # Run names of the cells that finished normally, diverged, or raised.
    finished: list[str] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    # The experiment's name and MLflow id, and the grid's parent run ("" if nothing ran).
    experiment: str = ""
    experiment_id: str = ""
    parent_run_id: str = ""


class GridRecorder:
    """Turns the trainer's events into MLflow runs and progress lines."""

    def __init__(self, tracker, experiment_id: str, parent_run_id: str, grid: Grid,
                 cells: list[Cell], summary: GridSummary, progress: Progress,
                 plots: PlotWriter, hold_finished: bool = False):
        self.tracker = tracker
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.grid = grid
        self.cells = cells
        self.summary = summary
        self.progress = progress
        self.open_runs: dict[int, Any] = {}
        # With hold_finished (successive halving), a finished stage leaves its run open
        # and its result here, until the search calls close().
        self.hold_finished = hold_finished
        self.held: dict[int, dict[str, Any]] = {}
        # With hold_finished, each open cell's history and statistics of its stages so far.
        self.figures: dict[int, tuple[dict[str, list[float]], Any]] = {}
        self.plots = plots

    def handle(self, event: str, key: int, *payload) -> None:
        """Dispatch one event of the cell ``key``."""
        with store_write():
            getattr(self, f"_on_{event}")(key, *payload)
            self.plots.attach_done(warn=self.progress.write)

    def _on_started(self, key: int, params: dict[str, Any]) -> None:
        self.open_runs[key] = self.tracker.start_cell(
            self.experiment_id, self.parent_run_id, self.cells[key], self.grid.name, params)
        self.progress.cell_started(self.cells[key])

    def _on_metrics(self, key: int, metrics: dict[str, float], step: int) -> None:
        self.open_runs[key].log_metrics(metrics, step)
        if "loss" in metrics:
            self.progress.epoch_done(self.cells[key], step)

    def _on_series(self, key: int, series: dict[str, list[tuple[int, float]]]) -> None:
        from cvlib.tracking import log_series

        log_series(self.open_runs[key], series)

    def _on_figures(self, key: int, history: dict[str, list[float]], stats) -> None:
        if self.hold_finished:  # halving: a cell's stages add up, written when it closes
            self.figures[key] = _joined(self.figures.get(key), history, stats)
        else:
            self._write_figures(key, history, stats)

    def _write_figures(self, key: int, history: dict[str, list[float]], stats) -> None:
        """Log the statistics' table now, and have the plots drawn beside the training."""
        from cvlib.plots import write_stats_table

        run = self.open_runs[key]
        folder = tempfile.mkdtemp(prefix="cvlib-artifacts-")
        try:
            write_stats_table(stats, folder)
            if any(Path(folder).iterdir()):
                run.log_artifacts(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.plots.submit(run, history, stats)

    def _on_finished(self, key: int, result: dict[str, Any]) -> None:
        if self.hold_finished:
            self.held[key] = result
        else:
            self.close(key, result)

    def close(self, key: int, result: dict[str, Any], tags: dict[str, Any] | None = None) -> None:
        """End a cell's run FINISHED with its outcome (and further tags). A store write:
        successive halving closes its cells outside :meth:`handle`."""
        with store_write():
            if key in self.figures:
                self._write_figures(key, *self.figures.pop(key))
            cell, run = self.cells[key], self.open_runs.pop(key)
            tags = dict(tags or {})
            if result["outcome"] == "diverged":
                tags.update({"cvlib.diverged_at": result["diverged_at"],
                             "cvlib.divergence": result["divergence"]})
            run.finish(result["outcome"], tags)
            superseded = self.summary.plan.superseded.get(cell.cell_hash)
            if superseded:
                self.tracker.supersede(superseded, run.run_id)
            if result["outcome"] == "diverged":
                self.summary.diverged.append(cell.name)
                text = f"DIVERGED ({result['divergence']})"
            else:
                self.summary.finished.append(cell.name)
                test = result["test_accuracy"]
                text = f"val_acc={result['val_accuracy']:.3f}" + (
                    f" test_acc={test:.3f}" if test is not None else "")
            self._cell_ended(cell, text)

    def _cell_ended(self, cell: Cell, outcome: str) -> None:
        self.progress.cell_done(cell, outcome)
        self.tracker.heartbeat(self.parent_run_id)

    def _on_failed(self, key: int, message: str, details: str = "") -> None:
        if key in self.figures and key in self.open_runs:  # earlier rungs' figures stay
            self._write_figures(key, *self.figures.pop(key))
        cell = self.cells[key]
        run = self.open_runs.pop(key, None) or self.tracker.start_cell(
            self.experiment_id, self.parent_run_id, cell, self.grid.name)
        run.fail(message, details=details)
        self.summary.failed.append(cell.name)
        self._cell_ended(cell, f"FAILED {message}")

    def kill_open_runs(self, reason: str) -> None:
        """End every run still open as KILLED (the grid is being stopped)."""
        for key in list(self.open_runs):
            self.open_runs.pop(key).fail(reason, status="KILLED")


def run_grid(grid: Grid, tracking_uri: str, experiment: str | None = None,
             data_dir: str | None = None, echo: Callable[[str], None] = print,
             workers: int = 1, rerun: bool = False,
             stale_after: float = DEFAULT_STALE_AFTER,
             progress_bar: bool | None = None, cells: list[Cell] | None = None,
             parent_run_id: str | None = None, data: DataCache | None = None,
             processes: GridProcesses | None = None) -> GridSummary:
    """Train the cells of a grid that have no result yet, and log each to MLflow.

    Args:
        grid: The validated grid.
        tracking_uri: The MLflow store.
        experiment: Experiment name; defaults to the grid's name (plus ``-halving``
            for successive halving, which always trains every cell anew).
        data_dir: CIFAR-10 folder (else $CVLIB_DATA_DIR, else Keras's download).
        echo: Receives the plan's summary and one line per cell.
        workers: Cells trained at once, each in its own worker process (1: in this one).
        rerun: Train every cell again; the runs it replaces go to MLflow's trash.
        stale_after: Seconds after which a RUNNING run without heartbeat counts as dead.
        progress_bar: Show a progress bar (default: when stderr is a terminal).
        cells: Train these cells, each for all its epochs, instead of the grid's product
            (a random search's trials); the grid then gives only the name, and its
            ``search:`` section is not used.
        parent_run_id: An open run to nest the cells under, left open (the caller
            ends it); default: a new parent run for this grid, ended here.
        data: A cache to load CIFAR-10 into and reuse across calls (default: a new one
            for data_dir).
        processes: Worker processes (or none) and a plot helper to use instead of
            starting them for ``workers``, left running for the caller's next grid
            (lr-search's stages, the claims' studies); the caller stops them.

    Returns:
        The GridSummary.

    Raises:
        CvlibError: for an unusable store or missing data, before anything is written.
        GridInterrupted: on SIGINT or SIGTERM, after the open runs were marked KILLED.
    """
    # Successive halving starts over each time (its rungs depend on all cells' results),
    # in an experiment of its own so that it never supersedes a plain grid's runs. Given
    # cells (sanity checks, lr-search trials) train as given: rungs would cut them short.
    halving = cells is None and grid.search.strategy == "halving"
    cells = grid.cells() if cells is None else cells
    rerun = rerun or halving
    experiment = experiment or (f"{grid.name}-halving" if halving else grid.name)
    own_processes = processes is None
    with contextlib.ExitStack() as cleanup:
        if own_processes:  # the pool is kept across halving's rungs
            # Started first, so that the workers' TensorFlow import overlaps this process's
            # data check and MLflow start.
            processes = cleanup.enter_context(shared_processes(data_dir, workers))
        pool = processes.pool
        # MLflow's import (about a second) only after the fork server has started TensorFlow's.
        from cvlib.tracking import Tracker

        data = data or DataCache(data_dir)
        data.check()  # a data error ends the run here, before the store is touched
        tracker = Tracker(tracking_uri)
        tracker.check_reachable()
        experiment_id = tracker.experiment_id(experiment)
        the_plan = plan(cells, tracker.run_records(experiment_id), rerun=rerun,
                        stale_after=stale_after)
        tracker.mark_killed(the_plan.dead_runs, "its process died while it ran "
                                                "(found by a later cvlib run)")
        echo(the_plan.summary())
        summary = GridSummary(plan=the_plan, experiment=experiment, experiment_id=experiment_id)
        pending = the_plan.pending
        if not pending:
            return summary
        summary.parent_run_id = parent_run_id or tracker.start_grid(
            grid, experiment_id, len(pending),
            min(pool.workers if pool is not None else 1, len(pending)))
        processes.plots.start()  # its imports overlap the first cell
        progress = Progress(len(pending), echo, bar=progress_bar)
        recorder = GridRecorder(tracker, experiment_id, summary.parent_run_id, grid, pending,
                                summary, progress, processes.plots, hold_finished=halving)

        def execute(tasks: list[tuple[int, Cell, Stage | None]]) -> None:
            if pool is not None:
                data.release()
                pool.run(tasks, recorder.handle)
            else:
                for key, cell, stage in in_graph_order(tasks):
                    execute_cell(key, cell, data, recorder.handle, stage)

        status = "FAILED"
        try:
            with interrupts_raise():
                if halving:
                    from cvlib.halving import successive_halving

                    successive_halving(pending, grid.search, execute, recorder, progress.write)
                else:
                    execute([(key, cell, None) for key, cell in enumerate(pending)])
            status = "FINISHED"
        except GridInterrupted as interruption:
            status = "KILLED"
            recorder.kill_open_runs(f"interrupted by {interruption}")
            raise
        finally:
            if own_processes and pool is not None:
                pool.close()  # before the plots are awaited: idle workers hold memory
            recorder.kill_open_runs("the grid runner stopped unexpectedly")
            if status == "FINISHED":  # an interrupted grid's plots are dropped
                processes.plots.attach_done(wait=True, warn=progress.write)
            progress.close()
            if parent_run_id is None:
                tracker.end_run(summary.parent_run_id, status)
        return summary

