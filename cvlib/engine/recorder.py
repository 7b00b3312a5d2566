"""The recorder side of the engine: turns the trainers' events into MLflow runs and
progress lines, always in the command's own process (the only writer of the store)."""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cvlib.cells import Cell
from cvlib.engine.epoch_checkpoints import EpochCheckpoints
from cvlib.engine.events import (
    CellFailed,
    CellFinished,
    CellRetried,
    CellStarted,
    Event,
    FiguresReady,
    Heartbeat,
    MetricsLogged,
    ModelSaved,
    SeriesLogged,
    StageResult,
)
from cvlib.engine.plot_writer import PlotWriter
from cvlib.engine.progress import Progress, counted
from cvlib.engine.resume import Plan
from cvlib.engine.signals import store_write
from cvlib.engine.trials import CellTrial
from cvlib.grids import Grid
from cvlib.tracking.schema import DIVERGED, EPOCH_TIME, LOSS, PRUNED, TRAINED_ON_TAG

if TYPE_CHECKING:  # imported by the command after its workers' fork server has started
    from cvlib.tracking.writer import Tracker


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

    def merged(self, later: GridSummary) -> GridSummary:
        """This summary with a later stage's outcomes added (its plan and parent run
        stay this one's, or the later's when this stage ran nothing)."""
        return dataclasses.replace(
            self, finished=self.finished + later.finished,
            diverged=self.diverged + later.diverged, failed=self.failed + later.failed,
            parent_run_id=self.parent_run_id or later.parent_run_id)


class GridRecorder:
    """Turns the trainers' events into MLflow runs and progress lines.

    Args:
        tracker: The store.
        experiment_id: Where the runs go.
        parent_run_id: The run the cells' runs nest under.
        grid: The grid (its name tags the runs).
        trials: The cells, by key; each one's run and figures are kept in its trial.
        summary: Receives each cell's outcome.
        progress: Receives the cells' progress.
        plots: Draws the cells' plots.
        keep_open: A finished stage leaves its run open and its result in
            :meth:`take_kept` (successive halving: the engine decides, from all cells'
            results, which runs end there).
        show_accuracy: Each cell's progress line gives its validation and test accuracy;
            False: its epochs only (cells whose accuracies mean nothing, such as the
            sanity checks').
        run_tags: Tags for every cell run (the grid file's git commit).
        checkpoints: The cells' epoch checkpoints, removed when a cell's run ends.
    """

    def __init__(self, tracker: Tracker, experiment_id: str, parent_run_id: str, grid: Grid,
                 trials: list[CellTrial], summary: GridSummary, progress: Progress,
                 plots: PlotWriter, keep_open: bool = False, show_accuracy: bool = True,
                 run_tags: dict[str, str] | None = None,
                 checkpoints: EpochCheckpoints | None = None):
        self.tracker = tracker
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.grid = grid
        self.trials = trials
        self.summary = summary
        self.progress = progress
        self.plots = plots
        self.keep_open = keep_open
        self.show_accuracy = show_accuracy
        self.run_tags = run_tags or {}
        self.checkpoints = checkpoints

    def handle(self, event: Event) -> None:
        """Record one event (a store write: a signal waits for its end)."""
        with store_write():
            self._record(event)
            self.plots.attach_done(warn=self.progress.write)
        self._watch_store()

    def flush(self) -> None:
        """Write the metrics held back for a group commit (the engine calls this when no
        event is waiting; tracking.metric_writer)."""
        with store_write():
            self.tracker.connection.flush_metrics()
        self._watch_store()

    def _watch_store(self) -> None:
        """Say when the tracking server goes away and comes back; give up (StoreUnavailable)
        when it stays away longer than the command may wait."""
        self.progress.store.see(self.tracker.connection.check())

    def take_kept(self) -> dict[int, StageResult]:
        """The results of the stages that ended since the last call, by key (keep_open)."""
        kept = {}
        for trial in self.trials:
            if trial.kept is not None:
                kept[trial.key], trial.kept = trial.kept, None
        return kept

    def take_result(self, key: int) -> StageResult | None:
        """The result of one cell's stage that ended (keep_open), now handed over; None
        when its stage failed."""
        trial = self.trials[key]
        result, trial.kept = trial.kept, None
        return result

    @functools.singledispatchmethod
    def _record(self, event: Event) -> None:
        raise TypeError(f"no recorder for {type(event).__name__}")

    @_record.register
    def _started(self, event: CellStarted) -> None:
        trial = self.trials[event.key]
        tags = {**self.run_tags, **trial.tags, **event.environment}
        if trial.resume_run is not None:  # a stopped run of an earlier command
            trial.run = self.tracker.resume_cell(trial.resume_run, tags)
            trial.resume_run = None
            self.progress.write(f"{trial.cell.name}: continuing its run {trial.run.run_id} "
                                f"from its checkpoint after epoch {trial.task.stage.start_epoch}")
        elif trial.run is None:  # else it continues in its open run, after a lost trainer
            trial.run = self.tracker.start_cell(self.experiment_id, self.parent_run_id,
                                                trial.cell, self.grid.name, event.params, tags)
        self.progress.cell_started(trial.cell)

    @_record.register
    def _metrics(self, event: MetricsLogged) -> None:
        trial = self.trials[event.key]
        fresh = trial.unlogged({key: [(event.step, value)]
                                for key, value in event.metrics.items()})
        if not fresh:
            return
        trial.run.log_metrics({key: points[0][1] for key, points in fresh.items()}, event.step)
        if LOSS in fresh:
            self.progress.epoch_done(trial.cell, event.step, event.metrics.get(EPOCH_TIME))

    @_record.register
    def _series(self, event: SeriesLogged) -> None:
        trial = self.trials[event.key]
        trial.run.log_series(trial.unlogged(event.series))

    @_record.register
    def _figures_ready(self, event: FiguresReady) -> None:
        trial = self.trials[event.key]
        if self.keep_open:  # halving: a cell's stages add up, written when its run ends
            trial.join_figures(event.history, event.stats)
        else:
            self._write_figures(trial, event.history, event.stats, event.plots)

    @_record.register
    def _model_saved(self, event: ModelSaved) -> None:
        self.trials[event.key].model_files = event.files

    @_record.register
    def _heartbeat(self, event: Heartbeat) -> None:
        run = self.trials[event.key].run
        if run is not None:
            self.tracker.heartbeat(run.run_id)
        self.tracker.heartbeat(self.parent_run_id)

    @_record.register
    def _retried(self, event: CellRetried) -> None:
        trial = self.trials[event.key]
        if not event.continued:
            run, trial.run = trial.run, None
            if run is not None:
                run.fail(event.message)
        self.progress.write(f"{trial.cell.name}: {event.message}")

    @_record.register
    def _finished(self, event: CellFinished) -> None:
        trial = self.trials[event.key]
        if event.result.trained_on:
            trial.trained_on.append(event.result.trained_on)
        if self.keep_open:
            trial.kept = event.result
        else:
            self._close(trial, event.result)

    @_record.register
    def _failed(self, event: CellFailed) -> None:
        trial = self.trials[event.key]
        figures = trial.take_figures()
        if figures is not None and trial.run is not None:  # earlier rungs' figures stay
            self._write_figures(trial, *figures)
        trial.trained_on, trial.model_files = [], None
        run, trial.run = trial.run, None
        if run is None:
            run = self.tracker.start_cell(self.experiment_id, self.parent_run_id, trial.cell,
                                          self.grid.name, tags=trial.tags)
        run.fail(event.message, details=event.details)
        if self.checkpoints is not None:
            self.checkpoints.discard(trial.cell)
        self.summary.failed.append(trial.cell.name)
        self._cell_ended(trial.cell, f"FAILED {event.message}")

    def _write_figures(self, trial: CellTrial, history: dict[str, list[float]], stats,
                       drawn: dict[str, bytes] | None = None) -> None:
        """Log the statistics' table now, and the plots: those drawn where the cell
        trained now, else drawn by the plot helper beside the training."""
        trial.run.log_stats_table(stats)
        if drawn:
            self.plots.attach_drawn(trial.run, drawn)
        else:
            self.plots.submit(trial.run, history, stats)

    def close(self, key: int, result: StageResult, tags: dict[str, Any] | None = None) -> None:
        """End a kept cell's run FINISHED with its outcome and further tags.

        Args:
            key: The cell.
            result: Its last stage's result.
            tags: Tags for the run (successive halving's rung).
        """
        with store_write():
            self._close(self.trials[key], result, tags)

    def _close(self, trial: CellTrial, result: StageResult,
               tags: dict[str, Any] | None = None) -> None:
        figures = trial.take_figures()
        if figures is not None:
            self._write_figures(trial, *figures)
        cell, run = trial.cell, trial.run
        tags = {**(tags or {}), **self.plots.pending_mark(run)}
        if trial.trained_on:
            tags[TRAINED_ON_TAG] = ", ".join(trial.trained_on)
        if trial.model_files and result.outcome != DIVERGED:
            tags.update(run.log_model(trial.model_files))
        run.finish(result.outcome, result.diverged_at, result.divergence, tags)
        # Only once it has ended: a run that failed to end is still the cell's, for the
        # CellFailed that follows or the grid's end, which ends it KILLED.
        trial.run, trial.trained_on, trial.model_files = None, [], None
        if self.checkpoints is not None:
            self.checkpoints.discard(cell)
        superseded = self.summary.plan.superseded.get(cell.cell_hash)
        if superseded:
            self.tracker.supersede(superseded, run.run_id)
        if result.outcome == DIVERGED:
            self.summary.diverged.append(cell.name)
            text = f"DIVERGED ({result.divergence})"
        else:
            self.summary.finished.append(cell.name)
            if self.show_accuracy:
                test = result.test_accuracy
                text = f"val_acc={result.val_accuracy:.3f}" + (
                    f" test_acc={test:.3f}" if test is not None else "")
                if result.outcome == PRUNED:
                    text = f"PRUNED after {counted(result.epochs, 'epoch')}, {text}"
            else:
                text = f"done, {counted(result.epochs, 'epoch')}"
        self._cell_ended(cell, text)

    def _cell_ended(self, cell: Cell, outcome: str) -> None:
        self.progress.cell_done(cell, outcome)
        self.tracker.heartbeat(self.parent_run_id)

    def kill_open_runs(self, reason: str) -> None:
        """End every run still open as KILLED (the grid is being stopped)."""
        for trial in self.trials:
            run, trial.run = trial.run, None
            if run is not None:
                run.fail(reason, status="KILLED")
