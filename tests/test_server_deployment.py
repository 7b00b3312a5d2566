"""`cvlib server` where teams deploy it, on real services started here (tests/deployment.py):
a PostgreSQL that asks for a password, `cvlib server --auth` on it, Debian's nginx in front
with the site docs/team-server.md shows and a self-signed certificate made by openssl, and
nginx again as an HTTP proxy, so that clients on this machine reach the server by a host
name no DNS knows. Driven by the real `cvlib` command in folders of its own; results read
back through MLflow's API. A service that cannot start fails these tests."""
from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from conftest import TINY_GRID, free_port, start_server, stop_server
from deployment import (
    command_line,
    documented_nginx_site,
    environment,
    nginx,
    password_postgres,
    process_tree,
    proxy_site,
    run_in,
    self_signed_certificate,
    start_in,
    substituted,
)

from cvlib.tracking.schema import CELL_TAG

NAME = "mlflow.lab.example"  # the name clients use; no DNS knows it
DATABASE_PASSWORD = "Db:Secret/77"
ADMIN_PASSWORD = "admin-Password-1234"
# Hostile for a URI: '@', ':' and '/' must be percent-encoded in it.
ADA_PASSWORD = "Ada:p@ss/word-7"
BOB_PASSWORD = "bob-Password-5678"
SECRETS = {"MLFLOW_FLASK_SERVER_SECRET_KEY": "a-test-secret-key",
           "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD}
CERTIFICATE_ENV = "MLFLOW_TRACKING_SERVER_CERT_PATH"
ONE_CELL = ["--set", "grid.model.activation=[relu]", "--set", "grid.model.bn=[none]"]


def _login(user: str, password: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}


ADMIN = _login("admin", ADMIN_PASSWORD)


@dataclass
class Deployment:
    """The module's deployment.

    Attributes:
        server: `cvlib server --auth`, its backend's password in its environment only.
        url: The server itself, http://127.0.0.1:PORT.
        https: The server through nginx and TLS, https://localhost:PORT.
        proxy: nginx as an HTTP proxy to the server, http://127.0.0.1:PORT.
        certificate: The self-signed certificate clients trust.
        folder: The server's folder (server.log, nginx/access.log).
    """

    server: subprocess.Popen
    url: str
    https: str
    proxy: str
    certificate: Path
    folder: Path


def _request(url: str, path: str, body: dict | None = None, login: dict = ADMIN,
             headers: dict | None = None, proxy: str | None = None) -> dict:
    """A JSON request to the server's REST API, with a login."""
    token = base64.b64encode(f"{login['MLFLOW_TRACKING_USERNAME']}:"
                             f"{login['MLFLOW_TRACKING_PASSWORD']}".encode()).decode()
    request = urllib.request.Request(
        f"{url}{path}", method="POST" if body is not None else "GET",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Basic {token}",
                 **(headers or {})})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler(
        {"http": proxy} if proxy else {}))
    with opener.open(request, timeout=60) as response:
        return json.loads(response.read() or b"{}")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deployment")
    with contextlib.ExitStack() as stack:
        database = stack.enter_context(password_postgres(DATABASE_PASSWORD))
        backend = database("runs")  # carries the password: the server gets it from its env
        quoted = urllib.parse.quote(DATABASE_PASSWORD, safe="")
        users = database("users").replace(f":{quoted}@", "@")  # its password in a pgpass file
        host_port = urllib.parse.urlsplit(backend).netloc.rpartition("@")[2]
        pgpass = folder / "pgpass"
        escaped = DATABASE_PASSWORD.replace(":", r"\:")  # pgpass's own escape
        pgpass.write_text(f"{host_port}:users:postgres:{escaped}\n")
        pgpass.chmod(0o600)
        certificate, key = self_signed_certificate(folder, "localhost")
        port, tls_port, proxy_port = free_port(), free_port(), free_port()
        server, url = start_server(
            backend, folder, "--auth", "--auth-db-uri", users, "--allowed-hosts", NAME,
            "--public-url", f"https://localhost:{tls_port}", port=port,
            env={**SECRETS, "PGPASSFILE": str(pgpass)})
        stack.callback(stop_server, server)
        site = substituted(documented_nginx_site(), {
            "listen 443 ssl": f"listen 127.0.0.1:{tls_port} ssl",
            f"server_name {NAME}": "server_name localhost",
            f"/etc/ssl/certs/{NAME}.pem": str(certificate),
            f"/etc/ssl/private/{NAME}.key": str(key),
            "127.0.0.1:5000": f"127.0.0.1:{port}"})
        stack.enter_context(nginx(folder / "nginx", [site, proxy_site(proxy_port, port)],
                                  [tls_port, proxy_port]))
        for user, password in (("ada", ADA_PASSWORD), ("bob", BOB_PASSWORD)):
            _request(url, "/api/2.0/mlflow/users/create",
                     {"username": user, "password": password})
        yield Deployment(server, url, f"https://localhost:{tls_port}",
                         f"http://127.0.0.1:{proxy_port}", certificate, folder)


@pytest.fixture
def grid_file(tmp_path) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_GRID)
    return str(path)


def _client(uri: str, monkeypatch, **env: str) -> mlflow.MlflowClient:
    """MLflow's client in this process, with a login (and a certificate) that the test's
    end restores."""
    for name, value in {**ADMIN, **env}.items():
        monkeypatch.setenv(name, value)
    return mlflow.MlflowClient(uri)


def _runs(client: mlflow.MlflowClient, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


def _one_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stdout[-2000:] + result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def _files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


@pytest.mark.slow
def test_a_host_name_is_refused_by_name_until_it_is_allowed(deployment, tmp_path, grid_file):
    """MLflow answers 403 to a Host header it does not know; cvlib names the flag that
    fixes it, and with the flag the name works, the UI's requests from it too."""
    plain, plain_url = start_server(f"sqlite:///{tmp_path / 'plain.db'}", tmp_path)
    try:
        proxy_port = free_port()
        with nginx(tmp_path / "nginx", [proxy_site(proxy_port, int(plain_url.rpartition(":")[2]))],
                   [proxy_port]):
            refused = run_in(tmp_path, "table", "--tracking-uri", f"http://{NAME}:5000",
                             env={"HTTP_PROXY": f"http://127.0.0.1:{proxy_port}", "NO_PROXY": ""})
    finally:
        stop_server(plain)
    line = _one_line(refused)
    assert f"refused the host name '{NAME}'" in line, line
    assert f"cvlib server --allowed-hosts {NAME}" in line and "login" not in line

    # The deployment's server, by name, at its own port (the proxy stands in for DNS).
    by_name = deployment.url.replace("127.0.0.1", NAME)
    through_name = {"HTTP_PROXY": deployment.proxy, "NO_PROXY": "", **ADMIN}
    accepted = run_in(tmp_path, "run", grid_file, "--dry-run", "--tracking-uri", by_name,
                      env=through_name)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert f"in experiment 'tiny' of {by_name}: 0 cells done" in accepted.stdout
    search = "/api/2.0/mlflow/experiments/search"
    for origin, allowed in ((by_name, True), (f"https://{NAME}", True),
                            ("http://evil.example", False)):
        try:
            _request(by_name, search, {"max_results": 1},
                     headers={"Origin": origin}, proxy=deployment.proxy)
            assert allowed, origin
        except urllib.error.HTTPError as error:
            assert not allowed and error.code == 403, (origin, error.code)


@pytest.mark.slow
def test_a_grid_runs_through_nginx_over_tls(deployment, tmp_path, grid_file, cifar_dir,
                                            monkeypatch):
    """The docs' nginx site and self-signed certificate in front of `cvlib server --auth`:
    a client that does not trust the certificate stops at once, in one line; one that
    trusts it as the docs say runs the grid through https."""
    untrusted = run_in(tmp_path, "table", "--tracking-uri", deployment.https, env=ADMIN)
    line = _one_line(untrusted)
    assert "cannot verify the TLS certificate" in line and CERTIFICATE_ENV in line, line

    trusting = {CERTIFICATE_ENV: str(deployment.certificate), **ADMIN}
    result = run_in(tmp_path, "run", grid_file, "--tracking-uri", deployment.https,
                    "--experiment", "over-tls", "--workers", "1", "--data-dir", str(cifar_dir),
                    env=trusting)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"4 cells -> {deployment.https}" in result.stdout
    client = _client(deployment.https, monkeypatch, **trusting)
    cells = [run for run in _runs(client, "over-tls") if CELL_TAG in run.data.tags]
    assert len(cells) == 4 and {run.info.status for run in cells} == {"FINISHED"}
    for run in cells:  # the artifacts went through nginx too
        assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} >= {
            "plots/curves.png"}
    access = (deployment.folder / "nginx" / "access.log").read_text()
    assert "POST /api/2.0/mlflow/runs/create" in access
    assert "PUT /api/2.0/mlflow-artifacts/artifacts/" in access
    assert not _files(tmp_path / "mlruns")


@pytest.mark.slow
def test_a_user_who_may_only_read_is_stopped_before_training(deployment, tmp_path, grid_file,
                                                             cifar_dir, monkeypatch):
    """Bob has the default permission, READ, on the admin's experiment: his run stops
    before training, writing nothing; once granted EDIT as the docs say, it runs."""
    client = _client(deployment.url, monkeypatch)
    experiment_id = client.create_experiment("guarded")
    bob = _login("bob", BOB_PASSWORD)
    refused = run_in(tmp_path, "run", grid_file, "--tracking-uri", deployment.url,
                     "--experiment", "guarded", "--data-dir", str(cifar_dir), env=bob)
    line = _one_line(refused)
    assert "does not let 'bob' write to experiment 'guarded'" in line and "EDIT" in line, line
    assert "epoch" not in refused.stdout and "[1/" not in refused.stdout  # nothing trained
    assert _runs(client, "guarded") == []
    assert not _files(tmp_path / "mlruns")  # no journal left, no local store

    _request(deployment.url, "/api/3.0/mlflow/users/permissions/grant", {
        "username": "bob", "resource_type": "experiment", "resource_id": experiment_id,
        "permission": "EDIT"})
    granted = run_in(tmp_path, "run", grid_file, "--tracking-uri", deployment.url,
                     "--experiment", "guarded", "--data-dir", str(cifar_dir), *ONE_CELL,
                     env=bob)
    assert granted.returncode == 0, granted.stdout[-2000:] + granted.stderr[-2000:]
    assert [run.info.status for run in _runs(client, "guarded")
            if CELL_TAG in run.data.tags] == ["FINISHED"]

    # EDIT may not delete: a --rerun's move of the replaced run to the trash is refused
    # (403) while every other request passes. It is set aside, reported, and the grid ends.
    rerun = run_in(tmp_path, "run", grid_file, "--tracking-uri", deployment.url,
                   "--experiment", "guarded", "--data-dir", str(cifar_dir), *ONE_CELL,
                   "--rerun", env=bob, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "(delete_run of run" in rerun.stdout and "failed for good" in rerun.stdout, \
        rerun.stdout[-2000:]
    rejected = (tmp_path / "mlruns" / "journal" / "rejected.jsonl").read_text().splitlines()
    assert [json.loads(line)["write"]["op"] for line in rejected] == ["delete_run"]
    assert sorted(run.info.status for run in _runs(client, "guarded")
                  if CELL_TAG in run.data.tags) == ["FINISHED", "FINISHED"]


@pytest.mark.slow
def test_mlflow_tracking_uri_alone_sends_the_runs_to_the_server(deployment, tmp_path,
                                                                grid_file, cifar_dir,
                                                                monkeypatch):
    from_env = {"MLFLOW_TRACKING_URI": deployment.url, **ADMIN}
    result = run_in(tmp_path, "run", grid_file, "--experiment", "from-env", "--data-dir",
                    str(cifar_dir), *ONE_CELL, env=from_env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (f"1 cells -> {deployment.url} (from $MLFLOW_TRACKING_URI)"
            in result.stdout.splitlines()[0])
    table = run_in(tmp_path, "table", "--experiment", "from-env", "--format", "csv",
                   env=from_env)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].startswith("activation,")  # clean CSV
    assert len(table.stdout.splitlines()) == 2
    assert f"of {deployment.url} (from $MLFLOW_TRACKING_URI)" in table.stderr
    client = _client(deployment.url, monkeypatch)
    assert [run.info.status for run in _runs(client, "from-env")
            if CELL_TAG in run.data.tags] == ["FINISHED"]
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()
    assert not _files(tmp_path / "mlruns")


@pytest.mark.slow
def test_a_login_in_the_uri_works_and_shows_nowhere(deployment, tmp_path, grid_file,
                                                    cifar_dir, monkeypatch):
    """`--tracking-uri http://ada:PASSWORD@host:port`, the password full of characters a URI
    must encode: the grid runs, and neither it nor the database's password is in the
    command's output, its journal, any param or tag, report.html, or `cvlib server`'s
    command lines and output."""
    encoded = urllib.parse.quote(ADA_PASSWORD, safe="")
    uri = deployment.url.replace("http://", f"http://ada:{encoded}@")
    secrets = [ADA_PASSWORD, encoded, DATABASE_PASSWORD,
               urllib.parse.quote(DATABASE_PASSWORD, safe="")]
    seen: list[str] = []
    command = start_in(tmp_path, "run", grid_file, "--tracking-uri", uri, "--experiment",
                       "with-login", "--data-dir", str(cifar_dir), "--workers", "1",
                       "--set", "grid.model.bn=[none]")
    for line in command.stdout:  # the journal, once the first cell's run has ended
        seen.append(line)
        if line.startswith("[1/"):
            journals = _files(tmp_path / "mlruns" / "journal")
            assert journals, "no journal while the grid runs"
            seen.extend(path.read_bytes().decode(errors="replace") for path in journals)
    assert command.wait(timeout=600) == 0, "".join(seen)[-3000:]
    report = run_in(tmp_path, "report", "--tracking-uri", uri, "--experiment", "with-login",
                    "--out", str(tmp_path / "report.html"))
    table = run_in(tmp_path, "table", "--tracking-uri", uri, "--experiment", "with-login")
    assert report.returncode == 0 and table.returncode == 0, report.stderr + table.stderr
    assert f"of {deployment.url}" in table.stdout  # named, without the login
    client = _client(deployment.url, monkeypatch)
    runs = _runs(client, "with-login")
    assert len([run for run in runs if CELL_TAG in run.data.tags]) == 2
    logged_report = next(client.download_artifacts(run.info.run_id, "report.html", str(tmp_path))
                         for run in runs if CELL_TAG not in run.data.tags)
    experiment = client.get_experiment_by_name("with-login")
    server_lines = [command_line(pid) for pid in process_tree(deployment.server.pid)]
    assert len(server_lines) >= 3  # cvlib server, MLflow's server, its web server...
    places = {
        "run's output": "".join(seen), "report's output": report.stdout + report.stderr,
        "table's output": table.stdout + table.stderr,
        "report.html": (tmp_path / "report.html").read_text(),
        "logged report.html": Path(logged_report).read_text(),
        "params and tags": json.dumps([[run.data.params, run.data.tags] for run in runs]),
        "experiment tags": json.dumps(experiment.tags),
        "server's command lines": "\n".join(server_lines),
        "server's output": (deployment.folder / "server.log").read_text()}
    for place, text in places.items():
        for secret in secrets:
            assert secret not in text, f"a password in the {place}"
    assert "postgres:***@" in places["server's output"]  # the database, named without it


@pytest.mark.slow
def test_the_servers_auth_config_is_private_and_removed_on_every_exit(tmp_path):
    """The basic-auth config (the users' database URI may hold a password) is mode 0600
    while the server runs, and gone after SIGHUP and after MLflow's server fails (its port
    taken); logins on a network address without TLS are warned about, in one line, unless
    --public-url declares an https proxy."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    failing = {}
    for case, flags in (("no proxy", []),
                        ("https proxy", ["--public-url", f"https://{NAME}"])):
        scratch = tmp_path / case.replace(" ", "-")
        scratch.mkdir()
        failing[case] = (scratch, subprocess.Popen(
            [sys.executable, "-m", "cvlib", "server", "--auth", "--host", "0.0.0.0",
             "--port", str(taken.getsockname()[1]), "--auth-db-uri",
             f"sqlite:///{scratch / 'users.db'}", *flags],
            cwd=scratch, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, **SECRETS, "TMPDIR": str(scratch),
                 "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{scratch / 'runs.db'}"}))
    try:
        running_scratch = tmp_path / "running"
        running_scratch.mkdir()
        server, _ = start_server(f"sqlite:///{running_scratch / 'runs.db'}", running_scratch,
                                 "--auth", "--auth-db-uri",
                                 f"sqlite:///{running_scratch / 'users.db'}",
                                 env={**SECRETS, "TMPDIR": str(running_scratch)})
        tree = process_tree(server.pid)
        configs = list(running_scratch.glob("cvlib-auth-*.ini"))
        assert len(configs) == 1 and configs[0].stat().st_mode & 0o777 == 0o600
        assert any(environment(pid).get("MLFLOW_AUTH_CONFIG_PATH") == str(configs[0])
                   for pid in tree[1:])
        server.send_signal(signal.SIGHUP)
        assert server.wait(timeout=60) == 0
        assert not list(running_scratch.glob("cvlib-auth-*.ini"))
        deadline = time.monotonic() + 60  # the web server stops its workers first
        while [pid for pid in tree if command_line(pid)] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in tree if command_line(pid)], "processes left behind"

        for case, (scratch, process) in failing.items():
            out, err = process.communicate(timeout=300)
            assert process.returncode != 0, out + err
            assert not list(scratch.glob("cvlib-auth-*.ini")), case
            warnings = [line for line in err.splitlines() if line.startswith("cvlib: warning")]
            if case == "no proxy":
                assert len(warnings) == 1 and "--public-url https://" in warnings[0], err
            else:
                assert warnings == [], err
    finally:
        taken.close()
        for _, process in failing.values():
            if process.poll() is None:  # it should have failed: never leave it serving
                process.terminate()
                process.wait(timeout=60)
