"""What a grid run still has to do, given the runs already in its experiment.

A cell's result counts once its run is FINISHED (a diverged cell is FINISHED too:
a result, not a failure). Cells whose runs failed or were killed are redone; the plan
names a killed cell's latest stopped run, in which it continues when it has an epoch
checkpoint (engine.epoch_checkpoints). A run left RUNNING counts as dead when the process
that owned it is gone (where this process can check it: tracking.owner), or else when its
heartbeat is older than a timeout; such runs are to be marked KILLED.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from cvlib.cells import Cell
from cvlib.grids import distinct_cells
from cvlib.tracking.owner import Owner, owner_alive, this_process
from cvlib.tracking.records import RunRecord

# A RUNNING run whose heartbeat is older than this counts as dead (seconds).
DEFAULT_STALE_AFTER = 30 * 60


@dataclass
class Plan:
    """The cells of a grid sorted by what to do with them."""

    # All of the grid's cells, in grid order, each cell hash once.
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
    # Of each cell to redo, its latest run that was stopped (KILLED, or left RUNNING by a
    # dead process), by cell hash: the run it continues in, from its checkpoint.
    interrupted: dict[str, str] = field(default_factory=dict)

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


def is_dead(record: RunRecord, stale_after: float = DEFAULT_STALE_AFTER,
            now: float | None = None, here: Owner | None = None) -> bool:
    """Whether a RUNNING run's owner is gone.

    Where the owner's process can be checked (the same boot and pid namespace as this
    process), whether that process still runs decides: a long epoch is no sign of death.
    Elsewhere (another machine or container, or a run whose tags name its host and pid
    only), a heartbeat older than ``stale_after`` seconds, or none.

    Args:
        record: The run.
        stale_after: Heartbeat timeout in seconds.
        now: The current unix time (for tests).
        here: This process (default: tracking.owner.this_process()).
    """
    alive = owner_alive(record.owner, here)
    if alive is not None:
        return not alive
    now = time.time() if now is None else now
    return record.heartbeat is None or now - record.heartbeat > stale_after


def plan(cells: list[Cell], records: list[RunRecord], rerun: bool = False,
         stale_after: float = DEFAULT_STALE_AFTER, now: float | None = None) -> Plan:
    """Sort a grid's cells by what to do with them.

    Args:
        cells: The grid's cells (a cell given twice, as two grids trained together may
            hold it, is trained once).
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
    here = this_process()
    cells = distinct_cells(cells)
    result = Plan(cells=cells)
    result.dead_runs += [r for r in by_hash.get(None, [])  # grids' parent runs
                         if r.status == "RUNNING" and is_dead(r, stale_after, now, here)]
    for cell in cells:
        runs = by_hash.get(cell.cell_hash, [])
        running = [r for r in runs if r.status == "RUNNING"]
        dead = [r for r in running if is_dead(r, stale_after, now, here)]
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
            stopped = [r.run_id for r in runs if r.status == "KILLED" or r in dead]
            if stopped:  # runs come newest first
                result.interrupted[cell.cell_hash] = stopped[0]
        else:
            result.to_run.append(cell)
    return result
