"""`cvlib sanity`: the initial-loss and overfitting checks, as plain verdicts and
through the real command on cells built to pass and to fail."""
import math
import textwrap

import pytest
from conftest import run_cvlib
from mlflow.tracking import MlflowClient

from cvlib.grids import grid_from_dict
from cvlib.studies.sanity import (
    FAIL,
    LN10,
    PASS,
    REPORTED,
    SanityReport,
    initial_loss_cell,
    initial_loss_check,
    overfit_cell,
    overfit_check,
)


@pytest.mark.parametrize("initializer, loss, result", [
    ("small_gaussian", 2.3026, PASS),
    ("small_gaussian", 2.41, FAIL),       # small weights must start at chance
    ("small_gaussian", math.nan, FAIL),
    ("unit_gaussian", 3.3e5, REPORTED),   # far off: reported, not failed
    ("he", 2.55, REPORTED),
    ("he", 2.35, REPORTED),               # near ln(10) or not, He is measured, not judged
])
def test_initial_loss_check(initializer, loss, result):
    check = initial_loss_check("c", initializer, loss)
    assert check.result == result
    assert check.failed == (result == FAIL)
    assert "2.303" in check.expected
    assert ("small weights only" in check.expected) == (result == REPORTED)


def test_the_summary_counts_reported_checks_apart():
    checks = [initial_loss_check("a", "small_gaussian", 2.30),
              initial_loss_check("b", "he", 2.6), overfit_check("a", [(1, 1.0)], bound=5)]
    assert SanityReport(checks, "run").summary() == \
        "all 2 checks passed; 1 reported only (not small weights)"
    failing = SanityReport([*checks, initial_loss_check("c", "small_gaussian", 2.9)], "run")
    assert failing.summary().startswith("1 of 3 checks failed")


def test_overfit_check_reports_the_first_epoch_at_100_percent():
    history = [(1, 0.3), (2, 0.85), (3, 1.0), (4, 0.95), (5, 1.0)]
    check = overfit_check("c", history, bound=10)
    assert check.result == PASS and check.measured == "100% at epoch 3"
    assert overfit_check("c", history, bound=2).failed  # not within the bound
    never = overfit_check("c", [(1, 0.2), (2, 0.6)], bound=2)
    assert never.failed and never.measured == "best 60% in 2 epochs"
    diverged = overfit_check("c", [(1, 0.1)], bound=100, diverged_at=1)
    assert diverged.failed and "diverged in epoch 1" in diverged.measured


def test_check_cells_drop_regularization_and_keep_their_own_names():
    (cell,) = grid_from_dict({"name": "s", "train": {"weight_decay": 0.01, "epochs": 7}}).cells()
    at_init, tiny = initial_loss_cell(cell), overfit_cell(cell, epochs=50)
    assert at_init.train.epochs == 0 and at_init.train.weight_decay == 0
    assert tiny.data.train_size == 20 and tiny.train.epochs == 50
    assert tiny.train.weight_decay == 0 and tiny.train.stats_every == 0
    assert len({cell.name, at_init.name, tiny.name}) == 3
    assert len({cell.cell_hash, at_init.cell_hash, tiny.cell_hash}) == 3


# An mlp small enough to memorize 20 images with Adam in well under 100 epochs; BN
# keeps even 1.0 * randn trainable (its initial loss is still far off).
GRID = textwrap.dedent("""\
    # Sanity test grid.
    name: sanity-test
    data: {train_size: 500, val_size: 200, test_size: 100}
    model: {arch: mlp, depth: 1, width: 64, bn: before}
    train: {optimizer: adam, learning_rate: 0.001, weight_decay: 0.001}
    grid:
      model.initializer: [small_gaussian, unit_gaussian]
    """)


def test_sanity_command_passes_small_weights_and_reports_unit_gaussian(tmp_path, cifar_dir):
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cvlib("sanity", str(grid), "--overfit-epochs", "40", "--tracking-uri", uri,
                       "--data-dir", str(cifar_dir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    small_loss = next(l for l in lines if "relu-small_gaussian-before-s0" in l
                      and "initial loss" in l)
    assert "| pass" in small_loss and "2.30" in small_loss
    unit_loss = next(l for l in lines if "relu-unit_gaussian-before-s0" in l
                     and "initial loss" in l)
    assert REPORTED in unit_loss
    small_fit = next(l for l in lines if "relu-small_gaussian-before-s0" in l and "overfit" in l)
    assert "100% at epoch" in small_fit and "| pass" in small_fit
    assert "all 3 checks passed; 1 reported only (not small weights)" in result.stdout
    assert f"logged to experiment 'sanity' in {uri}" in result.stdout
    # Untrained and 20-image cells: their validation and test accuracies mean nothing.
    assert "val_acc=" not in result.stdout and "test_acc=" not in result.stdout

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sanity")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.info.run_name.startswith("sanity-")]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 and {r.info.status for r in children} == {"FINISHED"}
    assert parent.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sanity.md", "sanity.csv"} <= artifacts
    loss_run = next(r for r in children if r.info.run_name == "relu-small_gaussian-before-ep0-s0")
    assert abs(loss_run.data.metrics["val_loss"] - LN10) < 0.01
    assert loss_run.data.params["train.weight_decay"] == "0.0"


def test_sanity_command_fails_a_cell_that_cannot_overfit(tmp_path, cifar_dir):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cvlib("sanity", "--cell", "model.arch=mlp", "--cell", "model.depth=1",
                       "--cell", "model.width=16", "--cell", "model.initializer=small_gaussian",
                       "--cell", "train.learning_rate=1e-7", "--cell", "data.train_size=500",
                       "--cell", "data.val_size=100",
                       "--cell", "data.test_size=100", "--overfit-epochs", "5",
                       "--tracking-uri", uri, "--data-dir", str(cifar_dir))
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 of 2 checks failed" in result.stdout
    assert "FAIL" in next(l for l in result.stdout.splitlines() if "overfit" in l)


def test_sanity_of_a_halving_grid_trains_its_check_cells_fully(tmp_path, cifar_dir):
    # The checks' cells once went through the grid's rungs: every overfitting cell was
    # cut after its first epoch and failed.
    grid = tmp_path / "grid.yaml"
    grid.write_text(textwrap.dedent("""\
        name: h
        data: {train_size: 200, val_size: 100, test_size: 100}
        model: {widths: [8], dense_units: 16, bn: before}
        train: {optimizer: adam, learning_rate: 0.002}
        grid: {model.activation: [relu, tanh, elu]}
        search: {strategy: halving, min_epochs: 1, max_epochs: 3, reduction: 3}
        """))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cvlib("sanity", str(grid), "--overfit-epochs", "60", "--tracking-uri", uri,
                       "--data-dir", str(cifar_dir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    fits = [line for line in result.stdout.splitlines() if "overfit tiny subset" in line]
    assert len(fits) == 3 and all("100% at epoch" in line for line in fits), fits
    client = MlflowClient(uri)
    assert client.get_experiment_by_name("h-halving") is None
