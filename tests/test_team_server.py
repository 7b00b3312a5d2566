"""``cvlib server`` on a real PostgreSQL (Debian's package: initdb and pg_ctl in a temporary
folder, on a free port, as the postgres user when the tests run as root: conftest's
``postgres`` and ``start_server``, from benchmarks/team_services.py), driven by the real
``cvlib`` command; results read back through MLflow's API."""
import os
import time
import urllib.error
import urllib.request

import mlflow
import pytest
from conftest import (
    ADMIN_PASSWORD,
    REPO,
    assert_same_cells,
    create_user,
    run_cvlib,
)

from cvlib.grids import load_grid
from cvlib.tracking.schema import CELL_TAG, ERROR_TAG, HEARTBEAT_TAG, HOST_TAG, PID_TAG

SMOKE = str(REPO / "experiments" / "smoke.yaml")

def _cell_runs(uri: str, experiment: str, **credentials) -> list:
    os.environ.update(credentials)
    try:
        client = mlflow.MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
        return [] if found is None else [
            r for r in client.search_runs([found.experiment_id]) if CELL_TAG in r.data.tags]
    finally:
        for key in credentials:
            os.environ.pop(key)


@pytest.mark.slow
def test_the_smoke_grid_lands_on_the_server_as_on_sqlite(team_server, tmp_path, cifar_dir):
    sqlite = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for uri in (team_server, sqlite):
        result = run_cvlib("run", SMOKE, "--workers", "2", "--tracking-uri", uri,
                           "--data-dir", str(cifar_dir))
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    on_server = {r.data.tags[CELL_TAG]: r for r in _cell_runs(team_server, "smoke")}
    on_sqlite = {r.data.tags[CELL_TAG]: r for r in _cell_runs(sqlite, "smoke")}
    assert len(on_server) == 4
    assert_same_cells(on_server, on_sqlite)
    client = mlflow.MlflowClient(team_server)
    for run in on_server.values():
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        assert steps == [1, 2]  # every epoch once
        served = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert "plots/curves.png" in served  # served by the server: no shared folder
    table = run_cvlib("table", "--tracking-uri", team_server, "--experiment", "smoke")
    assert table.returncode == 0 and table.stdout.count("relu") + table.stdout.count("tanh") == 4
    again = run_cvlib("run", SMOKE, "--tracking-uri", team_server, "--data-dir", str(cifar_dir))
    assert again.returncode == 0 and "4 cells done, 0 to run, 0 to redo" in again.stdout
    page = tmp_path / "smoke.html"
    report = run_cvlib("report", "--tracking-uri", team_server, "--experiment", "smoke",
                       "--out", str(page))
    assert report.returncode == 0, report.stderr
    assert page.stat().st_size > 10_000 and "logged it as report.html" in report.stdout


@pytest.mark.slow
def test_halving_and_sanity_against_the_server(team_server, tmp_path, cifar_dir):
    sizes = ["--set", "data.train_size=500", "--set", "data.val_size=200",
             "--set", "data.test_size=200", "--set", "grid.model.bn=[none]"]
    halving = run_cvlib("run", SMOKE, "--tracking-uri", team_server, "--data-dir",
                        str(cifar_dir), "--set", "search.strategy=halving",
                        "--set", "search.max_epochs=2", "--set", "search.reduction=2", *sizes)
    assert halving.returncode == 0, halving.stdout[-2000:] + halving.stderr[-2000:]
    runs = _cell_runs(team_server, "smoke-halving")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.data.tags["cvlib.rung"] for r in runs) == ["0", "1"]
    sanity = run_cvlib("sanity", "--cell", "model.bn=none", "--cell", "data.train_size=500",
                       "--tracking-uri", team_server, "--data-dir", str(cifar_dir))
    assert sanity.returncode == 0, sanity.stdout[-2000:] + sanity.stderr[-2000:]
    assert "overfit tiny subset" in sanity.stdout


@pytest.mark.slow
def test_logins_are_required_and_a_wrong_password_changes_nothing(login_server, tmp_path,
                                                                  cifar_dir):
    search = f"{login_server}/api/2.0/mlflow/experiments/search?max_results=1"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(search, timeout=10)
    assert refused.value.code == 401
    result = run_cvlib("run", SMOKE, "--tracking-uri", login_server, "--data-dir",
                       str(cifar_dir), env_extra={"MLFLOW_TRACKING_USERNAME": "admin",
                                                  "MLFLOW_TRACKING_PASSWORD": "wrong"})
    assert result.returncode == 2
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and "refused the login" in errors[0], result.stderr
    assert "wrong" not in result.stdout + result.stderr
    assert _cell_runs(login_server, "smoke", MLFLOW_TRACKING_USERNAME="admin",
                      MLFLOW_TRACKING_PASSWORD=ADMIN_PASSWORD) == []


@pytest.mark.slow
def test_a_user_made_as_the_docs_say_can_log_in_and_write(login_server, tmp_path, cifar_dir):
    """docs/team-server.md: the admin creates a user through MLflow's REST API."""
    create_user(login_server, "ada", "ada-Password-5678")
    result = run_cvlib("sanity", "--cell", "model.bn=none", "--cell", "data.train_size=200",
                       "--tracking-uri", login_server, "--data-dir", str(cifar_dir),
                       env_extra={"MLFLOW_TRACKING_USERNAME": "ada",
                                  "MLFLOW_TRACKING_PASSWORD": "ada-Password-5678"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "ada-Password" not in result.stdout + result.stderr
    runs = _cell_runs(login_server, "sanity", MLFLOW_TRACKING_USERNAME="admin",
                      MLFLOW_TRACKING_PASSWORD=ADMIN_PASSWORD)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    params = {value for run in runs for value in run.data.params.values()}
    assert not any("Password" in value for value in params)


@pytest.mark.slow
def test_runs_left_running_on_another_host_are_judged_by_their_heartbeat(team_server,
                                                                         cifar_dir):
    """A cell's run left RUNNING by another host two hours ago is marked KILLED and the cell
    trained again; one whose heartbeat is fresh is left to its owner."""
    overrides = ["data.train_size=500", "data.val_size=200", "data.test_size=200",
                 "grid.model.bn=[none]"]
    stale_cell, live_cell = load_grid(SMOKE, overrides).cells()
    client = mlflow.MlflowClient(team_server)
    experiment_id = client.create_experiment("elsewhere")
    for cell, age in ((stale_cell, 7200), (live_cell, 0)):
        client.create_run(experiment_id, run_name=cell.name, tags={
            CELL_TAG: cell.cell_hash, HOST_TAG: "another-host", PID_TAG: "1",
            HEARTBEAT_TAG: f"{time.time() - age:.0f}"})
    result = run_cvlib("run", SMOKE, "--tracking-uri", team_server, "--experiment",
                       "elsewhere", "--data-dir", str(cifar_dir), "--stale-after", "30",
                       *(item for override in overrides for item in ("--set", override)))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert ("0 cells done, 0 to run, 1 to redo, 1 running in another process (1 runs left "
            "RUNNING by a dead process marked KILLED)") in result.stdout, result.stdout
    runs = {(r.data.tags[CELL_TAG], r.info.status): r
            for r in _cell_runs(team_server, "elsewhere")}
    assert sorted(runs) == sorted([(stale_cell.cell_hash, "KILLED"),
                                   (stale_cell.cell_hash, "FINISHED"),
                                   (live_cell.cell_hash, "RUNNING")])
    assert "process died" in runs[stale_cell.cell_hash, "KILLED"].data.tags[ERROR_TAG]
