"""``cvlib ui``: the real MLflow UI on a real grid's store, read from the page that
headless Chromium renders."""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import REPO
from mlflow.tracking import MlflowClient

# The MLflow 3 UI takes 10-20 s to start on this machine's two shared cores.
START_TIMEOUT_S = 120
# It is a React single-page app: its text appears well after the page's load event.
RENDER_TIMEOUT_MS = 60_000


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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


@pytest.fixture
def mlflow_ui(tiny_store, tmp_path):
    """`cvlib ui` on the tiny store, on a free port of 127.0.0.1; its URL once it answers."""
    uri, _, _ = tiny_store
    port = _free_port()
    log = tmp_path / "ui.log"
    # Background job execution and telemetry are off: neither is tested, and the job
    # runner's seven worker processes would slow the start on two cores.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    with open(log, "w") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "cvlib", "ui", "--port", str(port), "--tracking-uri", uri],
            cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True)  # its own process group, to stop its workers too
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert server.poll() is None, f"cvlib ui exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no answer in {START_TIMEOUT_S} s:\n" \
                                                f"{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        _stop(server)


def test_mlflow_ui_shows_the_experiment_runs_and_metrics(tiny_store, mlflow_ui, page,
                                                         test_artifacts):
    uri, _, _ = tiny_store
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    (parent,) = [run for run in runs.values() if "mlflow.parentRunId" not in run.data.tags]
    child = runs["relu-he-none-s0"]

    # As a person would: the home page lists the experiment; in "Model training" mode
    # its link leads to the runs, where the grid's run expands to show its cells' runs.
    page.goto(mlflow_ui)
    page.get_by_text("Model training", exact=True).first.click(timeout=RENDER_TIMEOUT_MS)
    page.get_by_role("link", name="tiny", exact=True).first.click(timeout=RENDER_TIMEOUT_MS)
    parent_cell = page.get_by_role("gridcell").filter(has_text=parent.info.run_name)
    parent_cell.get_by_role("button").first.click(timeout=RENDER_TIMEOUT_MS)  # expand
    for name in runs:
        page.get_by_role("link", name=name, exact=True).wait_for(timeout=RENDER_TIMEOUT_MS)
    assert f"/experiments/{experiment.experiment_id}/runs" in page.url
    page.screenshot(path=str(test_artifacts / "mlflow-ui-experiment.png"))

    # A cell's run page shows its name and its val_accuracy, with the logged value.
    page.get_by_role("link", name=child.info.run_name, exact=True).click()
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
