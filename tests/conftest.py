"""Shared fixtures: real CIFAR-10 (laid out by ../shared/data/make_cifar10.py), temporary
MLflow stores, one real tiny grid run, a throwaway PostgreSQL and `cvlib server` on it
(benchmarks/team_services.py's), with and without logins, and headless Chromium for the browser tests."""
import base64
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import threading
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_benchmark_module(name: str):
    """A helper module of benchmarks/ (not a package), loaded from its file."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}",
                                                  REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


team_services = load_benchmark_module("team_services")
# Re-exported: any test file imports them from here.
free_port = team_services.free_port
start_server = team_services.start_server
stop_server = team_services.stop_server
# Screenshots and other files that a person may want to look at after a test run.
ARTIFACTS_ENV = "CVLIB_TEST_ARTIFACTS"
# Set by .ci/run: a service or data a test needs and cannot get fails the test instead of
# skipping it, so that CI cannot pass by leaving out what it was meant to test.
REQUIRE_SERVICES_ENV = "CVLIB_REQUIRE_SERVICES"
# Debian's Chromium (`apt-get install chromium`); Playwright's own download needs internet.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

TINY_GRID = textwrap.dedent("""\
    # Tiny grid for tests.
    name: tiny
    data: {train_size: 200, val_size: 100, test_size: 100, preprocess: per_channel_mean}
    model: {arch: cnn, widths: [8], dense_units: 16, initializer: he}
    train: {epochs: 2, batch_size: 50, optimizer: adam, learning_rate: 0.001}
    grid:
      model.activation: [relu, tanh]
      model.bn: [none, before]
    seeds: [0]
    """)


def service_missing(reason: str) -> None:
    """A service or data set the test needs is not there: skip, saying why; under
    $CVLIB_REQUIRE_SERVICES (CI), fail instead."""
    if os.environ.get(REQUIRE_SERVICES_ENV):
        pytest.fail(f"{reason} (${REQUIRE_SERVICES_ENV} is set: CI needs every service)",
                    pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """The folder holding real CIFAR-10 in the official layout ($CVLIB_DATA_DIR)."""
    folder = os.environ.get("CVLIB_DATA_DIR")
    if not folder or not Path(folder, "cifar-10-batches-py").is_dir():
        service_missing("needs real CIFAR-10: run `python ../shared/data/make_cifar10.py DIR` "
                        "and set CVLIB_DATA_DIR=DIR")
    return Path(folder)


@pytest.fixture
def tracking_uri(tmp_path) -> str:
    """A fresh SQLite MLflow store in a temporary folder."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def run_cvlib(*args: str, env_extra: dict | None = None, timeout: float = 600,
              cwd: Path = REPO):
    """Run the real ``cvlib`` command (as ``python -m cvlib``) in a subprocess."""
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "cvlib", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=env)


def start_cvlib(*args: str, cwd: Path = REPO) -> subprocess.Popen:
    """Start the real ``cvlib`` command, its output (stderr too) readable line by line."""
    return subprocess.Popen([sys.executable, "-m", "cvlib", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=cwd, env=dict(os.environ))


def read_until(process: subprocess.Popen, marker: str, timeout: float = 300) -> list[str]:
    """The lines of a running command's output up to the first that contains marker.

    Fails, killing the process, when no such line comes within ``timeout`` seconds, also
    when the command prints nothing at all (a stalled read cannot outlive the deadline).
    """
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if marker in line:
                return lines
    finally:
        watchdog.cancel()
    raise AssertionError(f"no line with {marker!r} within {timeout:g} s:\n"
                         f"{''.join(lines)[-3000:]}")


def assert_same_cells(runs: dict, twins: dict) -> None:
    """Two stores' runs of one grid, by cell hash, agree: the same cells, each FINISHED,
    with the same params and metric keys and val_accuracy within 0.02 (another process's
    float arithmetic, not another result)."""
    assert runs and runs.keys() == twins.keys()
    for cell, run in runs.items():
        twin = twins[cell]
        assert run.info.status == twin.info.status == "FINISHED"
        assert run.data.params == twin.data.params
        assert run.data.metrics.keys() == twin.data.metrics.keys()
        assert abs(run.data.metrics["val_accuracy"] - twin.data.metrics["val_accuracy"]) <= 0.02


# Metrics that time the training: the only figures a deterministic cell may change.
TIMING_METRICS = {"epoch_time_s", "images_per_s"}


def cell_runs_by_hash(uri: str, experiment: str) -> dict:
    """An experiment's active cell runs, by cell hash (MLflow's API)."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return {run.data.tags["cvlib.cell"]: run for run in client.search_runs([found.experiment_id])
            if "cvlib.cell" in run.data.tags}


def assert_identical_figures(runs: dict, twins: dict, uri: str, twin_uri: str) -> None:
    """Two stores' runs of one grid, by cell hash, hold the same figures to the last bit:
    every step of every metric's history but the timings, and the same params."""
    import mlflow

    assert runs and runs.keys() == twins.keys()
    client, twin_client = mlflow.MlflowClient(uri), mlflow.MlflowClient(twin_uri)
    for cell, run in runs.items():
        twin = twins[cell]
        assert run.info.status == twin.info.status == "FINISHED"
        assert run.data.params == twin.data.params
        assert run.data.metrics.keys() == twin.data.metrics.keys()
        for key in sorted(run.data.metrics.keys() - TIMING_METRICS):
            history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
            twin_history = [(m.step, m.value)
                            for m in twin_client.get_metric_history(twin.info.run_id, key)]
            assert sorted(history) == sorted(twin_history), (run.info.run_name, key)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, cifar_dir):
    """One real `cvlib run` of the tiny grid (4 cells), shared by every test file.

    Returns:
        (tracking URI, grid file, the run's stdout). Tests may add artifacts to its
        runs (the report does) but must not add or change runs.
    """
    folder = tmp_path_factory.mktemp("store")
    grid_file = folder / "tiny.yaml"
    grid_file.write_text(TINY_GRID)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    result = run_cvlib("run", str(grid_file), "--tracking-uri", uri, "--data-dir", str(cifar_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return uri, grid_file, result.stdout


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server for the session; yields a function that makes a database and
    returns its URI. Skips, saying why, without PostgreSQL."""
    with contextlib.ExitStack() as stack:
        try:
            database = stack.enter_context(team_services.throwaway_postgres())
        except team_services.PostgresMissing as missing:
            service_missing(str(missing))
        yield database


@pytest.fixture(scope="session")
def team_server(postgres, tmp_path_factory):
    """`cvlib server` on a PostgreSQL database of the session, without logins; its URL."""
    server, url = start_server(postgres("runs"), tmp_path_factory.mktemp("server"))
    yield url
    stop_server(server)


# The admin password of login_server, only ever in the environment.
ADMIN_PASSWORD = "admin-Password-1234"


@pytest.fixture(scope="session")
def login_server(postgres, tmp_path_factory):
    """`cvlib server --auth` on a PostgreSQL database of the session; its admin's password
    is ADMIN_PASSWORD. Its URL."""
    secrets = {"MLFLOW_FLASK_SERVER_SECRET_KEY": "a-test-secret-key",
               "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD}
    server, url = start_server(postgres("logins"), tmp_path_factory.mktemp("login"),
                               "--auth", env=secrets)
    yield url
    stop_server(server)


def create_user(server: str, name: str, password: str) -> None:
    """Make a user of login_server as docs/team-server.md says: its admin asks MLflow's
    REST API."""
    request = urllib.request.Request(
        f"{server}/api/2.0/mlflow/users/create", method="POST",
        data=json.dumps({"username": name, "password": password}).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Basic " +
                 base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()})
    urllib.request.urlopen(request, timeout=30).close()


@pytest.fixture
def store(request, tmp_path) -> str:
    """A test's store, as its ``store`` parameter names it: ``sqlite`` (a new file) or
    ``server`` (the session's team_server)."""
    if request.param == "server":
        return request.getfixturevalue("team_server")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


# Run a test against a new SQLite store and against the session's tracking server (slow).
BOTH_STORES = pytest.mark.parametrize(
    "store", ["sqlite", pytest.param("server", marks=pytest.mark.slow)], indirect=True)


@pytest.fixture(scope="session")
def test_artifacts() -> Path:
    """The folder kept after the run for screenshots: $CVLIB_TEST_ARTIFACTS, else
    test-artifacts/ at the repo's root."""
    folder = Path(os.environ.get(ARTIFACTS_ENV) or REPO / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright; skips (fails in CI), saying why,
    without either."""
    if not CHROMIUM.is_file():
        service_missing(f"no browser: {CHROMIUM} is missing; install it with "
                        f"`apt-get install chromium` (.ci/run does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        service_missing("no browser driver: playwright is not importable; "
                        "`pip install -r requirements.txt` installs it")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh browser page (own context: no cookies or storage shared between tests)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    yield context.new_page()
    context.close()
