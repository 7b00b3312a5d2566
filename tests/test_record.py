"""What a run records is what ran: a grid run with --set overrides, read back through
MLflow's API from a real store and from the report; and the hints a command prints name
the store they were about."""
import html
import json
import re
import shlex

import mlflow
import pytest
import yaml
from conftest import TINY_GRID, run_cvlib

from cvlib.grids import grid_from_dict, load_grid
from cvlib.tracking.schema import (
    CELL_TAG,
    GRID_FILE,
    GRID_SOURCE_FILE,
    GRID_TAG,
    OVERRIDES_PARAM,
    PARENT_TAG,
)
from cvlib.tracking.uris import DEFAULT_TRACKING_URI, command_line

OVERRIDES = ["train.epochs=1", "data.train_size=150", "grid.model.bn=[none]"]


@pytest.fixture(scope="module")
def overridden(tmp_path_factory, cifar_dir):
    """One real `cvlib run` of the tiny grid (2 epochs, 200 images in its file) with
    OVERRIDES: 1 epoch, 150 images, and its bn axis cut to one value (2 cells)."""
    folder = tmp_path_factory.mktemp("overridden")
    grid_file = folder / "tiny.yaml"
    grid_file.write_text(TINY_GRID)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    sets = [word for override in OVERRIDES for word in ("--set", override)]
    result = run_cvlib("run", str(grid_file), *sets, "--workers", "1",
                       "--tracking-uri", uri, "--data-dir", str(cifar_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return uri, grid_file, result


def _runs(uri):
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [r for r in runs if GRID_TAG in r.data.tags and PARENT_TAG not in r.data.tags]
    return client, parent, [r for r in runs if CELL_TAG in r.data.tags]


def test_the_parent_run_records_the_grid_as_it_ran(overridden, tmp_path):
    uri, grid_file, _ = overridden
    client, parent, cells = _runs(uri)
    assert len(cells) == 2
    assert {c.data.params["train.epochs"] for c in cells} == {"1"}  # what trained
    params = parent.data.params
    assert params["train.epochs"] == "1" and params["data.train_size"] == "150"
    assert json.loads(params[OVERRIDES_PARAM]) == OVERRIDES
    assert "model.activation" not in params  # an axis: grid.model.activation holds it
    assert params["grid.model.bn"] == "['none']"
    resolved = client.download_artifacts(parent.info.run_id, GRID_FILE, str(tmp_path))
    text = open(resolved).read()
    as_ran = yaml.safe_load(text)
    assert as_ran["train"]["epochs"] == 1 and as_ran["data"]["train_size"] == 150
    assert as_ran["data"]["val_size"] == 100 and as_ran["train"]["stats_every"] == 1
    assert as_ran["grid"] == {"model.activation": ["relu", "tanh"], "model.bn": ["none"]}
    # The record runs as it is: the same cells, by hash, as those that trained.
    again = grid_from_dict(as_ran)
    assert {c.cell_hash for c in again.cells()} == {c.data.tags[CELL_TAG] for c in cells}
    written = client.download_artifacts(parent.info.run_id, GRID_SOURCE_FILE, str(tmp_path))
    assert open(written).read() == grid_file.read_text() == TINY_GRID


def test_the_report_shows_the_resolved_settings_and_lists_the_overrides(overridden,
                                                                        tmp_path):
    uri, _, _ = overridden
    page = tmp_path / "tiny.html"
    result = run_cvlib("report", "--tracking-uri", uri, "--experiment", "tiny",
                       "--out", str(page))
    assert result.returncode == 0, result.stderr[-3000:]
    text = page.read_text()
    listed = re.search(r'<ul id="overrides">(.*?)</ul>', text, re.S).group(1)
    assert re.findall(r"<code>--set (.*?)</code>", listed) == [
        html.escape(override) for override in OVERRIDES]
    shown = html.unescape(re.search(r'<pre id="resolved-grid">(.*?)</pre>', text,
                                    re.S).group(1))
    assert yaml.safe_load(shown)["train"]["epochs"] == 1
    assert yaml.safe_load(shown)["data"]["train_size"] == 150


def test_the_closing_hint_names_the_store_and_reads_it(overridden):
    uri, _, result = overridden
    hint = result.stdout.strip().splitlines()[-1].partition("see them with: ")[2]
    assert hint == f"cvlib table --experiment tiny --tracking-uri {uri}"
    followed = run_cvlib(*shlex.split(hint)[1:])
    assert followed.returncode == 0, followed.stderr[-3000:]
    assert followed.stdout.count("relu") == followed.stdout.count("tanh") == 1


def test_a_hint_names_the_store_only_when_it_is_not_the_default():
    assert command_line("table", tracking_uri=DEFAULT_TRACKING_URI) == "cvlib table"
    assert command_line("table", "--experiment", "my grid",
                        tracking_uri="http://lab:5000") == \
        "cvlib table --experiment 'my grid' --tracking-uri http://lab:5000"


def test_the_resolved_grid_of_a_file_without_overrides_is_the_same_grid(tmp_path):
    grid_file = tmp_path / "tiny.yaml"
    grid_file.write_text(TINY_GRID)
    grid = load_grid(grid_file)
    again = grid_from_dict(yaml.safe_load(grid.resolved_text()))
    assert [c.cell_hash for c in again.cells()] == [c.cell_hash for c in grid.cells()]
    assert again.name == "tiny" and grid.overrides == ()
