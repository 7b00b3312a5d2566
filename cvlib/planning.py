"""What a grid run still has to do, given the runs already in its experiment.

A cell's result counts once its run is FINISHED (a diverged cell is FINISHED too:
a result, not a failure). Cells whose runs failed or were killed are redone. A run
left RUNNING counts as dead when the process that owned it is gone, or when its
heartbeat is older than a timeout; such runs are to be marked KILLED.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Collection, Sequence

from cvlib.config import CIFAR10_TRAIN_IMAGES, Cell

# A RUNNING run whose heartbeat is older than this counts as dead (seconds).
DEFAULT_STALE_AFTER = 30 * 60
# An image pass's time relative to a plain cell's, on 2 CPU cores (benchmarks/README.md):
# BN cells took about 1.3x as long per epoch, maxout cells about 3-4x a relu cell.
BN_PASS_COST = 1.3
MAXOUT_PASS_COST = 3.5


@dataclass(frozen=True)
class Stage:
    """A stretch of a cell's training (successive halving trains cells in rungs)."""

    # Epochs trained before (0: build a fresh model).
    start_epoch: int
    # Train up to this epoch.
    end_epoch: int
    # A .keras file: read when start_epoch > 0, written at the end.
    checkpoint: str | None = None


@dataclass(frozen=True)
class RunRecord:
    """What resuming needs to know of one existing cell run."""

    run_id: str
    cell_hash: str | None  # None for a grid's parent run
    status: str  # RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    heartbeat: float | None = None  # unix time of the last sign of life
    host: str | None = None  # machine and process that ran it
    pid: int | None = None


@dataclass
class Plan:
    """The cells of a grid sorted by what to do with them."""

    # All of the grid's cells, in grid order.
    cells: list[Cell]
    # Cells with a FINISHED run: skipped.
    done: list[Cell] = field(default_factory=list)
    # Cells never run.
    to_run: list[Cell] = field(default_factory=list)
    # Cells whose runs failed or were killed (or died RUNNING): run again.
    to_redo: list[Cell] = field(default_factory=list)
    # Cells running right now in another live process: left alone.
    running_elsewhere: list[Cell] = field(default_factory=list)
    # Runs left RUNNING by a dead process: to be marked KILLED.
    dead_runs: list[RunRecord] = field(default_factory=list)
    # FINISHED runs that a forced rerun will supersede, by cell hash.
    superseded: dict[str, list[str]] = field(default_factory=dict)

    @property
    def pending(self) -> list[Cell]:
        """The cells to train, in grid order."""
        pending = {id(cell) for cell in self.to_run + self.to_redo}
        return [cell for cell in self.cells if id(cell) in pending]

    def summary(self) -> str:
        """One line: how many cells are done, to run and to redo."""
        line = (f"{len(self.done)} cells done, {len(self.to_run)} to run, "
                f"{len(self.to_redo)} to redo")
        if self.running_elsewhere:
            line += f", {len(self.running_elsewhere)} running in another process"
        if self.dead_runs:
            line += f" ({len(self.dead_runs)} runs left RUNNING by a dead process marked KILLED)"
        return line


def graph_key(cell: Cell) -> tuple:
    """What fixes a cell's traced graph: its model settings but the initializer, and its
    optimizer's settings but the learning rate (a variable). Cells of one graph can
    share a compiled model (``training.ModelCache``), skipping Keras's tracing."""
    train = cell.train
    model = tuple((field.name, getattr(cell.model, field.name))
                  for field in dataclasses.fields(cell.model) if field.name != "initializer")
    return model, train.optimizer, train.momentum, train.weight_decay, train.compile_mode


def in_graph_order(tasks: Sequence[tuple]) -> list[tuple]:
    """Tasks reordered so that the cells of each graph follow each other, graphs in the
    order they first appear: one process then traces each graph once, however many
    graphs the grid has and whatever order its axes come in.

    Args:
        tasks: (key, cell, stage) triples.

    Returns:
        The same triples, stably sorted by their graph's first appearance.
    """
    first_seen: dict[tuple, int] = {}
    for _, cell, _ in tasks:
        first_seen.setdefault(graph_key(cell), len(first_seen))
    return sorted(tasks, key=lambda task: first_seen[graph_key(task[1])])


def expected_cost(cell: Cell) -> float:
    """A cell's training time in arbitrary units (only comparisons mean anything):
    epochs x training images x the relative cost of its image pass."""
    images = cell.data.train_size or CIFAR10_TRAIN_IMAGES - cell.data.val_size
    pass_cost = (BN_PASS_COST if cell.model.bn != "none" else 1.0) * \
        (MAXOUT_PASS_COST if cell.model.activation == "maxout" else 1.0)
    return cell.train.epochs * images * pass_cost


def pick_task(cells: Sequence[Cell], recent_graphs: Sequence[tuple],
              graphs_elsewhere: Collection[tuple]) -> int:
    """Which waiting cell a worker process should train next, so that it reuses the
    compiled models it holds, traces each graph as few times as the workers allow, and
    the grid ends on short cells (a long last cell keeps the other workers idle).

    Args:
        cells: The cells waiting, in grid order.
        recent_graphs: The graphs (``graph_key``) this worker has trained, most
            recent last.
        graphs_elsewhere: The graphs the other workers have trained.

    Returns:
        The index in ``cells`` of a cell of the graph this worker trained most recently,
        else of the graph with the most waiting work (``expected_cost``) that no other
        worker has trained, else of the one with the most waiting work; the first
        such cell, and among equal graphs the first in grid order.
    """
    keys = [graph_key(cell) for cell in cells]
    for graph in reversed(recent_graphs):
        if graph in keys:
            return keys.index(graph)
    waiting_work: collections.Counter[tuple] = collections.Counter()
    for key, cell in zip(keys, cells):  # in grid order: max() keeps the first of equals
        waiting_work[key] += expected_cost(cell)
    untouched = [key for key in waiting_work if key not in graphs_elsewhere]
    return keys.index(max(untouched or waiting_work, key=waiting_work.__getitem__))


def this_process() -> tuple[str, int]:
    """(host name, pid) recorded on every run, to tell live owners from dead ones."""
    return socket.gethostname(), os.getpid()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_dead(record: RunRecord, stale_after: float = DEFAULT_STALE_AFTER,
            now: float | None = None) -> bool:
    """Whether a RUNNING run's owner is gone.

    On this host the owning process's existence decides (a long epoch is no sign of
    death); for a run from another host, a heartbeat older than ``stale_after``
    seconds.
    """
    host, _ = this_process()
    if record.host == host and record.pid is not None:
        return not _process_alive(record.pid)
    now = time.time() if now is None else now
    return record.heartbeat is None or now - record.heartbeat > stale_after


def plan(cells: list[Cell], records: list[RunRecord], rerun: bool = False,
         stale_after: float = DEFAULT_STALE_AFTER, now: float | None = None) -> Plan:
    """Sort a grid's cells by what to do with them.

    Args:
        cells: The grid's cells.
        records: The experiment's existing runs (cell runs and grids' parent runs).
        rerun: Train every cell again; its FINISHED runs will be superseded.
        stale_after: Heartbeat timeout in seconds for RUNNING runs.
        now: The current unix time (for tests).

    Returns:
        The Plan.
    """
    by_hash: dict[str | None, list[RunRecord]] = {}
    for record in records:
        by_hash.setdefault(record.cell_hash, []).append(record)
    result = Plan(cells=list(cells))
    result.dead_runs += [r for r in by_hash.get(None, [])  # grids' parent runs
                         if r.status == "RUNNING" and is_dead(r, stale_after, now)]
    for cell in cells:
        runs = by_hash.get(cell.cell_hash, [])
        running = [r for r in runs if r.status == "RUNNING"]
        dead = [r for r in running if is_dead(r, stale_after, now)]
        result.dead_runs += dead
        finished = [r.run_id for r in runs if r.status == "FINISHED"]
        if rerun:
            (result.to_redo if runs else result.to_run).append(cell)
            if finished:
                result.superseded[cell.cell_hash] = finished
        elif finished:
            result.done.append(cell)
        elif len(dead) < len(running):
            result.running_elsewhere.append(cell)
        elif runs:
            result.to_redo.append(cell)
        else:
            result.to_run.append(cell)
    return result
