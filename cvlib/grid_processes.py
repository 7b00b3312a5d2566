"""The helper processes a command keeps across its grids: the workers that train the
cells and the process that draws their plots. lr-search runs a grid per stage and cell,
the claims one or more per study; with the processes shared, each worker imports
TensorFlow, and the plot helper matplotlib, once per command instead of once per grid."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

from cvlib.plot_writer import PlotWriter
from cvlib.workers import WorkerPool


@dataclass
class GridProcesses:
    """What ``run_grid`` trains and draws with, instead of starting its own."""

    # The workers that train the cells; None: the calling process trains them.
    pool: WorkerPool | None
    # Draws the cells' plots beside the training.
    plots: PlotWriter


@contextlib.contextmanager
def shared_processes(data_dir: str | None, workers: int,
                     warn: Callable[[str], None] = print) -> Iterator[GridProcesses]:
    """Start the workers' fork server now, so that its TensorFlow import overlaps the
    caller's own start (its data check, its store), and stop the workers and the plot
    helper at the end. The workers start with the first grid, at most one per cell; the
    plot helper with the first grid that has cells to train.

    Args:
        data_dir: CIFAR-10 folder for the workers' loaders.
        workers: Worker processes; 1: no pool (the calling process trains).
        warn: Receives a line for each cell whose plots could not be drawn.

    Yields:
        The GridProcesses. Each grid waits for its own plots, so that only an
        interrupted grid's are dropped when these processes stop.
    """
    plots = PlotWriter(warn=warn)
    pool = None
    finished = False
    try:
        if workers > 1:
            pool = WorkerPool(data_dir, workers)
            pool.warm_up()
        yield GridProcesses(pool, plots)
        finished = True
    finally:
        if pool is not None:
            pool.close()  # terminated: an interrupted command leaves cells unrun
        plots.close(wait=finished)
