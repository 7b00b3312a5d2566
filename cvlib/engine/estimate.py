"""How long a grid's cells take to train: before anything trains, from the cost model
(the multiply-adds of a cell's image passes, at a speed measured on 2 CPU cores);
as it trains, from its own epochs and cells; and the time left when several trainers
share the cells."""
from __future__ import annotations

import heapq
import statistics
from dataclasses import dataclass, field
from typing import Iterable

from cvlib.cells import Cell
from cvlib.config import ModelConfig
from cvlib.engine.scheduling import expected_cost

# CIFAR-10's image: side and channels.
IMAGE_SIDE, IMAGE_CHANNELS, CLASSES = 32, 3, 10

# Seconds of one core per unit of cell work (``cell_work``), and a cell's seconds outside
# its epochs (model set-up, the evaluations before and after training, its writes). A
# small network's image costs nearly as much as a bigger one's (TensorFlow's per-step
# work dominates on a CPU), as if each image pass did FIXED_MULTIPLY_ADDS more: fitted to
# the 12-cell grid of benchmarks/eta.py (1.7 M multiply-adds an image, 1.0 ms a weighted
# image and epoch, "calibration measured") and the seed grid of experiments/ (10.6 M, 1.2
# ms: its 84 cells in about 75 min on 2 AMD EPYC cores with 2 workers).
CORE_SECONDS_PER_UNIT = 2.0e-11
FIXED_MULTIPLY_ADDS = 50_000_000
CELL_OVERHEAD_SECONDS = 3.4
# A first epoch's time over a later one's, in a cell whose graph an earlier cell traced
# (the 12-cell grid of benchmarks/eta.py: 1.3 to 1.9, median 1.5).
REPEAT_FIRST_EPOCH = 1.5
# What a command spends before its first cell trains: importing TensorFlow and MLflow,
# starting the workers, loading CIFAR-10 (benchmarks/eta.py, "start-up").
STARTUP_SECONDS = 29.0


def multiply_adds(model: ModelConfig) -> int:
    """Multiply-adds of one image's forward pass through a cell's network.

    Args:
        model: The cell's model settings.

    Returns:
        The count over its convolutions (3x3, same padding, each followed by a 2x2
        pooling) and dense layers; activations and batch normalization are weighed by
        the vocabulary's cost weights instead (scheduling.expected_cost).
    """
    count = 0
    if model.arch == "cnn":
        side, channels = IMAGE_SIDE, IMAGE_CHANNELS
        for filters in model.widths:
            count += side * side * 9 * channels * filters
            side, channels = max(side // 2, 1), filters
        hidden, inputs = [model.dense_units], side * side * channels
    else:
        hidden, inputs = [model.width] * model.depth, IMAGE_SIDE * IMAGE_SIDE * IMAGE_CHANNELS
    for units in [*hidden, CLASSES]:
        count += inputs * units
        inputs = units
    return count


def cell_work(cell: Cell) -> float:
    """A cell's training work: its expected cost (epochs x images x the cost weight of
    its pass) times its network's multiply-adds per image and FIXED_MULTIPLY_ADDS, so
    that cells of different networks compare."""
    return expected_cost(cell) * (FIXED_MULTIPLY_ADDS + multiply_adds(cell.model))


@dataclass(frozen=True)
class Speed:
    """How fast one trainer trains: seconds per unit of ``cell_work``, and a cell's
    seconds outside its epochs."""

    seconds_per_unit: float
    cell_overhead: float

    @classmethod
    def prior(cls, workers: int, cores: int) -> Speed:
        """The cost model's speed of one of ``workers`` trainers sharing ``cores`` CPU
        cores (each gets its share of them)."""
        share = max(cores / max(workers, 1), 1e-3)
        return cls(CORE_SECONDS_PER_UNIT / share, CELL_OVERHEAD_SECONDS)


def finishing_time(busy: Iterable[float], durations: Iterable[float], workers: int) -> float:
    """Seconds until the last cell ends when ``workers`` trainers take the waiting cells,
    the longest first, each as soon as one is free (the scheduler starts costly cells
    first, scheduling.pick_task).

    Args:
        busy: Seconds left of each cell that trains now.
        durations: Seconds of each waiting cell.
        workers: Trainers.

    Returns:
        The seconds until all have ended (0 when nothing is left).
    """
    free_at = sorted(busy)
    free_at = free_at + [0.0] * max(workers - len(free_at), 0)
    heapq.heapify(free_at)
    for duration in sorted(durations, reverse=True):
        heapq.heappush(free_at, heapq.heappop(free_at) + duration)
    return max(free_at, default=0.0)


@dataclass
class _Training:
    """A cell that trains: when it started, its epochs so far, and when its last ended."""

    started: float
    epochs: int = 0
    last_epoch_end: float | None = None


@dataclass(frozen=True)
class CellTimes:
    """What a cell's time is made of: the set-up before its first epoch (building the
    model, evaluating it initialized), seconds per unit of work of its first epoch (which
    may include tracing the graph) and of each later one, and the time after its last
    (the test evaluation, the statistics, the writes)."""

    set_up: float
    first_epoch: float
    later_epochs: float
    wrap_up: float

    def cell(self, work: float, epochs: int) -> float:
        """Seconds of a whole cell of ``work`` units over ``epochs`` epochs."""
        per_epoch = work / epochs
        return (self.set_up + per_epoch * (self.first_epoch + (epochs - 1) * self.later_epochs)
                + self.wrap_up)


@dataclass
class TimeLeft:
    """The time left of a grid, from a prior speed corrected by what the grid measures:
    each part of its cells' time (CellTimes), the median of the cells measured so far.

    Two kinds of cell are told apart, as their times differ by up to 2x: a trainer's
    first cell (its set-up and wrap-up include the trainer's own warming up, so that
    they are counted only while no later cell has been measured, and never above the
    prior), and a cell whose graph an earlier cell traced (whose first epoch is shorter).

    Args:
        cells: The cells to train.
        workers: The trainers that share them.
        prior: The speed assumed before anything is measured.
    """

    cells: list[Cell]
    workers: int
    prior: Speed
    _work: dict[str, float] = field(init=False)
    _epochs: dict[str, int] = field(init=False)
    _graph: dict[str, tuple] = field(init=False)
    _traced: set[tuple] = field(init=False, default_factory=set)
    _repeat: dict[str, bool] = field(init=False, default_factory=dict)
    _started: int = field(init=False, default=0)
    _warm: dict[str, bool] = field(init=False, default_factory=dict)
    _training: dict[str, _Training] = field(init=False, default_factory=dict)
    _ended: set[str] = field(init=False, default_factory=set)
    # Measured parts: set-ups and wrap-ups by whether the trainer was warm, first
    # epochs by whether the graph was traced before.
    _set_ups: dict[bool, list[float]] = field(init=False)
    _wrap_ups: dict[bool, list[float]] = field(init=False)
    _first_epochs: dict[bool, list[float]] = field(init=False)
    _later_epochs: list[float] = field(init=False, default_factory=list)

    def __post_init__(self):
        self._work = {cell.name: cell_work(cell) for cell in self.cells}
        self._epochs = {cell.name: max(cell.train.epochs, 1) for cell in self.cells}
        self._graph = {cell.name: cell.graph_key for cell in self.cells}
        self._set_ups, self._wrap_ups, self._first_epochs = (
            {False: [], True: []}, {False: [], True: []}, {False: [], True: []})

    def cell_started(self, name: str, now: float) -> None:
        """A cell began (its trainer took it)."""
        self._training[name] = _Training(started=now)
        self._warm[name] = self._started >= self.workers
        self._started += 1
        graph = self._graph.get(name)
        self._repeat[name] = graph in self._traced
        self._traced.add(graph)

    def epoch_done(self, name: str, epoch: int, seconds: float | None, now: float) -> None:
        """A cell finished an epoch (from 1; 0 is the initialized model's evaluation).

        Args:
            name: The cell's name.
            epoch: The epoch.
            seconds: The epoch's own time, as its trainer measured it (None: since the
                cell's previous epoch).
            now: The moment it was told.
        """
        if name not in self._training:
            self.cell_started(name, now)
        training = self._training[name]
        if epoch < 1:
            return
        since = training.last_epoch_end if training.last_epoch_end is not None else now
        seconds = seconds if seconds is not None else max(now - since, 0.0)
        per_epoch = self._work.get(name, 0.0) / self._epochs.get(name, 1)
        if training.last_epoch_end is None:
            self._set_ups[self._warm[name]].append(max(now - seconds - training.started, 0.0))
            if per_epoch > 0:
                self._first_epochs[self._repeat[name]].append(seconds / per_epoch)
        elif per_epoch > 0:
            self._later_epochs.append(seconds / per_epoch)
        training.epochs, training.last_epoch_end = epoch, now

    def cell_done(self, name: str, now: float) -> None:
        """A cell ended (finished, diverged or failed)."""
        training = self._training.pop(name, None)
        self._ended.add(name)
        if (training is not None and training.last_epoch_end is not None
                and training.epochs >= self._epochs.get(name, 1)):
            self._wrap_ups[self._warm[name]].append(now - training.last_epoch_end)

    def times(self, repeat: bool) -> CellTimes:
        """The parts of a cell's time measured so far, the prior's where nothing was.

        Args:
            repeat: Whether an earlier cell traced the cell's graph.
        """
        prior = self.prior
        later = _median(self._later_epochs, _median(
            self._first_epochs[True], prior.seconds_per_unit))
        new_graph = _median(self._first_epochs[False],
                            _median(self._first_epochs[True], later))
        first = (_median(self._first_epochs[True],
                         min(new_graph, later * REPEAT_FIRST_EPOCH))
                 if repeat else new_graph)
        half = prior.cell_overhead / 2
        set_up = _median(self._set_ups[True], min(_median(self._set_ups[False], half), half))
        wrap_up = _median(self._wrap_ups[True],
                          min(_median(self._wrap_ups[False], half), half))
        return CellTimes(set_up, first, later, wrap_up)

    def remaining(self, now: float) -> float:
        """Seconds until every cell has ended, from what was measured until ``now``."""
        times = {repeat: self.times(repeat) for repeat in (False, True)}
        busy = [self._left_of(name, training, times[self._repeat[name]], now)
                for name, training in self._training.items() if name in self._work]
        traced, waiting = set(self._traced), []
        for name, work in self._work.items():
            if name in self._training or name in self._ended:
                continue
            waiting.append(times[self._graph[name] in traced].cell(work, self._epochs[name]))
            traced.add(self._graph[name])
        return finishing_time(busy, waiting, self.workers)

    def _left_of(self, name: str, training: _Training, times: CellTimes, now: float) -> float:
        """Seconds left of a cell that trains: its epochs left and its wrap-up, less the
        time since its last epoch (or since it started)."""
        epochs, per_epoch = self._epochs[name], self._work[name] / self._epochs[name]
        if training.last_epoch_end is None:
            left = times.cell(self._work[name], epochs)
            since = now - training.started
        else:
            left = (epochs - training.epochs) * per_epoch * times.later_epochs + times.wrap_up
            since = now - training.last_epoch_end
        return max(left - since, 0.0)


def _median(values: list[float], default: float) -> float:
    """The median of values, or default when there are none."""
    return statistics.median(values) if values else default


def grid_estimate(cells: list[Cell], workers: int, cores: int) -> float:
    """Seconds a command takes to train ``cells`` with ``workers`` trainers on ``cores``
    CPU cores, its start-up included, by the cost model alone."""
    if not cells:
        return 0.0
    workers = min(workers, len(cells))
    return STARTUP_SECONDS + TimeLeft(cells, workers, Speed.prior(workers, cores)).remaining(0.0)
