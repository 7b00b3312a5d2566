"""Successive halving (Jamieson and Talwalkar 2016) over a grid's cells, as an oracle:
results go in, the next tasks come out; it records nothing itself.

Every cell trains for ``min_epochs``; the best ``1/reduction`` by validation
accuracy (diverged and failed cells first out) go on to ``reduction`` times the
epochs, and so on up to ``max_epochs``. A cell keeps one MLflow run throughout,
tagged with the rung it reached, and continues from its saved weights and optimizer
state on the batches an uninterrupted run would see next (each epoch's order depends
on the seed and the epoch alone: ``feeds.epoch_batches``), its divergence tested
against its own initial loss, which its first rung measured. A cell of the last rung
therefore ends with exactly ``max_epochs`` epochs, trained and judged as a plain grid's
cell with that many epochs is, to float precision.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from cvlib.cells import Cell, Stage
from cvlib.config import SearchConfig
from cvlib.engine.events import StageResult, Task
from cvlib.tracking.schema import DIVERGED


def survivors(results: dict[int, StageResult], reduction: int) -> list[int]:
    """The keys of the cells that go on: the best ``ceil(n / reduction)`` by
    val_accuracy; a diverged cell ranks below every other and never goes on.

    Args:
        results: Each cell's result of the rung (failed cells have none).
        reduction: The search's reduction factor.

    Returns:
        The keys, best first.
    """
    def rank(key: int) -> tuple[bool, float]:
        result = results[key]
        accuracy = result.val_accuracy
        return (result.outcome != DIVERGED, -math.inf if accuracy is None else accuracy)

    ranked = sorted(results, key=rank, reverse=True)
    return [key for key in ranked[:math.ceil(len(ranked) / reduction)]
            if results[key].outcome != DIVERGED]


class SuccessiveHalving:
    """The rungs of a search over cells keyed by their index.

    Use: ``tasks = oracle.next_tasks()``; train them; ``oracle.tell(results)``, which
    says which cells end at this rung; repeat until ``next_tasks()`` is empty.

    Args:
        cells: The cells, keyed by their index.
        search: The search settings (rung epochs, reduction).
        checkpoints: A folder for the cells' saved models between rungs.
    """

    def __init__(self, cells: list[Cell], search: SearchConfig, checkpoints: str | Path):
        self.cells = cells
        self.search = search
        self.rungs = search.rungs()
        self.checkpoints = Path(checkpoints)
        self.rung = 0
        self.alive = list(range(len(cells)))
        self.start_epoch = 0
        # Each cell's loss before its first update, from its first rung.
        self.initial_losses: dict[int, float | None] = {}

    def next_tasks(self) -> list[Task]:
        """The tasks of the current rung (none once the search is over)."""
        if self.rung >= len(self.rungs):
            return []
        end = self.rungs[self.rung]
        return [Task(key, self.cells[key],
                     Stage(self.start_epoch, end, str(self.checkpoints / f"{key}.keras"),
                           self.initial_losses.get(key)))
                for key in self.alive]

    def tell(self, results: dict[int, StageResult]) -> RungDecision:
        """Take the current rung's results and move on to the next rung.

        Args:
            results: The result of each cell that finished the rung (a failed cell has
                none, and its run has already ended).

        Returns:
            The RungDecision: which cells end here, and how many go on.
        """
        rung, end_epoch = self.rung, self.rungs[self.rung]
        for key, result in results.items():
            self.initial_losses[key] = result.initial_loss
        keep = [] if rung == len(self.rungs) - 1 else survivors(results, self.search.reduction)
        self.alive, self.start_epoch = keep, end_epoch
        self.rung = rung + 1 if keep else len(self.rungs)
        return RungDecision(rung, len(self.rungs), end_epoch, len(results),
                            {key: rung for key in results if key not in keep}, len(keep))


@dataclass(frozen=True)
class RungDecision:
    """What one rung decided."""

    # The rung's index (from 0), of how many, and the epoch its cells trained to.
    rung: int
    rungs: int
    end_epoch: int
    # Cells that finished the rung.
    trained: int
    # The cells whose runs end here (dropped, or at the last rung), with the rung's index.
    ended: dict[int, int]
    # Cells that go on to the next rung.
    going_on: int

    def __str__(self) -> str:
        return (f"rung {self.rung + 1}/{self.rungs}: {self.trained} cells trained to epoch "
                f"{self.end_epoch}" + (f"; the best {self.going_on} go on" if self.going_on
                                       else ""))
