"""Grids on Ray: a real multi-node cluster on this machine (a head that trains nothing and
two 1-CPU worker nodes, ray.cluster_utils.Cluster), driven by the real ``cvlib``
command in subprocesses (a process forked after ray.init hangs, so Ray never starts in
the test process itself); results read back through MLflow's API."""
import os
import re
import signal
import textwrap
import time
import uuid
from pathlib import Path

import mlflow
import pytest
from conftest import (
    REPO,
    TINY_GRID,
    assert_identical_figures,
    assert_same_cells,
    cell_runs_by_hash,
    read_until,
    run_cvlib,
    start_cvlib,
)

from cvlib.engine.epoch_checkpoints import CHECKPOINT_FILE, CHECKPOINT_FOLDER
from cvlib.engine.ray_cluster import FAST_HEALTH_CHECK, keep_ray_sockets_short
from cvlib.tracking.schema import (
    BACKEND_PARAM,
    CELL_TAG,
    ERROR_TAG,
    OUTCOME_TAG,
    RAY_ADDRESS_PARAM,
    RAY_BACKEND,
    TRAINED_ON_TAG,
    TRIAL_TAG,
)
from cvlib.tracking.uris import without_credentials

NODE_STORE_BYTES = 400 * 2**20  # CIFAR-10's raw arrays are 184 MB
# Marks the processes of this module's cluster: its raylets inherit it from this process,
# and their workers from them, also once orphaned. Other Ray clusters on the machine (other
# test runs) have their own trainers, which the counts below must not see.
CLUSTER_MARK_ENV = "CVLIB_TEST_RAY_CLUSTER"
SMOKE = str(REPO / "experiments" / "smoke.yaml")


def _grid(folder: Path, name: str, body: str) -> str:
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\n" + textwrap.dedent(body))
    return str(path)


LONG_CELLS = """\
    data: {train_size: 2000, val_size: 500, test_size: 500, preprocess: per_channel_mean}
    model: {arch: cnn, widths: [16, 32], dense_units: 32, activation: relu, initializer: he}
    train: {epochs: 4, batch_size: 100, optimizer: adam, learning_rate: 0.001}
    grid:
      train.learning_rate: [0.001, 0.002, 0.003]
    seeds: [0]
    """


@pytest.fixture(scope="module")
def cluster():
    """A head (no CPUs: it trains nothing) and two 1-CPU worker nodes."""
    from ray.cluster_utils import Cluster

    keep_ray_sockets_short()
    os.environ[CLUSTER_MARK_ENV] = uuid.uuid4().hex
    ray_cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": NODE_STORE_BYTES, "include_dashboard": False,
        "_system_config": FAST_HEALTH_CHECK})
    for _ in range(2):
        ray_cluster.add_node(num_cpus=1, object_store_memory=NODE_STORE_BYTES)
    ray_cluster.wait_for_nodes()
    yield ray_cluster
    ray_cluster.shutdown()


def _runs(uri: str, experiment: str) -> list:
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], run_view_type=mlflow.entities.ViewType.ALL)


def _cell_runs(uri: str, experiment: str) -> list:
    return [run for run in _runs(uri, experiment) if CELL_TAG in run.data.tags]


def _trainer_processes() -> int:
    """The actor processes of cvlib's cell slots alive in this module's cluster."""
    mark = f"{CLUSTER_MARK_ENV}={os.environ[CLUSTER_MARK_ENV]}".encode()
    count = 0
    for proc in Path("/proc").iterdir():
        try:
            if (proc.name.isdigit()
                    and (proc / "cmdline").read_bytes().startswith(b"ray::CellTrainer")
                    and mark in (proc / "environ").read_bytes().split(b"\0")):
                count += 1
        except OSError:  # ended while being read
            continue
    return count


def _wait_for_no_trainers(timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while _trainer_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    return _trainer_processes()


def test_address_shown_without_credentials():
    assert without_credentials("ray://alice:secret@head.lab:10001") == "ray://head.lab:10001"
    assert without_credentials("10.0.0.5:6379") == "10.0.0.5:6379"
    assert without_credentials("auto") == "auto"


def test_impossible_resources_exit_2_with_one_line(tmp_path, cifar_dir):
    """In a subprocess: it starts a local Ray instance, after which this process could
    not fork (the other bad input is in tests/test_bad_input.py)."""
    store = tmp_path / "mlflow.db"
    result = run_cvlib("run", SMOKE, "--ray", "--cpus-per-cell", "64", "--tracking-uri",
                       f"sqlite:///{store}", "--data-dir", str(cifar_dir), timeout=120)
    assert result.returncode == 2, result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and "can hold a cell of 64 CPUs" in errors[0], errors
    assert not store.exists()


@pytest.mark.slow
def test_smoke_grid_on_ray_matches_the_local_pool(cluster, tmp_path, cifar_dir):
    on_ray, local = f"sqlite:///{tmp_path / 'ray.db'}", f"sqlite:///{tmp_path / 'local.db'}"
    for uri, how in ((on_ray, ["--ray", cluster.address]), (local, ["--workers", "2"])):
        result = run_cvlib("run", SMOKE, "--tracking-uri", uri, "--data-dir", str(cifar_dir),
                           *how)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    ray_runs = {r.data.tags[CELL_TAG]: r for r in _cell_runs(on_ray, "smoke")}
    local_runs = {r.data.tags[CELL_TAG]: r for r in _cell_runs(local, "smoke")}
    assert len(ray_runs) == 4
    parents = {r.data.tags["mlflow.parentRunId"] for r in ray_runs.values()}
    assert len(parents) == 1  # every cell a child of one parent run
    parent = mlflow.MlflowClient(on_ray).get_run(parents.pop())
    assert parent.data.params[BACKEND_PARAM] == RAY_BACKEND
    assert parent.data.params[RAY_ADDRESS_PARAM] == cluster.address
    assert_same_cells(ray_runs, local_runs)
    for run in ray_runs.values():
        assert " node " in run.data.tags[TRAINED_ON_TAG]
    artifacts = mlflow.MlflowClient(on_ray).list_artifacts(run.info.run_id, "plots")
    assert artifacts  # drawn by the driver from what the node sent


@pytest.mark.slow
def test_deterministic_grid_on_ray_matches_local_workers_bit_for_bit(cluster, tmp_path,
                                                                     cifar_dir):
    grid = tmp_path / "tiny.yaml"
    grid.write_text(TINY_GRID)
    on_ray, local = f"sqlite:///{tmp_path / 'ray.db'}", f"sqlite:///{tmp_path / 'local.db'}"
    for uri, how in ((on_ray, ["--ray", cluster.address]), (local, ["--workers", "2"])):
        result = run_cvlib("run", str(grid), "--deterministic", "--tracking-uri", uri,
                           "--data-dir", str(cifar_dir), *how)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    ray_runs = cell_runs_by_hash(on_ray, "tiny")
    assert len(ray_runs) == 4
    assert all(" node " in run.data.tags[TRAINED_ON_TAG] for run in ray_runs.values())
    assert_identical_figures(ray_runs, cell_runs_by_hash(local, "tiny"), on_ray, local)


@pytest.mark.slow
def test_node_removed_mid_cell_retries_the_cell(cluster, tmp_path, cifar_dir):
    extra = cluster.add_node(num_cpus=1, object_store_memory=NODE_STORE_BYTES)
    cluster.wait_for_nodes()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Without epoch checkpoints: the lost cell trains again from its first epoch.
    grid = _grid(tmp_path, "node-loss", LONG_CELLS.replace("epochs: 4", "epochs: 4, "
                                                                         "checkpoint_every: 0"))
    process = start_cvlib("run", grid, "--ray", cluster.address, "--tracking-uri", uri,
                           "--data-dir", str(cifar_dir))
    lines = read_until(process, "  training ")  # a cell's second epoch of 4 has ended
    assert _trainer_processes() == 3
    cluster.remove_node(extra, allow_graceful=False)
    deadline = time.monotonic() + 15  # its actor, orphaned, ends with its raylet
    while _trainer_processes() > 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _trainer_processes() == 2
    lines += process.stdout.readlines()
    assert process.wait(timeout=600) == 0, "".join(lines)[-3000:]
    runs = _cell_runs(uri, "node-loss")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert sorted(r.data.tags[CELL_TAG] for r in finished) == \
        sorted({r.data.tags[CELL_TAG] for r in runs})  # each cell finished exactly once
    assert len(finished) == 3 and len(failed) == 1, [(r.info.run_name, r.info.status) for r in runs]
    assert "retry 1 of 2" in failed[0].data.tags[ERROR_TAG]
    retried = [r for r in finished if r.data.tags[CELL_TAG] == failed[0].data.tags[CELL_TAG]]
    assert extra.unique_id[:8] not in retried[0].data.tags[TRAINED_ON_TAG]


@pytest.mark.slow
def test_node_removed_mid_cell_continues_the_cell_from_its_checkpoint(cluster, tmp_path,
                                                                     cifar_dir):
    extra = cluster.add_node(num_cpus=1, object_store_memory=NODE_STORE_BYTES)
    cluster.wait_for_nodes()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Six epochs: the three cells start together, but three trainers share two cores, so
    # one may train twice as fast as another; when the slowest cell's first checkpoint
    # arrives, the fastest one still has epochs to go, and the removed node's cell is lost
    # mid-training rather than already finished.
    grid = _grid(tmp_path, "node-loss", LONG_CELLS.replace("epochs: 4", "epochs: 6"))
    # Deterministic: the figures then do not depend on which node trains which epoch.
    process = start_cvlib("run", grid, "--ray", cluster.address, "--tracking-uri", uri,
                          "--data-dir", str(cifar_dir), "--deterministic", cwd=tmp_path)
    # Every cell's first checkpoint has reached the driver: the lost one continues.
    checkpoints = tmp_path / CHECKPOINT_FOLDER
    deadline = time.monotonic() + 300
    while len(list(checkpoints.glob(f"*/{CHECKPOINT_FILE}"))) < 3:
        assert time.monotonic() < deadline and process.poll() is None, \
            process.communicate()[0][-3000:]
        time.sleep(0.05)
    cluster.remove_node(extra, allow_graceful=False)
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output[-3000:]
    continued_names = [line.split(":", 1)[0] for line in output.splitlines()
                       if "continuing it from its checkpoint after epoch" in line]
    assert len(continued_names) == 1, output[-3000:]
    (name,) = continued_names
    runs = _cell_runs(uri, "node-loss")
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3  # none FAILED
    (continued,) = [r for r in runs if r.info.run_name == name]
    assert extra.unique_id[:8] not in continued.data.tags[TRAINED_ON_TAG]
    history = mlflow.MlflowClient(uri).get_metric_history(continued.info.run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]  # no epoch logged twice
    assert not list(checkpoints.glob(f"*/{CHECKPOINT_FILE}"))
    # The same grid, uninterrupted, on the cluster's two nodes left: the same figures.
    uninterrupted = f"sqlite:///{tmp_path / 'uninterrupted.db'}"
    result = run_cvlib("run", grid, "--ray", cluster.address, "--tracking-uri", uninterrupted,
                       "--data-dir", str(cifar_dir), "--deterministic", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert_identical_figures(cell_runs_by_hash(uri, "node-loss"),
                             cell_runs_by_hash(uninterrupted, "node-loss"), uri, uninterrupted)


@pytest.mark.slow
def test_halving_continues_a_cell_on_another_node(cluster, tmp_path, cifar_dir):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid = _grid(tmp_path, "rungs", """\
        data: {train_size: 1000, val_size: 500, test_size: 500, preprocess: per_channel_mean}
        model: {arch: cnn, widths: [16], dense_units: 32, activation: relu, initializer: he}
        train: {epochs: 2, batch_size: 100, optimizer: adam, learning_rate: 0.001}
        grid:
          train.learning_rate: [0.000001, 0.003]
        seeds: [0]
        search: {strategy: halving, min_epochs: 1, max_epochs: 2, reduction: 2}
        """)
    result = run_cvlib("run", grid, "--ray", cluster.address, "--tracking-uri", uri,
                       "--data-dir", str(cifar_dir))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    runs = {r.data.params["train.learning_rate"]: r for r in _cell_runs(uri, "rungs-halving")}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    survivor = runs["0.003"]
    places = survivor.data.tags[TRAINED_ON_TAG].split(", ")
    assert len(places) == 2 and places[0] != places[1], places  # rung 2 on the other node
    client = mlflow.MlflowClient(uri)
    steps = [m.step for m in client.get_metric_history(survivor.info.run_id, "val_accuracy")]
    assert steps == [1, 2]  # its epochs continue across nodes, each logged once


@pytest.mark.slow
def test_driver_killed_then_resumed_trains_each_cell_once(cluster, tmp_path, cifar_dir):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid = _grid(tmp_path, "driver-loss", LONG_CELLS)
    args = ("run", grid, "--ray", cluster.address, "--tracking-uri", uri,
            "--data-dir", str(cifar_dir))
    process = start_cvlib(*args)
    read_until(process, "[1/3]")
    process.kill()
    process.wait()
    assert _wait_for_no_trainers() == 0  # no actor trains on for a driver that is gone
    done_before = {r.data.tags[CELL_TAG] for r in _cell_runs(uri, "driver-loss")
                   if r.info.status == "FINISHED"}
    assert 1 <= len(done_before) < 3
    result = run_cvlib(*args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    planned = re.search(r"(\d+) cells done, (\d+) to run, (\d+) to redo", result.stdout)
    assert int(planned[1]) == len(done_before)
    assert int(planned[2]) + int(planned[3]) == 3 - len(done_before)
    runs = _cell_runs(uri, "driver-loss")
    finished = [r.data.tags[CELL_TAG] for r in runs if r.info.status == "FINISHED"]
    assert sorted(finished) == sorted(set(finished)) and len(finished) == 3
    # Each cell the kill stopped continued in its run from its checkpoint, or, without
    # one yet, left its run KILLED and trained again in a new one.
    continued = result.stdout.count("from its checkpoint after epoch")
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert continued + len(killed) == int(planned[3]) and len(runs) == 3 + len(killed)


@pytest.mark.slow
def test_interrupt_on_ray_kills_the_open_runs_and_the_actors(cluster, tmp_path, cifar_dir):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid = _grid(tmp_path, "interrupted", LONG_CELLS)
    process = start_cvlib("run", grid, "--ray", cluster.address, "--tracking-uri", uri,
                           "--data-dir", str(cifar_dir))
    lines = read_until(process, "  training ")  # a cell's second epoch of 4 has ended
    process.send_signal(signal.SIGINT)
    lines += process.stdout.readlines()
    assert process.wait(timeout=60) == 130, "".join(lines)[-3000:]
    assert _wait_for_no_trainers() == 0
    statuses = {r.info.status for r in _runs(uri, "interrupted")}
    assert "RUNNING" not in statuses and "KILLED" in statuses


@pytest.mark.slow
def test_a_search_trains_its_trials_on_ray(cluster, tmp_path, cifar_dir):
    """A tpe search's trials train two at a time on the cluster's nodes, proposed and told
    in the driver; each ends as an ordinary cell run with its trial number."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid = _grid(tmp_path, "raysearch", """\
        data: {train_size: 500, val_size: 200, test_size: 200, preprocess: per_channel_mean}
        model: {arch: cnn, widths: [8], dense_units: 16, initializer: he}
        train: {epochs: 2, batch_size: 100, optimizer: adam}
        search: {strategy: tpe, trials: 3, seed: 0, pruner: halving, min_epochs: 1,
                 reduction: 2}
        space:
          train.learning_rate: {loguniform: [0.0001, 0.01]}
          model.activation: [relu, tanh]
        seeds: [0]
        """)
    result = run_cvlib("run", grid, "--ray", cluster.address, "--tracking-uri", uri,
                       "--data-dir", str(cifar_dir))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    runs = [r for r in _cell_runs(uri, "raysearch-search") if r.info.status == "FINISHED"]
    assert sorted(int(r.data.tags[TRIAL_TAG]) for r in runs) == [0, 1, 2]
    assert all(r.data.tags[OUTCOME_TAG] in ("ok", "pruned") for r in runs)
    parent = [r for r in _runs(uri, "raysearch-search") if CELL_TAG not in r.data.tags]
    assert [r.data.params[BACKEND_PARAM] for r in parent] == [RAY_BACKEND]
    places = {place for r in runs for place in r.data.tags[TRAINED_ON_TAG].split(", ")}
    assert len(places) == 2, places  # both nodes trained trials
