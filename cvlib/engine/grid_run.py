"""One grid through the engine: plan what is left, hand the tasks to the trainers (the
pool's, or this process), and record their events, under one parent run. A plain grid's
stopped cell continues from its epoch checkpoint (engine.epoch_checkpoints).

A failure in one cell is recorded in its run and never stops the grid; SIGINT and
SIGTERM end the open runs as KILLED before the exception leaves.
"""
from __future__ import annotations

import contextlib
import tempfile
from typing import TYPE_CHECKING, Callable, Iterator, Protocol

from cvlib.cells import Cell, Stage
from cvlib.data import DataCache
from cvlib.engine.cell import execute_cell
from cvlib.engine.child import start_tensorflow_quietly
from cvlib.engine.epoch_checkpoints import EpochCheckpoints
from cvlib.engine.events import Event, Task
from cvlib.engine.halving import SuccessiveHalving
from cvlib.engine.hosts import nvidia_gpu_visible
from cvlib.engine.options import EngineOptions, GridOptions
from cvlib.engine.plot_repair import redraw_lost_plots
from cvlib.engine.plot_writer import PlotWriter
from cvlib.engine.pool import CellPool
from cvlib.engine.progress import Progress, counted
from cvlib.engine.recorder import GridRecorder, GridSummary
from cvlib.engine.resume import Plan, plan
from cvlib.engine.scheduling import in_graph_order
from cvlib.engine.signals import GridInterrupted, interrupts_raise
from cvlib.engine.trials import CellTrial, trials_of
from cvlib.grids import Grid
from cvlib.tracking.schema import BACKEND_PARAM, LOCAL_BACKEND, RUNG_TAG, SEARCH_TAG

if TYPE_CHECKING:
    from cvlib.tracking.records import TrialRun
    from cvlib.tracking.writer import Tracker

HALVING = "halving"
# The experiment suffix of a sampling search (search.strategy random or tpe).
SAMPLED = "search"


class OpenedExperiment(Protocol):
    """What a grid trains with: an opened engine.experiment.Experiment's store, data,
    trainers and plot helper (and, for a sampling search, its trials' runs)."""

    name: str
    experiment_id: str
    options: EngineOptions
    tracker: Tracker
    data: DataCache
    pool: CellPool | None
    plots: PlotWriter
    checkpoints: EpochCheckpoints | None
    echo: Callable[[str], None]

    def trial_runs(self, grid: str, with_epochs: bool = False) -> list[TrialRun]:
        """The finished runs of the trials of a sampling search's grid (by its name)."""


def is_halving(grid: Grid, cells: list[Cell] | None = None) -> bool:
    """Whether a grid runs as successive halving: its ``search:`` says so and it trains its
    own cells (given cells, such as sanity checks or lr-search trials, train as given:
    rungs would cut them short)."""
    return cells is None and grid.search.strategy == HALVING


def default_experiment(grid: Grid) -> str:
    """The experiment a grid's runs go to: its name, plus ``-halving`` for successive
    halving, which always trains every cell anew and must never supersede a plain grid's
    runs, or ``-search`` for a sampling search, whose runs are its trials."""
    if grid.is_sampled:
        return f"{grid.name}-{SAMPLED}"
    return f"{grid.name}-{HALVING}" if is_halving(grid) else grid.name


def backend_params(pool: CellPool | None) -> dict[str, str]:
    """The params that say what trains a parent run's cells."""
    return pool.params() if pool is not None else {BACKEND_PARAM: LOCAL_BACKEND}


def train_grid(grid: Grid, experiment: OpenedExperiment, options: GridOptions) -> GridSummary:
    """Train the cells of a grid that have no result yet, and record each in the store;
    first draw the plots that a stopped command left undrawn in the experiment's
    finished runs.

    Args:
        grid: The validated grid.
        experiment: The opened experiment: its store, data, trainers and plot helper.
        options: How the grid trains.

    Returns:
        The GridSummary.

    Raises:
        GridInterrupted: on SIGINT or SIGTERM, after the open runs were marked KILLED.
    """
    tracker, pool, plots = experiment.tracker, experiment.pool, experiment.plots
    halving = is_halving(grid, options.cells)
    cells = grid.cells() if options.cells is None else options.cells
    records = tracker.run_records(experiment.experiment_id)
    the_plan = plan(cells, records, rerun=options.rerun or halving,
                    stale_after=options.stale_after)
    if not options.supersede:
        the_plan.superseded.clear()
    checkpoints = None if halving else experiment.checkpoints
    continued = _continued_runs(the_plan, checkpoints, tracker)
    tracker.mark_killed(the_plan.dead_runs, "its process died while it ran "
                                            "(found by a later cvlib run)")
    experiment.echo(the_plan.summary())
    redrawn = redraw_lost_plots(tracker, plots, records, options.stale_after)
    if redrawn:
        experiment.echo(f"drawing the plots of {counted(redrawn, 'finished run')} that a "
                        f"stopped command left without them")
    summary = GridSummary(plan=the_plan, experiment=experiment.name,
                          experiment_id=experiment.experiment_id)
    pending = the_plan.pending
    if not pending:
        plots.attach_done(wait=True)
        return summary
    workers = min(pool.workers if pool is not None else 1, len(pending))
    summary.parent_run_id = options.parent_run_id or tracker.start_grid(
        grid, experiment.experiment_id, len(pending), workers, backend_params(pool))
    plots.start()  # its imports overlap the first cell
    progress = Progress(pending, experiment.echo, bar=experiment.options.progress_bar,
                        store=tracker.connection.health(), workers=workers)
    trials = trials_of(pending)
    recorder = GridRecorder(tracker, experiment.experiment_id, summary.parent_run_id, grid,
                            trials, summary, progress, plots, keep_open=halving,
                            show_accuracy=options.show_accuracy,
                            run_tags=experiment.options.run_tags, checkpoints=checkpoints)

    def execute(tasks: list[Task]) -> None:
        for task in tasks:
            trials[task.key].assign(task)
        train_trials(experiment, [trials[task.key] for task in tasks], recorder)

    def end(status: str) -> None:
        if status == "FINISHED":  # an interrupted grid's plots are left to a later command
            if checkpoints is not None:
                checkpoints.tidy()
            plots.attach_done(wait=True, warn=progress.write)
            training_metrics = pool.metrics() if pool is not None else {}
            if training_metrics:
                tracker.log_outputs(summary.parent_run_id, metrics=training_metrics)
        progress.close()
        if options.parent_run_id is None:
            tracker.end_run(summary.parent_run_id, status)

    with recording(recorder, end):
        if halving:
            _successive_halving(pending, grid, execute, recorder, progress.write)
        else:
            execute([Task(key, trial.cell, _stage(trial, continued, checkpoints),
                          options.final_measure) for key, trial in enumerate(trials)])
    return summary


@contextlib.contextmanager
def recording(recorder: GridRecorder, end: Callable[[str], None]) -> Iterator[None]:
    """The training of a grid's (or a search's) cells, with SIGINT and SIGTERM raising
    GridInterrupted: the runs still open when the block leaves are ended KILLED, then
    ``end`` gets the parent run's status (FINISHED, KILLED, or FAILED for any other
    exception)."""
    status = "FAILED"
    try:
        with interrupts_raise():
            yield
        status = "FINISHED"
    except GridInterrupted as interruption:
        status = "KILLED"
        recorder.kill_open_runs(f"interrupted by {interruption}")
        raise
    finally:
        recorder.kill_open_runs("the grid runner stopped unexpectedly")
        end(status)


def _continued_runs(the_plan: Plan, checkpoints: EpochCheckpoints | None,
                    tracker: Tracker) -> dict[str, tuple[str, dict[str, int]]]:
    """The stopped runs that their cells continue from a checkpoint, with the last step
    each metric has in them (a continued cell sends its checkpoint's figures again, and
    only those missing are logged).

    They are read now, while the store has just answered: once training starts the
    server may go away, and training goes on without it.

    Returns:
        For each cell hash, its stopped run's id and the last steps.
    """
    if checkpoints is None:
        return {}
    return {cell_hash: (run_id, tracker.logged_steps(run_id))
            for cell_hash, run_id in the_plan.interrupted.items()
            if checkpoints.saved(cell_hash)}


def _stage(trial: CellTrial, continued: dict[str, tuple[str, dict[str, int]]],
           checkpoints: EpochCheckpoints | None) -> Stage | None:
    """A cell's stage: continued from its checkpoint in its stopped run when it has both,
    else from its first epoch, saving checkpoints (None: without)."""
    if checkpoints is None:
        return None
    run = continued.get(trial.cell.cell_hash)
    stage = checkpoints.resumed_stage(trial.cell) if run is not None else None
    if stage is None:
        return checkpoints.first_stage(trial.cell)
    trial.resume_run, trial.logged = run[0], dict(run[1])
    return stage


def train_trials(experiment: OpenedExperiment, trials: list[CellTrial], recorder: GridRecorder,
                 then: Callable[[CellTrial], list[CellTrial]] | None = None) -> None:
    """Train the trials' tasks in the pool's trainers, or one after another in this
    process, passing their events to the recorder.

    Args:
        experiment: The opened experiment (its pool, or None: this process trains).
        trials: The cells, each with its task assigned.
        recorder: Handles every event.
        then: Called with each trial whose task ended; the trials it returns, with new
            tasks assigned, train too (CellPool.run).
    """
    if experiment.pool is not None:
        experiment.data.release()  # the workers load their own, or have it from Ray
        experiment.pool.run(trials, recorder, then)
        return
    options = experiment.options
    if options.deterministic:
        start_tensorflow_quietly(options.threads_per_cell, deterministic=True)
    elif not nvidia_gpu_visible():  # on a GPU machine, CUDA's lines say something
        start_tensorflow_quietly()

    def record(event: Event) -> None:  # nothing else waits: write each event now
        recorder.handle(event)
        recorder.flush()

    by_key = {trial.key: trial for trial in trials}
    queue = in_graph_order([trial.task for trial in trials])
    while queue:
        task = queue.pop(0)
        execute_cell(task, experiment.data, record)
        if then is not None:
            more = then(by_key[task.key])
            by_key.update((trial.key, trial) for trial in more)
            queue += [trial.task for trial in more]


def _successive_halving(cells: list[Cell], grid: Grid, execute: Callable[[list[Task]], None],
                        recorder: GridRecorder, echo: Callable[[str], None]) -> None:
    """Train the rungs the oracle asks for, and end each run where the oracle drops it."""
    with tempfile.TemporaryDirectory(prefix="cvlib-halving-",
                                     ignore_cleanup_errors=True) as checkpoints:
        oracle = SuccessiveHalving(cells, grid.search, checkpoints)
        while tasks := oracle.next_tasks():
            execute(tasks)
            results = recorder.take_kept()
            decision = oracle.tell(results)
            for key, rung in decision.ended.items():
                recorder.close(key, results[key], {RUNG_TAG: rung, SEARCH_TAG: HALVING})
            echo(str(decision))
