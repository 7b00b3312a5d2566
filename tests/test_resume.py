"""Grids that survive: the real `cvlib` command killed, interrupted, diverging, in
parallel workers, and fed bad input, checked through mlflow's own API."""
import dataclasses
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter

import pytest
from conftest import REPO, read_until, run_cvlib
from mlflow.tracking import MlflowClient

from cvlib.cifar10 import DataError
from cvlib.engine.experiment import Experiment, run_grid
from cvlib.engine.local_backend import LocalWorkers
from cvlib.engine.options import EngineOptions
from cvlib.engine.pool import CellPool
from cvlib.engine.signals import GridInterrupted, interrupts_raise, store_write
from cvlib.grids import load_grid
from cvlib.studies.context import SCALES, StudyContext
from cvlib.tracking.owner import Owner, owner_alive, this_process
from cvlib.tracking.schema import CELL_TAG, HEARTBEAT_TAG, HOST_TAG, PID_TAG
from cvlib.tracking.uris import sqlite_path

# A line of TensorFlow's C++ start-up logging: the oneDNN notice, CPU instructions, CUDA
# probing, absl's own warning.
TENSORFLOW_NOTICE = re.compile(r"^.*(oneDNN|cuInit|cuda_|absl::|CPU instructions).*$",
                               re.MULTILINE)
GRID = textwrap.dedent("""\
    # Resume test grid: 4 tiny cells.
    name: resume
    data: {train_size: 200, val_size: 100, test_size: 100}
    model: {widths: [4], dense_units: 8}
    train: {epochs: 1, batch_size: 50, optimizer: adam, learning_rate: 0.001}
    grid:
      model.activation: [relu, tanh, elu, selu]
    """)


def _write_grid(folder, text=GRID):
    path = folder / "grid.yaml"
    path.write_text(text)
    return path


def _start(*args, cifar_dir, env_extra=None):
    return subprocess.Popen([sys.executable, "-m", "cvlib", *args, "--data-dir", str(cifar_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO, env={**os.environ, **(env_extra or {})})


def _private_tmpdir(tmp_path):
    """An empty TMPDIR for a cvlib process, to see what it leaves behind."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    return folder


def _runs(uri, experiment):
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client, client.search_runs([found.experiment_id]) if found else []


def test_kill_9_after_two_cells_then_resume_trains_the_rest_once(tmp_path, cifar_dir):
    grid = _write_grid(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    process = _start("run", str(grid), "--tracking-uri", uri, cifar_dir=cifar_dir)
    read_until(process, "[2/4]")
    process.send_signal(signal.SIGKILL)
    process.wait()
    client, runs = _runs(uri, "resume")
    finished_before = {r.data.tags["cvlib.cell"]: r.info.run_id for r in runs
                       if r.info.status == "FINISHED" and "cvlib.cell" in r.data.tags}
    assert len(finished_before) >= 2
    assert any(r.info.status == "RUNNING" for r in runs)  # what kill -9 leaves behind

    again = run_cvlib("run", str(grid), "--tracking-uri", uri, "--data-dir", str(cifar_dir))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{len(finished_before)} cells done" in again.stdout
    _, runs = _runs(uri, "resume")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    cell_runs = [r for r in runs if "cvlib.cell" in r.data.tags]
    finished = Counter(r.data.tags["cvlib.cell"] for r in cell_runs
                       if r.info.status == "FINISHED")
    assert len(finished) == 4 and set(finished.values()) == {1}
    for cell_hash, run_id in finished_before.items():  # not retrained
        assert [r.info.run_id for r in cell_runs if r.data.tags["cvlib.cell"] == cell_hash
                and r.info.status == "FINISHED"] == [run_id]
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert killed and all("process died" in r.data.tags["cvlib.error"] for r in killed)

    third = run_cvlib("run", str(grid), "--tracking-uri", uri, "--data-dir", str(cifar_dir))
    assert "4 cells done, 0 to run, 0 to redo" in third.stdout


def test_resume_judges_a_running_run_by_its_owner_process(tmp_path, cifar_dir):
    """Runs left RUNNING: one whose pid now names an unrelated live process is redone; one
    from another boot of this host name (a container on another machine) with a fresh
    heartbeat is left to its owner; one of an older cvlib (host and pid only) on this
    host, its pid alive but its heartbeat two hours old, is redone."""
    grid = _write_grid(tmp_path, GRID.replace("[relu, tanh, elu, selu]", "[relu, tanh, elu]"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    reused, elsewhere, legacy = load_grid(grid).cells()
    here = this_process()
    unrelated = subprocess.Popen(["sleep", "600"])
    try:
        its_owner = dataclasses.replace(here, pid=unrelated.pid,
                                        start_ticks=_start_ticks(unrelated.pid))
        assert owner_alive(its_owner) is True
        # The process that owned the run started at an earlier tick, with the same pid.
        earlier = dataclasses.replace(its_owner, start_ticks=its_owner.start_ticks - 1)
        owners = {
            reused: (earlier.tags(), 0),
            elsewhere: (dataclasses.replace(here, boot_id="another-boot").tags(), 0),
            legacy: ({HOST_TAG: here.host, PID_TAG: str(unrelated.pid)}, 7200)}
        client = MlflowClient(uri)
        experiment_id = client.create_experiment("resume")
        for cell, (tags, age) in owners.items():
            client.create_run(experiment_id, run_name=cell.name, tags={
                CELL_TAG: cell.cell_hash, HEARTBEAT_TAG: f"{time.time() - age:.0f}", **tags})
        result = run_cvlib("run", str(grid), "--tracking-uri", uri, "--data-dir",
                           str(cifar_dir))
        assert result.returncode == 0, result.stderr[-3000:]
        assert ("0 cells done, 0 to run, 2 to redo, 1 running in another process (2 runs "
                "left RUNNING by a dead process marked KILLED)") in result.stdout, result.stdout
        assert unrelated.poll() is None  # nothing was done to the process
    finally:
        unrelated.kill()
        unrelated.wait()
    _, runs = _runs(uri, "resume")
    states = sorted((r.data.tags[CELL_TAG], r.info.status) for r in runs
                    if CELL_TAG in r.data.tags)
    assert states == sorted([(reused.cell_hash, "KILLED"), (reused.cell_hash, "FINISHED"),
                             (legacy.cell_hash, "KILLED"), (legacy.cell_hash, "FINISHED"),
                             (elsewhere.cell_hash, "RUNNING")])
    new_owners = [Owner.from_tags(r.data.tags) for r in runs
                  if r.info.status == "FINISHED" and CELL_TAG in r.data.tags]
    assert {(o.boot_id, o.pid_namespace) for o in new_owners} == {
        (here.boot_id, here.pid_namespace)}
    assert all(o.start_ticks is not None and o.pid != here.pid for o in new_owners)


def _start_ticks(pid: int) -> int:
    """A process's start, in clock ticks since boot (/proc/PID/stat's field 22)."""
    text = open(f"/proc/{pid}/stat").read()
    return int(text[text.rindex(")") + 1:].split()[19])


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_during_a_cell_marks_it_killed_and_exits_promptly(tmp_path, cifar_dir, workers):
    epochs = 50
    grid = _write_grid(tmp_path, GRID.replace("epochs: 1", f"epochs: {epochs}"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tmpdir = _private_tmpdir(tmp_path)
    process = _start("run", str(grid), "--tracking-uri", uri, "--workers", workers,
                     cifar_dir=cifar_dir, env_extra={"TMPDIR": str(tmpdir)})
    read_until(process, "to redo")
    _wait_for_a_logged_epoch(uri, process)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in output
    _, runs = _runs(uri, "resume")
    (grid_run,) = [r for r in runs if "cvlib.cell" not in r.data.tags]
    cells = [r for r in runs if "cvlib.cell" in r.data.tags]
    assert grid_run.info.status == "KILLED"
    assert 1 <= len(cells) <= int(workers)  # the cells that were training
    assert all(cell.info.status == "KILLED" for cell in cells)
    assert all(cell.data.tags["cvlib.error"] == "interrupted by SIGTERM" for cell in cells)
    # Prompt: the signal ended the cells it interrupted, it did not wait for their end.
    client = MlflowClient(uri)
    for cell in cells:
        steps = [m.step for m in client.get_metric_history(cell.info.run_id, "loss")]
        assert max(steps, default=0) < epochs, steps
    assert not list(tmpdir.iterdir())  # no plot folder, no autograph source


def test_a_diverging_cell_is_a_result_and_the_grid_completes(tmp_path, cifar_dir):
    grid = _write_grid(tmp_path, GRID.replace(
        "model.activation: [relu, tanh, elu, selu]",
        "train.learning_rate: [0.001, 1.0e+6]").replace("optimizer: adam", "optimizer: sgd"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cvlib("run", str(grid), "--tracking-uri", uri, "--data-dir", str(cifar_dir),
                       "--set", "train.epochs=3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DIVERGED" in result.stdout and "1 diverged" in result.stdout
    client, runs = _runs(uri, "resume")
    cells = {r.data.params["train.learning_rate"]: r for r in runs if "cvlib.cell" in r.data.tags}
    diverged, ok = cells["1000000.0"], cells["0.001"]
    assert diverged.info.status == "FINISHED" and ok.info.status == "FINISHED"
    assert diverged.data.tags["cvlib.outcome"] == "diverged"
    assert ok.data.tags["cvlib.outcome"] == "ok"
    assert diverged.data.tags["cvlib.diverged_at"] == "1"
    assert "test_accuracy" not in diverged.data.metrics
    assert [m.step for m in client.get_metric_history(diverged.info.run_id, "loss")] == [1]
    again = run_cvlib("run", str(grid), "--tracking-uri", uri, "--data-dir", str(cifar_dir),
                      "--set", "train.epochs=3")
    assert "2 cells done, 0 to run, 0 to redo" in again.stdout


def test_two_workers_train_the_same_cells_as_one(tmp_path, cifar_dir):
    grid = _write_grid(tmp_path)
    tmpdir = _private_tmpdir(tmp_path)
    hashes, notices = {}, {}
    for workers in (1, 2):
        uri = f"sqlite:///{tmp_path / f'w{workers}.db'}"
        result = run_cvlib("run", str(grid), "--tracking-uri", uri, "--data-dir",
                           str(cifar_dir), "--workers", str(workers),
                           env_extra={"TMPDIR": str(tmpdir)})
        assert result.returncode == 0, result.stderr[-3000:]
        # Workers end by SIGTERM, which skips the atexit handlers that delete
        # TensorFlow's autograph sources: their own temporary folders catch them.
        assert not list(tmpdir.iterdir())
        # TensorFlow's C++ start-up notices (which ones depends on the CPU and the
        # drivers): held back on a machine without a GPU, in every process.
        notices[workers] = TENSORFLOW_NOTICE.findall(result.stderr)
        _, runs = _runs(uri, "resume")
        cells = [r for r in runs if "cvlib.cell" in r.data.tags]
        assert {r.info.status for r in cells} == {"FINISHED"}
        assert len(runs) == 5  # one parent run
        hashes[workers] = sorted((r.info.run_name, r.data.tags["cvlib.cell"]) for r in cells)
    assert hashes[1] == hashes[2]
    assert len(hashes[2]) == 4
    assert notices == {1: [], 2: []}, notices
    # Nothing left to train: the workers, started before the plan, are stopped quietly.
    again = run_cvlib("run", str(grid), "--tracking-uri", uri, "--data-dir", str(cifar_dir),
                      "--workers", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 cells done, 0 to run, 0 to redo" in again.stdout
    assert not TENSORFLOW_NOTICE.findall(again.stderr), again.stderr


def test_a_signal_during_a_store_write_waits_for_its_end():
    """SIGTERM inside a store write is raised when the write ends, not in its middle."""
    steps = []
    with interrupts_raise(), pytest.raises(GridInterrupted, match="SIGTERM"):
        with store_write():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs here
            steps.append("the write went on")
        steps.append("after the write")
    assert steps == ["the write went on"]


def test_worker_pool_resizes_to_the_cells_left():
    """Started for the whole grid, a pool keeps only as many workers as cells are left."""
    before = set(multiprocessing.active_children())
    with CellPool(LocalWorkers(None, workers=2)) as pool:
        pool.resize(5)
        assert len(set(multiprocessing.active_children()) - before) == 2
        pool.resize(1)
        assert len(set(multiprocessing.active_children()) - before) == 1
    assert set(multiprocessing.active_children()) == before


def test_a_worker_starts_keras_without_the_packages_it_never_uses():
    """A worker's TensorFlow start skips Keras's optional imports (matplotlib,
    scikit-learn, IPython), and they import normally afterwards."""
    script = textwrap.dedent("""\
        import sys
        from cvlib.engine.child import UNUSED_BY_WORKERS, start_tensorflow_quietly
        start_tensorflow_quietly(1)
        print(sorted(name for name in UNUSED_BY_WORKERS if name in sys.modules))
        import keras, numpy
        print(keras.Sequential([keras.layers.Dense(2)]).predict(numpy.ones((1, 3)), verbose=0).shape)
        import matplotlib, sklearn
        print(matplotlib.__name__, sklearn.__name__)
        """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "(1, 2)", "matplotlib sklearn"]


def test_an_experiment_trains_and_draws_grid_after_grid_with_the_same_processes(
        tmp_path, cifar_dir):
    """lr-search's stages and the claims' studies train their grids through one
    Experiment: its workers import TensorFlow once and its plot helper matplotlib once,
    they stay up between grids, and stop at the end."""
    grids = [load_grid(_write_grid(tmp_path), overrides)
             for overrides in ([], ["train.batch_size=25"])]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    before = set(multiprocessing.active_children())
    children = []  # this process's children after each grid, but those from before
    with Experiment(uri, "shared", EngineOptions(data_dir=str(cifar_dir), workers=2),
                    echo=lambda line: None) as experiment:
        assert set(multiprocessing.active_children()) == before  # they start with a grid
        for grid in grids:
            summary = experiment.train(grid)
            assert len(summary.finished) == 4
            children.append(set(multiprocessing.active_children()) - before)
    assert set(multiprocessing.active_children()) == before
    # The same two workers and one plot helper after both grids.
    assert children[0] == children[1] and len(children[0]) == 3
    client = MlflowClient(uri)
    _, runs = _runs(uri, "shared")
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 10  # and two parents
    for run in runs:
        if run.data.tags.get("cvlib.cell"):  # each grid waited for its own plots
            plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
            assert "plots/curves.png" in plots
    assert Experiment(uri, "shared", EngineOptions(workers=1)).pool is None  # this process


def test_the_claims_run_and_its_study_run_beat_while_their_grid_trains(tmp_path, cifar_dir):
    """cvlib claims nests a study's grid under the study's run, under the claims run:
    neither writes anything of its own while the grid trains, and yet both beat, so that
    a command on another machine does not take them for dead."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with Experiment(uri, "claims-beat", EngineOptions(data_dir=str(cifar_dir)),
                    echo=lambda line: None) as experiment:
        with experiment.parent_run("claims-smoke") as claims:
            context = StudyContext(experiment, SCALES["smoke"], claims)
            with context.study("beats") as study:
                for parent in (claims, study):  # a beat older than anything the grid does
                    MlflowClient(uri).set_tag(parent, HEARTBEAT_TAG, "0")
                context.run(context.cnn_grid("beats", {"activation": "relu"}, {"epochs": 2},
                                             grid={"model.bn": ["none", "before"]}), study)
    _, runs = _runs(uri, "claims-beat")
    by_id = {run.info.run_id: run for run in runs}
    cells = [run for run in runs if CELL_TAG in run.data.tags]
    assert len(cells) == 2 and {run.info.status for run in runs} == {"FINISHED"}
    last_cell_end = max(run.info.end_time for run in cells) / 1000
    for parent in (by_id[claims], by_id[study]):
        beat = float(parent.data.tags[HEARTBEAT_TAG])  # whole seconds, rounded
        assert beat >= last_cell_end - 0.5, parent.info.run_name


def test_workers_stop_when_the_grid_fails_before_training(tmp_path):
    """Workers start before the data check and the store; a missing dataset ends the
    grid with them stopped and the store untouched."""
    grid = load_grid(_write_grid(tmp_path), [])
    children_before = set(multiprocessing.active_children())
    with pytest.raises(DataError):
        run_grid(grid, f"sqlite:///{tmp_path / 'mlflow.db'}",
                 EngineOptions(data_dir=str(tmp_path / "none"), workers=2), echo=lambda line: None)
    assert set(multiprocessing.active_children()) == children_before
    assert not (tmp_path / "mlflow.db").exists()


def _children(pid: int) -> list[int]:
    return [int(child) for child in subprocess.run(
        ["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]


def _command(pid: int) -> str:
    return open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")


def _fork_servers(runner_pid: int) -> list[int]:
    """The workers' fork server of a `cvlib run` (a child that imported TensorFlow)."""
    return [child for child in _children(runner_pid) if "forkserver" in _command(child)]


def _workers(runner_pid: int) -> list[int]:
    """The training workers of a `cvlib run`: its fork server's children."""
    return [worker for server in _fork_servers(runner_pid) for worker in _children(server)]


def _plot_helper(runner_pid: int) -> int:
    """The plot helper of a `cvlib run`: its one spawned child (not multiprocessing's
    resource tracker, not the fork server)."""
    (helper,) = [child for child in _children(runner_pid) if "spawn_main" in _command(child)]
    return helper


def _wait_for_a_logged_epoch(uri: str, process: subprocess.Popen) -> None:
    """Return once a running cell has logged an epoch; fail if the grid ends first."""
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:
        if not sqlite_path(uri).exists():  # cvlib creates it whole; MLflow would not
            time.sleep(0.1)
            continue
        client, runs = _runs(uri, "resume")
        if any(client.get_metric_history(r.info.run_id, "loss") for r in runs
               if "cvlib.cell" in r.data.tags and r.info.status == "RUNNING"):
            return
        time.sleep(0.1)
    if process.poll() is None:
        process.kill()
    output = process.communicate()[0]
    raise AssertionError(f"no running cell logged an epoch (exit code {process.returncode}):\n"
                         f"{output[-3000:]}")


def _two_workers_past_an_epoch(tmp_path, cifar_dir, *options):
    """A `cvlib run --workers 2` of 10-epoch cells, once an epoch is logged: (process, uri)."""
    # Tiny cells train an epoch in a fraction of a second: ten of them keep a cell
    # running for longer than the store's polling takes to notice it.
    grid = _write_grid(tmp_path, GRID.replace("epochs: 1", "epochs: 10"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    process = _start("run", str(grid), "--tracking-uri", uri, "--workers", "2", *options,
                     cifar_dir=cifar_dir)
    _wait_for_a_logged_epoch(uri, process)
    return process, uri


def test_without_retries_a_dying_worker_fails_its_cell_and_is_replaced(tmp_path, cifar_dir):
    process, uri = _two_workers_past_an_epoch(tmp_path, cifar_dir, "--cell-retries", "0")
    victim = _workers(process.pid)[0]
    os.kill(victim, signal.SIGKILL)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 1, output[-3000:]  # a failed cell: status 1
    _, runs = _runs(uri, "resume")
    cells = [r for r in runs if "cvlib.cell" in r.data.tags]
    assert len(cells) == 4
    failed = [r for r in cells if r.info.status == "FAILED"]
    assert len(failed) == 1
    assert failed[0].data.tags["cvlib.error"] == "worker process died (exit code -9)"
    assert sum(r.info.status == "FINISHED" for r in cells) == 3


def test_a_dying_plot_helper_loses_no_result(tmp_path, cifar_dir):
    grid = _write_grid(tmp_path, GRID.replace("epochs: 1", "epochs: 3"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    process = _start("run", str(grid), "--tracking-uri", uri, cifar_dir=cifar_dir)
    # Once the first cell ends, its plots are with the helper and three cells remain.
    read_until(process, "[1/4]")
    helper = _plot_helper(process.pid)
    os.kill(helper, signal.SIGKILL)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output[-3000:]
    client, runs = _runs(uri, "resume")
    cells = sorted((r for r in runs if "cvlib.cell" in r.data.tags),
                   key=lambda r: r.info.start_time)
    assert [r.info.status for r in cells] == ["FINISHED"] * 4
    assert all("test_accuracy" in r.data.metrics for r in cells)
    plotted = ["plots/curves.png" in {a.path for a in client.list_artifacts(r.info.run_id, "plots")}
               for r in cells]
    assert all(plotted[i] or "cvlib.plots_error" in cells[i].data.tags for i in range(4))
    assert plotted[-1]  # a new helper drew the later cells' plots


def test_the_children_of_a_killed_runner_exit(tmp_path, cifar_dir):
    process, _ = _two_workers_past_an_epoch(tmp_path, cifar_dir)
    workers, servers = _workers(process.pid), _fork_servers(process.pid)
    assert len(workers) == 2 and len(servers) == 1
    # The workers were forked with TensorFlow imported: the server imported it for them.
    assert "_pywrap_tensorflow_internal" in open(f"/proc/{servers[0]}/maps").read()
    children = workers + servers + [_plot_helper(process.pid)]
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in children):
        time.sleep(0.5)
    # Orphans would wait on their queues forever (zombies are gone from /proc once reaped).
    assert not [pid for pid in children if _alive(pid)]


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie waits to be reaped; a reaped one is gone from
    /proc, also between the listing and the reading)."""
    try:
        return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _finished_cells(uri: str) -> dict:
    """The FINISHED cell runs of the resume grid, by cell hash."""
    _, runs = _runs(uri, "resume")
    return {r.data.tags["cvlib.cell"]: r for r in runs
            if "cvlib.cell" in r.data.tags and r.info.status == "FINISHED"}


def test_plots_left_pending_by_a_killed_command_are_drawn_by_the_next(tmp_path, cifar_dir):
    """The plot helper held stopped, the command is killed with finished cells whose plots
    were never drawn; the next command draws them from the store, trains none of them
    again, and every finished cell has its plots."""
    grid = _write_grid(tmp_path, GRID.replace("epochs: 1", "epochs: 2"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    process = _start("run", str(grid), "--tracking-uri", uri, cifar_dir=cifar_dir)
    read_until(process, "to redo")  # the plan is made; the helper starts next
    deadline = time.time() + 60
    while not [c for c in _children(process.pid) if "spawn_main" in _command(c)]:
        assert time.time() < deadline, "no plot helper started"
        time.sleep(0.05)
    helper = _plot_helper(process.pid)
    os.kill(helper, signal.SIGSTOP)  # it draws nothing from now on
    try:
        read_until(process, "[2/4]")
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        os.kill(helper, signal.SIGKILL)
    client = MlflowClient(uri)
    left = _finished_cells(uri)
    assert len(left) >= 2
    for run in left.values():
        assert run.data.tags["cvlib.plots"] == "pending"
        assert not client.list_artifacts(run.info.run_id, "plots")

    again = run_cvlib("run", str(grid), "--tracking-uri", uri, "--data-dir", str(cifar_dir))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{len(left)} cells done" in again.stdout
    assert f"drawing the plots of {len(left)} finished runs" in again.stdout
    finished = _finished_cells(uri)
    assert len(finished) == 4
    for cell_hash, run in left.items():  # not trained again: the same runs
        assert finished[cell_hash].info.run_id == run.info.run_id
    for run in finished.values():
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert {"plots/curves.png", "plots/layer_std.png"} <= plots, plots
        assert run.data.tags.get("cvlib.plots", "drawn") == "drawn"
        assert "cvlib.plots_error" not in run.data.tags
    redrawn = client.download_artifacts(next(iter(left.values())).info.run_id,
                                        "plots/curves.png", str(tmp_path))
    assert open(redrawn, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    third = run_cvlib("run", str(grid), "--tracking-uri", uri, "--data-dir", str(cifar_dir))
    assert "drawing the plots" not in third.stdout  # nothing left pending


def _two_busy_workers(uri: str, process: subprocess.Popen, lost: int) -> list[int]:
    """Wait until the run has retried its ``lost`` cells and each of its two workers
    trains a cell that has logged an epoch; returns the workers' pids."""
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        client, runs = _runs(uri, "resume") if sqlite_path(uri).exists() else (None, [])
        cells = [r for r in runs if "cvlib.cell" in r.data.tags]
        training = [r for r in cells if r.info.status == "RUNNING"
                    and client.get_metric_history(r.info.run_id, "loss")]
        workers = [pid for pid in _workers(process.pid) if _alive(pid)]
        if (sum(r.info.status == "FAILED" for r in cells) == lost and len(training) == 2
                and len(workers) == 2):
            return workers
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"never two busy workers:\n{process.communicate()[0][-3000:]}")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_workers_killed_mid_cell_three_times_the_grid_ends_with_each_cell_finished_once(
        tmp_path, cifar_dir):
    # Without epoch checkpoints, a lost cell trains again from its first epoch, in a new
    # run (tests/test_checkpoints.py: with them, it continues in its run).
    grid = _write_grid(tmp_path, GRID.replace("epochs: 1", "epochs: 20, checkpoint_every: 0")
                       + "seeds: [0, 1]\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    process = _start("run", str(grid), "--tracking-uri", uri, "--workers", "2",
                     "--cell-retries", "3", cifar_dir=cifar_dir)
    for kills in range(3):
        victim = _two_busy_workers(uri, process, lost=kills)[kills % 2]
        os.kill(victim, signal.SIGKILL)
    output = process.communicate(timeout=400)[0]
    assert process.returncode == 0, output[-3000:]
    _, runs = _runs(uri, "resume")
    cells = [r for r in runs if "cvlib.cell" in r.data.tags]
    finished = Counter(r.data.tags["cvlib.cell"] for r in cells if r.info.status == "FINISHED")
    assert len(finished) == 8 and set(finished.values()) == {1}
    failed = [r for r in cells if r.info.status == "FAILED"]
    assert len(failed) == 3, [(r.info.run_name, r.info.status) for r in cells]
    for run in failed:  # each killed cell trained again, because of the retry policy
        assert run.data.tags["cvlib.error"].startswith("worker process died (exit code -9); "
                                                       "training it again from its first epoch")
        assert run.data.tags["cvlib.cell"] in finished
    assert output.count("worker process died (exit code -9)") == 3
