"""A sampling search (``search.strategy`` random or tpe) through the engine: Optuna's
ask-and-tell in the command's process (:mod:`cvlib.engine.search`), its trials trained
as ordinary cells by the pool's trainers (or this process), under one parent run.

Each trainer trains one trial at a time; a trainer that frees up takes at once the next
stage of a trial that goes on, or a new proposal (no batch waits for its slowest trial).
Each trial trains in stages that end at the pruner's rungs (one stage without a pruner),
continuing from its checkpoint, as successive halving's cells do; after each stage its
epochs' val_accuracy is reported to the study, whose pruner may stop the trial there.
A trial's run is tagged with its number and values from its start and ends FINISHED
(with ``pruned`` as its outcome when the pruner stopped it); a rerun reads the FINISHED
ones back and goes on until the search has ``search.trials`` of them. A trial whose cell
failed keeps its FAILED run, and a rerun may propose its cell again.
"""
from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvlib.cells import Stage
from cvlib.engine.events import StageResult, Task
from cvlib.engine.grid_run import OpenedExperiment, backend_params, recording, train_trials
from cvlib.engine.plot_repair import redraw_lost_plots
from cvlib.engine.progress import Progress, counted
from cvlib.engine.recorder import GridRecorder, GridSummary
from cvlib.engine.resume import Plan, is_dead
from cvlib.engine.search import DIVERGED_VALUE, EndedTrial, RunningTrial, Search
from cvlib.engine.trials import CellTrial
from cvlib.fields import ConfigError
from cvlib.grids import Grid
from cvlib.tracking.schema import (
    DIVERGED,
    PRUNED,
    SEARCH_TAG,
    TRIAL_TAG,
    TRIAL_VALUES_TAG,
    VAL_ACCURACY,
)

if TYPE_CHECKING:
    from cvlib.engine.options import GridOptions
    from cvlib.tracking.records import TrialRun

# Proposals in a row whose cells were tried already, after which a batch stops asking:
# the space (of choices alone) is used up, or the sampler has settled on its best cells.
MAX_REPEATS = 50


@dataclasses.dataclass
class _Live:
    """A trial that trains: its number, values and engine key, and how far it got."""

    number: int
    values: dict[str, Any]
    key: int
    # Its val_accuracy after each epoch trained so far (from 1).
    epochs: dict[int, float] = dataclasses.field(default_factory=dict)
    # The rung its current stage starts from (0: its first stage).
    start: int = 0
    initial_loss: float | None = None


def ended_trials(runs: list[TrialRun], grid: Grid) -> tuple[list[EndedTrial], int]:
    """The search's trials among its FINISHED trial runs, in order of their numbers.

    Args:
        runs: The runs (tracking.reads.trial_runs).
        grid: The search's grid.

    Returns:
        The ended trials, and how many runs were left out: those whose cells the grid no
        longer makes (its space or its base settings changed since they trained).
    """
    search = Search(grid.space, grid.search, grid.train.epochs)
    ended = []
    for run in runs:
        if not search.holds(run.values) or grid.cell_of(run.values).cell_hash != run.cell_hash:
            continue
        value = run.val_accuracy
        if run.outcome == DIVERGED or value is None or not math.isfinite(value):
            value = DIVERGED_VALUE
        ended.append(EndedTrial(run.number, run.values, value, run.outcome == PRUNED,
                                run.epochs, run.cell_hash))
    return ended, len(runs) - len(ended)


def train_search(grid: Grid, experiment: OpenedExperiment, options: GridOptions) -> GridSummary:
    """Train a sampling search's trials until it has ``search.trials`` of them.

    Args:
        grid: The validated grid, with its space.
        experiment: The opened experiment.
        options: How the trials train (``stale_after``, ``show_accuracy``, and
            ``parent_run_id``, an open run to nest them under instead of a new one).

    Returns:
        The GridSummary of the trials trained now.

    Raises:
        GridInterrupted: on SIGINT or SIGTERM, after the open runs were marked KILLED.
    """
    tracker, pool, plots = experiment.tracker, experiment.pool, experiment.plots
    records = tracker.run_records(experiment.experiment_id)
    tracker.mark_killed([r for r in records if r.status == "RUNNING"
                         and is_dead(r, options.stale_after)],
                        "its process died while it ran (found by a later cvlib run)")
    if redraw_lost_plots(tracker, plots, records, options.stale_after):
        experiment.echo("drawing the plots that a stopped command left undrawn")
    ended, foreign = ended_trials(
        experiment.trial_runs(grid.name, with_epochs=grid.search.pruner != "none"), grid)
    if foreign:
        experiment.echo(f"{counted(foreign, 'finished trial')} of another space or other "
                        f"settings left out of the search")
    wanted = grid.search.trials
    summary = GridSummary(plan=Plan(cells=[]), experiment=experiment.name,
                          experiment_id=experiment.experiment_id)
    experiment.echo(f"{grid.search.strategy} search: {len(ended)} of {wanted} trials done")
    if len(ended) >= wanted:
        plots.attach_done(wait=True)
        return summary
    budget = wanted - len(ended)
    workers = min(pool.workers if pool is not None else 1, budget)
    summary.parent_run_id = options.parent_run_id or tracker.start_grid(
        grid, experiment.experiment_id, budget, workers, backend_params(pool))
    plots.start()
    progress = Progress([grid.cell_of({})] * budget, experiment.echo,
                        bar=experiment.options.progress_bar,
                        store=tracker.connection.health(), workers=workers)
    trials: list[CellTrial] = []
    recorder = GridRecorder(tracker, experiment.experiment_id, summary.parent_run_id, grid,
                            trials, summary, progress, plots, keep_open=True,
                            show_accuracy=options.show_accuracy,
                            run_tags=experiment.options.run_tags)
    def end(status: str) -> None:
        if status == "FINISHED":  # an interrupted search's plots are left to a later command
            plots.attach_done(wait=True, warn=progress.write)
        progress.close()
        if options.parent_run_id is None:
            tracker.end_run(summary.parent_run_id, status)

    with recording(recorder, end), tempfile.TemporaryDirectory(
            prefix="cvlib-search-", ignore_cleanup_errors=True) as folder:
        _SearchLoop(grid, experiment, recorder, trials, Path(folder)).run(ended, budget, workers)
    return summary


class _SearchLoop:
    """One command's search: keep every trainer busy with a trial's next stage or a new
    proposal, decide at each stage's end whether its trial goes on, and end it there."""

    def __init__(self, grid: Grid, experiment: OpenedExperiment, recorder: GridRecorder,
                 trials: list[CellTrial], folder: Path):
        self.grid = grid
        self.experiment = experiment
        self.recorder = recorder
        self.trials = trials
        self.folder = folder
        self.search = Search(grid.space, grid.search, grid.train.epochs)
        self.rungs = self.search.rungs()
        self.echo = recorder.progress.write
        # Cells that failed in this command: not proposed again until a rerun.
        self.failed: set[str] = set()
        self.ended: list[EndedTrial] = []
        # The trials training (or waiting for a trainer), by engine key.
        self.live: dict[int, _Live] = {}
        self.workers = self.budget = 0
        self.exhausted = False
        # The number the next proposal gets: numbers are not reused in one command (a
        # failed trial's run keeps its own).
        self.next_number = 0

    def run(self, ended: list[EndedTrial], budget: int, workers: int) -> None:
        """Train trials, ``workers`` at a time, until the search has its trials, or
        ``budget`` trials were tried (failed ones too), or the space holds no untried
        cell. A trainer that frees up takes the next stage of a trial that goes on, or a
        new proposal, at once: no trainer waits for the others' trials."""
        self.ended, self.budget, self.workers = ended, budget, workers
        self.next_number = max((trial.number for trial in ended), default=-1) + 1
        first = self._refill()
        if first:
            train_trials(self.experiment, first, self.recorder, self._stage_ended)

    def _refill(self) -> list[CellTrial]:
        """New proposals, each a trial with its first stage assigned, for the trainers
        that no live trial holds."""
        count = min(self.workers - len(self.live), self.budget,
                    self.grid.search.trials - len(self.ended) - len(self.live))
        if count <= 0 or self.exhausted:
            return []
        batch = self._propose(count)
        if not batch:
            self.exhausted = True
            self.echo(f"no untried cell in {MAX_REPEATS} proposals: the search ends "
                      f"with {counted(len(self.ended), 'trial')}")
        self.budget -= len(batch)
        for live in batch:
            self.live[live.key] = live
            self._assign(live)
        return [self.trials[live.key] for live in batch]

    def _running(self, but: int | None = None) -> list[RunningTrial]:
        """The live trials as the study holds them (all but the one keyed ``but``)."""
        return [RunningTrial(live.number, live.values, live.epochs, live.start)
                for key, live in self.live.items() if key != but]

    def _propose(self, count: int) -> list[_Live]:
        """Up to ``count`` proposals whose cells have not been tried, each a new engine
        trial."""
        known: dict[str, float | None] = {trial.cell_hash: trial.value for trial in self.ended}
        known.update(dict.fromkeys(self.failed))
        known.update({self.trials[key].cell.cell_hash: None for key in self.live})
        study, _ = self.search.live_study(self.ended, self._running())
        number = self.next_number
        batch, repeats = [], 0
        while len(batch) < count and repeats < MAX_REPEATS:
            proposal = self.search.ask(study)
            values = self.search.values(proposal)
            try:
                cell = self.grid.cell_of(values)
            except ConfigError as error:  # a combination the settings reject together
                self.echo(f"trial skipped: {error}")
                self.search.tell_duplicate(study, proposal, None)
                repeats += 1
                continue
            if cell.cell_hash in known:
                self.search.tell_duplicate(study, proposal, known[cell.cell_hash])
                repeats += 1
                continue
            known[cell.cell_hash] = None
            self.trials.append(CellTrial(len(self.trials), cell, tags={
                TRIAL_TAG: number + len(batch), TRIAL_VALUES_TAG: json.dumps(values),
                SEARCH_TAG: self.grid.search.strategy}))
            batch.append(_Live(number + len(batch), values, len(self.trials) - 1))
        self.next_number = number + len(batch)
        return batch

    def _assign(self, live: _Live) -> None:
        """Give a live trial's cell the task of its next stage, up to the next rung."""
        rung = next(rung for rung in self.rungs if rung > live.start)
        # A trial trained in one stage is never continued: it saves no checkpoint.
        single = live.start == 0 and rung == self.rungs[-1]
        trial = self.trials[live.key]
        trial.assign(Task(live.key, trial.cell, Stage(
            live.start, rung, None if single else str(self.folder / f"{live.key}.keras"),
            live.initial_loss)))

    def _stage_ended(self, trial: CellTrial) -> list[CellTrial]:
        """A stage of a trial ended: report its epochs and ask the pruner, then end the
        trial or assign its next stage; the trials to train next."""
        live = self.live[trial.key]
        result = self.recorder.take_result(trial.key)
        if result is None:  # failed: its run has ended FAILED
            self.failed.add(trial.cell.cell_hash)
            del self.live[trial.key]
            return self._refill()
        rung = trial.task.stage.end_epoch
        live.initial_loss = result.initial_loss
        history = trial.history or {}
        live.epochs = {epoch: value for epoch, value in
                       enumerate(history.get(VAL_ACCURACY, []), start=1)}
        last = rung == self.rungs[-1]
        pruned = not last and result.outcome != DIVERGED and self._pruned(live, rung)
        if result.outcome == DIVERGED or last or pruned:
            del self.live[trial.key]
            self.ended.append(self._end(live, result, pruned))
            return self._refill()
        live.start = rung
        self._assign(live)
        return [trial, *self._refill()]

    def _pruned(self, live: _Live, rung: int) -> bool:
        """Whether the pruner stops a trial at a rung, against the ended trials and the
        others still training as they are now."""
        _, optuna_trials = self.search.live_study(self.ended, [
            *self._running(but=live.key),
            RunningTrial(live.number, live.values, live.epochs, live.start)])
        optuna_trial = optuna_trials[live.number]
        self.search.report(optuna_trial, live.epochs, live.start, rung)
        return optuna_trial.should_prune()

    def _end(self, live: _Live, result: StageResult, pruned: bool) -> EndedTrial:
        """End a trial's run; the trial as the study is told it from now on."""
        diverged = result.outcome == DIVERGED
        value = DIVERGED_VALUE if diverged or result.val_accuracy is None or \
            not math.isfinite(result.val_accuracy) else result.val_accuracy
        if pruned:
            result = dataclasses.replace(result, outcome=PRUNED)
        cell = self.trials[live.key].cell
        self.recorder.close(live.key, result)
        return EndedTrial(live.number, live.values, value, pruned, live.epochs,
                          cell.cell_hash)
