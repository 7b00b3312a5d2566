"""``cvlib ui``: the real MLflow UI on a real grid's store, read from the page that
headless Chromium renders."""
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import pytest
from conftest import REPO, free_port, run_cvlib
from mlflow.tracking import MlflowClient

# The MLflow 3 UI takes 10-20 s to start on this machine's two shared cores.
START_TIMEOUT_S = 120
# It is a React single-page app: its text appears well after the page's load event.
RENDER_TIMEOUT_MS = 60_000


def _stop(server: subprocess.Popen) -> None:
    """End the server's whole process group (uvicorn's workers with it), politely first."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):  # workers that outlived their parent
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def _start_ui(uri: str, log: Path, *flags: str, env: dict | None = None) -> subprocess.Popen:
    """The real `cvlib ui` on a store, its output (stderr too) in ``log``."""
    with open(log, "w") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "cvlib", "ui", "--tracking-uri", uri, "--no-browser", *flags],
            cwd=REPO, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            start_new_session=True)  # its own process group, to stop its workers too


def _link(server: subprocess.Popen, log: Path) -> str:
    """The link to an experiment's runs that `cvlib ui` prints once its server answers."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (link := re.search(r"http://127\.0\.0\.1:\d+/#/experiments/\S+",
                                 log.read_text())):
        assert server.poll() is None, f"cvlib ui exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no link in {START_TIMEOUT_S} s:\n" \
                                            f"{log.read_text()[-3000:]}"
        time.sleep(0.2)
    return link.group(0)


@pytest.fixture
def mlflow_ui(tiny_store, tmp_path):
    """`cvlib ui` on the tiny store, on a free port of 127.0.0.1, as a user starts it: the
    link it prints to the experiment's runs, once the server answers, and the seconds
    that took."""
    uri, _, _ = tiny_store
    started = time.monotonic()
    server = _start_ui(uri, tmp_path / "ui.log", "--port", str(free_port()))
    try:
        link = _link(server, tmp_path / "ui.log")
        yield link, time.monotonic() - started
    finally:
        _stop(server)


def test_the_link_opens_the_cell_runs_with_the_lectures_columns(tiny_store, mlflow_ui, page,
                                                                 test_artifacts):
    """The link `cvlib ui` prints opens the experiment's runs table: the cell runs (not a
    collapsed grid run), with activation, initializer, bn, seed, val_accuracy and
    test_accuracy, best val_accuracy first."""
    uri, _, _ = tiny_store
    link, seconds = mlflow_ui
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny")
    assert f"/#/experiments/{experiment.experiment_id}/runs" in link
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    cells = {run.info.run_name: run for run in client.search_runs(
        [experiment.experiment_id], "tags.`cvlib.cell` != ''")}
    page.goto(link)
    for name in cells:
        page.get_by_role("link", name=name, exact=True).wait_for(timeout=RENDER_TIMEOUT_MS)
    # MLflow's Assistant panel opens beside the table on a first visit; the README says
    # to close it once (the browser remembers), as this user does.
    assistant = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if assistant.count():
        assistant.first.click()
    # The seed column is the table's last: once it shows its values, every column does.
    page.get_by_role("gridcell", name="0", exact=True).first.wait_for(
        timeout=RENDER_TIMEOUT_MS)
    page.screenshot(path=str(test_artifacts / "mlflow-ui-runs.png"))
    headers = [text.strip() for text in page.locator("[role=columnheader]").all_inner_texts()]
    for column in ("activation", "initializer", "bn", "seed", "val_accuracy", "test_accuracy"):
        assert column in headers, (column, headers)
    names = page.locator("[role=gridcell] a").all_inner_texts()
    shown = [name for name in names if name in cells]
    best_first = sorted(cells, key=lambda n: -cells[n].data.metrics["val_accuracy"])
    assert shown == best_first, (shown, best_first)
    print(f"cvlib ui printed its link after {seconds:.1f} s")


def test_mlflow_ui_shows_a_runs_page_and_metrics(tiny_store, mlflow_ui, page, test_artifacts):
    uri, _, _ = tiny_store
    link, _ = mlflow_ui
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny")
    child = next(run for run in client.search_runs([experiment.experiment_id])
                 if run.info.run_name == "relu-he-none-s0")
    page.goto(link)
    # A cell's run page shows its name and its val_accuracy, with the logged value.
    page.get_by_role("link", name=child.info.run_name, exact=True).click(
        timeout=RENDER_TIMEOUT_MS)
    page.get_by_text(child.info.run_name, exact=True).first.wait_for(
        timeout=RENDER_TIMEOUT_MS)
    assert page.url.endswith(f"/runs/{child.info.run_id}")
    metric = page.get_by_text("val_accuracy", exact=True).first
    metric.wait_for(timeout=RENDER_TIMEOUT_MS)
    metric.scroll_into_view_if_needed()
    value = page.get_by_text(repr(child.data.metrics["val_accuracy"]), exact=True).first
    value.wait_for(timeout=RENDER_TIMEOUT_MS)
    assert value.is_visible()
    page.screenshot(path=str(test_artifacts / "mlflow-ui-run.png"))


DEFAULT_PORT = 5000
# A web server that is not MLflow, and a program that listens without speaking HTTP.
OTHER_PROGRAMS = {
    "http.server": [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "{port}"],
    "plain listener": [sys.executable, "-c",
                       "import socket, time; s = socket.socket(); "
                       "s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(600)"],
}


def _store(tmp_path: Path, name: str, *experiments: str) -> str:
    """A SQLite store holding these (empty) experiments, made through MLflow's API."""
    folder = tmp_path / name
    folder.mkdir()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    for experiment in experiments:
        client.create_experiment(experiment)
    return uri


def _taken(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _hold(program: str, port: int) -> subprocess.Popen:
    """Start another program listening on the port; wait until it does."""
    holder = subprocess.Popen([part.format(port=port) for part in OTHER_PROGRAMS[program]],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.monotonic() + 30
    while not _taken(port):
        assert holder.poll() is None and time.monotonic() < deadline, f"{program} did not listen"
        time.sleep(0.1)
    return holder


def _listens(root: int, port: int) -> bool:
    """Whether process ``root`` or one of its descendants listens on the port."""
    tree = psutil.Process(root)
    return any(connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
               for process in [tree, *tree.children(recursive=True)]
               for connection in process.net_connections(kind="tcp"))


def _has_experiment(base: str, name: str) -> bool:
    """Whether the MLflow server at base holds an experiment of that name."""
    try:
        urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?"
                               f"{urllib.parse.urlencode({'experiment_name': name})}",
                               timeout=10).close()
        return True
    except urllib.error.HTTPError as error:
        assert error.code == 404, error
        return False


@pytest.fixture(scope="module")
def other_ui(tmp_path_factory):
    """Another store's `cvlib ui`, with --verbose, on the default port when it is free
    (else on a free port: whatever holds the default port plays its part); its port and
    output."""
    folder = tmp_path_factory.mktemp("other-ui")
    port = free_port() if _taken(DEFAULT_PORT) else DEFAULT_PORT
    log = folder / "ui.log"
    server = _start_ui(_store(folder, "other", "seed_grid"), log, "--port", str(port),
                       "--verbose")
    try:
        _link(server, log)
        yield port, log
    finally:
        _stop(server)


@pytest.mark.parametrize("holder", ["mlflow ui", *OTHER_PROGRAMS])
def test_ui_refuses_a_given_port_that_another_program_holds(request, tmp_path, holder):
    """`cvlib ui --port N` with N taken, by another store's MLflow UI or by a program that
    is not MLflow, exits 2 at once with one line saying what holds it."""
    uri = _store(tmp_path, "mine", "seed_grid")
    if holder == "mlflow ui":
        port, _ = request.getfixturevalue("other_ui")
        other = None
    else:
        port = free_port()
        other = _hold(holder, port)
    try:
        result = run_cvlib("ui", "--tracking-uri", uri, "--experiment", "seed_grid",
                           "--port", str(port), "--no-browser", timeout=300)
        what = {"mlflow ui": "another MLflow server answers there",
                "http.server": "another web server answers there",
                "plain listener": "another program listens there"}[holder]
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.strip() == (
            f"cvlib: error: port {port} of 127.0.0.1 is taken ({what}); choose another "
            f"--port, or leave it out for a free one"), result.stderr
        assert "http://" not in result.stdout
        assert _taken(port)  # the program that holds the port is untouched
    finally:
        if other is not None:
            _stop(other)


def test_ui_on_a_taken_default_port_links_to_its_own_server_quietly(other_ui, tmp_path):
    """With the default port taken (by another store's MLflow UI, or by whatever holds it
    already), `cvlib ui` serves on a free port and links there, to its own server on its
    own store, once that answers. What MLflow's server prints (deprecation warnings, its
    banner, a line per request) goes to the command's log, and --verbose shows it."""
    other_port, other_log = other_ui
    mine = _store(tmp_path, "mine", "seed_grid", "only-mine")
    cache = tmp_path / "cache"
    ui = _start_ui(mine, tmp_path / "ui.log", "--experiment", "seed_grid",
                   env={"XDG_CACHE_HOME": str(cache)})
    try:
        link = _link(ui, tmp_path / "ui.log")
        port = int(re.match(r"http://127\.0\.0\.1:(\d+)/", link).group(1))
        assert port != DEFAULT_PORT
        assert _listens(ui.pid, port)  # the link's port is its own server's
        assert _has_experiment(f"http://127.0.0.1:{port}", "only-mine")
        if other_port == DEFAULT_PORT:
            assert not _has_experiment(f"http://127.0.0.1:{DEFAULT_PORT}", "only-mine")
        time.sleep(1)  # the server's line for that request
    finally:
        _stop(ui)
    output = (tmp_path / "ui.log").read_text()
    assert output.splitlines()[0] == (
        f"MLflow UI for {mine}, experiment 'seed_grid' (port {DEFAULT_PORT} is taken: on "
        f"port {port} instead):"), output
    assert output.splitlines()[1:] == [f"  {link}", "Stop it with Ctrl-C."], output
    held_back = "".join(path.read_text() for path in (cache / "cvlib" / "logs").glob("ui-*"))
    verbose = other_log.read_text()
    for line in ("StarletteDeprecationWarning", "Security middleware",
                 "Registry store URI not provided", '"GET /health HTTP/1.1" 200'):
        assert line in held_back and line in verbose, (line, held_back, verbose)
