"""Grid files: validation, expansion into cells, stable hashes, overrides."""
import dataclasses

import pytest
import yaml

from cvlib.config import DataConfig, ModelConfig, SearchConfig, TrainConfig
from cvlib.fields import ConfigError
from cvlib.grids import grid_from_dict, load_grid

BASE = {
    "name": "t",
    "data": {"train_size": 100, "val_size": 50},
    "model": {"widths": [8], "activation": "relu"},
    "train": {"epochs": 1},
    "grid": {"model.activation": ["relu", "tanh"], "model.bn": ["none", "before", "after"]},
    "seeds": [0, 1],
}


def test_grid_expands_to_the_cartesian_product_times_seeds():
    cells = grid_from_dict(BASE).cells()
    assert len(cells) == 2 * 3 * 2
    assert {(c.model.activation, c.model.bn, c.seed) for c in cells} == {
        (a, b, s) for a in ("relu", "tanh") for b in ("none", "before", "after") for s in (0, 1)}
    assert cells[0].name == "relu-he-none-s0"


def test_cell_hash_is_stable_and_depends_on_every_setting_and_the_seed():
    first = grid_from_dict(BASE).cells()
    again = grid_from_dict(yaml.safe_load(yaml.safe_dump(BASE))).cells()
    assert [c.cell_hash for c in first] == [c.cell_hash for c in again]
    assert len({c.cell_hash for c in first}) == len(first)
    changed = grid_from_dict(BASE, [("train.learning_rate", 0.5)]).cells()
    assert not {c.cell_hash for c in changed} & {c.cell_hash for c in first}


def test_hash_is_a_known_value_so_that_it_stays_stable_across_releases():
    # If this changes, stores made before the change see every cell as new (a new
    # setting does that, deliberately, unless its default trains what cells trained
    # before: config.HASH_NEUTRAL_DEFAULTS): change the value knowingly.
    assert grid_from_dict({"name": "x"}).cells()[0].cell_hash == "d46368a0ba8a190d"
    explicit = {"name": "x", "model": {"precision": "float32"}}
    assert grid_from_dict(explicit).cells()[0].cell_hash == "d46368a0ba8a190d"
    bfloat16 = grid_from_dict({"name": "x", "model": {"precision": "mixed_bfloat16"}})
    assert bfloat16.cells()[0].cell_hash != "d46368a0ba8a190d"
    # The logits' own initializer, left at its default, is no setting either.
    assert grid_from_dict({"name": "x", "model": {"logits_initializer": None}}).cells()[0] \
        .cell_hash == "d46368a0ba8a190d"
    fixed = grid_from_dict({"name": "x", "model": {"logits_initializer": "xavier"}}).cells()[0]
    assert fixed.cell_hash != "d46368a0ba8a190d" and fixed.name == "relu-he-none-s0"
    # The grid's name is not a setting of the cell.
    assert grid_from_dict({"name": "other"}).cells()[0].cell_hash == "d46368a0ba8a190d"


def test_a_logits_initializer_equal_to_the_initializer_is_the_default_cell():
    default = grid_from_dict({"name": "x"}).cells()[0]
    same = grid_from_dict({"name": "x", "model": {"logits_initializer": "he"}}).cells()[0]
    assert same == default and same.cell_hash == "d46368a0ba8a190d"
    assert same.model.logits_initializer is None and same.settings() == default.settings()
    # One cell spelled twice in a grid is one cell, named by the initializer it has.
    cells = grid_from_dict({"name": "x", "seeds": [0, 0], "grid": {
        "model.logits_initializer": [None, "he", "xavier"]}}).cells()
    assert [c.name for c in cells] == ["relu-he-none-logits_he-s0",
                                       "relu-he-none-logits_xavier-s0"]
    assert cells[0].cell_hash == "d46368a0ba8a190d"


# Cells of the stores written before a logits initializer equal to the initializer was
# the default cell (the BN study's grids with BN before, seed 0): every other cell keeps
# its hash, so their runs are still found.
KNOWN_HASHES = {
    ("small_gaussian", None): "866f6e6389f6c1c5", ("unit_gaussian", None): "d5373026ab4c7d5a",
    ("xavier", None): "582e25c3b30387e4", ("he", None): "f8437ee00ff93b5e",
    ("small_gaussian", "xavier"): "a7f40ac09d086851",
    ("unit_gaussian", "xavier"): "28135c8da38382fb", ("he", "xavier"): "7dfd65f2dd3c26a7",
    # Its cell with the logits' own initializer equal to the rest: the first grid's.
    ("xavier", "xavier"): "582e25c3b30387e4"}


def test_existing_cells_keep_their_hashes():
    for (initializer, logits), known in KNOWN_HASHES.items():
        cell = grid_from_dict({"name": "x", "model": {
            "bn": "before", "initializer": initializer,
            "logits_initializer": logits}}).cells()[0]
        assert cell.cell_hash == known, (initializer, logits)
    bfloat16 = grid_from_dict({"name": "x", "model": {"precision": "mixed_bfloat16"}})
    assert bfloat16.cells()[0].cell_hash == "02c72d9f4448bcc1"


def test_centered_sigmoid_and_the_logits_initializer_are_grid_settings():
    grid = grid_from_dict({"name": "x", "model": {"logits_initializer": "xavier"},
                           "grid": {"model.activation": ["sigmoid", "centered_sigmoid"],
                                    "model.logits_initializer": ["xavier", "he"]}})
    assert [c.name for c in grid.cells()] == [
        "sigmoid-he-none-logits_xavier-s0", "sigmoid-he-none-logits_he-s0",
        "centered_sigmoid-he-none-logits_xavier-s0", "centered_sigmoid-he-none-logits_he-s0"]
    first, second = grid.cells()[:2]
    assert first.graph_key == second.graph_key  # the logits' initializer shares the graph


def test_overrides_set_values_and_replace_axes():
    grid = grid_from_dict(BASE, [("train.epochs", 3), ("model.bn", "after"),
                                 ("grid.train.learning_rate", [0.1, 0.01])])
    cells = grid.cells()
    assert {c.train.epochs for c in cells} == {3}
    assert {c.model.bn for c in cells} == {"after"}
    assert {c.train.learning_rate for c in cells} == {0.1, 0.01}
    assert "lr0.1" in cells[0].name


def test_yaml_scientific_notation_is_a_number():
    # YAML 1.1 reads 1e-3 as a string; a learning rate written so must still work.
    assert TrainConfig(learning_rate="1e-3").learning_rate == pytest.approx(1e-3)


def test_shipped_grid_files_are_valid_and_open_with_question_cost_and_command():
    from pathlib import Path

    files = sorted(Path(__file__).resolve().parents[1].glob("experiments/*.yaml"))
    assert {f.name for f in files} >= {"seed_grid.yaml", "smoke.yaml"}
    for path in files:
        header = path.read_text().split("\n\n")[0].lower()
        assert "question" in header and "cost" in header and "cvlib run" in header, path
        load_grid(path)
    seed_cells = load_grid(path.parent / "seed_grid.yaml").cells()
    assert len(seed_cells) == 84
    assert {c.model.activation for c in seed_cells} == {
        "relu", "leaky_relu", "prelu", "elu", "maxout", "tanh", "sigmoid"}


@pytest.mark.parametrize("section", [DataConfig, ModelConfig, TrainConfig, SearchConfig])
def test_every_constrained_field_is_checked_when_built_and_when_replaced(section):
    """Each field that declares choices or a minimum rejects a value outside them, both in
    the constructor and in dataclasses.replace (which the studies use to derive cells)."""
    default = section()
    checked = 0
    for field in dataclasses.fields(section):
        meta = field.metadata
        if meta.get("choices"):
            bad = "not-a-choice"
        elif meta.get("minimum") is not None:
            bad = (meta["minimum"] - 1) if not isinstance(field.default, tuple) \
                else (meta["minimum"] - 1,)
        else:
            continue
        checked += 1
        with pytest.raises(ConfigError, match=field.name):
            section(**{field.name: bad})
        with pytest.raises(ConfigError, match=field.name):
            dataclasses.replace(default, **{field.name: bad})
    assert checked >= 2
