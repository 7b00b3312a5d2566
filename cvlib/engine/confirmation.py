"""The confirmation stage of a grid (``search: {confirm: {top: K, seeds: S}}``): once every
cell has a result, the best K cells by mean val_accuracy over the grid's seeds train
again with further seeds, in the same experiment, until each has S seeds.

The ranking reads the grid's own seeds only, never the confirmation's, so a rerun finds
the same K cells and the plan skips the confirmation runs that finished.
"""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Callable

from cvlib.cells import Cell
from cvlib.config import ConfirmConfig
from cvlib.grids import Grid
from cvlib.tracking.schema import DIVERGED

if TYPE_CHECKING:
    import pandas as pd


def extra_seeds(grid_seeds: tuple[int, ...], total: int) -> list[int]:
    """The seeds a confirmed cell trains besides the grid's: the smallest unused ones.

    Args:
        grid_seeds: The grid's seeds.
        total: Seeds per confirmed cell in all.

    Returns:
        ``total - len(set(grid_seeds))`` seeds, ascending.
    """
    taken, seeds, candidate = set(grid_seeds), [], 0
    while len(taken) + len(seeds) < total:
        if candidate not in taken:
            seeds.append(candidate)
        candidate += 1
    return seeds


def best_cells(cells: list[Cell], finished: pd.DataFrame, top: int) -> list[Cell] | None:
    """The ``top`` best settings by mean val_accuracy over their seeds; a diverged seed
    puts its cell out of the running, as in successive halving.

    Args:
        cells: The grid's cells (every seed), in grid order.
        finished: The finished run of each cell, indexed by cell hash, with the columns
            ``outcome`` and ``val_accuracy`` (tracking.reads.finished_cell_runs).
        top: How many to keep.

    Returns:
        One cell per chosen setting (its first seed's), best first, ties in grid order;
        None while some cell has no finished run (the ranking would change on resume).
    """
    if not all(cell.cell_hash in finished.index for cell in cells):
        return None
    finished = finished.reindex(columns=["outcome", "val_accuracy"])
    by_setting: dict[tuple, list[Cell]] = {}
    for cell in cells:
        by_setting.setdefault(_setting_key(cell), []).append(cell)
    scored = []
    for order, seeds in enumerate(by_setting.values()):
        rows = finished.loc[[cell.cell_hash for cell in seeds]]
        if (rows["outcome"] == DIVERGED).any():
            continue
        accuracy = rows["val_accuracy"].astype(float).mean()
        scored.append((-accuracy if math.isfinite(accuracy) else math.inf, order, seeds[0]))
    return [cell for _, _, cell in sorted(scored, key=lambda item: item[:2])[:top]]


def confirmation_cells(grid: Grid, best: list[Cell], confirm: ConfirmConfig) -> list[Cell]:
    """The runs that confirm the best cells: each with the seeds it lacks.

    Args:
        grid: The grid.
        best: The cells to confirm (best_cells).
        confirm: The confirmation's settings.

    Returns:
        One cell per best cell and extra seed, best cell first, seeds innermost.
    """
    seeds = extra_seeds(grid.seeds, confirm.seeds)
    return [dataclasses.replace(cell, seed=seed) for cell in best for seed in seeds]


def confirmation_stage(grid: Grid, finished: Callable[[list[Cell]], pd.DataFrame],
                       echo: Callable[[str], None]) -> list[Cell]:
    """The cells of a grid's confirmation stage, saying in one line what it trains.

    Args:
        grid: A grid with ``search.confirm``.
        finished: Reads the finished runs of cells (engine.experiment.Experiment's
            finished_runs).
        echo: Receives the line.

    Returns:
        The cells to train; none while some cell of the grid has no result.
    """
    confirm = grid.search.confirm
    cells = grid.cells()
    best = best_cells(cells, finished(cells), confirm.top)
    if best is None:
        echo(f"confirmation of the best {confirm.top} cells waits until every cell has a "
             f"result: run the grid again")
        return []
    extra = confirmation_cells(grid, best, confirm)
    seeds = ", ".join(map(str, extra_seeds(grid.seeds, confirm.seeds)))
    echo(f"confirmation: the best {len(best)} cells by val_accuracy again with seed(s) "
         f"{seeds}, {confirm.seeds} seeds each: {len(extra)} runs")
    return extra


def _setting_key(cell: Cell) -> tuple:
    """What a cell is without its seed."""
    return cell.data, cell.model, cell.train
