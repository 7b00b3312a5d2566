"""Grid files: read, override, validate, and expand into cells.

A grid file is YAML with the sections ``name``, ``data``, ``model``, ``train``,
``search``, ``grid``, ``space`` and ``seeds``. ``data``, ``model``, ``train`` and
``search`` are the dataclasses of :mod:`cvlib.config`. ``grid`` maps dotted keys such as
``model.activation`` to lists of values; the grid is their cartesian product, and
every cell runs once per seed. A search that samples its cells (``search.strategy``
random or tpe) takes ``space:`` instead (:mod:`cvlib.spaces`; a ``grid:`` axis is then
one more choice), and trains one cell per trial with the grid's one seed.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cvlib.cells import Cell
from cvlib.config import (
    CELL_SECTIONS,
    SAMPLING_STRATEGIES,
    DataConfig,
    ModelConfig,
    SearchConfig,
    TrainConfig,
    build_section,
)
from cvlib.errors import did_you_mean
from cvlib.fields import ConfigError
from cvlib.spaces import Dimension, parse_dimension

TOP_LEVEL_KEYS = ("name", "data", "model", "train", "grid", "space", "seeds", "search")


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
    # The grid file's text as written, kept for the record.
    source: str = ""
    # How the cells are searched (a plain grid, or successive halving).
    search: SearchConfig = field(default_factory=SearchConfig)
    # The --set KEY=VALUE overrides applied on top of the file, as given.
    overrides: tuple[str, ...] = ()
    # What a sampling search (search.strategy random or tpe) samples its cells from.
    space: tuple[Dimension, ...] = ()

    @property
    def is_sampled(self) -> bool:
        """Whether the grid's cells are sampled from its space (random or tpe) rather than
        expanded from its axes."""
        return self.search.strategy in SAMPLING_STRATEGIES

    def cell_of(self, values: dict[str, Any]) -> Cell:
        """The cell of a sampled trial: the base settings with the trial's values, and the
        grid's seed.

        Args:
            values: Dotted key -> value, for keys of the space.

        Raises:
            ConfigError: for a value that the setting does not take.
        """
        sections = {name: dataclasses.asdict(getattr(self, name)) for name in CELL_SECTIONS}
        for key, value in values.items():
            section, field_name = key.split(".", 1)
            sections[section][field_name] = value
        built = {name: build_section(name, raw) for name, raw in sections.items()}
        return Cell(**built, seed=self.seeds[0],
                    varied=tuple(dimension.key for dimension in self.space))

    def resolved(self) -> dict[str, Any]:
        """The grid as it runs: the file with its overrides applied and every setting's
        default filled in, in the grid file's layout (:func:`grid_from_dict` reads it back
        into the same cells).

        Returns:
            ``name``, ``data``, ``model``, ``train``, ``search``, ``grid`` and ``seeds``.
        """
        space = {"space": {dimension.key: list(dimension.values) if dimension.is_choice
                           else {dimension.kind: list(dimension.values)}
                           for dimension in self.space}} if self.is_sampled else {}
        return _plain({"name": self.name,
                       **{section: dataclasses.asdict(getattr(self, section))
                          for section in CELL_SECTIONS},
                       "search": dataclasses.asdict(self.search),
                       "grid": dict(self.axes), **space, "seeds": self.seeds})

    def resolved_text(self) -> str:
        """:meth:`resolved` as a grid file's YAML, with a comment saying what it is."""
        body = yaml.safe_dump(self.resolved(), sort_keys=False, allow_unicode=True,
                              default_flow_style=None)
        return f"{RESOLVED_HEADER}\n{body}"

    def shared_settings(self) -> dict[str, Any]:
        """The settings every cell trains with, under their dotted keys (those an axis
        varies left out; ``train.epochs`` as successive halving sets it; a sampled search's
        base settings but the searched keys)."""
        if self.is_sampled:
            searched = {dimension.key for dimension in self.space}
            return {key: value for key, value in self.cell_of({}).settings().items()
                    if key not in searched}
        cells = self.cells()
        first = cells[0].settings()
        return {key: value for key, value in first.items()
                if all(cell.settings()[key] == value for cell in cells[1:])}

    def cells(self) -> list[Cell]:
        """Expand into cells, in a stable order: axes as written, seeds innermost.

        Returns:
            One Cell per combination of axis values and seed; a combination that is
            another's cell again (a setting spelled as what its default means, a seed
            listed twice) only once; none of a sampled search, whose cells are its
            trials' (cvlib.engine.search).
        """
        if self.is_sampled:
            return []
        keys = [key for key, _ in self.axes]
        cells = []
        for values in itertools.product(*(values for _, values in self.axes)):
            sections = {name: dataclasses.asdict(getattr(self, name)) for name in CELL_SECTIONS}
            for key, value in zip(keys, values):
                section, field_name = key.split(".", 1)
                sections[section][field_name] = value
            if self.search.strategy == "halving":
                sections["train"]["epochs"] = self.search.max_epochs
            built = {name: build_section(name, raw) for name, raw in sections.items()}
            for seed in self.seeds:
                cells.append(Cell(**built, seed=seed, varied=tuple(keys)))
        return distinct_cells(cells)


# The first lines of a grid as it runs (Grid.resolved_text).
RESOLVED_HEADER = ("# The grid as it ran: the grid file with its --set overrides applied "
                   "and every default\n# filled in (the parent run's param 'overrides' "
                   "lists them; grid_file.yaml is the file\n# as written). cvlib run takes "
                   "this file as it is.")


def _plain(value: Any) -> Any:
    """Tuples (frozen settings) as lists, in nested dicts and lists, for YAML."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def distinct_cells(cells: list[Cell]) -> list[Cell]:
    """The cells, each cell hash once (its first cell), in order."""
    first: dict[str, Cell] = {}
    for cell in cells:
        first.setdefault(cell.cell_hash, cell)
    return list(first.values())


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
    grid = grid_from_dict(raw, [parse_override(text) for text in overrides],
                          default_name=path.stem, source=source)
    return dataclasses.replace(grid, overrides=tuple(overrides))


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
                          f"{', '.join(map(str, unknown))}; valid: {', '.join(TOP_LEVEL_KEYS)}"
                          f"{did_you_mean(unknown[0], TOP_LEVEL_KEYS)}")
    sections = {name: dict(raw.get(name) or {}) if isinstance(raw.get(name) or {}, dict)
                else raw[name] for name in CELL_SECTIONS}
    axes = raw.get("grid") or {}
    if not isinstance(axes, dict):
        raise ConfigError("'grid' must map dotted keys (e.g. model.activation) to lists")
    axes = dict(axes)
    space = raw.get("space") or {}
    if not isinstance(space, dict):
        raise ConfigError("'space' must map dotted keys (e.g. train.learning_rate) to a list "
                          "or a range such as {loguniform: [0.0001, 0.1]}")
    space = dict(space)
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
            search = _set_dotted(search, key[len("search."):], value)
        elif key.startswith("grid."):
            axes[key[len("grid."):]] = value
        elif key.startswith("space."):
            space[key[len("space."):]] = value
        else:
            _check_dotted_key(key)
            section, field_name = key.split(".", 1)
            if not isinstance(sections[section], dict):
                raise ConfigError(f"'{section}' must be a mapping of keys to values")
            sections[section][field_name] = value
            axes.pop(key, None)
            space.pop(key, None)
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
    axes = tuple((key, tuple(values)) for key, values in axes.items())
    grid = Grid(name=name, **base, seeds=tuple(seeds), source=source, search=search, axes=axes)
    if grid.is_sampled:
        grid = _sampled(grid, space)
    elif space:
        raise ConfigError(f"'space' needs search.strategy {' or '.join(SAMPLING_STRATEGIES)}, "
                          f"not {search.strategy}: a grid's cells are its 'grid:' axes")
    grid.cells()  # validates every axis value now, before anything runs
    confirm = search.confirm
    if confirm is not None and confirm.seeds <= len(set(seeds)):
        raise ConfigError(f"search.confirm.seeds ({confirm.seeds}) must be above the grid's "
                          f"{len(set(seeds))} seeds: it counts them all")
    return grid


def _sampled(grid: Grid, space: dict[str, Any]) -> Grid:
    """A sampling search's grid: its space (the grid's axes as choices first), each value
    and bound checked as the setting checks it, and no axes of its own."""
    dimensions = [Dimension(key, "choice", values) for key, values in grid.axes]
    for key, raw in space.items():
        _check_dotted_key(key)
        if key in dict(grid.axes):
            raise ConfigError(f"{key} is both a grid axis and in the space: give it once")
        dimensions.append(parse_dimension(key, raw))
    if not dimensions:
        raise ConfigError(f"search.strategy {grid.search.strategy} samples from 'space:', "
                          f"which is empty: give e.g. space: {{train.learning_rate: "
                          f"{{loguniform: [0.0001, 0.1]}}}}")
    if len(set(grid.seeds)) > 1:
        raise ConfigError(f"search.strategy {grid.search.strategy} trains one seed per trial; "
                          f"give one seed, not {list(grid.seeds)}")
    grid = dataclasses.replace(grid, axes=(), space=tuple(dimensions))
    for dimension in dimensions:
        for value in dimension.values:
            try:
                grid.cell_of({dimension.key: value})
            except ConfigError as error:
                raise ConfigError(f"space.{dimension.key}: {error}") from None
    return grid


def _set_dotted(mapping: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of a mapping with ``KEY`` or ``KEY.SUBKEY`` set (``confirm.top``)."""
    head, dot, rest = key.partition(".")
    if not dot:
        return {**mapping, key: value}
    inner = mapping.get(head)
    return {**mapping, head: _set_dotted(inner if isinstance(inner, dict) else {}, rest, value)}


def _check_dotted_key(key: str) -> None:
    """Reject a dotted key that names no section field, listing the valid ones."""
    section, _, field_name = key.partition(".")
    if section not in CELL_SECTIONS or not field_name:
        valid = [f"{s}.<key>" for s in CELL_SECTIONS] + ["grid.<section>.<key>", "name", "seeds"]
        every_key = [f"{s}.{f.name}" for s, config in CELL_SECTIONS.items()
                     for f in dataclasses.fields(config)]
        raise ConfigError(f"unknown key {key!r}; valid: {', '.join(valid)}"
                          f"{did_you_mean(key, every_key)}")
    valid_fields = [f.name for f in dataclasses.fields(CELL_SECTIONS[section])]
    if field_name not in valid_fields:
        raise ConfigError(f"unknown key {key}; valid keys of '{section}': "
                          f"{', '.join(valid_fields)}"
                          f"{did_you_mean(key, [f'{section}.{name}' for name in valid_fields])}")
