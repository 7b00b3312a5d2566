"""Cells' plots drawn in a helper process, beside the training.

Drawing a cell's figures takes about half a second of matplotlib, which the training
process would otherwise add to every cell. One spawned helper process (matplotlib
and pandas, no TensorFlow) draws them while the next cell trains, and the grid waits
for the last ones before it ends. A cell's run is closed as soon as its training
ends and its plots join it when drawn; a run closed before then carries the mark
``schema.PLOTS_TAG: pending`` (:meth:`PlotWriter.pending_mark`) until they are
attached, so that a command killed in between leaves its runs marked, and the next
command draws their plots from the store (:mod:`~cvlib.engine.plot_repair`): metrics
and the statistics' table are logged before the run closes.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from cvlib.engine.child import set_up_child, without_main_module
from cvlib.tracking.schema import (
    PLOTS_DRAWN,
    PLOTS_ERROR_TAG,
    PLOTS_FAILED,
    PLOTS_FOLDER,
    PLOTS_PENDING,
    PLOTS_TAG,
    TAG_VALUE_LIMIT,
)

if TYPE_CHECKING:
    import pandas as pd

PRIORITY_BELOW_TRAINING = 10  # added to the helper's nice value
# An interrupted grid waits this long for the cell being drawn (about half a second),
# so that no drawing goes on into a folder it is removing.
DRAWING_GRACE_SECONDS = 5


def _set_up_helper(scratch: str) -> None:
    set_up_child(scratch)
    # Training comes first: the plots take the cores' idle moments (a fresh model's
    # single-threaded tracing, logging), and the grid waits for the last ones anyway.
    os.nice(PRIORITY_BELOW_TRAINING)


def _import_plotting() -> None:
    import cvlib.plots  # noqa: F401  (matplotlib and pandas, before the first cell ends)


def _draw(history: dict[str, list[float]], stats: pd.DataFrame | None, folder: str) -> str:
    from cvlib.plots import write_cell_plots

    write_cell_plots(history, stats, Path(folder) / PLOTS_FOLDER)
    return folder


def drawn_plots(history: dict[str, list[float]],
                stats: pd.DataFrame | None) -> dict[str, bytes]:
    """A cell's plots drawn here, as PNG files by name (a Ray actor draws its cells'
    plots, so that the driver's one helper does not limit how many trainers it feeds).

    Returns:
        File name -> PNG bytes.
    """
    with tempfile.TemporaryDirectory(prefix="cvlib-plots-") as folder:
        _draw(history, stats, folder)
        return {path.name: path.read_bytes()
                for path in sorted(Path(folder, PLOTS_FOLDER).iterdir())}


@dataclass
class _Pending:
    """A cell's plots being drawn, for its run."""

    future: Future
    run: Any
    folder: str
    # What the helper draws them from, to draw them again in a new helper if it dies.
    history: dict[str, list[float]]
    stats: Any
    # Whether the run carries the pending mark, to be replaced once they are attached.
    marked: bool = False
    redrawn: bool = False


class PlotWriter:
    """Draws cells' plots in a helper process and attaches them to their runs.

    Args:
        warn: Receives one line when a cell's plots could not be drawn.
    """

    def __init__(self, warn: Callable[[str], None] = print):
        self.warn = warn
        self._pool: ProcessPoolExecutor | None = None
        self._pending: list[_Pending] = []
        # Holds the cells' plot folders; the helper removes it if this process dies.
        self._scratch: str | None = None

    def start(self) -> None:
        """Start the helper process now, so that its imports overlap the first cell."""
        self._executor()

    def submit(self, run, history: dict[str, list[float]], stats: pd.DataFrame | None,
               marked: bool = False) -> None:
        """Queue a cell's plots; they reach ``run.log_artifacts`` once drawn.

        Args:
            run: The cell's run (a tracking.CellRun; it may be finished by then).
            history: Keras's per-epoch history.
            stats: The statistics' long table, or None when they were off.
            marked: The run carries the pending mark already (a run whose plots a
                stopped command left undrawn).
        """
        folder = tempfile.mkdtemp(dir=self._scratch_folder())
        self._pending.append(_Pending(self._draw_later(history, stats, folder), run, folder,
                                      history, stats, marked))

    def pending_mark(self, run) -> dict[str, str]:
        """The tag that marks a run ending now as waiting for its plots (none when they
        are attached already); the mark is replaced once they are.

        Args:
            run: The cell's run (a tracking.CellRun), about to end FINISHED.

        Returns:
            ``{schema.PLOTS_TAG: schema.PLOTS_PENDING}``, or nothing.
        """
        mine = [pending for pending in self._pending if pending.run is run]
        for pending in mine:
            pending.marked = True
        return {PLOTS_TAG: PLOTS_PENDING} if mine else {}

    def attach_drawn(self, run, plots: dict[str, bytes]) -> None:
        """Attach plots drawn elsewhere (:func:`drawn_plots`) to a run now.

        Args:
            run: The cell's run (a tracking.CellRun).
            plots: File name -> PNG bytes.
        """
        with tempfile.TemporaryDirectory(prefix="cvlib-plots-") as folder:
            Path(folder, PLOTS_FOLDER).mkdir()
            for name, payload in plots.items():
                Path(folder, PLOTS_FOLDER, name).write_bytes(payload)
            run.log_artifacts(folder)

    def attach_done(self, wait: bool = False,
                    warn: Callable[[str], None] | None = None) -> None:
        """Log the plots drawn so far to their runs (with ``wait``: all of them).

        Args:
            wait: Wait for the plots still being drawn.
            warn: Where a failure's line goes, instead of the writer's own ``warn``
                (a grid's progress bar).
        """
        warn = warn or self.warn
        waiting = []
        for pending in self._pending:
            if not (wait or pending.future.done()):
                waiting.append(pending)
            elif not pending.redrawn and isinstance(pending.future.exception(),
                                                    BrokenProcessPool):
                # The helper died (killed): a new one draws them, once.
                pending.future = self._draw_later(pending.history, pending.stats,
                                                  pending.folder)
                pending.redrawn = True
                waiting.append(pending)
            else:
                self._attached(pending, warn)
        self._pending = waiting
        if wait and waiting:
            self.attach_done(wait=True, warn=warn)

    @staticmethod
    def _attached(pending: _Pending, warn: Callable[[str], None]) -> None:
        """Attach a drawing's plots to its run, or tag the run with why there are none;
        either replaces the pending mark."""
        try:
            pending.future.result()
            pending.run.log_artifacts(pending.folder)
            if pending.marked:
                pending.run.set_tags({PLOTS_TAG: PLOTS_DRAWN})
        except Exception as error:  # lost figures must not stop the grid
            message = f"{type(error).__name__}: {error}"
            tags = {PLOTS_ERROR_TAG: message[:TAG_VALUE_LIMIT]}
            if pending.marked:
                tags[PLOTS_TAG] = PLOTS_FAILED
            pending.run.set_tags(tags)
            warn(f"plots of run {pending.run.run_id} not drawn: {message}")
        finally:
            shutil.rmtree(pending.folder, ignore_errors=True)

    def close(self, wait: bool = True) -> None:
        """Attach every pending plot (``wait``), or drop them (an interrupted grid)."""
        if wait:
            self.attach_done(wait=True)
        for pending in self._pending:
            pending.future.cancel()
        concurrent.futures.wait([pending.future for pending in self._pending],
                                timeout=DRAWING_GRACE_SECONDS)
        self._pending = []
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def _scratch_folder(self) -> str:
        if self._scratch is None:
            self._scratch = tempfile.mkdtemp(prefix="cvlib-plots-")
        return self._scratch

    def _draw_later(self, history: dict[str, list[float]], stats: pd.DataFrame | None,
                    folder: str) -> Future:
        """Hand a drawing to the helper (a new one if it died)."""
        try:
            return self._executor().submit(_draw, history, stats, folder)
        except BrokenProcessPool:  # the helper died (killed): start another
            self._pool = None
            return self._executor().submit(_draw, history, stats, folder)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_set_up_helper, initargs=(self._scratch_folder(),))
            with without_main_module():  # the pool starts its process on the first submit
                self._pool.submit(_import_plotting)
        return self._pool
