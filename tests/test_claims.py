"""`cvlib claims` end to end at the smoke scale (tiny sizes: its verdicts mean
nothing), checked through mlflow's API and its page in Chromium, then resumed from
Python (`cvlib.claims`). The verdict logic is
in test_verdicts.py. Slow: the smoke scale still trains about 130 cells (about 2
minutes here)."""
import json
import re
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
from conftest import BOTH_STORES, run_cvlib
from mlflow.tracking import MlflowClient

from cvlib.studies.claims import CLAIMS, STUDIES, Claim, undeclared_shared_figures
from cvlib.studies.claims_page import Evidence
from cvlib.studies.judgments import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE
from cvlib.tracking.schema import CELL_TAG


@pytest.mark.slow
@BOTH_STORES
def test_claims_smoke_runs_every_study_into_mlflow_and_writes_the_table(store, tmp_path,
                                                                       cifar_dir, page,
                                                                       test_artifacts):
    uri = store
    out = tmp_path / "out"
    result = run_cvlib("claims", "--smoke", "--out", str(out), "--tracking-uri", uri,
                       "--data-dir", str(cifar_dir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "failed:" not in result.stdout  # no study raised
    table = pd.read_csv(out / "claims.csv", keep_default_na=False)
    assert list(table.columns) == ["key", "claim", "source", "setup", "measured", "verdict",
                                   "reason"]
    assert table["claim"].tolist() == [claim.text for claim in CLAIMS.values()]
    assert table["key"].tolist() == list(CLAIMS)
    assert set(table["verdict"]) <= {HOLDS, DOES_NOT_HOLD, INCONCLUSIVE}
    # Exactly the inconclusive verdicts say why.
    assert ((table["verdict"] == INCONCLUSIVE) == (table["reason"] != "")).all()
    # The terminal gets each claim, its figure and its verdict, wrapped to its width (80
    # columns without a terminal); the long setups are in the files only.
    for row in table.itertuples():
        assert f"{row.verdict.upper()}: {row.claim[:30]}" in result.stdout
    summary = result.stdout[result.stdout.index(f"{table['verdict'][0].upper()}: "):]
    assert max(len(line) for line in summary.splitlines() if not line.startswith("wrote")) <= 80
    assert (out / "claims.md").read_text().count("\n") == len(table) + 2
    # Every claim but the BN test-time check has the figure that shows its evidence.
    captions = json.loads((out / "figures" / "captions.json").read_text())
    assert set(captions) == set(CLAIMS) - {"bn_test_time"}
    assert all((out / "figures" / f"{key}.png").stat().st_size > 1000 for key in captions)
    # Each claim's figure is its own: no two share one unless the claims declare it.
    shown = {key: Evidence((out / "figures" / f"{key}.png").read_bytes(), caption)
             for key, caption in captions.items()}
    assert undeclared_shared_figures(shown) == []
    assert len({evidence.png for evidence in shown.values()}) == len(shown)
    assert "warning: claims" not in result.stdout
    # The ReLU initializers' equal accuracy at initialization is explained where shown.
    for key in ("init_relu_xavier", "init_he"):
        assert "positively homogeneous" in captions[key]
        assert re.search(r"small_gaussian (\d\.\d{3}), unit_gaussian \1, xavier \1, he \1",
                         captions[key]), captions[key]
    # A speed run that did not reach the accuracy is shown as censored; a claim it leaves
    # undecided says to raise the budget.
    for row in table.itertuples():
        if re.search(r": (>\d+, )*>\d+ steps|, >\d+", row.measured):
            assert "censored, did not reach" in row.measured, row.measured
        if "is only a bound" in row.reason:
            assert "raise the budget" in row.reason
    assert json.loads((out / "about.json").read_text())["command"] == "cvlib claims --smoke"

    page.goto((out / "claims.html").as_uri())
    sections = page.locator("section.claim")
    assert sections.count() == len(CLAIMS)
    assert page.locator("section.claim img").count() == len(captions)
    assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    for row in table.itertuples():
        assert page.locator(f"section#{row.key}").get_attribute("data-verdict") == row.verdict
    page.locator("section#sigmoid_signs img").screenshot(
        path=str(test_artifacts / "claims-zigzag.png"))

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("claims-smoke")
    runs = client.search_runs([experiment.experiment_id])
    (top,) = [r for r in runs if r.info.run_name == "claims-smoke"]
    assert top.info.status == "FINISHED"
    assert {"claims.md", "claims.csv", "claims.html"} <= {
        a.path for a in client.list_artifacts(top.info.run_id)}

    def children(run):
        return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]

    studies = {r.info.run_name: r for r in children(top)}
    assert set(studies) == {"init-at-depth", "gradient-signs", "maxout-parameters",
                            "activation-cost", "steps-to-accuracy", "dead-units",
                            "small-init-by-depth", "bn-vs-init", "bn-test-time"}
    assert len(studies) == len(STUDIES)
    assert {r.info.status for r in studies.values()} == {"FINISHED"}
    assert len(children(studies["init-at-depth"])) == 9   # 2 activations x 4 inits, sigmoid
    # 4 inits x 3 placements, then 4 x 2 with the logits fixed to Xavier, of which the 2
    # whose initializer is Xavier too are cells of the first grid, trained once.
    assert len(children(studies["bn-vs-init"])) == 18
    assert len(children(studies["small-init-by-depth"])) == 10   # 5 depths x 2 inits
    signs = children(studies["gradient-signs"])
    assert {r.data.params["model.activation"] for r in signs} == {
        "sigmoid", "centered_sigmoid", "tanh"}
    assert all("zigzag/w1/step040" in r.data.metrics for r in signs)
    (bn_cell,) = children(studies["bn-test-time"])
    assert bn_cell.data.metrics["bn_test/same_classes"] == 1.0
    speed = children(studies["steps-to-accuracy"])
    searches = [r for r in speed if r.info.run_name.startswith("lr-search-")]
    assert {r.info.run_name for r in searches} == {
        "lr-search-relu", "lr-search-tanh", "lr-search-sigmoid", "lr-search-relu-uncentered",
        "lr-search-centered_sigmoid", "lr-search-relu-standardize", "lr-search-relu-mean-image",
        "lr-search-relu-adam"}
    assert all(len(children(search)) == 2 for search in searches)
    timed = [r for r in speed if not r.info.run_name.startswith("lr-search-")]
    assert len(timed) == 7
    for run in timed:  # every step's batch figures, for steps-to-accuracy
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "batch/accuracy")]
        assert steps == list(range(1, len(steps) + 1)) and len(steps) == 4  # 2 epochs x 2
    artifacts = {a.path for a in client.list_artifacts(studies["steps-to-accuracy"].info.run_id)}
    assert {f"steps_to_accuracy_{key}.png" for key in (
        "relu_vs_tanh", "relu_vs_sigmoid", "sigmoid", "centering_speed", "zero_center",
        "zero_center_enough")} | {"best_learning_rates_sgd.png",
                                  "best_learning_rates_adam.png"} <= artifacts
    assert {"bn_robust.png", "bn_robust_fixed_logits.png", "bn_placement.png"} <= {
        a.path for a in client.list_artifacts(studies["bn-vs-init"].info.run_id)}

    # The same study from Python, in a fresh process, on the same store: nothing trains
    # again, and it returns the claims the command wrote.
    def cell_runs():
        return [r for r in client.search_runs([experiment.experiment_id], max_results=5000)
                if CELL_TAG in r.data.tags]

    trained = len(cell_runs())
    returned = tmp_path / "returned.pkl"
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import cvlib
        table = cvlib.claims("smoke", tracking_uri={uri!r}, data_dir={str(cifar_dir)!r},
                             progress=False)
        table.to_pickle({str(returned)!r})
        """)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    from_python = pd.read_pickle(returned)
    assert from_python.columns.tolist() == table.columns.tolist()
    for column in ("key", "claim", "setup"):
        assert from_python[column].tolist() == table[column].tolist()
    assert len(cell_runs()) == trained


def test_babysitting_commands_explain_themselves():
    for command, words in (("sanity", "ln(10)"), ("lr-search", "log-uniformly"),
                           ("claims", "--quick")):
        result = run_cvlib(command, "--help")
        assert result.returncode == 0 and words in result.stdout
        assert "--tracking-uri" in result.stdout and "--data-dir" in result.stdout
        assert "--workers N" in result.stdout


def test_grids_run_together_come_back_as_one_table_each(tmp_path, cifar_dir):
    """The steps-to-accuracy study trains its variants' grids as one batch of cells;
    each grid still gets its own table, runs and logged grid file."""
    from cvlib.engine.experiment import Experiment
    from cvlib.engine.options import EngineOptions
    from cvlib.studies.context import SCALES, StudyContext

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with Experiment(uri, "together", EngineOptions(data_dir=str(cifar_dir)),
                    echo=lambda line: None) as experiment, \
            experiment.parent_run("study") as parent:
        ctx = StudyContext(experiment, SCALES["smoke"], parent)
        first, second = ctx.run_together([
            ctx.cnn_grid("first", {"activation": "relu"}, {"epochs": 1}, seeds=[0, 1]),
            ctx.cnn_grid("second", {"activation": "tanh"}, {"epochs": 1})], parent)
    assert list(first["activation"]) == ["relu", "relu"] and list(first["seed"]) == [0, 1]
    assert list(second["activation"]) == ["tanh"]
    client = MlflowClient(uri)
    runs = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}
    for run_id in [*first["run_id"], *second["run_id"]]:
        assert runs[run_id].info.status == "FINISHED"
        assert runs[run_id].data.tags["mlflow.parentRunId"] == parent
    assert runs[second["run_id"][0]].data.params["model.activation"] == "tanh"
    assert {a.path for a in client.list_artifacts(parent, "grids")} == {
        "grids/first.yaml", "grids/second.yaml"}


def test_a_figure_shared_by_claims_must_be_declared(monkeypatch):
    png, other = b"\x89PNG one", b"\x89PNG two"
    evidence = {"bn_robust": Evidence(png, "a"), "bn_placement": Evidence(png, "b"),
                "init_he": Evidence(other, "c")}
    assert undeclared_shared_figures(evidence) == [("bn_robust", "bn_placement")]
    # Declared by one claim only: still reported; by both: accepted.
    monkeypatch.setitem(CLAIMS, "bn_robust", Claim("x", "y", ("bn_placement",)))
    assert undeclared_shared_figures(evidence) == [("bn_robust", "bn_placement")]
    monkeypatch.setitem(CLAIMS, "bn_placement", Claim("x", "y", ("bn_robust",)))
    assert undeclared_shared_figures(evidence) == []


def test_the_learning_rate_figure_leaves_out_what_the_verdict_leaves_out():
    from cvlib.studies.steps_to_accuracy import FoundRate, _rates_figure

    found = {"relu (SGD)": FoundRate("lr-search-relu", 0.015, True, False),
             "sigmoid (SGD)": FoundRate("lr-search-sigmoid", 1.6e-3, False, False),
             "tanh (SGD)": FoundRate("lr-search-tanh", float("nan"), False, False)}
    (ax,) = _rates_figure(found, "best rates").axes
    assert [label.get_text() for label in ax.get_xticklabels()] == ["relu (SGD)"]
    assert "no trial beat chance, left out: sigmoid (SGD)" in ax.get_title()
    assert "search failed: tanh (SGD)" in ax.get_title()
