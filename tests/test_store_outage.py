"""A tracking server that goes away mid-grid, with the real ``cvlib server`` on a real
PostgreSQL (conftest's): training goes on, the writes wait in the local journal, and
nothing is lost or written twice, whether the server comes back during the command or
only for the next one. Results are read back through MLflow's API."""
import os
import re
import signal
import time
from pathlib import Path

import mlflow
import pytest
from conftest import REPO, free_port, read_until, start_cvlib, start_server

from cvlib.tracking.schema import CELL_TAG, RUN_KEY_TAG

SMOKE = REPO / "experiments" / "smoke.yaml"
# How long the server stays away in the test where it comes back during the command.
OUTAGE_SECONDS = 25


@pytest.fixture
def server_on(postgres, tmp_path):
    """Starts `cvlib server` on a database of the session's PostgreSQL, again on the same
    port when called again; every server it started is gone after the test."""
    started = []

    def start(database: str, port: int):
        server, url = start_server(database, tmp_path, port=port)
        started.append(server)
        return server, url

    yield start
    for server in started:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _four_epoch_grid(folder: Path) -> Path:
    grid = folder / "outage.yaml"
    grid.write_text(SMOKE.read_text().replace("epochs: 2", "epochs: 4"))
    return grid


def _run(grid: Path, url: str, cifar_dir, folder: Path, *flags: str):
    return start_cvlib("run", str(grid), "--tracking-uri", url, "--data-dir", str(cifar_dir),
                       *flags, cwd=folder)


def _kill(server) -> float:
    """SIGKILL the server's whole process group; returns when it went down."""
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()
    return time.monotonic()


def _assert_every_cell_once(url: str, plots_in_flight: int = 0) -> list:
    """Each of the 4 cells has one FINISHED run with every epoch's metrics once, its
    statistics table and its plots (but for ``plots_in_flight`` runs, whose plots were
    being drawn when their command was killed); no run was created twice. Returns every
    cell run."""
    client = mlflow.MlflowClient(url)
    experiment = client.get_experiment_by_name("smoke")
    runs = [run for run in client.search_runs([experiment.experiment_id])
            if CELL_TAG in run.data.tags]
    keys = [run.data.tags[RUN_KEY_TAG] for run in runs]
    assert len(keys) == len(set(keys)), "a run was created twice"
    finished = [run for run in runs if run.info.status == "FINISHED"]
    assert sorted(run.data.tags[CELL_TAG] for run in finished) == sorted(
        {run.data.tags[CELL_TAG] for run in runs}) and len(finished) == 4
    without_plots = 0
    for run in finished:
        for key in ("loss", "val_accuracy"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert steps == [1, 2, 3, 4], (run.info.run_name, key, steps)
        assert [a.path for a in client.list_artifacts(run.info.run_id, "stats")] == [
            "stats/activations.parquet"]
        without_plots += not {a.path for a in client.list_artifacts(
            run.info.run_id, "plots")} >= {"plots/curves.png", "plots/layer_std.png"}
    assert without_plots <= plots_in_flight
    return runs


@pytest.mark.slow
def test_a_server_killed_mid_grid_and_back_costs_nothing(postgres, server_on, tmp_path,
                                                         cifar_dir):
    """The server is killed after the first cell, kept down for OUTAGE_SECONDS while the
    grid trains on, and started again on the same database and port."""
    backend, port = postgres("outage"), free_port()
    server, url = server_on(backend, port)
    process = _run(_four_epoch_grid(tmp_path), url, cifar_dir, tmp_path, "--workers", "2")
    lines = read_until(process, "[1/4]")
    down_at = _kill(server)
    lines += read_until(process, "tracking server unreachable since")
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
    server, url = server_on(backend, port)
    back_at = time.monotonic()
    lines += process.stdout.readlines()
    assert process.wait(timeout=900) == 0, "".join(lines)[-3000:]
    output = "".join(lines)
    caught_up = re.search(r"tracking server back after ([\d.]+) s away; the (\d+) writes "
                          r"journaled meanwhile were sent in ([\d.]+) s", output)
    assert caught_up, output[-3000:]
    print(f"store down {back_at - down_at:.1f} s; the command saw it away "
          f"{caught_up[1]} s, then sent {caught_up[2]} journaled writes in {caught_up[3]} s")
    assert not list((tmp_path / "mlruns" / "journal").glob("*.jsonl")), "journal left"
    _assert_every_cell_once(url)


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["killed", "store-timeout"])
def test_a_command_ended_while_the_server_is_down_is_sent_by_the_next(
        ending, postgres, server_on, tmp_path, cifar_dir):
    """The server is killed after the first cell; the command then ends while it is still
    away: SIGKILL after the third cell, or --store-timeout. The server comes back, and the
    same command sends the journal, then trains only what is left."""
    backend, port = postgres(f"replay_{ending.replace('-', '_')}"), free_port()
    server, url = server_on(backend, port)
    grid = _four_epoch_grid(tmp_path)
    # Killed: the default (30 min) store-timeout never ends it; else 15 s of outage.
    flags = ("--workers", "1") + (("--store-timeout", "0.25") if ending != "killed" else ())
    process = _run(grid, url, cifar_dir, tmp_path, *flags)
    lines = read_until(process, "[1/4]")
    _kill(server)
    if ending == "killed":
        lines += read_until(process, "[3/4]")
        process.kill()
        process.wait()
    else:
        lines += process.stdout.readlines()
        assert process.wait(timeout=300) == 3, "".join(lines)[-3000:]
        assert "longer than --store-timeout" in lines[-1], lines[-1]
    assert "tracking server unreachable since" in "".join(lines)
    journals = list((tmp_path / "mlruns" / "journal").glob("*.jsonl"))
    assert len(journals) == 1, "".join(lines)[-3000:]

    server, url = server_on(backend, port)
    rerun = _run(grid, url, cifar_dir, tmp_path, *flags)
    output = rerun.communicate(timeout=900)[0]
    assert rerun.returncode == 0, output[-3000:]
    replay = re.search(r"sent (\d+) writes that an earlier command journaled in .* \(([\d.]+) s\)",
                       output)
    assert replay, output[-3000:]
    print(f"{ending}: replayed {replay[1]} writes in {replay[2]} s")
    assert not journals[0].exists()
    done = int(re.search(r"(\d+) cells done", output)[1])
    assert (done == 3 if ending == "killed" else done >= 1), output[-3000:]
    assert f"{4 - done} cells finished" in output, output[-3000:]
    runs = _assert_every_cell_once(url, plots_in_flight=1 if ending == "killed" else 0)
    assert {run.info.status for run in runs} <= {"FINISHED", "KILLED"}
