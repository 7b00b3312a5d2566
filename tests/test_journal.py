"""The journal of writes (tracking.journal, tracking.journaled_writes), sent to a real
SQLite store and read back through MLflow's API: a replay, even of writes the store
already has, creates nothing twice; a server that does not answer is retried, reported,
and its writes kept without the login."""
import json
import time
from pathlib import Path

import mlflow
import pytest
from conftest import free_port

from cvlib.tracking import schema
from cvlib.tracking.journal import Journal
from cvlib.tracking.journaled_writes import JournaledWrites, replay_journals

HTTP_STORE = "http://127.0.0.1:{port}"


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    return uri, client, client.create_experiment("journal", artifact_location=str(
        tmp_path / "artifacts"))


def _write_a_grid(writes: JournaledWrites, experiment_id: str, folder: Path) -> None:
    """A parent run and a cell run, as the tracker writes them."""
    parent = writes.create_run(experiment_id, "grid", {schema.GRID_TAG: "g"})
    cell = writes.create_run(experiment_id, "cell", {schema.PARENT_TAG: parent,
                                                     schema.CELL_TAG: "abc"})
    writes.log_batch(cell, params={"model.activation": "relu"})
    for epoch in (1, 2):
        writes.log_metrics(cell, [("loss", 2.0 / epoch, 1000 + epoch, epoch),
                                  ("val_accuracy", 0.1 * epoch, 1000 + epoch, epoch)],
                           {schema.HEARTBEAT_TAG: str(epoch)})
    plots = folder / "plots-to-send"
    (plots / "plots").mkdir(parents=True)
    (plots / "plots" / "curves.png").write_bytes(b"png")
    writes.log_artifacts(cell, str(plots))
    writes.log_batch(cell, tags={schema.OUTCOME_TAG: "ok"})
    writes.set_terminated(cell, "FINISHED")
    writes.set_terminated(parent, "FINISHED")


def _without_acks(journal: Path, copy: Path) -> None:
    """A copy of a journal as if the store's answers had been lost."""
    lines = [line for line in journal.read_text().splitlines()
             if "ack" not in json.loads(line)]
    copy.write_text("\n".join(lines) + "\n")


def test_a_journal_replayed_after_its_writes_arrived_creates_nothing_twice(store, tmp_path):
    uri, client, experiment_id = store
    folder = tmp_path / "journal"
    journal = Journal.create(folder, uri)
    writes = JournaledWrites(client, journal)
    _write_a_grid(writes, experiment_id, tmp_path)
    assert writes.wait(patience=30)
    for replay in (1, 2):  # each copy holds every write, none acknowledged
        _without_acks(journal.path, folder / f"replay-{replay}.jsonl")
        lines = []
        # The live command's own journal is locked: only the copy is replayed.
        assert replay_journals(client, uri, folder, 30, lines.append)
        assert len(lines) == 1 and "sent 9 writes" in lines[0], lines
        assert not (folder / f"replay-{replay}.jsonl").exists()
    assert writes.close() and not journal.path.exists()

    runs = {run.info.run_name: run for run in client.search_runs(
        [experiment_id], run_view_type=mlflow.entities.ViewType.ALL)}
    assert sorted(runs) == ["cell", "grid"]
    cell, grid = runs["cell"], runs["grid"]
    assert cell.data.tags[schema.PARENT_TAG] == grid.info.run_id
    assert cell.info.status == grid.info.status == "FINISHED"
    assert cell.data.params == {"model.activation": "relu"}
    assert cell.data.tags[schema.OUTCOME_TAG] == "ok"
    assert [(m.step, m.value) for m in client.get_metric_history(cell.info.run_id, "loss")
            ] == [(1, 2.0), (2, 1.0)]
    assert [a.path for a in client.list_artifacts(cell.info.run_id, "plots")] == [
        "plots/curves.png"]


def test_an_unreachable_server_is_retried_reported_and_its_writes_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = HTTP_STORE.format(port=free_port())
    with_login = uri.replace("http://", "http://alice:s3cret-pw@")
    folder = tmp_path / "journal"
    journal = Journal.create(folder, with_login)
    writes = JournaledWrites(mlflow.MlflowClient(uri), journal)
    run = writes.create_run("0", "cell", {schema.CELL_TAG: "abc"})
    writes.set_terminated(run, "FINISHED")
    deadline = time.monotonic() + 20
    while writes.health().unreachable_since is None:
        assert time.monotonic() < deadline, "the outage was never reported"
        time.sleep(0.1)
    health = writes.health()
    assert health.waiting == 2 and "refused" in health.reason, health
    assert not writes.wait(patience=0.5)
    assert not writes.close(), "a journal with unsent writes must stay"
    text = journal.path.read_text()
    assert "s3cret-pw" not in text and "alice" not in text
    assert json.loads(text.splitlines()[0])["store"] == uri
    # Found again by the next command on that store (the login aside), and only by it.
    assert [j.path for j in Journal.unfinished(folder, uri)] == [journal.path]
    assert Journal.unfinished(folder, "http://elsewhere:5000") == []
