"""Plots that a stopped command left undrawn, drawn by a later one from the store.

A cell run that ends FINISHED while its plots are still being drawn carries
``schema.PLOTS_TAG: pending`` until they are attached (engine.plot_writer). A command
killed in between leaves the mark; the next command on the experiment finds the marked
runs whose owner has died (as resume judges a RUNNING run's owner) and draws their plots
from what the store holds, the per-epoch metrics and the statistics' table, without
training the cell again.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from cvlib.engine.plot_writer import PlotWriter
from cvlib.engine.resume import is_dead
from cvlib.tracking.owner import this_process
from cvlib.tracking.records import RunRecord
from cvlib.tracking.schema import ACCURACY, LOSS, VAL_ACCURACY, VAL_LOSS

if TYPE_CHECKING:
    from cvlib.tracking.writer import Tracker

# The per-epoch metrics the plots draw (plots.training_curves).
CURVE_METRICS = (LOSS, ACCURACY, VAL_LOSS, VAL_ACCURACY)


def unplotted(records: list[RunRecord], stale_after: float,
              now: float | None = None) -> list[RunRecord]:
    """The FINISHED runs whose plots are pending and whose owner has died.

    Args:
        records: An experiment's runs.
        stale_after: Seconds after which a silent owner on another host counts as dead.
        now: The current unix time (for tests).

    Returns:
        Those runs, in the records' order.
    """
    now = time.time() if now is None else now
    here = this_process()
    return [record for record in records if record.status == "FINISHED"
            and record.plots_pending and is_dead(record, stale_after, now, here)]


def redraw_lost_plots(tracker: Tracker, plots: PlotWriter, records: list[RunRecord],
                      stale_after: float) -> int:
    """Hand the plot helper the plots of the runs :func:`unplotted` finds, drawn from the
    store; they are attached, and their mark replaced, as a grid's own plots are.

    Args:
        tracker: The store.
        plots: The command's plot helper.
        records: The experiment's runs.
        stale_after: Seconds after which a silent owner on another host counts as dead.

    Returns:
        How many runs' plots were handed over.
    """
    runs = unplotted(records, stale_after)
    if not runs:
        return 0
    from cvlib.tracking.reads import epoch_history, read_stats_table

    uri = tracker.tracking_uri
    for record in runs:
        plots.submit(tracker.cell_run(record.run_id),
                     epoch_history(uri, record.run_id, CURVE_METRICS),
                     read_stats_table(uri, record.run_id), marked=True)
    return len(runs)
