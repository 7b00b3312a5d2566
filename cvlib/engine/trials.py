"""One cell of a grid as the command's process follows it: a :class:`CellTrial` holds
all of its state, as KerasTuner's Trial holds a trial's. The pool's loop
(:mod:`~cvlib.engine.pool`), its retry policy (:mod:`~cvlib.engine.retries`) and the
recorder (:mod:`~cvlib.engine.recorder`) read and change this one object; nothing keeps
a cell's state in a table of its own keyed by the cell's index."""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cvlib.cells import Cell, Stage
from cvlib.engine.events import StageResult, Task

if TYPE_CHECKING:
    from cvlib.tracking.writer import CellRun


class Status(enum.Enum):
    """Where a cell's current task is."""

    WAITING = "waiting"  # for a trainer
    TRAINING = "training"  # held by a trainer
    ENDED = "ended"  # finished or failed (the cell's last word for this task)


@dataclass(eq=False)
class CellTrial:
    """A cell of a grid, the task it trains now, and what has happened to it."""

    # The cell's index among the grid's pending cells: every event names it.
    key: int
    cell: Cell
    # What it trains now: all of it, or a stage (successive halving's rung).
    task: Task | None = None
    status: Status = Status.WAITING
    # Whether its trainer has taken the current task: losing the trainer before costs
    # the cell nothing (the task goes back to the queue), after, one of its retries.
    taken: bool = False
    # How many times it was lost with its trainer.
    losses: int = 0
    # Tags of every run it starts, beside the grid's (a sampling search's trial number
    # and values: a run that fails or is killed says which trial it was too).
    tags: dict[str, Any] = field(default_factory=dict)
    # --- The recorder's side. ---
    # Its open run (tracking.CellRun), or None.
    run: CellRun | None = None
    # Its stages' per-epoch history and statistics so far, when its run stays open
    # between stages (successive halving): written when the run ends.
    history: dict[str, list[float]] | None = None
    stats: Any = None
    # Where its stages trained, in order.
    trained_on: list[str] = field(default_factory=list)
    # A stage's result waiting for the engine's decision (successive halving).
    kept: StageResult | None = None
    # Its latest stage's model (events.ModelSaved's files), logged when its run ends.
    model_files: dict[str, bytes] | None = None
    # A stopped run of an earlier command that its task continues (engine.epoch_checkpoints):
    # opened again when the task starts.
    resume_run: str | None = None
    # The last step logged to its run of each metric: a continued task sends the figures
    # of its checkpoint again, and those already logged are not logged twice.
    logged: dict[str, int] = field(default_factory=dict)

    def assign(self, task: Task) -> None:
        """Make a task the trial's current one, waiting for a trainer."""
        self.task, self.status, self.taken = task, Status.WAITING, False

    def restart(self) -> None:
        """After the loss of its trainer: train again from the first epoch, in a new run
        (a stage then trains every epoch up to its end), forgetting the lost run's
        figures."""
        stage = self.task.stage
        if stage is not None:  # measuring its initial loss again, as a first stage does
            self.task = dataclasses.replace(self.task, stage=dataclasses.replace(
                stage, start_epoch=0, initial_loss=None, resumed=False))
        self.status, self.taken = Status.WAITING, False
        self.history = self.stats = self.model_files = None
        self.trained_on, self.resume_run, self.logged = [], None, {}

    def resume(self, stage: Stage) -> None:
        """After the loss of its trainer: continue from its checkpoint, in the same run."""
        self.task = dataclasses.replace(self.task, stage=stage)
        self.status, self.taken = Status.WAITING, False

    def unlogged(self, series: dict[str, list[tuple[int, float]]]
                 ) -> dict[str, list[tuple[int, float]]]:
        """The points of metric histories that its run does not hold yet (each metric's
        steps after the last one logged), taken as logged now."""
        fresh = {}
        for key, points in series.items():
            last = self.logged.get(key, -1)
            points = [(step, value) for step, value in points if step > last]
            if points:
                fresh[key] = points
                self.logged[key] = max(step for step, _ in points)
        return fresh

    def join_figures(self, history: dict[str, list[float]], stats) -> None:
        """Append a stage's history and statistics to the earlier stages'."""
        if self.history is None:
            self.history, self.stats = history, stats
            return
        import pandas as pd

        earlier = self.history
        self.history = {key: earlier.get(key, []) + history.get(key, [])
                        for key in {**earlier, **history}}
        tables = [table for table in (self.stats, stats) if table is not None]
        self.stats = pd.concat(tables, ignore_index=True) if tables else None

    def take_figures(self) -> tuple[dict[str, list[float]], Any] | None:
        """The stages' figures held so far, now handed over (None when none are held)."""
        if self.history is None:
            return None
        figures = self.history, self.stats
        self.history = self.stats = None
        return figures


def trials_of(cells: list[Cell]) -> list[CellTrial]:
    """A trial per cell, keyed by its index."""
    return [CellTrial(key, cell) for key, cell in enumerate(cells)]
