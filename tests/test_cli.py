"""The real ``cvlib`` command against temporary MLflow stores, checked through
mlflow's own API."""
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, run_cvlib, service_missing
from mlflow.tracking import MlflowClient

import cvlib
from cvlib import cli
from cvlib.engine.hosts import WORKER_MEMORY_BYTES, auto_workers
from cvlib.grids import load_grid


def _runs(uri):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def test_run_logs_one_parent_and_one_child_per_cell(tiny_store):
    uri, grid_file, stdout = tiny_store
    client, parents, children = _runs(uri)
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {c.info.run_name for c in children} == {
        "relu-he-none-s0", "relu-he-before-s0", "tanh-he-none-s0", "tanh-he-before-s0"}
    artifacts = [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert "grid.yaml" in artifacts
    for index in range(1, 5):
        assert f"[{index}/4]" in stdout
    assert "left ~" in stdout and "val_acc=" in stdout



def test_auto_workers_one_per_core_at_most_one_per_cell_and_memory_share():
    plenty = 64 * 2**30
    assert auto_workers(12, cores=2, memory=plenty, gpu=False) == 2
    assert auto_workers(1, cores=2, memory=plenty, gpu=False) == 1
    assert auto_workers(12, cores=8, memory=2 * WORKER_MEMORY_BYTES + 1, gpu=False) == 2
    assert auto_workers(12, cores=8, memory=WORKER_MEMORY_BYTES // 2, gpu=False) == 1
    assert auto_workers(12, cores=8, memory=plenty, gpu=True) == 1


def test_run_defaults_to_one_worker_per_usable_core_and_logs_them(tiny_store, tmp_path):
    """Without --workers, `cvlib run` trains in one worker process per CPU core it may use
    (at most one per cell), and its parent run says how many; pinned to one core, it
    trains in its own process."""
    uri, _, stdout = tiny_store
    _, (parent,), _ = _runs(uri)
    expected = min(len(os.sched_getaffinity(0)), 4)  # the tiny grid has 4 cells
    assert parent.data.params["workers"] == str(expected)
    assert (f"{expected} worker processes" if expected > 1 else "in this process") in stdout
    pinned = subprocess.run(
        [sys.executable, "-m", "cvlib", "run", "experiments/smoke.yaml", "--data-dir",
         str(tmp_path / "no-data"), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    assert pinned.returncode == 2  # no data: it stops after saying how it would train
    assert "4 cells -> " in pinned.stdout and "in this process" in pinned.stdout


def test_child_runs_hold_params_metric_history_and_tags(tiny_store):
    uri, grid_file, _ = tiny_store
    client, _, children = _runs(uri)
    hashes = {cell.name: cell.cell_hash for cell in load_grid(grid_file).cells()}
    for run in children:
        params, tags = run.data.params, run.data.tags
        assert params["model.activation"] == params["activation"]
        assert params["model.bn"] == params["bn"]
        assert params["initializer"] == "he" and params["seed"] == "0"
        assert params["train.learning_rate"] == "0.001"
        assert params["model.widths"] == "[8]"
        assert len(eval(params["preprocess.mean"])) == 3
        assert tags["cvlib.cell"] == hashes[run.info.run_name]
        assert tags["cvlib.grid"] == "tiny"
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_time_s",
                    "images_per_s"):
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in history] == [1, 2], key
        assert [m.step for m in client.get_metric_history(
            run.info.run_id, "act/block1_act/std")] == [0, 1, 2]
        assert "act_std_last" in run.data.metrics
        assert "stats/activations.parquet" in [
            a.path for a in client.list_artifacts(run.info.run_id, "stats")]
        assert 0 <= run.data.metrics["test_accuracy"] <= 1
        assert run.data.metrics["test_loss"] > 0
        assert run.data.metrics["images_per_s"] > 0


def test_table_prints_every_cell_and_exports(tiny_store, tmp_path, capsys):
    uri, _, _ = tiny_store
    assert cli.main(["table", "--tracking-uri", uri]) == 0
    printed = capsys.readouterr().out.splitlines()
    # Without --experiment it names the one it took, and its store, before the table.
    assert printed[0] == (f"experiment 'tiny' (the newest; --experiment NAME picks another) "
                          f"of {uri}")
    for activation in ("relu", "tanh"):
        for bn in ("none", "before"):
            assert any(activation in line and bn in line for line in printed)
    csv = tmp_path / "table.csv"
    assert cli.main(["table", "--tracking-uri", uri, "--experiment", "tiny",
                     "--out", str(csv)]) == 0
    import pandas as pd

    table = pd.read_csv(csv)
    assert len(table) == 4
    assert list(table["val_accuracy"]) == sorted(table["val_accuracy"], reverse=True)
    # The grid's axes first (in the config's order), then the other key settings.
    assert list(table.columns[:6]) == ["activation", "bn", "initializer", "seeds", "outcome",
                                       "val_accuracy"]
    capsys.readouterr()
    assert cli.main(["table", "--tracking-uri", uri, "--columns", "act_std_last,act_dead_max",
                     "--format", "csv"]) == 0
    with_stats = capsys.readouterr()
    assert "act_std_last,act_dead_max" in with_stats.out.splitlines()[0]  # data only
    assert f"experiment 'tiny' (the newest; --experiment NAME picks another) of {uri}" in \
        with_stats.err
    assert cli.main(["table", "--tracking-uri", uri, "--pivot", "test_accuracy",
                     "--format", "csv"]) == 0
    pivot = capsys.readouterr().out.splitlines()
    assert pivot[0] == "bn,activation,test_accuracy (initializer=he)"
    assert len(pivot) == 5


def test_the_table_is_the_same_byte_for_byte_every_time(tiny_store, capsys):
    uri, _, _ = tiny_store
    outputs = []
    for _ in range(3):
        assert cli.main(["table", "--tracking-uri", uri, "--experiment", "tiny",
                         "--format", "csv"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] == outputs[2]


def test_latex_output_compiles(tiny_store, capsys, tmp_path):
    uri, _, _ = tiny_store
    assert cli.main(["table", "--tracking-uri", uri, "--experiment", "tiny",
                     "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    assert "val\\_accuracy" in latex and "test\\_loss" in latex
    assert "_" not in latex.replace("\\_", "")  # every underscore escaped
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        service_missing("pdflatex is missing (Debian: texlive-latex-base "
                        "texlive-latex-recommended); the escaping was checked, the compilation "
                        "was not")
    document = tmp_path / "table.tex"
    document.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n"
                        f"\\begin{{document}}\n{latex}\n\\end{{document}}\n")
    compiled = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error",
                               document.name], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
    assert compiled.returncode == 0, compiled.stdout[-3000:]
    assert (tmp_path / "table.pdf").stat().st_size > 0


def test_results_table_function_returns_the_dataframe(tiny_store):
    from cvlib.results import results_table

    uri, _, _ = tiny_store
    table = results_table(uri, "tiny")
    assert len(table) == 4
    assert {"activation", "initializer", "bn", "seeds", "val_accuracy",
            "test_accuracy"} <= set(table.columns)
    assert table["seeds"].tolist() == [1, 1, 1, 1]


def test_dry_run_lists_cells_and_writes_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cvlib("run", "experiments/seed_grid.yaml", "--dry-run", "--tracking-uri", uri)
    assert result.returncode == 0, result.stderr
    assert "84 cells" in result.stdout
    assert "[84/84]" in result.stdout
    assert not (tmp_path / "mlflow.db").exists()


def test_epochs_zero_evaluates_the_initialized_model(cifar_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cvlib("run", "experiments/smoke.yaml", "--tracking-uri", uri,
                       "--data-dir", str(cifar_dir), "--set", "train.epochs=0",
                       "--set", "model.activation=relu", "--set", "model.bn=none",
                       "--set", "data.train_size=100", "--set", "data.val_size=100",
                       "--set", "data.test_size=100")
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`cvlib.cell` != ''")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0]
    assert client.get_metric_history(run.info.run_id, "loss") == []
    # An untrained 10-way classifier with He init: loss near ln(10), chance accuracy.
    assert run.data.metrics["test_loss"] == pytest.approx(2.3, abs=0.8)
    assert run.data.metrics["test_accuracy"] < 0.25


def test_a_failing_cell_is_recorded_and_the_grid_goes_on(cifar_dir, tmp_path, monkeypatch):
    import cvlib.training
    from cvlib.engine.experiment import run_grid
    from cvlib.engine.options import EngineOptions
    from cvlib.grids import grid_from_dict

    real_train_cell = cvlib.training.train_cell

    def train_cell_failing_for_tanh(cell, *args, **kwargs):
        if cell.model.activation == "tanh":
            raise FloatingPointError("forced failure")
        return real_train_cell(cell, *args, **kwargs)

    monkeypatch.setattr(cvlib.training, "train_cell", train_cell_failing_for_tanh)
    grid = grid_from_dict({"name": "fails", "data": {"train_size": 100, "val_size": 50,
                                                     "test_size": 50},
                           "model": {"widths": [4], "dense_units": 8},
                           "train": {"epochs": 1},
                           "grid": {"model.activation": ["tanh", "relu"]}})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    lines = []
    summary = run_grid(grid, uri, EngineOptions(data_dir=str(cifar_dir)), echo=lines.append)
    assert summary.failed == ["tanh-he-none-s0"] and summary.finished == ["relu-he-none-s0"]
    assert lines[0] == "0 cells done, 2 to run, 0 to redo"
    assert any("tanh-he-none-s0" in line and "FAILED FloatingPointError: forced failure" in line
               for line in lines)
    # Without a terminal, a line per cell: cells of one epoch tell no epochs.
    assert len(lines) == 3 and all("epoch" not in line for line in lines), lines
    client = MlflowClient(uri)
    runs = {r.info.run_name: r for r in client.search_runs(
        [client.get_experiment_by_name("fails").experiment_id])}
    assert runs["tanh-he-none-s0"].info.status == "FAILED"
    assert runs["tanh-he-none-s0"].data.tags["cvlib.error"] == \
        "FloatingPointError: forced failure"
    assert runs["tanh-he-none-s0"].data.tags["cvlib.outcome"] == "error"
    traceback = client.download_artifacts(runs["tanh-he-none-s0"].info.run_id, "error.txt",
                                           str(tmp_path))
    assert "train_cell_failing_for_tanh" in open(traceback).read()
    assert runs["relu-he-none-s0"].info.status == "FINISHED"


def test_help_explains_every_command():
    for command in ("run", "table", "report", "ui"):
        result = run_cvlib(command, "--help")
        assert result.returncode == 0
        assert "--tracking-uri" in result.stdout
    assert "--dry-run" in run_cvlib("run", "--help").stdout
    assert "--cell RUN_NAME" in run_cvlib("report", "--help").stdout
    version = run_cvlib("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"cvlib {cvlib.__version__}"


def test_dry_run_says_what_a_run_would_do_with_the_store(tiny_store, capsys):
    uri, grid_file, _ = tiny_store
    assert cli.main(["run", str(grid_file), "--dry-run", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert f"in experiment 'tiny' of {uri}: 4 cells done, 0 to run, 0 to redo" in out
    assert cli.main(["run", str(grid_file), "--dry-run", "--tracking-uri", uri,
                     "--set", "train.epochs=3"]) == 0
    assert "0 cells done, 4 to run, 0 to redo" in capsys.readouterr().out
