"""What a store says about one run, as resuming a grid needs it: which cell, which
status, and which process owns it. MLflow-free."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class RunRecord:
    """What resuming needs to know of one existing run."""

    run_id: str
    cell_hash: str | None  # None for a grid's (or a study's) parent run
    status: str  # RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    heartbeat: float | None = None  # unix time of the last sign of life
    host: str | None = None  # machine and process that ran it
    pid: int | None = None
    # A FINISHED run whose plots were still being drawn when it ended (schema.PLOTS_TAG).
    plots_pending: bool = False


def this_process() -> tuple[str, int]:
    """(host name, pid) recorded on every run, to tell live owners from dead ones."""
    return socket.gethostname(), os.getpid()
