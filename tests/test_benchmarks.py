"""The benchmark scripts (benchmarks/*.py): each answers --help at once, without importing
TensorFlow, Keras, MLflow, KerasTuner or PyTorch (which some of them need and CI lacks);
--record writes its rows only when asked; and (slow) each script runs at its smallest
setting and prints its headline figure, skipped where KerasTuner or PyTorch is missing."""
import ast
import csv
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_benchmark_module

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
# The scripts' helpers, not benchmarks: --record (record.py), a throwaway PostgreSQL and
# `cvlib server` on it (team_services.py).
HELPERS = {"record.py", "team_services.py"}
SCRIPTS = sorted(path.name for path in BENCHMARKS.glob("*.py") if path.name not in HELPERS)
HEAVY_MODULES = {"tensorflow", "keras", "mlflow", "keras_tuner", "torch"}
RESULTS_ENV = "CVLIB_BENCHMARK_RESULTS"  # benchmarks/record.py's

# Each script's smallest setting, what it needs beyond cvlib's own dependencies, and the
# headline line it prints (the figure that --record writes is on it).
SMALLEST = {
    "checkpoint_cost.py": ["--train-size", "500", "--val-size", "500", "--test-size", "500",
                           "--epochs", "3"],
    "determinism.py": ["--rounds", "1", "--workers", "1", "--", "experiments/smoke.yaml",
                       "--set", "model.bn=none", "--set", "data.train_size=256",
                       "--set", "data.val_size=256", "--set", "data.test_size=256",
                       "--set", "train.epochs=1", "--set", "model.widths=[8]",
                       "--set", "model.dense_units=16"],
    "driver_capacity.py": ["--cells", "4", "--epochs", "2", "--baseline-records", "20"],
    "default_workers.py": ["--rounds", "1", "--", "run", "experiments/smoke.yaml",
                           "--set", "model.bn=none", "--set", "data.train_size=256",
                           "--set", "data.val_size=256", "--set", "data.test_size=256",
                           "--set", "train.epochs=1", "--set", "model.widths=[8]",
                           "--set", "model.dense_units=16"],
    "feed_autotune.py": ["--rounds", "1", "--images", "512"],
    "eta.py": ["--train-size", "500", "--epochs", "1"],
    "fused_bn.py": ["--images", "512", "--epochs", "2", "--rounds", "1"],
    "halving.py": ["--train-size", "200", "--val-size", "200", "--workers", "1",
                   "--set", "grid.model.activation=[relu, tanh]",
                   "--set", "model.initializer=he", "--set", "model.bn=none",
                   "--set", "model.widths=[8]", "--set", "model.dense_units=16"],
    "model_logging.py": ["--cells", "2"],
    "overhead.py": ["--cells", "2", "--memory-cells", "2", "--rounds", "1"],
    "process_machinery.py": ["--rounds", "1", "--cells", "1"],
    "ray_overhead.py": ["--rounds", "1", "--train-size", "500", "--activations", "relu",
                        "--bn", "none", "--idle-seconds", "2"],
    "resume_scan.py": ["--runs", "5", "--keys", "5", "--epochs", "1", "2"],
    "search_study.py": ["--trials", "2", "5", "--batch", "1"],
    "search_vs_kerastuner.py": ["--seeds", "0", "--trials", "2", "--train-size", "256",
                                "--workers", "1"],
    "stats_overhead.py": ["--train-size", "500", "--epochs", "1", "--repeats", "1",
                          "--val-size", "500", "--test-size", "500"],
    "throughput.py": ["--images", "256", "--epochs", "2", "--rounds", "1", "--bn", "none",
                      "--bfloat16"],
    "torch_twin.py": ["DATA.npz", "--epochs", "1", "--images", "256"],
    "tracking_server.py": ["--rounds", "1", "--train-size", "500", "--activations", "relu",
                           "--bn", "none"],
    "ui_startup.py": ["--rounds", "1"],
    "vs_kerastuner.py": ["--rounds", "1", "--workers", "1", "--train-size", "500",
                         "--activations", "relu", "--bn", "none",
                         "--hypermodels", "Keras layers", "--modes", "in-process"],
}
NEEDS = {"torch_twin.py": "torch", "vs_kerastuner.py": "keras_tuner",
         "search_vs_kerastuner.py": "keras_tuner"}
HEADLINES = {
    "checkpoint_cost.py": r"checkpoint every epoch / none: time per epoch, median ratio "
                          r"\d+\.\d{3}",
    "default_workers.py": r"default / one process \d+\.\d\d",
    "determinism.py": r"--workers 1: deterministic / default \(medians\): wall time \d+\.\d\d, "
                      r"training time \d+\.\d\d",
    "driver_capacity.py": r"sqlite: epoch records per second, recorder / sequential "
                          r"log_batch: \d+\.\d\d",
    "feed_autotune.py": r"cvlib's fit / autotuned fit \(medians\): \d+\.\d{3}",
    "eta.py": r"first estimate after the first finished cell / actual time left: \d+\.\d\d",
    "fused_bn.py": r"fused batch norm: epoch time / Keras's BatchNormalization: \d+\.\d{3}",
    "halving.py": r"cost of halving / plain grid: image passes \d+\.\d\d, wall time \d+\.\d\d",
    "model_logging.py": r"median per cell after it: \d+\.\d{3} s, \d+\.\d\d MB",
    "overhead.py": r"memory: peak RSS .* ratio \d+\.\d{3}",
    "process_machinery.py": r"held-notices: .* lines held back a worker",
    "ray_overhead.py": r"--ray on 2 one-CPU nodes / --workers 2 \(medians\): \d+\.\d{3}",
    "resume_scan.py": r"ratio 2 epochs / 1 epoch\(s\): \d+\.\d\d",
    "search_study.py": r"rebuild of 5 trials \+ 1 proposals: \d+\.\d{3} s",
    "search_vs_kerastuner.py": r"cvlib tpe with halving / KerasTuner BayesianOptimization: "
                               r"wall time \d+\.\d\dx",
    "stats_overhead.py": r"training with statistics / without: median ratio \d+\.\d{3}",
    "throughput.py": r"epoch time, cvlib / keras-default = \d+\.\d{3}",
    "torch_twin.py": r"epoch_time_s \d+\.\d+",
    "tracking_server.py": r"server - sqlite, seconds per cell \(median of 1 round\): "
                          r"[+-]\d+\.\d{3} \(goal <= \+0\.5\)",
    "ui_startup.py": r"cvlib / default \d+\.\d\d",
    "vs_kerastuner.py": r"cvlib --workers 1: \d+ s, \d+\.\d\dx KerasTuner's time",
}
# Rows that a --record run appends: one per headline figure (none: the script records
# nothing).
RECORDED_ROWS = {"checkpoint_cost.py": 1, "default_workers.py": 1, "determinism.py": 1,
                 "driver_capacity.py": 2,
                 "ray_overhead.py": 5, "eta.py": 1, "feed_autotune.py": 1, "fused_bn.py": 1,
                 "halving.py": 3, "model_logging.py": 3, "overhead.py": 2,
                 "process_machinery.py": 6, "resume_scan.py": 1, "search_study.py": 1,
                 "search_vs_kerastuner.py": 4, "stats_overhead.py": 1, "throughput.py": 3, "torch_twin.py": 0,
                 "tracking_server.py": 3, "ui_startup.py": 1, "vs_kerastuner.py": 1}


def imported_top_level_modules(importtime_stderr: str) -> set[str]:
    """The top-level modules that `python -X importtime` reported importing."""
    return {line.rsplit("|", 1)[1].strip().split(".")[0]
            for line in importtime_stderr.splitlines() if line.startswith("import time:")}


def test_every_script_has_a_smallest_setting_and_a_headline():
    assert SCRIPTS, "no benchmark scripts found"
    assert sorted(SMALLEST) == SCRIPTS == sorted(HEADLINES) == sorted(RECORDED_ROWS)


def documented_smallest(script: str) -> list[str]:
    """The arguments of the command that the script's docstring marks ``# smallest``."""
    docstring = ast.get_docstring(ast.parse((BENCHMARKS / script).read_text()))
    found = re.search(rf"python benchmarks/{re.escape(script)}((?:[^\n#\\]|\\\n)*)"
                      rf"#\s*smallest", docstring)
    assert found, f"{script}'s docstring gives no command marked # smallest"
    return shlex.split(found.group(1).replace("\\\n", " "))


@pytest.mark.parametrize("script", SCRIPTS)
def test_docstring_gives_the_smallest_setting(script):
    assert documented_smallest(script) == SMALLEST[script]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_answers_without_heavy_imports(script):
    result = subprocess.run([sys.executable, "-X", "importtime", f"benchmarks/{script}",
                             "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(f"usage: {script}"), result.stdout[:500]
    if RECORDED_ROWS[script]:
        assert "--record" in result.stdout
    imported = imported_top_level_modules(result.stderr)
    assert "argparse" in imported  # the check sees the script's imports at all
    assert not imported & HEAVY_MODULES, f"--help imported {sorted(imported & HEAVY_MODULES)}"


def load_record_module():
    return load_benchmark_module("record")


def test_record_appends_one_row_per_figure_and_only_when_asked(tmp_path, monkeypatch):
    record = load_record_module()
    results = tmp_path / "results.csv"
    monkeypatch.setenv(RESULTS_ENV, str(results))
    monkeypatch.setattr(sys, "argv", ["/somewhere/benchmarks/stats_overhead.py",
                                      "--repeats", "1", "--record"])
    record.Recorder(False).add("statistics overhead", "<= 1.05", "1.004")
    assert not results.exists()
    recorder = record.Recorder(True)
    recorder.add("statistics overhead", "<= 1.05", "1.004")
    recorder.add("another figure", "> 0", "5")
    with results.open(newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == list(record.COLUMNS) == ["date", "commit", "machine", "measurement",
                                                "target", "figure", "command"]
    first = dict(zip(rows[0], rows[1]))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", first["date"])
    assert first["commit"] and first["machine"].endswith("cores")
    assert (first["measurement"], first["target"], first["figure"]) == (
        "statistics overhead", "<= 1.05", "1.004")
    assert first["command"] == "python benchmarks/stats_overhead.py --repeats 1 --record"
    assert [row[3:6] for row in rows[2:]] == [["another figure", "> 0", "5"]]


def test_the_readme_table_keeps_the_newest_row_of_each_measurement(tmp_path, monkeypatch):
    record = load_record_module()
    results = tmp_path / "results.csv"
    monkeypatch.setenv(RESULTS_ENV, str(results))
    for figure in ("1.010", "1.004"):
        record.Recorder(True).add("statistics overhead", "<= 1.05", figure)
    record.Recorder(True).add("resume scan", "<= 1.1", "1.02")
    lines = record.current_table().splitlines()
    assert lines[0].startswith("| measurement | target | figure |")
    assert [line.split(" | ")[:3] for line in lines[2:]] == [
        ["| statistics overhead", "<= 1.05", "1.004"], ["| resume scan", "<= 1.1", "1.02"]]


def write_npz(path: Path) -> None:
    """A small DATA.npz for torch_twin.py: random images and labels."""
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.normal(size=(256, 32, 32, 3)).astype("float32"),
             y_train=rng.integers(0, 10, 256), x_val=rng.normal(size=(128, 32, 32, 3))
             .astype("float32"), y_val=rng.integers(0, 10, 128))


# Where files come and go while the benchmarks run, for reasons of their own: the
# package and the tests (edited meanwhile), pytest's cache, the browser tests' screenshots.
NOT_THE_BENCHMARKS = ("cvlib/", "tests/", ".pytest_cache/", "test-artifacts/")


def untracked_files() -> set[str]:
    """Files and folders in the repository that git does not track (ignored ones
    included), but for __pycache__ folders and NOT_THE_BENCHMARKS."""
    listed = subprocess.run(["git", "ls-files", "--others", "--directory"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    return {path for path in listed
            if "__pycache__" not in path and not path.startswith(NOT_THE_BENCHMARKS)}


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_script_runs_at_its_smallest_setting(script, cifar_dir, tmp_path):
    needed = NEEDS.get(script)
    if needed and importlib.util.find_spec(needed) is None:
        pytest.skip(f"{script} needs {needed}, which is not installed "
                    f"(pip install -r requirements-bench.txt)")
    arguments = list(SMALLEST[script])
    if "DATA.npz" in arguments:
        write_npz(tmp_path / "DATA.npz")
        arguments[arguments.index("DATA.npz")] = str(tmp_path / "DATA.npz")
    if RECORDED_ROWS[script]:
        arguments.insert(0, "--record")  # before any `--`
    results = tmp_path / "results.csv"
    scratch = tmp_path / "tmp"  # the scripts' temporary stores and files
    scratch.mkdir()
    env = {**os.environ, "CVLIB_DATA_DIR": str(cifar_dir), "TMPDIR": str(scratch),
           RESULTS_ENV: str(results)}
    before = untracked_files()
    result = subprocess.run([sys.executable, f"benchmarks/{script}", *arguments], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(HEADLINES[script], result.stdout), result.stdout[-3000:]
    if RECORDED_ROWS[script]:
        with results.open(newline="") as file:
            rows = list(csv.DictReader(file))
        assert len(rows) == RECORDED_ROWS[script], rows
        for row in rows:
            assert row["figure"] in result.stdout, row
            assert row["command"].startswith(f"python benchmarks/{script} --record")
    else:
        assert not results.exists()
    left = untracked_files() - before
    assert not left, f"{script} left files in the repository: {sorted(left)}"
