"""The sections of a grid file: ``data``, ``model``, ``train`` and ``search``.

The keys of each section are exactly the fields of its dataclass below, with one
comment each; ``model`` keys are exactly the keyword arguments of
:func:`cvlib.models.build_model`. :mod:`cvlib.grids` reads grid files into these.

This module imports neither Keras nor MLflow, so bad input is rejected in well under
a second, before any training starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cvlib.fields import ConfigError, build_dataclass, spec, validate
from cvlib.vocabulary import ACTIVATIONS, BN_PLACEMENTS, INITIALIZERS

ARCHS = ("cnn", "mlp")
OPTIMIZERS = ("sgd", "adam")
PREPROCESSES = ("none", "mean_image", "per_channel_mean", "standardize")
COMPILE_MODES = ("auto", "xla", "graph")
PRECISIONS = ("float32", "mixed_bfloat16")
DATASETS = ("cifar10",)
SEARCH_STRATEGIES = ("grid", "halving", "random", "tpe")
# Strategies that sample their cells from a grid file's ``space:`` (cvlib.spaces).
SAMPLING_STRATEGIES = ("random", "tpe")
PRUNERS = ("none", "halving", "hyperband")
SAVE_MODELS = ("final", "none")
CIFAR10_TRAIN_IMAGES = 50_000


@dataclass(frozen=True)
class DataConfig:
    """The ``data:`` section: which images, how many, and how they are preprocessed."""

    # Dataset name; CIFAR-10 is the only one so far.
    dataset: str = spec("cifar10", choices=DATASETS)
    # Training images, a stratified subset of what is left after validation; null = all.
    train_size: int | None = spec(None, minimum=1, optional=True)
    # Validation images, carved (stratified, seeded) from the 50,000 training images.
    val_size: int = spec(5000, minimum=1)
    # Test images for the final evaluation (a stratified subset); null = all 10,000.
    test_size: int | None = spec(None, minimum=1, optional=True)
    # Input preprocessing, with statistics from the training split only.
    preprocess: str = spec("per_channel_mean", choices=PREPROCESSES)
    # Seed of the train/validation split and subsets; the same for every cell.
    split_seed: int = spec(0, minimum=0)

    def __post_init__(self):
        validate(self, "data")
        if (self.train_size or 0) + self.val_size > CIFAR10_TRAIN_IMAGES:
            raise ConfigError(f"data.train_size + data.val_size = "
                              f"{(self.train_size or 0) + self.val_size} is above the "
                              f"{CIFAR10_TRAIN_IMAGES:,} CIFAR-10 training images")


@dataclass(frozen=True)
class ModelConfig:
    """The ``model:`` section: exactly the keyword arguments of ``build_model``."""

    # Architecture: cnn (conv stages with max-pooling, then a dense layer) or mlp.
    arch: str = spec("cnn", choices=ARCHS)
    # cnn: filters of each stage's 3x3 convolution; one 2x2 max-pool per stage.
    widths: tuple[int, ...] = spec((32, 64, 128), minimum=1)
    # cnn: units of the dense layer before the 10 logits.
    dense_units: int = spec(128, minimum=1)
    # mlp: number of hidden dense layers (10 in the CS231n initialization study).
    depth: int = spec(3, minimum=1)
    # mlp: units of each hidden layer (500 in the CS231n initialization study).
    width: int = spec(500, minimum=1)
    # Nonlinearity after every hidden layer (cvlib.vocabulary.ACTIVATIONS).
    activation: str = spec("relu", choices=ACTIVATIONS.names())
    # Kernel initializer of every conv and dense layer, and of the logits unless
    # logits_initializer names another.
    initializer: str = spec("he", choices=INITIALIZERS.names())
    # Kernel initializer of the logits layer alone; None: the same as initializer (a
    # value equal to initializer is stored as None: the same cell).
    logits_initializer: str | None = spec(None, choices=INITIALIZERS.names(), optional=True)
    # BatchNormalization: none, before the activation, or after it.
    bn: str = spec("none", choices=BN_PLACEMENTS.names())
    # Arithmetic of the layers: float32, or mixed_bfloat16 (bfloat16 compute, float32
    # weights, logits and loss: Keras's mixed precision). bfloat16 keeps float32's
    # range but about 3 significant digits; whether it is faster depends on the CPU
    # (docs/design.md).
    precision: str = spec("float32", choices=PRECISIONS)

    def __post_init__(self):
        validate(self, "model")
        for optional, meant in MODEL_NONE_MEANS.items():
            if getattr(self, optional) == getattr(self, meant):
                object.__setattr__(self, optional, None)


# Optional model settings whose None means another setting's value. A value equal to that
# setting's is stored as None: one model, one spelling, so one cell hash and one run.
MODEL_NONE_MEANS = {"logits_initializer": "initializer"}


@dataclass(frozen=True)
class TrainConfig:
    """The ``train:`` section: how the model is compiled and fitted."""

    # Passes over the training images; 0 evaluates the initialized model only.
    epochs: int = spec(10, minimum=0)
    # Images per gradient step.
    batch_size: int = spec(128, minimum=1)
    # sgd (with momentum) or adam.
    optimizer: str = spec("sgd", choices=OPTIMIZERS)
    # Step size; must be above 0.
    learning_rate: float = spec(0.01, minimum=0, exclusive_minimum=True)
    # SGD momentum (ignored by adam).
    momentum: float = spec(0.9, minimum=0)
    # Decoupled weight decay of the optimizer; 0 = none.
    weight_decay: float = spec(0.0, minimum=0)
    # Activation, gradient and update statistics every N epochs (also at step 0 and
    # after the last epoch); 0 turns them off.
    stats_every: int = spec(1, minimum=0)
    # Validation images in the fixed probe batch of the statistics (at most val_size).
    stats_probe: int = spec(500, minimum=1)
    # How the train step is compiled: xla, graph (tf.function without XLA), or auto:
    # Keras's own choice, which is graph on a CPU-only machine and XLA with an
    # accelerator. On a 2-core CPU, XLA trained at half the speed (docs/design.md).
    compile_mode: str = spec("auto", choices=COMPILE_MODES)
    # final: the trained model, taking raw uint8 images, is logged as an MLflow model
    # (under model/ in the cell's run; a diverged cell logs none); none: no model.
    save_model: str = spec("final", choices=SAVE_MODELS)
    # Save the cell's training state every N epochs (under mlruns/checkpoints/ in the
    # command's folder), from which a stopped grid resumes the cell; 0 turns it off.
    checkpoint_every: int = spec(1, minimum=0)

    def __post_init__(self):
        validate(self, "train")


@dataclass(frozen=True)
class ConfirmConfig:
    """The ``search.confirm:`` section: train the best cells again with more seeds."""

    # How many of the best cells (by mean val_accuracy over the grid's seeds) to confirm.
    top: int = spec(6, minimum=1)
    # Seeds of each confirmed cell in total: the grid's, then the smallest unused ones.
    seeds: int = spec(3, minimum=2)

    def __post_init__(self):
        validate(self, "search.confirm")


@dataclass(frozen=True)
class SearchConfig:
    """The ``search:`` section: train every cell fully, successive halving, or sample
    cells from the ``space:``."""

    # grid: every cell for train.epochs; halving: successive halving over rungs;
    # random or tpe: ``trials`` cells sampled from the space (Optuna's RandomSampler or
    # TPESampler).
    strategy: str = spec("grid", choices=SEARCH_STRATEGIES)
    # random, tpe: how many trials (cells) the search trains in all.
    trials: int = spec(20, minimum=1)
    # random, tpe: seed of the sampler; the same seed and the same finished trials give
    # the same next proposals.
    seed: int = spec(0, minimum=0)
    # random, tpe: stop unpromising trials early by their val_accuracy after each rung
    # of min_epochs * reduction**k epochs: none, halving (Optuna's
    # SuccessiveHalvingPruner) or hyperband (its HyperbandPruner).
    pruner: str = spec("none", choices=PRUNERS)
    # halving: epochs of the first rung (random, tpe: the pruner's first rung).
    min_epochs: int = spec(1, minimum=1)
    # halving: epochs of the last rung; its cells end with as many epochs as a plain
    # grid with train.epochs = max_epochs (cells are expanded with that value).
    max_epochs: int = spec(9, minimum=1)
    # halving: each rung keeps the best 1/reduction of the cells by val_accuracy and
    # trains them reduction times as many epochs (random, tpe: the pruner's reduction
    # factor).
    reduction: int = spec(3, minimum=2)
    # grid: once every cell has a result, train the best ``top`` cells again until each
    # has ``seeds`` seeds, in the same experiment ({top: K, seeds: S}); null = no
    # confirmation.
    confirm: ConfirmConfig | None = spec(None, optional=True, section=ConfirmConfig)

    def __post_init__(self):
        validate(self, "search")
        if self.min_epochs > self.max_epochs:
            raise ConfigError(f"search.min_epochs ({self.min_epochs}) is above "
                              f"search.max_epochs ({self.max_epochs})")
        if self.confirm is not None and self.strategy != "grid":
            why = ("halving trains every cell anew on each run, so its confirmation could "
                   "not resume") if self.strategy == "halving" else (
                "a search trains one seed per trial; confirm its best cells with a grid "
                "of their settings")
            raise ConfigError(f"search.confirm needs search.strategy grid, not "
                              f"{self.strategy}: {why}")
        if self.pruner != "none" and self.strategy not in SAMPLING_STRATEGIES:
            raise ConfigError(f"search.pruner {self.pruner} needs search.strategy "
                              f"{' or '.join(SAMPLING_STRATEGIES)}, not {self.strategy}")

    def rungs(self, max_epochs: int | None = None) -> list[int]:
        """The epoch each rung trains to, e.g. [1, 3, 9].

        Args:
            max_epochs: The last rung's epoch (default: ``max_epochs``; a pruned search
                gives train.epochs).
        """
        last = self.max_epochs if max_epochs is None else max_epochs
        epochs = [min(self.min_epochs, last)]
        while epochs[-1] * self.reduction < last:
            epochs.append(epochs[-1] * self.reduction)
        return epochs if epochs[-1] == last else epochs + [last]


# The sections a cell is made of, and every section a grid file may hold.
CELL_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
SECTIONS = {**CELL_SECTIONS, "search": SearchConfig}


def build_section(section: str, raw: dict[str, Any]):
    """Build a section's dataclass, rejecting unknown keys with the valid ones.

    Args:
        section: ``data``, ``model``, ``train`` or ``search``.
        raw: Its keys and values, as written in a grid file.

    Returns:
        The validated dataclass.

    Raises:
        ConfigError: for an unknown key or an invalid value, naming the valid ones.
    """
    return build_dataclass(SECTIONS[section], raw, section)
