"""A cell's saved training state, as one file: its model (weights and optimizer state,
Keras's ``.keras`` format) and everything else that makes its next epoch what it would
have been without a stop: the epoch, the divergence baseline, and the figures so far.

The file is a zip archive of the model, the state as JSON, and the SHA-256 of both; it is
written to a temporary file, flushed to disk, and renamed over the previous one, so that
a reader finds the whole of one checkpoint or another, never a mix. Knows Keras only
inside the functions that save or load a model.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from cvlib.errors import CvlibError
from cvlib.tracking.journal import fsync_path

if TYPE_CHECKING:
    import keras

MODEL_MEMBER, STATE_MEMBER, CHECKSUM_MEMBER = "model.keras", "state.json", "checksums.json"


class CorruptCheckpoint(CvlibError):
    """A checkpoint file that is cut short, altered or unreadable."""


@dataclass
class TrainingState:
    """What a checkpoint holds beside the model."""

    # Epochs trained (the next epoch continues from here).
    epoch: int
    # The cell's loss before its first update: the divergence test's baseline.
    initial_loss: float | None = None
    # Keras's per-epoch history of the fit so far.
    history: dict[str, list[float]] = field(default_factory=dict)
    # Every metrics call so far, as [step, {metric: value}].
    logged: list[list[Any]] = field(default_factory=list)
    # The statistics' rows and the steps measured (stats.StatsRecorder).
    stats_rows: list[dict[str, Any]] = field(default_factory=list)
    stats_steps: list[int] = field(default_factory=list)
    # callbacks.BatchRecord's rows: [epoch, running loss, running accuracy].
    batch_rows: list[list[float]] = field(default_factory=list)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_checkpoint(path: str | Path, model: keras.Model, state: TrainingState) -> None:
    """Save a model and its training state atomically over ``path``.

    Args:
        path: The checkpoint file; its folder is created if missing.
        model: The compiled model (its optimizer's state is saved too).
        state: The rest of the training state.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".saving-") as folder:
        model_file = Path(folder) / MODEL_MEMBER
        model.save(model_file)
        members = {MODEL_MEMBER: model_file.read_bytes(),
                   STATE_MEMBER: json.dumps(dataclasses.asdict(state)).encode()}
    checksums = json.dumps({name: _digest(data) for name, data in members.items()})
    archive_bytes = io.BytesIO()
    # Stored, not deflated: the weights hardly compress, and saving stays cheap.
    with zipfile.ZipFile(archive_bytes, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        archive.writestr(CHECKSUM_MEMBER, checksums)
    replace_file(path, archive_bytes.getvalue())


def replace_file(path: str | Path, data: bytes) -> None:
    """Write a file atomically: to a temporary file beside it, flushed to disk, then
    renamed over it (a checkpoint, also one that arrives from another machine)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
    try:
        with open(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)  # the rename itself


def _members(path: str | Path) -> dict[str, bytes]:
    """The checked members of a checkpoint file.

    Raises:
        CorruptCheckpoint: the file is missing a member, cut short or altered.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = {name: archive.read(name) for name in (MODEL_MEMBER, STATE_MEMBER)}
            checksums = json.loads(archive.read(CHECKSUM_MEMBER))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise CorruptCheckpoint(f"checkpoint {path} is unreadable ({error})") from None
    for name, data in members.items():
        if checksums.get(name) != _digest(data):
            raise CorruptCheckpoint(f"checkpoint {path}: {name} does not match its checksum")
    return members


def read_state(path: str | Path) -> TrainingState:
    """The training state of a checkpoint file, checked against its checksums.

    Raises:
        CorruptCheckpoint: the file is missing, cut short or altered.
    """
    try:
        return TrainingState(**json.loads(_members(path)[STATE_MEMBER]))
    except (TypeError, ValueError) as error:
        raise CorruptCheckpoint(f"checkpoint {path} holds no training state ({error})") from None


@contextlib.contextmanager
def model_file(path: str | Path) -> Iterator[str]:
    """The checkpoint's model as a ``.keras`` file, for ``keras.Model.load_weights``,
    while the block runs.

    Raises:
        CorruptCheckpoint: the file is missing, cut short or altered.
    """
    data = _members(path)[MODEL_MEMBER]
    with tempfile.TemporaryDirectory(prefix="cvlib-checkpoint-") as folder:
        model = Path(folder) / MODEL_MEMBER
        model.write_bytes(data)
        yield str(model)
