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
import dataclasses
from typing import TYPE_CHECKING, Any, Callable

from cvlib.cells import Cell
from cvlib.data import DataCache
from cvlib.engine.confirmation import confirmation_stage
from cvlib.engine.epoch_checkpoints import EpochCheckpoints
from cvlib.engine.grid_run import backend_params, default_experiment, train_grid
from cvlib.engine.local_backend import LocalWorkers
from cvlib.engine.options import EngineOptions, GridOptions
from cvlib.engine.plot_writer import PlotWriter
from cvlib.engine.pool import CellPool
from cvlib.engine.progress import StoreNotices
from cvlib.engine.ray_backend import RayActors
from cvlib.engine.recorder import GridSummary
from cvlib.engine.retries import RetryPolicy
from cvlib.grids import Grid

if TYPE_CHECKING:
    import pandas as pd

    from cvlib.tracking.records import TrialRun
    from cvlib.tracking.writer import Tracker


class Experiment:
    """An experiment in a store, with the processes that train its grids.

    Entering it starts the workers' fork server first (its TensorFlow import then overlaps
    the rest), checks the data before the store is touched, then opens the store and the
    experiment; leaving it stops the workers and the plot helper.

    Args:
        tracking_uri: The MLflow store.
        name: The experiment's name (created if new).
        options: What trains the cells, from what data, and how long the store may be
            away.
        echo: Receives progress lines, and a line for each cell whose plots failed.

    Raises (on entering):
        CvlibError: for missing data, an unusable Ray cluster or an unusable store,
            before anything is written.

    Raises (on leaving normally):
        StoreUnavailable: when the tracking server stayed away for the options'
            ``store_timeout`` before it had every write (they stay in the journal).
    """

    def __init__(self, tracking_uri: str, name: str, options: EngineOptions | None = None,
                 echo: Callable[[str], None] = print):
        self.tracking_uri = tracking_uri
        self.name = name
        self.options = options = options or EngineOptions()
        self.echo = echo
        self.data = DataCache(options.data_dir)
        threads = options.threads_per_cell if options.deterministic else None
        backend = (RayActors(self.data, options.ray, options.deterministic)
                   if options.ray is not None else
                   LocalWorkers(options.data_dir, options.workers, threads=threads,
                                deterministic=options.deterministic)
                   if options.workers > 1 else None)
        self.pool = CellPool(backend, RetryPolicy(options.cell_retries)) \
            if backend is not None else None
        self.plots = PlotWriter(warn=echo)
        self.checkpoints = EpochCheckpoints(echo=echo)
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
                                   store_timeout=self.options.store_timeout, echo=self.echo)
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
            connection = self.tracker.connection
            health = connection.health()
            notices = StoreNotices(self.echo, health.outages if health is not None else 0)
            kept = connection.close(wait=wait_for_plots, on_wait=notices.waiting)
            notices.see(connection.health())  # an outage it caught up on at the end
            if kept:
                self.echo(kept)

    def parent_run(self, name: str, params: dict[str, Any] | None = None,
                   parent_run_id: str | None = None) -> contextlib.AbstractContextManager[str]:
        """A run to nest grids under (a search, a study, the sanity checks), ended FINISHED,
        FAILED or KILLED with the block (tracking.writer.Tracker.parent_run), with the
        params that say what trains its cells."""
        return self.tracker.parent_run(self.experiment_id, name, parent_run_id,
                                       {**backend_params(self.pool), **(params or {})})

    def train(self, grid: Grid, options: GridOptions | None = None) -> GridSummary:
        """Train a grid's cells that have no result yet (grid_run.train_grid), or a
        sampling search's trials until it has them all (search_run.train_search).

        Args:
            grid: The grid.
            options: How it trains (default: GridOptions(), the grid's own cells under a
                parent run of its own).

        Returns:
            The GridSummary.
        """
        options = options or GridOptions()
        if grid.is_sampled and options.cells is None:
            from cvlib.engine.search_run import train_search  # imports Optuna

            return train_search(grid, self, options)
        return train_grid(grid, self, options)

    def finished_runs(self, cells: list[Cell]) -> pd.DataFrame:
        """The finished run of each given cell (tracking.reads.finished_cell_runs)."""
        from cvlib.tracking.reads import finished_cell_runs

        self.tracker.connection.sync()
        return finished_cell_runs(self.tracking_uri, self.name,
                                  [cell.cell_hash for cell in cells])

    def trial_runs(self, grid: str, with_epochs: bool = False,
                   with_failed: bool = False) -> list[TrialRun]:
        """The finished runs of a sampling search's trials, and with ``with_failed`` the
        failed ones of cells that never finished (tracking.reads.trial_runs)."""
        from cvlib.tracking.reads import trial_runs

        self.tracker.connection.sync()
        return trial_runs(self.tracking_uri, self.name, grid, with_epochs, with_failed)

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """Every logged (step, value) of one metric of a run, in step order."""
        from cvlib.tracking.reads import metric_history

        self.tracker.connection.sync()
        return metric_history(self.tracking_uri, run_id, key)

    def stats_table(self, run_id: str) -> pd.DataFrame | None:
        """A run's statistics table (tracking.reads.read_stats_table), or None."""
        from cvlib.tracking.reads import read_stats_table

        self.tracker.connection.sync()
        return read_stats_table(self.tracking_uri, run_id)

    def log_outputs(self, run_id: str, texts: dict[str, str] | None = None,
                    figures: dict[str, Any] | None = None,
                    metrics: dict[str, float] | None = None) -> None:
        """Log a parent run's text files, figures and metrics (Tracker.log_outputs)."""
        self.tracker.log_outputs(run_id, texts, figures, metrics)


def run_grid(grid: Grid, tracking_uri: str, engine: EngineOptions | None = None,
             options: GridOptions | None = None, experiment: str | None = None,
             echo: Callable[[str], None] = print) -> GridSummary:
    """Train a grid into its experiment: what ``cvlib run`` does.

    Args:
        grid: The validated grid.
        tracking_uri: The MLflow store.
        engine: What trains the cells, from what data (default: EngineOptions()).
        options: How the grid trains (default: GridOptions()); a grid with
            ``search.confirm`` then trains its confirmation stage the same way
            (engine.confirmation).
        experiment: Experiment name; default: grid_run.default_experiment.
        echo: Receives the plan's summary and one line per cell.

    Returns:
        The GridSummary (of both stages, with a confirmation).

    Raises:
        CvlibError: for an unusable store, Ray cluster or missing data, before anything
            is written.
        GridInterrupted: on SIGINT or SIGTERM, after the open runs were marked KILLED.
    """
    options = options or GridOptions()
    with Experiment(tracking_uri, experiment or default_experiment(grid), engine,
                    echo) as opened:
        summary = opened.train(grid, options)
        if grid.search.confirm is None:
            return summary
        confirm = confirmation_stage(grid, opened.finished_runs, echo)
        if not confirm:
            return summary
        confirmed = opened.train(grid, dataclasses.replace(options, cells=confirm))
        return summary.merged(confirmed)
