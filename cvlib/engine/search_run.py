"""A sampling search (``search.strategy`` random or tpe) through the engine: Optuna's
ask-and-tell in the command's process (:mod:`cvlib.engine.search`), its trials trained
as ordinary cells by the pool's trainers (or this process), under one parent run.

The trials train in batches of as many as there are trainers. Each trial trains in
stages that end at the pruner's rungs (one stage without a pruner), continuing from its
checkpoint, as successive halving's cells do; after each stage its epochs' val_accuracy
is reported to its Optuna trial, which the pruner may stop there. A trial's run ends
FINISHED, tagged with its number and values (and ``pruned`` as its outcome when the
pruner stopped it); a rerun reads those runs back and goes on until the search has
``search.trials`` of them. A trial whose cell failed is told as failed, and a rerun tries
it again.
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
from cvlib.engine.search import DIVERGED_VALUE, EndedTrial, Search
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
    """A trial of the batch that trains: its Optuna trial, values and engine key."""

    number: int
    # Its optuna.trial.Trial.
    trial: Any
    values: dict[str, Any]
    key: int
    epochs: dict[int, float] = dataclasses.field(default_factory=dict)
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
    """The batches of one command's search: propose, train in stages, tell."""

    def __init__(self, grid: Grid, experiment: OpenedExperiment, recorder: GridRecorder,
                 trials: list[CellTrial], folder: Path):
        self.grid = grid
        self.experiment = experiment
        self.recorder = recorder
        self.trials = trials
        self.folder = folder
        self.search = Search(grid.space, grid.search, grid.train.epochs)
        self.echo = recorder.progress.write
        # Cells that failed in this command: not proposed again until a rerun.
        self.failed: set[str] = set()

    def run(self, ended: list[EndedTrial], budget: int, workers: int) -> None:
        """Train batches until the search has its trials, or ``budget`` trials were
        tried (failed ones too), or the space holds no untried cell."""
        tried = 0
        while tried < budget and len(ended) < self.grid.search.trials:
            count = min(workers, budget - tried, self.grid.search.trials - len(ended))
            study = self.search.study(ended)
            batch = self._propose(study, ended, count)
            if not batch:
                self.echo(f"no untried cell in {MAX_REPEATS} proposals: the search ends "
                          f"with {counted(len(ended), 'trial')}")
                return
            tried += len(batch)
            ended += self._train(study, batch)

    def _propose(self, study: Any, ended: list[EndedTrial],
                 count: int) -> list[_Live]:
        """Up to ``count`` proposals whose cells have not been tried, each a new engine
        trial."""
        known: dict[str, float | None] = {trial.cell_hash: trial.value for trial in ended}
        known.update(dict.fromkeys(self.failed))
        number = max((trial.number for trial in ended), default=-1) + 1
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
            self.trials.append(CellTrial(len(self.trials), cell))
            batch.append(_Live(number + len(batch), proposal, values, len(self.trials) - 1))
        return batch

    def _train(self, study: Any, batch: list[_Live]) -> list[EndedTrial]:
        """Train a batch's trials rung by rung; tell and end each where it stops."""
        ended, alive, start = [], list(batch), 0
        rungs = self.search.rungs()
        for rung in rungs:
            # A trial trained in one stage is never continued: it saves no checkpoint.
            single = start == 0 and rung == rungs[-1]
            tasks = [Task(live.key, self.trials[live.key].cell,
                          Stage(start, rung, None if single else
                                str(self.folder / f"{live.key}.keras"), live.initial_loss))
                     for live in alive]
            for task in tasks:
                self.trials[task.key].assign(task)
            train_trials(self.experiment, [self.trials[task.key] for task in tasks],
                         self.recorder)
            results = self.recorder.take_kept()
            going_on = []
            for live in alive:
                result = results.get(live.key)
                if result is None:  # failed: its run has ended FAILED
                    self.failed.add(self.trials[live.key].cell.cell_hash)
                    self.search.tell_failed(study, live.trial)
                    continue
                live.initial_loss = result.initial_loss
                history = self.trials[live.key].history or {}
                live.epochs = {epoch: value for epoch, value in
                               enumerate(history.get(VAL_ACCURACY, []), start=1)}
                self.search.report(live.trial, live.epochs, start, rung)
                pruned = live.trial.should_prune()
                if result.outcome == DIVERGED or rung == rungs[-1] or pruned:
                    ended.append(self._end(study, live, result, pruned and rung != rungs[-1]))
                else:
                    going_on.append(live)
            alive, start = going_on, rung
            if not alive:
                break
        return ended

    def _end(self, study: Any, live: _Live, result: StageResult,
             pruned: bool) -> EndedTrial:
        """Tell a trial's end to the study and end its run."""
        diverged = result.outcome == DIVERGED
        value = DIVERGED_VALUE if diverged or result.val_accuracy is None or \
            not math.isfinite(result.val_accuracy) else result.val_accuracy
        pruned = pruned and not diverged
        self.search.tell_ended(study, live.trial, value, pruned)
        if pruned:
            result = dataclasses.replace(result, outcome=PRUNED)
        cell = self.trials[live.key].cell
        self.recorder.close(live.key, result, {
            TRIAL_TAG: live.number, TRIAL_VALUES_TAG: json.dumps(live.values),
            SEARCH_TAG: self.grid.search.strategy})
        return EndedTrial(live.number, live.values, value, result.outcome == PRUNED,
                          live.epochs, cell.cell_hash)

