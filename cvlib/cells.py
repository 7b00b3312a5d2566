"""A grid's cells: one trainable point (every setting and a seed), its stable hash and
readable name, and the stretch of its training that a task trains (a Stage)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cvlib.config import CELL_SECTIONS, MODEL_NONE_MEANS, DataConfig, ModelConfig, TrainConfig


@dataclass(frozen=True)
class Cell:
    """One trainable point of a grid: every setting, and the seed."""

    # Data settings shared by cells with the same data (loaded once for them).
    data: DataConfig
    # Keyword arguments of build_model.
    model: ModelConfig
    # Compile and fit settings.
    train: TrainConfig
    # Seed of the weights and of the order of batches.
    seed: int
    # The dotted keys that the grid varies, for the run's readable name.
    varied: tuple[str, ...] = ()

    def settings(self) -> dict[str, Any]:
        """Every setting flattened to dotted keys, e.g. ``model.activation``."""
        flat = {}
        for section in CELL_SECTIONS:
            for key, value in dataclasses.asdict(getattr(self, section)).items():
                flat[f"{section}.{key}"] = list(value) if isinstance(value, tuple) else value
        return flat

    @property
    def cell_hash(self) -> str:
        """A stable hash of the full settings and the seed (the ``cvlib.cell`` tag)."""
        settings = {key: value for key, value in self.settings().items()
                    if HASH_NEUTRAL_DEFAULTS.get(key, _NO_DEFAULT) != value}
        canonical = json.dumps({**settings, "seed": self.seed}, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        """A readable run name, e.g. ``relu-he-before-s0`` or ``relu-he-none-lr0.1-s0``."""
        settings = self.settings()
        parts = [self.model.activation, self.model.initializer, self.model.bn]
        for key in self.varied:
            if key not in ("model.activation", "model.initializer", "model.bn"):
                value = settings[key]
                if value is None and key in _NONE_MEANS:  # named by the value it stands for
                    value = settings[_NONE_MEANS[key]]
                value = "x".join(map(str, value)) if isinstance(value, list) else value
                parts.append(f"{_SHORT_NAMES.get(key, key.split('.')[-1])}{value}")
        return "-".join(map(str, parts)) + f"-s{self.seed}"

    @property
    def graph_key(self) -> tuple:
        """What fixes the cell's traced graph: its model settings but the initializers, and
        its optimizer's settings but the learning rate (a variable). Cells of one graph
        can share a compiled model (``training.ModelCache``), skipping Keras's tracing."""
        model = tuple((f.name, getattr(self.model, f.name)) for f in dataclasses.fields(self.model)
                      if f.name not in ("initializer", "logits_initializer"))
        train = self.train
        return model, train.optimizer, train.momentum, train.weight_decay, train.compile_mode


@dataclass(frozen=True)
class Stage:
    """A stretch of a cell's training (successive halving trains cells in rungs)."""

    # Epochs trained before (0: build a fresh model).
    start_epoch: int
    # Train up to this epoch.
    end_epoch: int
    # A checkpoint file (cvlib.checkpoints): read when start_epoch > 0, written at the
    # end, or after every checkpoint_every-th epoch and the last.
    checkpoint: str | None = None
    # The cell's loss before its first update, as its first stage measured it: a
    # continued stage tests divergence against it, as the uninterrupted cell does.
    # None: measured by this stage (one from epoch 0).
    initial_loss: float | None = None
    # Save the checkpoint after every N-th epoch instead of at the end only (0).
    checkpoint_every: int = 0
    # The stage continues an interrupted cell from its checkpoint: the figures of the
    # epochs before are restored from it too, its run opens again, and the stage reports
    # the whole cell, as one uninterrupted training would.
    resumed: bool = False


# Settings added after stores existed, left out of the hash at their default: a cell
# that keeps the default trains what it trained before, and must keep its hash so
# that a resumed grid still finds its finished run.
HASH_NEUTRAL_DEFAULTS = {"model.precision": "float32", "model.logits_initializer": None,
                         "train.save_model": "final", "train.checkpoint_every": 1}
_NO_DEFAULT = object()

# Dotted keys of the optional settings whose None stands for another setting's value.
_NONE_MEANS = {f"model.{optional}": f"model.{meant}"
               for optional, meant in MODEL_NONE_MEANS.items()}
_SHORT_NAMES = {"train.learning_rate": "lr", "train.batch_size": "bs", "train.optimizer": "",
                "train.epochs": "ep", "data.preprocess": "", "model.arch": "",
                "model.precision": "", "model.logits_initializer": "logits_"}
