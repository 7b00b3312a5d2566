"""``cvlib report``: the real command on real MLflow stores, the page checked as text
and as Chromium renders it."""
import importlib.metadata
import re

import pytest
from conftest import run_cvlib
from hostile import HOSTILE, assert_hostile_text_is_inert, open_trapped
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from cvlib.grids import grid_from_dict
from cvlib.pivot import pivot_table
from cvlib.results import results_table
from cvlib.tracking.writer import Tracker

# The made store's cell runs: name -> (how the run ends, val_accuracy by epoch,
# test_accuracy). "open" is a run left RUNNING, as a process killed with -9 leaves it.
MADE_RUNS = {
    "relu-he-none-s0": ("ok", [0.30, 0.50], 0.48),
    "relu-he-before-s0": ("open", [0.35, 0.55], None),
    "tanh-he-none-s0": ("diverged", [0.20, 0.10], None),
    "tanh-he-before-s0": ("failed", [], None),
    "sigmoid-he-none-s0": ("killed", [0.10], None),
}
EXPECTED_OUTCOMES = {"relu-he-none-s0": "ok", "relu-he-before-s0": "running",
                     "tanh-he-none-s0": "diverged", "tanh-he-before-s0": "error",
                     "sigmoid-he-none-s0": "error"}
FAILURE = "FloatingPointError: forced failure"
# The made grid runs' validation sizes, which tell them apart.
VAL_SIZES = {"older": 111, "newer": 222}


@pytest.fixture(scope="module")
def made_store(tmp_path_factory):
    """A store written through cvlib's Tracker, as `cvlib run` writes it, with every
    outcome: two grid runs (the newer one holds the cells) and the runs of MADE_RUNS.
    Shared by this file's tests (a new SQLite store takes seconds); reports add
    report.html to the newer grid run, nothing else changes."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('made') / 'mlflow.db'}"
    tracker = Tracker(uri)
    experiment = tracker.experiment_id("made")
    parents = {}
    for age in ("older", "newer"):
        grid = grid_from_dict({"name": "made", "data": {"train_size": 100}},
                              [("data.val_size", VAL_SIZES[age])],
                              source=f"name: made  # {age} grid\n")
        parents[age] = tracker.start_grid(grid, experiment, cells=len(MADE_RUNS))
        tracker.end_run(parents[age])
    cells = {cell.name: cell for cell in grid_from_dict({
        "name": "made", "data": {"train_size": 100}, "grid": {
            "model.activation": ["relu", "tanh", "sigmoid"],
            "model.bn": ["none", "before"]}}).cells()}
    for name, (ending, val_accuracy, test_accuracy) in MADE_RUNS.items():
        run = tracker.start_cell(experiment, parents["newer"], cells[name], "made")
        for epoch, value in enumerate(val_accuracy, start=1):
            run.log_metrics({"val_accuracy": value}, epoch)
        if test_accuracy is not None:
            run.log_metrics({"test_accuracy": test_accuracy}, len(val_accuracy))
        if ending in ("ok", "diverged"):
            run.finish(ending, diverged_at=1, divergence="loss became nan in epoch 1")
        elif ending == "failed":
            run.fail(FAILURE)
        elif ending == "killed":
            run.fail("interrupted by SIGTERM", status="KILLED")
    return uri, parents


def test_results_table_of_every_run_marks_outcomes(made_store):
    uri, _ = made_store
    table = results_table(uri, "made", every_run=True)
    rows = {f"{row.activation}-{row.initializer}-{row.bn}-s0": row
            for row in table.itertuples()}
    assert {name: row.outcome for name, row in rows.items()} == EXPECTED_OUTCOMES
    assert rows["tanh-he-before-s0"].error == FAILURE
    assert rows["tanh-he-before-s0"].seeds == 1
    # The heatmaps' grid: every activation x bn, failed and diverged cells empty.
    pivot = pivot_table(table, "test_accuracy")["he"]
    assert len(pivot) == 6 and pivot.notna().sum() == 1
    assert pivot[("none", "relu")] == pytest.approx(0.48)
    # The plain table holds FINISHED runs only, diverged ones marked as such.
    plain = results_table(uri, "made")
    assert len(plain) == 2 and "error" not in plain.columns
    assert sorted(plain["outcome"]) == ["diverged", "ok"]


def test_report_shows_newest_grid_and_marks_failures(made_store, tmp_path):
    uri, parents = made_store
    out = tmp_path / "out" / "made.html"
    result = run_cvlib("report", "--tracking-uri", uri, "--experiment", "made",
                       "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "5 cell runs; inside: relu-he-none-s0" in result.stdout
    page = out.read_text()
    assert "1 ok, 1 diverged, 2 failed, 1 running" in page
    # The newer grid run's settings, as it ran them.
    assert f"val_size: {VAL_SIZES['newer']}" in page
    assert f"val_size: {VAL_SIZES['older']}" not in page
    assert "Recorded by the grid run" in page
    assert f"<td>{importlib.metadata.version('keras')}</td>" in page
    assert FAILURE in page
    # The best cell logged no statistics: the page says so instead of a plot.
    assert "logged no stats/activations.parquet" in page
    # Nothing to fetch: every image is inline, and no script or style is loaded.
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)
    client = MlflowClient(uri)
    assert [a.path for a in client.list_artifacts(parents["older"])] == [
        "grid.yaml", "grid_file.yaml"]
    logged = client.download_artifacts(parents["newer"], "report.html", str(tmp_path))
    assert open(logged).read() == page


def test_report_rows_are_coloured_by_outcome_in_chromium(made_store, tmp_path, page,
                                                         test_artifacts):
    uri, _ = made_store
    out = tmp_path / "made.html"
    result = run_cvlib("report", "--tracking-uri", uri, "--experiment", "made",
                       "--out", str(out), "--cell", "tanh-he-before-s0")
    assert result.returncode == 0, result.stderr[-3000:]
    page.goto(out.as_uri())
    rows = page.eval_on_selector_all("#results table tbody tr", """rows => rows.map(row => [
        Array.from(row.cells).map(cell => cell.textContent.trim()),
        getComputedStyle(row.cells[0]).backgroundColor])""")
    header = page.eval_on_selector_all("#results table thead th",
                                       "cells => cells.map(cell => cell.textContent.trim())")
    seen = {}
    for cells, colour in rows:
        row = dict(zip(header, cells))
        seen[f"{row['activation']}-{row['initializer']}-{row['bn']}-s0"] = (row["outcome"],
                                                                            colour)
    assert {name: outcome for name, (outcome, _) in seen.items()} == EXPECTED_OUTCOMES
    assert seen["tanh-he-none-s0"][1] == "rgb(253, 225, 176)"  # diverged: orange
    assert seen["tanh-he-before-s0"][1] == seen["sigmoid-he-none-s0"][1] == "rgb(246, 193, 193)"
    assert seen["relu-he-none-s0"][1] == "rgba(0, 0, 0, 0)"  # ok: unmarked
    assert seen["relu-he-before-s0"][1] == "rgb(219, 230, 246)"  # running: blue
    assert "Run tanh-he-before-s0 (error" in page.inner_text("#cell")
    page.screenshot(path=str(test_artifacts / "report-outcomes.png"), full_page=True)


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory):
    """A store written through MLflow's own API, as anyone with access to a shared
    server can write it, with a hostile string in every field the report shows: the
    experiment's name, the grid run's name, grid file and version tags, and the cell
    runs' names, params, error and outcome tags."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = " ".join(HOSTILE)
    experiment_id = client.create_experiment(experiment)
    grid = client.create_run(experiment_id, run_name=HOSTILE[0], tags={
        "cvlib.grid": HOSTILE[1], **{f"cvlib.version.{name}": hostile
                                     for name, hostile in zip(("python", "keras"), HOSTILE)}})
    client.log_text(grid.info.run_id, "\n".join(HOSTILE), "grid.yaml")
    client.set_terminated(grid.info.run_id)
    names = {}
    for index, hostile in enumerate(HOSTILE):
        outcome = ("ok", "error", hostile)[index % 3]
        run = client.create_run(experiment_id, run_name=f"{hostile} s{index}", tags={
            "mlflow.parentRunId": grid.info.run_id, "cvlib.cell": f"cell{index}",
            "cvlib.grid": "hostile", "cvlib.outcome": outcome,
            **({"cvlib.error": hostile} if outcome == "error" else {})})
        settings = {"model.activation": hostile, "model.initializer": "he",
                    "model.bn": ("none", "before")[index % 2], "train.learning_rate": "0.1"}
        client.log_batch(run.info.run_id, params=[Param(key, value) for key, value in {
            **settings, "activation": hostile, "initializer": "he",
            "bn": settings["model.bn"], "seed": "0"}.items()])
        if outcome != "error":
            client.log_batch(run.info.run_id, metrics=[
                Metric(key, 0.3 + index / 100, 0, epoch) for key in ("val_accuracy",
                                                                     "test_accuracy")
                for epoch in (1, 2)], tags=[RunTag("note", hostile)])
        client.set_terminated(run.info.run_id, "FAILED" if outcome == "error" else "FINISHED")
        names[outcome] = run.info.run_name
    return uri, experiment, names


def test_hostile_strings_from_runs_are_shown_as_text_and_never_run(hostile_store, tmp_path,
                                                                   page, test_artifacts):
    uri, experiment, names = hostile_store
    out = tmp_path / "hostile.html"
    # Look inside the cell whose outcome tag is hostile: the page names it.
    result = run_cvlib("report", "--tracking-uri", uri, "--experiment", experiment,
                       "--out", str(out), "--cell", names[HOSTILE[2]])
    assert result.returncode == 0, result.stderr[-3000:]
    html = out.read_text()
    for hostile in HOSTILE:
        if any(character in hostile for character in "<>\"'"):
            assert hostile not in html, hostile
    dialogs = open_trapped(page, out.as_uri())
    page.screenshot(path=str(test_artifacts / "report-hostile.png"), full_page=True)
    assert_hostile_text_is_inert(page, dialogs, scripts=1)  # the sorting script alone
    # What shows each: the title, the table (names, params, error and outcome tags), the
    # looked-inside cell's outcome, the grid file and the recorded versions.
    assert page.title() == f"cvlib report: {experiment}"
    table = page.inner_text("#results table")
    assert HOSTILE[1] in table and f"{HOSTILE[4]} s4" in table  # an error tag, a run name
    assert f"({HOSTILE[2]}" in page.inner_text("#cell")
    assert page.inner_text("#grid pre") == "\n".join(HOSTILE)
    assert HOSTILE[0] in page.inner_text("#software")


def test_grid_run_records_the_software_versions(tiny_store):
    uri, _, _ = tiny_store
    client = MlflowClient(uri)
    (parent,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                                   "tags.`mlflow.parentRunId` IS NULL")
    tags = parent.data.tags
    for name in ("tensorflow", "keras", "mlflow"):
        assert tags[f"cvlib.version.{name}"] == importlib.metadata.version(name)
    assert re.fullmatch(r"3\.\d+\.\d+", tags["cvlib.version.python"])


def _report_in_chromium(uri: str, page, out, screenshot) -> list[str]:
    """Make a store's report with `cvlib report`, open it in Chromium, check that every
    part rendered and that nothing was fetched, and keep a screenshot.

    Returns:
        The text of the results table's rows.
    """
    result = run_cvlib("report", "--tracking-uri", uri, "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    fetched = []
    page.on("request", lambda request: fetched.append(request.url))
    page.goto(out.as_uri())
    assert [url for url in fetched if not url.startswith(("file:", "data:"))] == []
    assert page.title().startswith("cvlib report: ")
    sizes = page.eval_on_selector_all("img", "images => images.map(i => i.naturalWidth)")
    # Heatmap, curves, layer std, histograms at initialization and at the end.
    assert len(sizes) == 5 and all(width > 100 for width in sizes)
    page.screenshot(path=str(screenshot), full_page=True)
    return page.eval_on_selector_all("#results table tbody tr",
                                     "rows => rows.map(row => row.innerText)")


def test_report_of_a_real_grid_renders_in_chromium(tiny_store, page, tmp_path,
                                                   test_artifacts):
    uri, _, _ = tiny_store
    rows = _report_in_chromium(uri, page, tmp_path / "report.html",
                               test_artifacts / "report-tiny.png")
    assert len(rows) == 4
    for activation in ("relu", "tanh"):
        for bn in ("none", "before"):
            assert sum(re.search(rf"\b{activation}\b.*\b{bn}\b.*\bok\b", row) is not None
                       for row in rows) == 1
    # Sorting: a click on val_accuracy sorts it ascending, a second one descending.
    column = page.eval_on_selector_all("#results table thead th", "cells => cells.map("
                                       "cell => cell.textContent.trim())").index("val_accuracy")
    # By position: the sort arrow joins the header's accessible name once clicked.
    header = page.locator("#results table thead th").nth(column)
    values = f"rows => rows.map(row => Number(row.cells[{column}].textContent))"
    header.click()
    ascending = page.eval_on_selector_all("#results table tbody tr", values)
    assert ascending == sorted(ascending) and header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert page.eval_on_selector_all("#results table tbody tr", values) == sorted(
        ascending, reverse=True)


@pytest.mark.slow
def test_smoke_grid_then_report_renders_in_chromium(cifar_dir, tmp_path, page, test_artifacts):
    """The README's quickstart: `cvlib run experiments/smoke.yaml && cvlib report`."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = run_cvlib("run", "experiments/smoke.yaml", "--tracking-uri", uri,
                    "--data-dir", str(cifar_dir))
    assert run.returncode == 0, run.stderr[-3000:]
    rows = _report_in_chromium(uri, page, tmp_path / "report.html",
                               test_artifacts / "report-smoke.png")
    assert len(rows) == 4
