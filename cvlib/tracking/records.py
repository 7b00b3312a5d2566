"""What a store says about one run, as resuming a grid needs it: which cell, which
status, and which process owns it. MLflow-free."""
from __future__ import annotations

from dataclasses import dataclass, field

from cvlib.tracking.owner import Owner


@dataclass(frozen=True)
class RunRecord:
    """What resuming needs to know of one existing run."""

    run_id: str
    cell_hash: str | None  # None for a grid's (or a study's) parent run
    status: str  # RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    heartbeat: float | None = None  # unix time of the last sign of life
    owner: Owner = field(default_factory=Owner)  # the process that ran it
    # A FINISHED run whose plots were still being drawn when it ended (schema.PLOTS_TAG).
    plots_pending: bool = False
