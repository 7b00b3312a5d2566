"""One grid through the engine: plan what is left, hand the tasks to the trainers (worker
processes or this one), and record their events, under one parent run.

A failure in one cell is recorded in its run and never stops the grid; SIGINT and
SIGTERM end the open runs as KILLED before the exception leaves.
"""
from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING, Callable

from cvlib.data import DataCache
from cvlib.engine.cell import execute_cell
from cvlib.engine.child import start_tensorflow_quietly
from cvlib.engine.events import Event, Task
from cvlib.engine.halving import SuccessiveHalving
from cvlib.engine.hosts import nvidia_gpu_visible
from cvlib.engine.plot_writer import PlotWriter
from cvlib.engine.pool import WorkerPool
from cvlib.engine.progress import Progress
from cvlib.engine.recorder import GridRecorder, GridSummary
from cvlib.engine.resume import DEFAULT_STALE_AFTER, plan
from cvlib.engine.scheduling import in_graph_order
from cvlib.engine.signals import GridInterrupted, interrupts_raise
from cvlib.grids import Cell, Grid
from cvlib.tracking.schema import BACKEND_PARAM, LOCAL_BACKEND, RUNG_TAG, SEARCH_TAG

if TYPE_CHECKING:
    from cvlib.engine.ray_pool import RayPool
    from cvlib.tracking.writer import Tracker
    from cvlib.training import FinalMeasure

HALVING = "halving"


def is_halving(grid: Grid, cells: list[Cell] | None = None) -> bool:
    """Whether a grid runs as successive halving: its ``search:`` says so and it trains its
    own cells (given cells, such as sanity checks or lr-search trials, train as given:
    rungs would cut them short)."""
    return cells is None and grid.search.strategy == HALVING


def default_experiment(grid: Grid) -> str:
    """The experiment a grid's runs go to: its name, plus ``-halving`` for successive
    halving, which always trains every cell anew and must never supersede a plain grid's
    runs."""
    return f"{grid.name}-{HALVING}" if is_halving(grid) else grid.name


def backend_params(pool: WorkerPool | RayPool | None) -> dict[str, str]:
    """The params that say what trains a parent run's cells."""
    return pool.params() if pool is not None else {BACKEND_PARAM: LOCAL_BACKEND}


def train_grid(grid: Grid, tracker: Tracker, experiment: str, experiment_id: str,
               data: DataCache, pool: WorkerPool | RayPool | None, plots: PlotWriter,
               echo: Callable[[str], None], cells: list[Cell] | None = None,
               parent_run_id: str | None = None, rerun: bool = False,
               supersede: bool = True, stale_after: float = DEFAULT_STALE_AFTER,
               progress_bar: bool | None = None, final_measure: FinalMeasure | None = None,
               show_accuracy: bool = True) -> GridSummary:
    """Train the cells of a grid that have no result yet, and record each in the store.

    Args:
        grid: The validated grid.
        tracker: The store.
        experiment: The experiment's name, and its id.
        experiment_id: Its MLflow id.
        data: The command's data cache (already checked).
        pool: Worker processes or Ray actors, or None to train in this process.
        plots: Draws the cells' plots.
        echo: Receives the plan's summary and one line per cell.
        cells: Train these cells, each for all its epochs, instead of the grid's product;
            the grid then gives only the name, and its ``search:`` section is not used.
        parent_run_id: An open run to nest the cells under, left open; default: a new
            parent run for this grid, ended here.
        rerun: Train every cell again; the runs it replaces go to MLflow's trash.
        supersede: With ``rerun``, False keeps the replaced runs active (a cell trained
            again for a further measurement, whose earlier run another study reads).
        stale_after: Seconds after which a RUNNING run without heartbeat counts as dead.
        progress_bar: Show a progress bar (default: when stderr is a terminal).
        final_measure: Measures each trained model once more (see training.train_cell).
        show_accuracy: Each cell's progress line gives its accuracies (else its epochs).

    Returns:
        The GridSummary.

    Raises:
        GridInterrupted: on SIGINT or SIGTERM, after the open runs were marked KILLED.
    """
    halving = is_halving(grid, cells)
    cells = grid.cells() if cells is None else cells
    the_plan = plan(cells, tracker.run_records(experiment_id), rerun=rerun or halving,
                    stale_after=stale_after)
    if not supersede:
        the_plan.superseded.clear()
    tracker.mark_killed(the_plan.dead_runs, "its process died while it ran "
                                            "(found by a later cvlib run)")
    echo(the_plan.summary())
    summary = GridSummary(plan=the_plan, experiment=experiment, experiment_id=experiment_id)
    pending = the_plan.pending
    if not pending:
        return summary
    workers = min(pool.workers if pool is not None else 1, len(pending))
    summary.parent_run_id = parent_run_id or tracker.start_grid(
        grid, experiment_id, len(pending), workers, backend_params(pool))
    plots.start()  # its imports overlap the first cell
    progress = Progress(pending, echo, bar=progress_bar, store=tracker.store_health())
    recorder = GridRecorder(tracker, experiment_id, summary.parent_run_id, grid, pending,
                            summary, progress, plots, keep_open=halving,
                            show_accuracy=show_accuracy)

    def execute(tasks: list[Task]) -> None:
        if pool is not None:
            data.release()  # the workers load their own, or have it from Ray's object store
            pool.run(tasks, recorder)
            return
        if not nvidia_gpu_visible():  # on a GPU machine, CUDA's lines say something
            start_tensorflow_quietly()

        def record(event: Event) -> None:  # nothing else waits: write each event now
            recorder.handle(event)
            recorder.flush()

        for task in in_graph_order(tasks):
            execute_cell(task, data, record)

    status = "FAILED"
    try:
        with interrupts_raise():
            if halving:
                _successive_halving(pending, grid, execute, recorder, progress.write)
            else:
                execute([Task(key, cell, final_measure=final_measure)
                         for key, cell in enumerate(pending)])
        status = "FINISHED"
    except GridInterrupted as interruption:
        status = "KILLED"
        recorder.kill_open_runs(f"interrupted by {interruption}")
        raise
    finally:
        recorder.kill_open_runs("the grid runner stopped unexpectedly")
        if status == "FINISHED":  # an interrupted grid's plots are dropped
            plots.attach_done(wait=True, warn=progress.write)
            training_metrics = pool.metrics() if pool is not None else {}
            if training_metrics:
                tracker.log_outputs(summary.parent_run_id, metrics=training_metrics)
        progress.close()
        if parent_run_id is None:
            tracker.end_run(summary.parent_run_id, status)
    return summary


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
