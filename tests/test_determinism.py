"""--deterministic and what a cell run records of its environment: the same grid gives
bit-identical figures in one process and in two worker processes (on Ray:
tests/test_ray.py), each cell run holds the facts its figures depend on, and
`cvlib table --every-run` names what differs between the runs of a row. Real `cvlib`
commands in subprocesses, real CIFAR-10, results read back through MLflow's API."""
import csv
import io
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import TINY_GRID, assert_identical_figures, cell_runs_by_hash, run_cvlib

from cvlib.cifar10 import load_cifar10
from cvlib.cli import main
from cvlib.data import prepare
from cvlib.engine.provenance import cpu_facts, grid_file_commit
from cvlib.grids import load_grid
from cvlib.results import ENVIRONMENT_DIFFERS, NOT_RECORDED, environment_differences
from cvlib.tracking import schema


def _git(folder: Path, *arguments: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *arguments], check=True,
                          capture_output=True, text=True).stdout.strip()


def _repository_with_grid(folder: Path) -> Path:
    """A git repository holding the tiny grid file, committed."""
    folder.mkdir()
    _git(folder, "init", "-q")
    grid = folder / "tiny.yaml"
    grid.write_text(TINY_GRID)
    _git(folder, "add", "tiny.yaml")
    _git(folder, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "grid")
    return grid


@pytest.fixture(scope="module")
def deterministic_stores(tmp_path_factory, cifar_dir):
    """The tiny grid run with --deterministic in one process and in two worker processes,
    into two stores, from a grid file committed in a git repository.

    Returns:
        (grid file, {"--workers 1": uri, "--workers 2": uri}).
    """
    folder = tmp_path_factory.mktemp("deterministic")
    grid = _repository_with_grid(folder / "repo")
    uris = {}
    for workers in ("1", "2"):
        uri = f"sqlite:///{folder / f'workers{workers}' / 'mlflow.db'}"
        result = run_cvlib("run", str(grid), "--deterministic", "--workers", workers,
                           "--tracking-uri", uri, "--data-dir", str(cifar_dir))
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        uris[f"--workers {workers}"] = uri
    return grid, uris


def test_deterministic_figures_do_not_depend_on_the_workers(deterministic_stores):
    _, uris = deterministic_stores
    in_process, workers = (cell_runs_by_hash(uri, "tiny") for uri in uris.values())
    assert len(in_process) == 4
    assert_identical_figures(in_process, workers, uris["--workers 1"], uris["--workers 2"])


def test_a_cell_run_records_what_its_figures_depend_on(deterministic_stores, cifar_dir):
    grid_file, uris = deterministic_stores
    runs = cell_runs_by_hash(uris["--workers 2"], "tiny")
    model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                 if line.startswith("model name"))
    flags = set(next(line.split(":", 1)[1].split() for line in open("/proc/cpuinfo")
                     if line.startswith("flags")))
    grid = load_grid(grid_file)
    raw = load_cifar10(cifar_dir)
    for run in runs.values():
        tags = run.data.tags
        assert tags[schema.CPU_TAG] == model
        assert tags[schema.CPU_FLAGS_TAG].split() == [flag for flag in schema.CPU_FLAGS if flag in flags]
        assert tags[schema.INTRA_OP_THREADS_TAG] == tags[schema.INTER_OP_THREADS_TAG] == "1"
        assert tags[schema.DETERMINISTIC_TAG] == "on"
        assert tags[schema.ONEDNN_TAG] in ("on (TensorFlow's default)", "off (TensorFlow's default)")
        assert tags[schema.GIT_COMMIT_TAG] == _git(grid_file.parent, "rev-parse", "HEAD")
        assert tags[schema.GIT_DIRTY_TAG] == "false"
    # Every cell of the tiny grid shares its data settings: one checksum, the arrays'.
    checksum = prepare(grid.cells()[0].data, raw).checksum
    assert {run.data.tags[schema.DATA_CHECKSUM_TAG] for run in runs.values()} == {checksum}
    assert len(checksum) == 64


def test_grid_file_commit_says_when_the_file_is_not_committed_as_run(tmp_path):
    outside = tmp_path / "loose.yaml"
    outside.write_text(TINY_GRID)
    assert grid_file_commit(outside) == {}
    grid = _repository_with_grid(tmp_path / "repo")
    commit = _git(grid.parent, "rev-parse", "HEAD")
    assert grid_file_commit(grid) == {schema.GIT_COMMIT_TAG: commit, schema.GIT_DIRTY_TAG: "false"}
    grid.write_text(TINY_GRID + "# changed\n")
    assert grid_file_commit(grid)[schema.GIT_DIRTY_TAG] == "true"
    _git(grid.parent, "checkout", "-q", "tiny.yaml")
    untracked = grid.parent / "new.yaml"
    untracked.write_text(TINY_GRID)  # another, untracked file leaves the repository clean
    assert grid_file_commit(grid)[schema.GIT_DIRTY_TAG] == "false"
    assert grid_file_commit(untracked) == {schema.GIT_COMMIT_TAG: commit, schema.GIT_DIRTY_TAG: "true"}


def test_cpu_facts_read_the_model_and_the_vector_extensions(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Xeon Sapphire\n"
                       "flags\t\t: fpu avx avx2 avx512f avx512_bf16 amx_tile amx_bf16 sse\n"
                       "processor\t: 1\nmodel name\t: Xeon Sapphire\nflags\t\t: fpu\n")
    assert cpu_facts(str(cpuinfo)) == {
        schema.CPU_TAG: "Xeon Sapphire", schema.CPU_FLAGS_TAG: "avx avx2 avx512f avx512_bf16 amx_tile amx_bf16"}
    plain = tmp_path / "plain"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse2\n")
    assert cpu_facts(str(plain))[schema.CPU_FLAGS_TAG] == "none"


def _table(uri: str, *options: str) -> list[dict]:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["table", "--experiment", "tiny", "--tracking-uri", uri, "--format", "csv",
                     *options]) == 0
    return list(csv.DictReader(io.StringIO(out.getvalue())))


def test_environment_differences_name_each_fact_with_its_values():
    runs = pd.DataFrame({"intra_op_threads": ["1", "2", "1"], "cpu": ["EPYC"] * 3,
                         "git_commit": ["abc", None, "abc"], "git_dirty": [None] * 3})
    assert environment_differences(runs) == \
        f"intra_op_threads: 1, 2; git_commit: abc, {NOT_RECORDED}"
    assert environment_differences(runs.iloc[[0, 2]]) == ""


@pytest.mark.slow
def test_every_run_names_what_differs_between_the_runs_of_a_row(deterministic_stores,
                                                                 tmp_path, cifar_dir):
    """Seed 1 of each cell trained later, without --deterministic (and, on more than one
    core, with more threads) than seed 0: each row's runs differ, and the table says how."""
    grid_file, uris = deterministic_stores
    uri = _copied_store(uris["--workers 2"], tmp_path / "store")
    assert all(row[ENVIRONMENT_DIFFERS] == "" for row in _table(uri, "--every-run"))
    result = run_cvlib("run", str(grid_file), "--set", "seeds=[0, 1]", "--workers", "1",
                       "--tracking-uri", uri, "--data-dir", str(cifar_dir))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    rows = _table(uri, "--every-run")
    assert len(rows) == 4 and {row["seeds"] for row in rows} == {"2"}
    for row in rows:
        assert "deterministic: off, on" in row[ENVIRONMENT_DIFFERS], row
        assert "cpu:" not in row[ENVIRONMENT_DIFFERS]  # one machine
        assert "data_sha256" not in row[ENVIRONMENT_DIFFERS]  # the same arrays
    assert ENVIRONMENT_DIFFERS not in _table(uri)[0]


def test_report_shows_the_environment(deterministic_stores, tmp_path):
    from cvlib.report_page import build_report

    _, uris = deterministic_stores
    page = build_report(uris["--workers 1"], "tiny").html
    section = page.split('id="environment"', 1)[1].split("</table>", 1)[0]
    for fact in ("cpu_flags", "intra_op_threads", "onednn", "deterministic", "data_sha256",
                 "git_commit", "git_dirty"):
        assert f">{fact}<" in section
    run = next(iter(cell_runs_by_hash(uris["--workers 1"], "tiny").values()))
    assert run.data.tags[schema.DATA_CHECKSUM_TAG] in section
    assert "differs" not in section  # one process, one machine, one data set


def test_a_process_started_with_other_threads_refuses_deterministic_training():
    """TensorFlow fixes its thread counts when its runtime starts: a process whose runtime
    runs with others cannot train --deterministic cells, and says so."""
    script = ("import tensorflow as tf; tf.config.threading.set_intra_op_parallelism_threads(2);"
              "tf.constant(1.0) + 1;"
              "from cvlib.engine.child import start_tensorflow_quietly;"
              "from cvlib.errors import CvlibError\n"
              "try:\n    start_tensorflow_quietly(1, deterministic=True)\n"
              "except CvlibError as error:\n    print(error)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert "started with 2 intra-op threads and cannot train with 1" in result.stdout, \
        result.stderr[-2000:]


def _copied_store(uri: str, folder: Path) -> str:
    """A copy of a SQLite store and its artifacts, to change without touching the first."""
    shutil.copytree(Path(uri.removeprefix("sqlite:///")).parent, folder)
    return f"sqlite:///{folder / 'mlflow.db'}"


def test_the_comparison_fails_on_a_changed_figure(deterministic_stores, tmp_path):
    """A loss logged once more, 1e-6 off, into one run of a copy of a store makes the
    stores' figures differ."""
    _, uris = deterministic_stores
    workers = cell_runs_by_hash(uris["--workers 2"], "tiny")
    copy_uri = _copied_store(uris["--workers 1"], tmp_path / "store")
    assert_identical_figures(cell_runs_by_hash(copy_uri, "tiny"), workers, copy_uri,
                             uris["--workers 2"])
    run = next(iter(cell_runs_by_hash(copy_uri, "tiny").values()))
    client = mlflow.MlflowClient(copy_uri)
    history = client.get_metric_history(run.info.run_id, "loss")
    client.log_metric(run.info.run_id, "loss", history[-1].value + 1e-6, step=history[-1].step)
    with pytest.raises(AssertionError):
        assert_identical_figures(cell_runs_by_hash(copy_uri, "tiny"), workers, copy_uri,
                                 uris["--workers 2"])
