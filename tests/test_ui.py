"""``cvlib ui``: the real MLflow UI on a real grid's store, read from the page that
headless Chromium renders."""
import contextlib
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, free_port
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


@pytest.fixture
def mlflow_ui(tiny_store, tmp_path):
    """`cvlib ui` on the tiny store, on a free port of 127.0.0.1, as a user starts it: the
    link it prints to the experiment's runs, once the server answers, and the seconds
    that took."""
    uri, _, _ = tiny_store
    port = free_port()
    log = tmp_path / "ui.log"
    started = time.monotonic()
    with open(log, "w") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "cvlib", "ui", "--port", str(port), "--tracking-uri", uri,
             "--no-browser"],
            cwd=REPO, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True)  # its own process group, to stop its workers too
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (link := re.search(r"http://127\.0\.0\.1:\d+/#/experiments/\S+",
                                     log.read_text())):
            assert server.poll() is None, f"cvlib ui exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no link in {START_TIMEOUT_S} s:\n" \
                                                f"{log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield link.group(0), time.monotonic() - started
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
