"""A command's use of the engine: one MLflow experiment, and the processes, data and
store that its grids share.

``cvlib run``, ``sanity``, ``lr-search`` and ``claims`` all open an :class:`Experiment`,
nest parent runs in it, train grids through it and read back the finished cells. The
workers (and their fork server) and the plot helper are shared by every grid of the
command, so each worker imports TensorFlow and the helper matplotlib once per command
(lr-search runs a grid per stage and cell, the claims one or more per study).
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable

from cvlib.data import DataCache
from cvlib.engine.grid_run import backend_params, default_experiment, train_grid
from cvlib.engine.plot_writer import PlotWriter
from cvlib.engine.pool import WorkerPool
from cvlib.engine.progress import StoreNotices
from cvlib.engine.ray_cluster import RayOptions
from cvlib.engine.ray_pool import RayPool
from cvlib.engine.recorder import GridSummary
from cvlib.engine.resume import DEFAULT_STALE_AFTER
from cvlib.grids import Cell, Grid
from cvlib.tracking.uris import DEFAULT_STORE_TIMEOUT_MINUTES

if TYPE_CHECKING:
    import pandas as pd

    from cvlib.tracking.writer import Tracker
    from cvlib.training import FinalMeasure


class Experiment:
    """An experiment in a store, with the processes that train its grids.

    Entering it starts the workers' fork server first (its TensorFlow import then overlaps
    the rest), checks the data before the store is touched, then opens the store and the
    experiment; leaving it stops the workers and the plot helper.

    Args:
        tracking_uri: The MLflow store.
        name: The experiment's name (created if new).
        data_dir: CIFAR-10 folder (else $CVLIB_DATA_DIR, else Keras's download).
        workers: Cells trained at once, each in its own worker process (1: in this one).
        echo: Receives progress lines, and a line for each cell whose plots failed.
        progress_bar: Show a progress bar (default: when stderr is a terminal).
        ray: Train the cells on Ray instead (``workers`` is then not used).
        store_timeout: Seconds a tracking server may stay unreachable (its writes wait
            in the local journal meanwhile) before the command gives up.

    Raises (on entering):
        CvlibError: for missing data, an unusable Ray cluster or an unusable store,
            before anything is written.

    Raises (on leaving normally):
        StoreUnavailable: when the tracking server stayed away for ``store_timeout``
            before it had every write (they stay in the journal).
    """

    def __init__(self, tracking_uri: str, name: str, data_dir: str | None = None,
                 workers: int = 1, echo: Callable[[str], None] = print,
                 progress_bar: bool | None = None, ray: RayOptions | None = None,
                 store_timeout: float = DEFAULT_STORE_TIMEOUT_MINUTES * 60):
        self.tracking_uri = tracking_uri
        self.store_timeout = store_timeout
        self.name = name
        self.workers = workers
        self.echo = echo
        self.progress_bar = progress_bar
        self.data = DataCache(data_dir)
        self.pool: WorkerPool | RayPool | None = (
            RayPool(self.data, ray) if ray is not None else
            WorkerPool(data_dir, workers) if workers > 1 else None)
        self.plots = PlotWriter(warn=echo)
        self.tracker: Tracker | None = None  # opened on entering
        self.experiment_id = ""

    def __enter__(self) -> Experiment:
        with contextlib.ExitStack() as stack:
            stack.callback(self._stop_processes, wait_for_plots=False)
            if self.pool is not None:
                self.pool.warm_up()
            # MLflow's import (about a second) only after the fork server has started
            # TensorFlow's.
            from cvlib.tracking.writer import Tracker

            self.data.check()  # a data error ends the command here, before the store
            self.tracker = Tracker(self.tracking_uri, journal=True,
                                   store_timeout=self.store_timeout, echo=self.echo)
            self.experiment_id = self.tracker.experiment_id(self.name)
            stack.pop_all()
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self._stop_processes(wait_for_plots=exc_type is None)

    def _stop_processes(self, wait_for_plots: bool) -> None:
        """Stop the workers and the plot helper, then the store's writes: after a normal
        end, once the store has them all; else only while it answers."""
        if self.pool is not None:
            self.pool.close()  # terminated: an interrupted command leaves cells unrun
        self.plots.close(wait=wait_for_plots)
        if self.tracker is not None:
            # An outage still on is told again here: it may have begun after the last
            # progress line.
            health = self.tracker.store_health()
            notices = StoreNotices(self.echo, health.outages if health is not None else 0)
            kept = self.tracker.close(wait=wait_for_plots, on_wait=notices.waiting)
            notices.see(self.tracker.store_health())  # an outage it caught up on at the end
            if kept:
                self.echo(kept)

    def parent_run(self, name: str, params: dict[str, Any] | None = None,
                   parent_run_id: str | None = None) -> contextlib.AbstractContextManager[str]:
        """A run to nest grids under (a search, a study, the sanity checks), ended FINISHED,
        FAILED or KILLED with the block (tracking.writer.Tracker.parent_run), with the
        params that say what trains its cells."""
        return self.tracker.parent_run(self.experiment_id, name, parent_run_id,
                                       {**backend_params(self.pool), **(params or {})})

    def train(self, grid: Grid, cells: list[Cell] | None = None,
              parent_run_id: str | None = None, rerun: bool = False,
              supersede: bool = True, stale_after: float = DEFAULT_STALE_AFTER,
              final_measure: FinalMeasure | None = None,
              show_accuracy: bool = True) -> GridSummary:
        """Train a grid's cells that have no result yet (grid_run.train_grid).

        Args:
            grid: The grid.
            cells: Train these cells instead of the grid's (its name tags them).
            parent_run_id: Nest the cells under this open run; default: a parent run of
                the grid's own.
            rerun: Train every cell again, superseding its finished runs.
            supersede: With ``rerun``, False keeps the replaced runs active.
            stale_after: Seconds after which a RUNNING run without heartbeat is dead.
            final_measure: Measures each trained model once more.
            show_accuracy: Each cell's progress line gives its accuracies (else epochs).

        Returns:
            The GridSummary.
        """
        return train_grid(grid, self.tracker, self.name, self.experiment_id, self.data,
                          self.pool, self.plots, self.echo, cells=cells,
                          parent_run_id=parent_run_id, rerun=rerun, supersede=supersede,
                          stale_after=stale_after,
                          progress_bar=self.progress_bar, final_measure=final_measure,
                          show_accuracy=show_accuracy)

    def finished_runs(self, cells: list[Cell]) -> pd.DataFrame:
        """The finished run of each given cell (tracking.reads.finished_cell_runs)."""
        from cvlib.tracking.reads import finished_cell_runs

        self.tracker.sync()
        return finished_cell_runs(self.tracking_uri, self.name,
                                  [cell.cell_hash for cell in cells])

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """Every logged (step, value) of one metric of a run, in step order."""
        from cvlib.tracking.reads import metric_history

        self.tracker.sync()
        return metric_history(self.tracking_uri, run_id, key)

    def stats_table(self, run_id: str) -> pd.DataFrame | None:
        """A run's statistics table (tracking.reads.read_stats_table), or None."""
        from cvlib.tracking.reads import read_stats_table

        self.tracker.sync()
        return read_stats_table(self.tracking_uri, run_id)

    def log_outputs(self, run_id: str, texts: dict[str, str] | None = None,
                    figures: dict[str, Any] | None = None,
                    metrics: dict[str, float] | None = None) -> None:
        """Log a parent run's text files, figures and metrics (Tracker.log_outputs)."""
        self.tracker.log_outputs(run_id, texts, figures, metrics)


def run_grid(grid: Grid, tracking_uri: str, experiment: str | None = None,
             data_dir: str | None = None, echo: Callable[[str], None] = print,
             workers: int = 1, rerun: bool = False, stale_after: float = DEFAULT_STALE_AFTER,
             progress_bar: bool | None = None, ray: RayOptions | None = None,
             store_timeout: float = DEFAULT_STORE_TIMEOUT_MINUTES * 60) -> GridSummary:
    """Train a grid into its experiment: what ``cvlib run`` does.

    Args:
        grid: The validated grid.
        tracking_uri: The MLflow store.
        experiment: Experiment name; default: grid_run.default_experiment.
        data_dir: CIFAR-10 folder (else $CVLIB_DATA_DIR, else Keras's download).
        echo: Receives the plan's summary and one line per cell.
        workers: Cells trained at once, each in its own worker process (1: in this one).
        rerun: Train every cell again; the runs it replaces go to MLflow's trash.
        stale_after: Seconds after which a RUNNING run without heartbeat counts as dead.
        progress_bar: Show a progress bar (default: when stderr is a terminal).
        ray: Train the cells on Ray instead of in worker processes.
        store_timeout: Seconds a tracking server may stay unreachable.

    Returns:
        The GridSummary.

    Raises:
        CvlibError: for an unusable store, Ray cluster or missing data, before anything
            is written.
        GridInterrupted: on SIGINT or SIGTERM, after the open runs were marked KILLED.
    """
    with Experiment(tracking_uri, experiment or default_experiment(grid), data_dir,
                    workers, echo, progress_bar, ray, store_timeout) as opened:
        return opened.train(grid, rerun=rerun, stale_after=stale_after)

