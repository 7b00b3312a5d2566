"""The command's side of the cells' epoch checkpoints (cvlib.checkpoints): where they are
kept, which stage a cell trains (from its first epoch, or continued from its checkpoint),
and their removal once the cell's run has ended.

A cell's checkpoint is ``mlruns/checkpoints/CELL_HASH/checkpoint.zip`` in the command's
folder (against a tracking server too), written by whichever process trains the cell on
this machine. Its training continues from it after the command was stopped (a later
``cvlib run``) or its worker process died (the pool's retry), in the same run.
"""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Callable

from cvlib.cells import Cell, Stage
from cvlib.checkpoints import CorruptCheckpoint, read_state

# Relative to the command's folder.
CHECKPOINT_FOLDER = Path("mlruns") / "checkpoints"
CHECKPOINT_FILE = "checkpoint.zip"


def continued_stage(cell: Cell, stage: Stage | None,
                    echo: Callable[[str], None] | None = None) -> Stage | None:
    """The stage that continues a cell from the checkpoint its stage saves after every
    few epochs.

    Args:
        cell: The cell.
        stage: The stage it trained (None, or one without epoch checkpoints: nothing to
            continue from).
        echo: Receives a line when the checkpoint is unreadable.

    Returns:
        A resumed stage (cells.Stage.resumed) from the checkpoint's epoch to the cell's
        last; None when there is no checkpoint, or one cut short or altered.
    """
    if stage is None or not stage.checkpoint_every or not Path(stage.checkpoint).exists():
        return None
    try:
        state = read_state(stage.checkpoint)
    except CorruptCheckpoint as error:
        if echo is not None:
            echo(f"{cell.name}: {error}; training it again from epoch 1")
        return None
    return Stage(state.epoch, cell.train.epochs, stage.checkpoint, state.initial_loss,
                 stage.checkpoint_every, resumed=True)


class EpochCheckpoints:
    """The cells' checkpoints in one folder, a subfolder per cell hash.

    Args:
        root: The folder (relative ones are taken from the current folder now: worker
            processes may run elsewhere).
        echo: Receives a line for each checkpoint found unreadable.
    """

    def __init__(self, root: str | Path = CHECKPOINT_FOLDER,
                 echo: Callable[[str], None] = print):
        self.root = Path(root).absolute()
        self.echo = echo

    def first_stage(self, cell: Cell) -> Stage | None:
        """The stage of a cell trained from its first epoch, saving its checkpoint every
        ``train.checkpoint_every`` epochs; a checkpoint left from before is removed.

        Returns:
            The Stage, or None when the cell saves none (``checkpoint_every: 0``).
        """
        self.discard(cell)
        return self._stage(cell)

    def resumed_stage(self, cell: Cell) -> Stage | None:
        """The stage that continues a stopped cell from its checkpoint.

        Returns:
            The resumed Stage; None when the cell has no readable checkpoint (an
            unreadable one is removed, with a notice).
        """
        stage = continued_stage(cell, self._stage(cell), self.echo)
        if stage is None:
            self.discard(cell)
        return stage

    def saved(self, cell_hash: str) -> bool:
        """Whether a cell (by its hash) has a checkpoint here, readable or not."""
        return (self.root / cell_hash / CHECKPOINT_FILE).exists()

    def _stage(self, cell: Cell) -> Stage | None:
        """The stage that trains a cell from its first epoch, saving its checkpoint."""
        every = cell.train.checkpoint_every
        return Stage(0, cell.train.epochs, str(self.root / cell.cell_hash / CHECKPOINT_FILE),
                     checkpoint_every=every) if every else None

    def discard(self, cell: Cell) -> None:
        """Remove a cell's checkpoint (its run has ended, or it starts anew)."""
        shutil.rmtree(self.root / cell.cell_hash, ignore_errors=True)

    def tidy(self) -> None:
        """Remove the folder when no cell keeps a checkpoint in it; only once no trainer
        writes there (a grid has ended), which would otherwise race to create it."""
        with contextlib.suppress(OSError):  # missing, or holding a stopped cell's
            self.root.rmdir()
