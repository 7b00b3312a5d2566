"""What the engine hands a trainer (a :class:`Task`) and what comes back: one event per
thing that happened to a cell, as small dataclasses that the recorder dispatches by type.

Events cross process boundaries (worker processes or Ray actors to the recorder), so they
hold plain data only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, Union

from cvlib.cells import Cell, Stage

if TYPE_CHECKING:
    import pandas as pd

    from cvlib.training import FinalMeasure


@dataclass(frozen=True)
class Task:
    """One cell to train, or one stage of it."""

    # The cell's index among the grid's pending cells: every event names it.
    key: int
    cell: Cell
    # Part of the training only (successive halving's rungs); None: all of it.
    stage: Stage | None = None
    # Measures the trained model once more (see training.train_cell); None: nothing.
    final_measure: FinalMeasure | None = None


@dataclass(frozen=True)
class CellStarted:
    """A cell's first stage began: its run opens, with these further params and the
    tags of what its figures depend on where it trains (engine.provenance)."""

    key: int
    params: dict[str, Any]
    environment: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricsLogged:
    """Metrics of one step (an epoch, or the final figures at the last epoch)."""

    key: int
    metrics: dict[str, float]
    step: int


@dataclass(frozen=True)
class SeriesLogged:
    """Whole metric histories at once: metric key -> [(step, value), ...]."""

    key: int
    series: dict[str, list[tuple[int, float]]]


@dataclass(frozen=True)
class FiguresReady:
    """Keras's per-epoch history and the statistics' table, for the artifacts and plots."""

    key: int
    history: dict[str, list[float]]
    stats: pd.DataFrame | None
    # The plots as PNG files by name, when drawn where the cell trained (a Ray actor):
    # the driver then only stores them. None: the driver draws them.
    plots: dict[str, bytes] | None = None


@dataclass(frozen=True)
class ModelSaved:
    """A cell's trained model, as an MLflow model's files (tracking.models.model_files):
    path in the model's folder -> contents. Logged with the run's ending; of a cell
    trained in stages, only its last stage's."""

    key: int
    files: dict[str, bytes]


@dataclass(frozen=True)
class StageResult:
    """How a cell's training (or a stage of it) ended."""

    # schema.OK or schema.DIVERGED.
    outcome: str
    # Epochs trained so far.
    epochs: int
    val_accuracy: float | None
    test_accuracy: float | None
    # The epoch (from 1) in which training diverged, and why.
    diverged_at: int | None = None
    divergence: str | None = None
    # Where it trained (host and process, or Ray node), for the run's trained_on tag.
    trained_on: str = ""
    # The cell's loss before its first update, for its next stage (cells.Stage).
    initial_loss: float | None = None


@dataclass(frozen=True)
class CellFinished:
    """A cell's training, or a stage of it, ended normally (diverging is normal)."""

    key: int
    result: StageResult


@dataclass(frozen=True)
class CellFailed:
    """A cell raised, or its worker died: its run ends FAILED."""

    key: int
    message: str
    details: str = ""


@dataclass(frozen=True)
class Heartbeat:
    """A cell is still training: sent by its trainer (a worker process, a Ray actor) when
    nothing else was for a while, so that a long epoch keeps its run's heartbeat fresh
    for commands on other hosts."""

    key: int


@dataclass(frozen=True)
class CellRetried:
    """A cell's trainer was lost with it (its process or node died): its run ends FAILED
    with the message, and the cell trains again from its first epoch, in a new run; or,
    ``continued``, the cell continues from its checkpoint in the same run."""

    key: int
    message: str
    continued: bool = False


Event = Union[CellStarted, MetricsLogged, SeriesLogged, FiguresReady, ModelSaved, CellFinished,
              CellFailed, Heartbeat, CellRetried]
# Where a trainer sends its events.
Emit = Callable[[Event], None]


@dataclass(frozen=True)
class TaskTaken:
    """A trainer took its task, before anything else about it: for the pool's loop, not
    the recorder. A trainer lost before it says so never trained the task, which goes
    back to the queue without costing the cell a retry."""

    key: int


class EventSink(Protocol):
    """Where the engine hands the trainers' events (the recorder)."""

    def handle(self, event: Event) -> None:
        """Record one event."""

    def flush(self) -> None:
        """Write what was held back: called when no event is waiting."""

# The events after which a task is over.
ENDINGS = (CellFinished, CellFailed)
