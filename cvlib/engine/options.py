"""A command's options for the engine, each set carried whole from the command line to
where it is used: what every grid of the command shares (:class:`EngineOptions`), and how
one grid trains (:class:`GridOptions`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cvlib.cells import Cell
from cvlib.engine.ray_cluster import RayOptions
from cvlib.engine.resume import DEFAULT_STALE_AFTER
from cvlib.engine.retries import DEFAULT_CELL_RETRIES
from cvlib.tracking.uris import DEFAULT_STORE_TIMEOUT_MINUTES

if TYPE_CHECKING:
    from cvlib.training import FinalMeasure


@dataclass(frozen=True)
class EngineOptions:
    """What trains a command's cells, from what data, and how long its store may be away
    (shared by every grid of the command)."""

    # CIFAR-10 folder (else $CVLIB_DATA_DIR, else Keras's download).
    data_dir: str | None = None
    # Cells trained at once, each in its own worker process (1: in the command's process).
    workers: int = 1
    # Train the cells on Ray instead (``workers`` is then not used).
    ray: RayOptions | None = None
    # Times a cell lost with its trainer (a worker process or a Ray node that died)
    # trains again from its first epoch.
    cell_retries: int = DEFAULT_CELL_RETRIES
    # Seconds a tracking server may stay unreachable (its writes wait in the local
    # journal meanwhile) before the command gives up.
    store_timeout: float = DEFAULT_STORE_TIMEOUT_MINUTES * 60
    # Show a progress bar; None: when stderr is a terminal.
    progress_bar: bool | None = None
    # Every cell trains with TensorFlow's op determinism and ``threads_per_cell``
    # intra-op threads (one inter-op thread), wherever it trains, so that its figures
    # do not depend on ``workers``. Off: a local worker gets usable cores / workers
    # threads, the command's own process TensorFlow's default.
    deterministic: bool = False
    # A deterministic cell's intra-op threads in a worker process or this process (a
    # Ray actor's are its RayOptions.cpus_per_cell).
    threads_per_cell: int = 1
    # Tags for every cell run of the command (the grid file's git commit:
    # engine.provenance.grid_file_commit).
    run_tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GridOptions:
    """How one grid of a command trains."""

    # Train these cells, each for all its epochs, instead of the grid's product; the grid
    # then gives only the name, and its ``search:`` section is not used.
    cells: list[Cell] | None = None
    # An open run to nest the cells under, left open; None: a new parent run for the
    # grid, ended with it.
    parent_run_id: str | None = None
    # Train every cell again; the runs it replaces go to MLflow's trash.
    rerun: bool = False
    # With ``rerun``, False keeps the replaced runs active (a cell trained again for a
    # further measurement, whose earlier run another study reads).
    supersede: bool = True
    # Seconds after which a RUNNING run without heartbeat counts as dead.
    stale_after: float = DEFAULT_STALE_AFTER
    # Measures each trained model once more (see training.train_cell).
    final_measure: FinalMeasure | None = None
    # Each cell's progress line gives its accuracies (else its epochs).
    show_accuracy: bool = True
