"""`cvlib lr-search`: its stages' draws through the engine's random search, narrowing
and edge logic on synthetic trials, and the real command on tiny data."""
import math
import textwrap

import numpy as np
import pandas as pd
import pytest
from conftest import BOTH_STORES, run_cvlib
from mlflow.tracking import MlflowClient

from cvlib.engine.search import Search
from cvlib.grids import grid_from_dict
from cvlib.studies.lr_search import (
    LEARNING_RATE,
    WEIGHT_DECAY,
    SearchError,
    edge,
    edge_warnings,
    narrow,
    ranked,
    span,
    stage_grid,
    stage_seed,
)


def _trials(rates, accuracies, outcomes=None):
    return pd.DataFrame({LEARNING_RATE: rates, "val_accuracy": accuracies,
                         "outcome": outcomes or ["ok"] * len(rates)})


def _drawn(grid, count):
    """The values a stage's search proposes for its first ``count`` trials, as the
    engine's loop asks them (engine.search_run)."""
    search = Search(grid.space, grid.search, grid.train.epochs)
    study = search.study([])
    values = []
    for _ in range(count):
        proposal = search.ask(study)
        values.append(search.values(proposal))
        search.tell_ended(study, proposal, 0.5, pruned=False)
    return values


def _stage(name="coarse", space=None, trials=300, seed=0):
    (cell,) = grid_from_dict({"name": "t", "train": {"epochs": 9}}).cells()
    grid = grid_from_dict({"name": "t"})
    return stage_grid(grid, cell, f"lr-search-t-{name}", space or {LEARNING_RATE: (1e-6, 1.0)},
                      trials, epochs=2, seed=stage_seed(seed, name))


def test_the_coarse_stage_draws_log_uniformly_over_its_range_reproducibly():
    rates = [t[LEARNING_RATE] for t in _drawn(_stage(), 300)]
    assert all(1e-6 <= r <= 1.0 for r in rates)
    assert all(float(f"{r:.3g}") == r for r in rates)
    # Log-uniform: each of the six decades holds about a sixth (50 +- 4 sd).
    decades = np.bincount([min(math.floor(math.log10(r)) + 6, 5) for r in rates], minlength=6)
    assert all(25 <= count <= 75 for count in decades), decades
    assert _drawn(_stage(), 8) == _drawn(_stage(), 8)
    assert _drawn(_stage(), 8) != _drawn(_stage(seed=1), 8)
    assert _drawn(_stage(), 8) != _drawn(_stage("fine"), 8)
    assert len({stage_seed(seed, stage) for seed in range(5) for stage in ("coarse", "fine")}) == 10
    joint = _drawn(_stage(space={LEARNING_RATE: (1e-4, 1e-1), WEIGHT_DECAY: (1e-6, 1e-2)}), 20)
    assert all(set(t) == {LEARNING_RATE, WEIGHT_DECAY} for t in joint)
    assert all(1e-6 <= t[WEIGHT_DECAY] <= 1e-2 and 1e-4 <= t[LEARNING_RATE] <= 1e-1
               for t in joint)


def test_ranking_leaves_out_diverged_and_failed_trials():
    trials = _trials([1e-3, 1e-1, 1.0, 1e-2], [0.3, 0.5, 0.9, np.nan],
                     ["ok", "ok", "diverged", "failed"])
    assert ranked(trials)[LEARNING_RATE].tolist() == [1e-1, 1e-3]


def test_narrowing_spans_the_top_trials_widened_and_clipped():
    trials = _trials([1e-6, 1e-4, 3e-3, 2e-2, 5e-1, 1.0],
                     [0.10, 0.15, 0.40, 0.45, 0.38, 0.60],
                     ["ok", "ok", "ok", "ok", "ok", "diverged"])
    fine = narrow(trials, {LEARNING_RATE: (1e-6, 1.0)}, top=3, widen=2.0)
    assert fine[LEARNING_RATE] == pytest.approx((1.5e-3, 1.0))  # 0.5 * 2 clipped at 1
    fine = narrow(trials, {LEARNING_RATE: (1e-6, 1.0)}, top=2, widen=2.0)
    assert fine[LEARNING_RATE] == pytest.approx((1.5e-3, 4e-2))
    assert span(trials, [LEARNING_RATE], top=2)[LEARNING_RATE] == (3e-3, 2e-2)
    with pytest.raises(SearchError, match="every trial diverged"):
        narrow(_trials([1.0], [0.1], ["diverged"]), {LEARNING_RATE: (1e-6, 1.0)}, 3, 2.0)


def test_edges_of_the_range_searched():
    assert edge(1.2e-6, 1e-6, 1.0) == "low"
    assert edge(0.5, 1e-6, 1.0) == "high"
    assert edge(1e-3, 1e-6, 1.0) is None
    assert edge(0.019, 1e-3, 2e-2) == "high"   # 0.98 of the way in log space
    assert edge(5e-3, 1e-3, 2e-2) is None
    (warning,) = edge_warnings({LEARNING_RATE: 0.019}, {LEARNING_RATE: (1e-3, 2e-2)})
    assert "0.019 lies at the high edge" in warning and "[0.001, 0.02]" in warning
    assert edge_warnings({LEARNING_RATE: 5e-3}, {LEARNING_RATE: (1e-3, 2e-2)}) == []


def test_a_stages_cells_carry_each_trials_settings():
    grid = _stage(space={LEARNING_RATE: (1e-4, 1e-1), WEIGHT_DECAY: (1e-6, 1e-2)}, trials=2)
    assert grid.is_sampled and grid.search.strategy == "random" and grid.search.trials == 2
    cells = [grid.cell_of({LEARNING_RATE: 0.01, WEIGHT_DECAY: 1e-4}),
             grid.cell_of({LEARNING_RATE: 0.1, WEIGHT_DECAY: 1e-5})]
    assert [c.train.learning_rate for c in cells] == [0.01, 0.1]
    assert [c.train.weight_decay for c in cells] == [1e-4, 1e-5]
    assert {c.train.epochs for c in cells} == {2}
    assert "lr0.01" in cells[0].name
    assert len({c.cell_hash for c in cells}) == 2


GRID = textwrap.dedent("""\
    # lr-search test grid.
    name: search-test
    data: {train_size: 512, val_size: 200, test_size: 100}
    model: {arch: cnn, widths: [4], dense_units: 8}
    train: {optimizer: sgd, stats_every: 0}
    """)


@BOTH_STORES
def test_lr_search_command_logs_every_trial_under_one_parent(store, tmp_path, cifar_dir):
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    uri = store
    args = ["lr-search", str(grid), "--coarse-trials", "4", "--coarse-epochs", "1",
            "--fine-trials", "2", "--fine-epochs", "2", "--tracking-uri", uri,
            "--data-dir", str(cifar_dir)]
    result = run_cvlib(*args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "coarse stage, 4 trials of 1 epoch in learning_rate [1e-06, 1]" in result.stdout
    assert "best range of learning_rate: [" in result.stdout

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("search-test-lr-search")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.info.run_name == "lr-search-relu-he-none"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 6 and len(runs) == 7
    epochs = sorted(r.data.params["train.epochs"] for r in children)
    assert epochs == ["1", "1", "1", "1", "2", "2"]
    assert {"lr_search.png", "trials.csv", "summary.txt"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)}
    best = parent.data.metrics["best_learning_rate"]
    fine_rates = [float(r.data.params["train.learning_rate"]) for r in children
                  if r.data.params["train.epochs"] == "2"]
    assert best in fine_rates
    assert parent.data.metrics["best_range_learning_rate_low"] <= best <= \
        parent.data.metrics["best_range_learning_rate_high"]

    # The coarse stage's rates are the random search's first draws for seed 0.
    coarse_rates = [float(r.data.params["train.learning_rate"]) for r in children
                    if r.data.params["train.epochs"] == "1"]
    assert sorted(coarse_rates) == sorted(
        t[LEARNING_RATE] for t in _drawn(_stage(trials=4), 4))
    assert {r.data.tags["cvlib.search"] for r in children} == {"random"}

    again = run_cvlib(*args)  # the same draws: everything resumes
    assert again.returncode == 0, again.stderr[-3000:]
    assert "random search: 4 of 4 trials done" in again.stdout
    assert "random search: 2 of 2 trials done" in again.stdout
    runs = client.search_runs([experiment.experiment_id])
    assert len([r for r in runs if "cvlib.cell" in r.data.tags]) == 6  # none trained again

    # One more fine trial: the same coarse trials give the same fine range, whose two
    # trials are kept; only the third trains.
    more_args = list(args)
    more_args[args.index("--fine-trials") + 1] = "3"
    more = run_cvlib(*more_args)
    assert more.returncode == 0, more.stderr[-3000:]
    assert "random search: 4 of 4 trials done" in more.stdout
    assert "random search: 2 of 3 trials done" in more.stdout
    runs = client.search_runs([experiment.experiment_id])
    assert len([r for r in runs if "cvlib.cell" in r.data.tags]) == 7

    page = tmp_path / "report.html"
    report = run_cvlib("report", "--tracking-uri", uri, "--experiment",
                       "search-test-lr-search", "--out", str(page))
    assert report.returncode == 0, report.stderr[-2000:]
    html = page.read_text()  # a section per stage: their trial numbers overlap
    assert "<h2>Search lr-search-relu-he-none-coarse: 4 trials</h2>" in html
    assert "<h2>Search lr-search-relu-he-none-fine: 3 trials</h2>" in html


