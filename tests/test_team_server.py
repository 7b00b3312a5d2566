"""``cvlib server`` on a real PostgreSQL (Debian's package: initdb and pg_ctl in a temporary
folder, on a free port, as the postgres user when the tests run as root), driven by the
real ``cvlib`` command; results read back through MLflow's API."""
import base64
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest
from conftest import (
    REPO,
    assert_same_cells,
    free_port,
    read_until,
    run_cvlib,
    start_cvlib,
)

from cvlib.tracking.schema import CELL_TAG

SMOKE = str(REPO / "experiments" / "smoke.yaml")
ADMIN_PASSWORD = "admin-Password-1234"  # a test server's, only ever in the environment


def _postgres_tool(name: str) -> str | None:
    return shutil.which(name) or next(iter(sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server for the session; yields a function that makes a database and
    returns its URI."""
    initdb, pg_ctl = _postgres_tool("initdb"), _postgres_tool("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("needs PostgreSQL's initdb and pg_ctl: apt-get install postgresql")
    # Not under pytest's own folder, which only its owner may enter.
    folder = Path(tempfile.mkdtemp(prefix="cvlib-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    subprocess.run(_as_postgres([initdb, "-D", str(data), "-U", "postgres", "--auth=trust"]),
                   check=True, capture_output=True)
    subprocess.run(_as_postgres([
        pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-w", "start", "-o",
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"]), check=True,
        capture_output=True)
    import psycopg

    def database(name: str) -> str:
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres",
                             autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{port}/{name}"

    yield database
    subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "stop"]),
                   capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _start_server(backend: str, folder: Path, *flags: str, env: dict | None = None,
                  port: int | None = None):
    port = port or free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "cvlib", "server", "--backend-store-uri", backend,
         "--artifacts-destination", str(folder / "artifacts"), "--port", str(port), *flags],
        cwd=folder, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while not _answers(f"{url}/health"):
        assert server.poll() is None and time.monotonic() < deadline, server.stdout.read()
        time.sleep(0.5)
    return server, url


def _stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=60)


@pytest.fixture(scope="module")
def team_server(postgres, tmp_path_factory):
    """`cvlib server` on a PostgreSQL database, without logins."""
    server, url = _start_server(postgres("runs"), tmp_path_factory.mktemp("server"))
    yield url
    _stop(server)


@pytest.fixture(scope="module")
def login_server(postgres, tmp_path_factory):
    """`cvlib server --auth` on a PostgreSQL database; its admin's password is known."""
    secrets = {"MLFLOW_FLASK_SERVER_SECRET_KEY": "a-test-secret-key",
               "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD}
    server, url = _start_server(postgres("logins"), tmp_path_factory.mktemp("login"),
                                "--auth", env=secrets)
    yield url
    _stop(server)


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
    request = urllib.request.Request(
        f"{login_server}/api/2.0/mlflow/users/create", method="POST",
        data=b'{"username": "ada", "password": "ada-Password-5678"}',
        headers={"Content-Type": "application/json", "Authorization": "Basic " +
                 base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()})
    urllib.request.urlopen(request, timeout=30).close()
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


OUTAGE_SECONDS = 25


@pytest.mark.slow
def test_a_server_killed_mid_grid_loses_nothing(postgres, tmp_path, cifar_dir):
    """The server is killed (SIGKILL, its whole process group) after the first cell ends,
    kept down for OUTAGE_SECONDS, and started again on the same database and port."""
    backend, port = postgres("outage"), free_port()
    server, url = _start_server(backend, tmp_path, port=port)
    grid = tmp_path / "outage.yaml"
    grid.write_text(Path(SMOKE).read_text().replace("epochs: 2", "epochs: 4"))
    process = start_cvlib("run", str(grid), "--workers", "2", "--tracking-uri", url,
                          "--data-dir", str(cifar_dir), cwd=tmp_path)
    lines = read_until(process, "[1/4]")
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()
    down_at = time.monotonic()
    time.sleep(OUTAGE_SECONDS)
    server, url = _start_server(backend, tmp_path, port=port)
    back_at = time.monotonic()
    lines += process.stdout.readlines()
    assert process.wait(timeout=900) == 0, "".join(lines)[-3000:]
    finished_at = time.monotonic()
    print(f"store down {back_at - down_at:.1f} s; grid done {finished_at - back_at:.1f} s later")
    client = mlflow.MlflowClient(url)
    runs = _cell_runs(url, "smoke")
    assert sorted(r.data.tags[CELL_TAG] for r in runs) == sorted({r.data.tags[CELL_TAG]
                                                                 for r in runs})
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        for key in ("loss", "val_accuracy"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert steps == [1, 2, 3, 4], (run.info.run_name, key, steps)
        assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} >= {
            "plots/curves.png", "plots/layer_std.png"}
    _stop(server)
