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


@dataclass(frozen=True)
class TrialRun:
    """What a resumed sampling search needs of one of its trials' runs."""

    # Its number (schema.TRIAL_TAG) and its sampled values (schema.TRIAL_VALUES_TAG).
    number: int
    values: dict
    # schema.OK, PRUNED or DIVERGED (ERROR: a FAILED run).
    outcome: str
    # Its last val_accuracy (None if never logged).
    val_accuracy: float | None
    cell_hash: str
    run_id: str = ""
    # Its val_accuracy after each epoch (from 1), when asked for.
    epochs: dict = field(default_factory=dict)
