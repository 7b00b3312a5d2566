"""A command's signs of life, as the heartbeat tag of its runs (schema.HEARTBEAT_TAG).

A later command that cannot check a RUNNING run's owner process (on another machine or
in another container: tracking.owner) judges the run by its heartbeat's age
(engine.resume). A cell's run beats with its metrics. The parent runs the command has
open (a grid's, a search's, a study's, the claims run) write nothing of their own while
their grids train, so they beat with every sign of life the command records.
"""
from __future__ import annotations

import time

from cvlib.tracking import schema
from cvlib.tracking.owner import this_process
from cvlib.tracking.store_writes import StoreWrites


def heartbeat_tags() -> dict[str, str]:
    """The heartbeat tag, at this second."""
    return {schema.HEARTBEAT_TAG: f"{time.time():.0f}"}


class Heartbeats:
    """The heartbeats of one command's runs.

    Args:
        writes: How writes reach the store (a heartbeat goes with the metrics, in groups).
    """

    def __init__(self, writes: StoreWrites):
        self._writes = writes
        # Each open parent run, and the heartbeat last written on it.
        self._parents: dict[str, str] = {}

    @staticmethod
    def new_run_tags() -> dict[str, str]:
        """The tags of a run the command creates: its owner (this process) and a first
        heartbeat."""
        return {**this_process().tags(), **heartbeat_tags()}

    def open_parent(self, run_id: str) -> None:
        """Beat a parent run with every sign of life, until :meth:`close_parent`."""
        self._parents[run_id] = ""

    def close_parent(self, run_id: str) -> None:
        """Stop beating a parent run (it has ended)."""
        self._parents.pop(run_id, None)

    def beat(self, run_id: str | None = None) -> None:
        """Record a sign of life: on the given run, and on every open parent run whose
        heartbeat is not of this second already.

        Args:
            run_id: A run that shows the sign of life (a cell's); None: the parents only.
        """
        tags = heartbeat_tags()
        if run_id is not None and run_id not in self._parents:
            self._writes.log_metrics(run_id, [], tags)
        for parent, last in self._parents.items():
            if last != tags[schema.HEARTBEAT_TAG]:
                self._writes.log_metrics(parent, [], tags)
                self._parents[parent] = tags[schema.HEARTBEAT_TAG]
