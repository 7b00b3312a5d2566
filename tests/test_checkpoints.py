"""Epoch checkpoints: a cell stopped mid-training continues from its last checkpoint, in
the same run, and ends bit-identical to the same cell trained without a stop."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import textwrap
import time
import zipfile
from pathlib import Path

import psutil
import pytest
from conftest import run_cvlib, start_cvlib
from mlflow.tracking import MlflowClient

from cvlib.checkpoints import CorruptCheckpoint, TrainingState, read_state
from cvlib.engine.epoch_checkpoints import CHECKPOINT_FILE, CHECKPOINT_FOLDER
from cvlib.tracking.schema import EPOCH_TIME, IMAGES_PER_S

# Two cells of 6 epochs, each epoch long enough (a few tenths of a second) for the
# command to be killed between two of them.
GRID = textwrap.dedent("""\
    name: checkpointed
    data: {train_size: 1500, val_size: 100, test_size: 100, preprocess: per_channel_mean}
    model: {arch: cnn, widths: [8], dense_units: 16, initializer: he, bn: before}
    train: {epochs: 6, batch_size: 50, optimizer: adam, learning_rate: 0.001}
    grid:
      model.activation: [relu, tanh]
    seeds: [0]
    """)
# Measured, not results: they differ between any two runs.
TIMINGS = {EPOCH_TIME, IMAGES_PER_S}


def _run(folder: Path, cifar_dir: Path, *extra: str):
    """`cvlib run` of the grid in a folder of its own (its store and checkpoints)."""
    folder.mkdir(exist_ok=True)
    (folder / "grid.yaml").write_text(GRID)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    args = ("run", str(folder / "grid.yaml"), "--tracking-uri", uri,
            "--data-dir", str(cifar_dir), *extra)
    return uri, args


def _checkpoints(folder: Path) -> list[Path]:
    return sorted((folder / CHECKPOINT_FOLDER).glob(f"*/{CHECKPOINT_FILE}"))


def _await_epoch(folder: Path, process: subprocess.Popen, epoch: int) -> None:
    """Return once a cell's checkpoint holds ``epoch``; fail if the command ends first."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        states = []
        for path in _checkpoints(folder):
            with contextlib.suppress(CorruptCheckpoint):  # removed while read
                states.append(read_state(path))
        if any(state.epoch >= epoch for state in states):
            return
        time.sleep(0.02)
    process.kill()
    pytest.fail(f"no checkpoint reached epoch {epoch}: {process.communicate()[0][-3000:]}")


def _stop_after_epoch(folder: Path, args: tuple[str, ...], epoch: int,
                      how: signal.Signals = signal.SIGKILL) -> None:
    """Start the command and send it a signal once a cell's checkpoint holds ``epoch``."""
    process = start_cvlib(*args, cwd=folder)
    try:
        _await_epoch(folder, process, epoch)
        process.send_signal(how)
        process.communicate(timeout=120)
    finally:
        process.kill()
        process.wait()


def _finished_runs(uri: str) -> dict[str, object]:
    """Each cell's FINISHED run, by cell hash."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("checkpointed")
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'")
    return {run.data.tags["cvlib.cell"]: run for run in runs if "cvlib.cell" in run.data.tags}


def _histories(uri: str, run) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient(uri)
    return {key: [(m.step, m.value) for m in sorted(client.get_metric_history(
        run.info.run_id, key), key=lambda m: (m.step, m.timestamp))]
        for key in run.data.metrics if key not in TIMINGS}


def _assert_identical(uri: str, reference_uri: str) -> dict[str, object]:
    """Every cell's FINISHED run holds the reference's figures at every step, each step
    logged once."""
    runs, reference = _finished_runs(uri), _finished_runs(reference_uri)
    assert set(runs) == set(reference) and len(runs) == 2
    for cell, run in runs.items():
        histories, expected = _histories(uri, run), _histories(reference_uri, reference[cell])
        assert set(histories) == set(expected)
        for key, points in histories.items():
            steps = [step for step, _ in points]
            assert len(steps) == len(set(steps)), f"{key} logged a step twice: {steps}"
            assert points == expected[key], key
        assert run.data.metrics["test_accuracy"] == reference[cell].data.metrics["test_accuracy"]
    return runs


def _reference(tmp_path: Path, cifar_dir: Path, *extra: str) -> str:
    """The store of an uninterrupted run of the grid."""
    uri, args = _run(tmp_path / "uninterrupted", cifar_dir, *extra)
    result = run_cvlib(*args, cwd=tmp_path / "uninterrupted")
    assert result.returncode == 0, result.stderr[-3000:]
    return uri


def _resume_test(tmp_path: Path, cifar_dir: Path, *extra: str,
                 how: signal.Signals = signal.SIGKILL) -> None:
    uri, args = _run(tmp_path / "stopped", cifar_dir, *extra)
    _stop_after_epoch(tmp_path / "stopped", args, 3, how)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("checkpointed")
    stopped = {run.data.tags["cvlib.cell"]: run.info.run_id
               for run in client.search_runs([experiment.experiment_id])
               if "cvlib.cell" in run.data.tags}
    resumed = run_cvlib(*args, cwd=tmp_path / "stopped")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "to redo" in resumed.stdout
    continued = [line for line in resumed.stdout.splitlines()
                 if "from its checkpoint after epoch" in line]
    assert continued, resumed.stdout
    epochs = [int(line.rsplit(" ", 1)[1]) for line in continued]
    assert max(epochs) >= 3 and all(1 <= epoch < 6 for epoch in epochs), continued
    runs = _assert_identical(uri, _reference(tmp_path, cifar_dir, *extra))
    # The continued cells ended in the run they began in; their checkpoints are gone.
    same_run = [cell for cell, run in runs.items() if stopped.get(cell) == run.info.run_id]
    assert len(same_run) == len(continued)
    assert not (tmp_path / "stopped" / CHECKPOINT_FOLDER).exists()  # nor an empty folder


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_killed_command_resumes_its_cells_from_their_checkpoints(tmp_path, cifar_dir):
    _resume_test(tmp_path, cifar_dir, "--workers", "1")  # cells trained in the command


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_workers_resume_from_their_checkpoints(tmp_path, cifar_dir):
    _resume_test(tmp_path, cifar_dir, "--workers", "2")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_command_ended_by_sigterm_resumes_its_cells(tmp_path, cifar_dir):
    _resume_test(tmp_path, cifar_dir, "--workers", "1", how=signal.SIGTERM)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_cell_whose_worker_dies_continues_from_its_checkpoint_in_its_run(tmp_path,
                                                                           cifar_dir):
    uri, args = _run(tmp_path / "stopped", cifar_dir, "--workers", "2")
    process = start_cvlib(*args, cwd=tmp_path / "stopped")
    try:
        _await_epoch(tmp_path / "stopped", process, 2)
        for worker in _workers(process.pid):  # both: whichever trains a cell now
            os.kill(worker, signal.SIGKILL)
        output = process.communicate(timeout=300)[0]
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, output[-3000:]
    continued = {line.split(":", 1)[0] for line in output.splitlines()
                 if "continuing it from its checkpoint after epoch" in line}
    assert continued, output[-3000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("checkpointed")
    for name in continued:  # it ended in the run it began in: no FAILED run before
        runs = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{name}'")
        assert [run.info.status for run in runs] == ["FINISHED"], name
    _assert_identical(uri, _reference(tmp_path, cifar_dir, "--workers", "2"))


def _workers(command: int) -> list[int]:
    """The worker processes of a `cvlib run`: the children of its fork server."""
    return [worker.pid for child in psutil.Process(command).children()
            if "forkserver" in " ".join(child.cmdline()) for worker in child.children()]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_corrupt_checkpoint_restarts_its_cell_from_epoch_1(tmp_path, cifar_dir):
    uri, args = _run(tmp_path / "stopped", cifar_dir, "--workers", "1")
    _stop_after_epoch(tmp_path / "stopped", args, 3)
    corrupted = _checkpoints(tmp_path / "stopped")
    assert corrupted
    for path in corrupted:  # cut short, as a full disk would leave it
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    resumed = run_cvlib(*args, cwd=tmp_path / "stopped")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    notices = [line for line in resumed.stdout.splitlines()
               if "training it again from epoch 1" in line]
    assert len(notices) == len(corrupted), resumed.stdout
    assert "from its checkpoint after epoch" not in resumed.stdout
    _assert_identical(uri, _reference(tmp_path, cifar_dir, "--workers", "1"))


def test_an_altered_checkpoint_fails_its_checksum(tmp_path):
    import keras

    from cvlib.checkpoints import write_checkpoint

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    path = tmp_path / "checkpoint.zip"
    write_checkpoint(path, model, TrainingState(2, 1.5, {"loss": [1.0, 0.5]}))
    assert read_state(path) == TrainingState(2, 1.5, {"loss": [1.0, 0.5]})
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["state.json"] = members["state.json"].replace(b'"epoch": 2', b'"epoch": 5')
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(CorruptCheckpoint, match="checksum"):
        read_state(path)
    path.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(CorruptCheckpoint, match="unreadable"):
        read_state(path)


def test_the_plan_names_each_cells_latest_stopped_run():
    from cvlib.engine.resume import plan
    from cvlib.grids import grid_from_dict
    from cvlib.tracking.records import RunRecord

    first, second, third = grid_from_dict({"name": "g", "grid": {
        "model.activation": ["relu", "tanh", "elu"]}}).cells()
    records = [  # newest first, as the store lists them
        RunRecord("dead", first.cell_hash, "RUNNING", heartbeat=None),
        RunRecord("older-killed", first.cell_hash, "KILLED"),
        RunRecord("failed", second.cell_hash, "FAILED"),
        RunRecord("killed", third.cell_hash, "KILLED"),
        RunRecord("oldest-failed", third.cell_hash, "FAILED")]
    the_plan = plan([first, second, third], records)
    assert the_plan.interrupted == {first.cell_hash: "dead", third.cell_hash: "killed"}
    assert plan([first, second, third], records, rerun=True).interrupted == {}
