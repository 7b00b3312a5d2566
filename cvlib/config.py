"""Grid files: parse, validate, and expand into cells.

A grid file is YAML with the sections ``name``, ``data``, ``model``, ``train``,
``grid`` and ``seeds``. The keys of ``data``, ``model`` and ``train`` are exactly
the fields of the dataclasses below (and ``model`` keys are exactly the keyword
arguments of :func:`cvlib.models.build_model`). ``grid`` maps dotted keys such as
``model.activation`` to lists of values; the grid is their cartesian product, and
every cell runs once per seed.

This module does not import Keras or MLflow, so bad input is rejected in well
under a second, before any training starts.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cvlib.fields import ConfigError, spec, validate

# The vocabularies a grid file may use. cvlib.models and cvlib.data resolve
# each name through a registry with exactly these keys (tests/test_models.py
# checks that they agree).
ARCHS = ("cnn", "mlp")
ACTIVATIONS = ("relu", "leaky_relu", "prelu", "elu", "maxout", "tanh", "sigmoid",
               "selu", "gelu", "swish")
INITIALIZERS = ("small_gaussian", "unit_gaussian", "xavier", "glorot", "he")
BN_PLACEMENTS = ("none", "before", "after")
OPTIMIZERS = ("sgd", "adam")
PREPROCESSES = ("none", "mean_image", "per_channel_mean", "standardize")
COMPILE_MODES = ("auto", "xla", "graph")
PRECISIONS = ("float32", "mixed_bfloat16")
DATASETS = ("cifar10",)
CIFAR10_TRAIN_IMAGES = 50_000


# Where runs go unless --tracking-uri says otherwise (artifacts: mlruns/artifacts/).
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    return Path(tracking_uri[len("sqlite:///"):]) if tracking_uri.startswith("sqlite:///") else None


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
    # Nonlinearity after every hidden layer.
    activation: str = spec("relu", choices=ACTIVATIONS)
    # Kernel initializer of every conv and dense layer, logits included.
    initializer: str = spec("he", choices=INITIALIZERS)
    # BatchNormalization: none, before the activation, or after it.
    bn: str = spec("none", choices=BN_PLACEMENTS)
    # Arithmetic of the layers: float32, or mixed_bfloat16 (bfloat16 compute, float32
    # weights, logits and loss: Keras's mixed precision). bfloat16 keeps float32's
    # range but about 3 significant digits; on CPUs with AVX512_BF16 or AMX it trains
    # faster (benchmarks/README.md), elsewhere it can be slower.
    precision: str = spec("float32", choices=PRECISIONS)

    def __post_init__(self):
        validate(self, "model")


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
    # accelerator. On this CPU, XLA trained at half the speed (benchmarks/README.md).
    compile_mode: str = spec("auto", choices=COMPILE_MODES)

    def __post_init__(self):
        validate(self, "train")


SEARCH_STRATEGIES = ("grid", "halving")


@dataclass(frozen=True)
class SearchConfig:
    """The ``search:`` section: train every cell fully, or successive halving."""

    # grid: every cell for train.epochs; halving: successive halving over rungs.
    strategy: str = spec("grid", choices=SEARCH_STRATEGIES)
    # halving: epochs of the first rung.
    min_epochs: int = spec(1, minimum=1)
    # halving: epochs of the last rung; its cells end with as many epochs as a plain
    # grid with train.epochs = max_epochs (cells are expanded with that value).
    max_epochs: int = spec(9, minimum=1)
    # halving: each rung keeps the best 1/reduction of the cells by val_accuracy and
    # trains them reduction times as many epochs.
    reduction: int = spec(3, minimum=2)

    def __post_init__(self):
        validate(self, "search")
        if self.min_epochs > self.max_epochs:
            raise ConfigError(f"search.min_epochs ({self.min_epochs}) is above "
                              f"search.max_epochs ({self.max_epochs})")

    def rungs(self) -> list[int]:
        """The epoch each rung trains to, e.g. [1, 3, 9]; the last is max_epochs."""
        epochs = [self.min_epochs]
        while epochs[-1] * self.reduction < self.max_epochs:
            epochs.append(epochs[-1] * self.reduction)
        return epochs if epochs[-1] == self.max_epochs else epochs + [self.max_epochs]


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
TOP_LEVEL_KEYS = ("name", "data", "model", "train", "grid", "seeds", "search")


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
        for section in SECTIONS:
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
                value = "x".join(map(str, value)) if isinstance(value, list) else value
                parts.append(f"{_SHORT_NAMES.get(key, key.split('.')[-1])}{value}")
        return "-".join(map(str, parts)) + f"-s{self.seed}"


# Settings added after stores existed, left out of the hash at their default: a cell
# that keeps the default trains what it trained before, and must keep its hash so
# that a resumed grid still finds its finished run.
HASH_NEUTRAL_DEFAULTS = {"model.precision": "float32"}
_NO_DEFAULT = object()

_SHORT_NAMES = {"train.learning_rate": "lr", "train.batch_size": "bs", "train.optimizer": "",
                "train.epochs": "ep", "data.preprocess": "", "model.arch": "",
                "model.precision": ""}


@dataclass(frozen=True)
class Grid:
    """A parsed grid file: base settings, the axes to vary, and the seeds."""

    # MLflow experiment name.
    name: str
    # Base settings; a grid axis overrides one key of them.
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    # Dotted key -> values; the grid is the cartesian product of these axes.
    axes: tuple[tuple[str, tuple], ...] = ()
    # Every cell runs once per seed.
    seeds: tuple[int, ...] = (0,)
    # The grid file's text, kept for the record.
    source: str = ""
    # How the cells are searched (a plain grid, or successive halving).
    search: SearchConfig = field(default_factory=SearchConfig)

    def cells(self) -> list[Cell]:
        """Expand into cells, in a stable order: axes as written, seeds innermost.

        Returns:
            One Cell per combination of axis values and seed.
        """
        keys = [key for key, _ in self.axes]
        cells = []
        for values in itertools.product(*(values for _, values in self.axes)):
            sections = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
            for key, value in zip(keys, values):
                section, field_name = key.split(".", 1)
                sections[section][field_name] = value
            if self.search.strategy == "halving":
                sections["train"]["epochs"] = self.search.max_epochs
            built = {name: build_section(name, raw) for name, raw in sections.items()}
            for seed in self.seeds:
                cells.append(Cell(**built, seed=seed, varied=tuple(keys)))
        return cells


def build_section(section: str, raw: dict[str, Any]):
    """Build a section's dataclass, rejecting unknown keys with the valid ones."""
    cls = SearchConfig if section == "search" else SECTIONS[section]
    if not isinstance(raw, dict):
        raise ConfigError(f"'{section}' must be a mapping of keys to values, got {raw!r}")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(f'{section}.{k}' for k in unknown)}; "
                          f"valid keys of '{section}': {', '.join(valid)}")
    return cls(**raw)


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``--set KEY=VALUE``; VALUE is read as YAML (``3``, ``0.1``, ``[a, b]``).

    Returns:
        The dotted key and the parsed value.
    """
    if "=" not in text:
        raise ConfigError(f"--set {text!r} has no '='; write --set KEY=VALUE, "
                          f"e.g. --set train.epochs=3")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({error})") from None


def load_grid(path: str | Path, overrides: list[str] = ()) -> Grid:
    """Read, override and validate a grid file.

    Args:
        path: The YAML grid file.
        overrides: ``KEY=VALUE`` strings from ``--set``; a key that is also a grid
            axis replaces that axis with the single value.

    Returns:
        The validated Grid.

    Raises:
        ConfigError: for a missing or unparsable file, unknown keys or values.
    """
    path = Path(path)
    try:
        source = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"grid file not found: {path}") from None
    except OSError as error:
        raise ConfigError(f"cannot read grid file {path}: {error.strerror}") from None
    try:
        raw = yaml.safe_load(source)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or " ".join(str(error).split())
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a YAML mapping with sections "
                          f"{', '.join(TOP_LEVEL_KEYS)}")
    return grid_from_dict(raw, [parse_override(text) for text in overrides],
                          default_name=path.stem, source=source)


def grid_from_dict(raw: dict[str, Any], overrides: list[tuple[str, Any]] = (),
                   default_name: str = "cvlib", source: str = "") -> Grid:
    """Validate a grid given as a dict (the parsed YAML) plus overrides.

    Args:
        raw: The grid's sections.
        overrides: (dotted key, value) pairs applied on top.
        default_name: Experiment name when ``name`` is absent.
        source: The grid file's text, kept on the Grid.

    Returns:
        The validated Grid.
    """
    unknown = sorted(set(raw) - set(TOP_LEVEL_KEYS), key=str)
    if unknown:
        raise ConfigError(f"unknown section{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(map(str, unknown))}; valid: {', '.join(TOP_LEVEL_KEYS)}")
    sections = {name: dict(raw.get(name) or {}) if isinstance(raw.get(name) or {}, dict)
                else raw[name] for name in SECTIONS}
    axes = raw.get("grid") or {}
    if not isinstance(axes, dict):
        raise ConfigError("'grid' must map dotted keys (e.g. model.activation) to lists")
    axes = dict(axes)
    name, seeds = raw.get("name", default_name), raw.get("seeds", [0])
    search = raw.get("search") or {}
    for key, value in overrides:
        if key == "name":
            name = value
        elif key == "seeds":
            seeds = value
        elif key == "search":
            search = value
        elif key.startswith("search.") and isinstance(search, dict):
            search = {**search, key[len("search."):]: value}
        elif key.startswith("grid."):
            axes[key[len("grid."):]] = value
        else:
            _check_dotted_key(key)
            section, field_name = key.split(".", 1)
            if not isinstance(sections[section], dict):
                raise ConfigError(f"'{section}' must be a mapping of keys to values")
            sections[section][field_name] = value
            axes.pop(key, None)
    base = {name_: build_section(name_, values) for name_, values in sections.items()}
    search = build_section("search", search)
    for key, values in axes.items():
        _check_dotted_key(key)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid axis {key} must be a non-empty list of values, got {values!r}")
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"name must be a non-empty string, got {name!r}")
    grid = Grid(name=name, **base, seeds=tuple(seeds), source=source, search=search,
                axes=tuple((key, tuple(values)) for key, values in axes.items()))
    grid.cells()  # validates every axis value now, before anything runs
    return grid


def _check_dotted_key(key: str) -> None:
    """Reject a dotted key that names no section field, listing the valid ones."""
    section, _, field_name = key.partition(".")
    if section not in SECTIONS or not field_name:
        valid = [f"{s}.<key>" for s in SECTIONS] + ["grid.<section>.<key>", "name", "seeds"]
        raise ConfigError(f"unknown key {key!r}; valid: {', '.join(valid)}")
    valid_fields = [f.name for f in dataclasses.fields(SECTIONS[section])]
    if field_name not in valid_fields:
        raise ConfigError(f"unknown key {key}; valid keys of '{section}': "
                          f"{', '.join(valid_fields)}")
