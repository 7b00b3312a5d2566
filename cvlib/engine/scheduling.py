"""Which cell a process trains next: the cells of one graph one after another (a traced
graph is reused), a new graph with the most waiting work first, so that a grid ends on
short cells rather than one long cell with the other cores idle."""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Collection, Sequence

from cvlib.cells import Cell
from cvlib.config import CIFAR10_TRAIN_IMAGES
from cvlib.engine.events import Task
from cvlib.vocabulary import ACTIVATIONS, BN_PLACEMENTS

if TYPE_CHECKING:
    from cvlib.engine.trials import CellTrial


def in_graph_order(tasks: Sequence[Task]) -> list[Task]:
    """Tasks reordered so that the cells of each graph follow each other, graphs in the
    order they first appear: one process then traces each graph once, however many
    graphs the grid has and whatever order its axes come in.

    Returns:
        The same tasks, stably sorted by their graph's first appearance.
    """
    first_seen: dict[tuple, int] = {}
    for task in tasks:
        first_seen.setdefault(task.cell.graph_key, len(first_seen))
    return sorted(tasks, key=lambda task: first_seen[task.cell.graph_key])


def expected_cost(cell: Cell) -> float:
    """A cell's training time in arbitrary units (only comparisons mean anything):
    epochs x training images x the relative cost of its image pass (the vocabulary's
    cost weights of its activation and BN placement)."""
    images = cell.data.train_size or CIFAR10_TRAIN_IMAGES - cell.data.val_size
    pass_cost = ACTIVATIONS[cell.model.activation].cost * BN_PLACEMENTS[cell.model.bn].cost
    return cell.train.epochs * images * pass_cost


def pick_task(cells: Sequence[Cell], recent_graphs: Sequence[tuple],
              graphs_elsewhere: Collection[tuple]) -> int:
    """Which waiting cell a worker process should train next, so that it reuses the
    compiled models it holds, traces each graph as few times as the workers allow, and
    the grid ends on short cells (a long last cell keeps the other workers idle).

    Args:
        cells: The cells waiting, in grid order.
        recent_graphs: The graphs (``Cell.graph_key``) this worker has trained, most
            recent last.
        graphs_elsewhere: The graphs the other workers have trained.

    Returns:
        The index in ``cells`` of a cell of the graph this worker trained most recently,
        else of the graph with the most waiting work (``expected_cost``) that no other
        worker has trained, else of the one with the most waiting work; the first
        such cell, and among equal graphs the first in grid order.
    """
    keys = [cell.graph_key for cell in cells]
    for graph in reversed(recent_graphs):
        if graph in keys:
            return keys.index(graph)
    waiting_work: collections.Counter[tuple] = collections.Counter()
    for key, cell in zip(keys, cells):  # in grid order: max() keeps the first of equals
        waiting_work[key] += expected_cost(cell)
    untouched = [key for key in waiting_work if key not in graphs_elsewhere]
    return keys.index(max(untouched or waiting_work, key=waiting_work.__getitem__))


@dataclass(kw_only=True, eq=False)
class Slot:
    """A trainer that takes one task at a time (a worker process, a Ray actor): whether
    it has started, the graphs whose compiled models it holds, and the cell it trains.
    Each backend adds what it needs to reach its trainer."""

    # Whether it can take a task (a Ray actor is placed and started), and since when.
    ready: bool = True
    ready_at: float = 0.0
    # The graphs (``Cell.graph_key``) it has trained, most recent last.
    graphs: list[tuple] = field(default_factory=list)
    # The cell it trains, or None when idle.
    holding: CellTrial | None = None


def hand_out(slot: Slot, slots: Collection[Slot],
             waiting: list[CellTrial]) -> CellTrial | None:
    """Give an idle slot the waiting cell that best reuses its compiled models
    (:func:`pick_task`), taken out of ``waiting``.

    Args:
        slot: The idle slot.
        slots: Every slot (the others' graphs are avoided).
        waiting: The cells whose tasks wait for a trainer.

    Returns:
        The cell now held by the slot, or None when nothing is waiting.
    """
    if not waiting:
        return None
    elsewhere = {graph for other in slots if other is not slot for graph in other.graphs}
    trial = waiting.pop(pick_task([trial.cell for trial in waiting], slot.graphs, elsewhere))
    graph = trial.cell.graph_key
    slot.graphs = [g for g in slot.graphs if g != graph] + [graph]
    slot.holding = trial
    return trial
