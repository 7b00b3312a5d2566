"""The journal of writes (tracking.journal, tracking.journaled_writes), sent to a real
SQLite store and read back through MLflow's API: a replay, even of writes the store
already has, creates nothing twice; what the journal holds is on disk before its write is
sent, and survives a crash mid-line and a moved project; a write that fails for good is
set aside and the rest goes on; a server that does not answer is retried, reported, and
its writes kept without the login. tests/test_store_outage.py does the same through the
real `cvlib server` on PostgreSQL."""
import json
import os
import shutil
import threading
import time
from pathlib import Path

import mlflow
import pytest
from conftest import free_port
from journal_helpers import JournalOnly, plots_to_send
from mlflow.entities import ViewType

from cvlib.tracking import journal as journal_module
from cvlib.tracking import schema
from cvlib.tracking.journal import Journal
from cvlib.tracking.journaled_writes import STRIKES, JournaledWrites, replay_journals
from cvlib.tracking.rejected_writes import rejected_file
from cvlib.tracking.store_writes import StoreWrites

HTTP_STORE = "http://127.0.0.1:{port}"
# A journal's name as a command makes it (tracking.journal.NAME_PATTERN).
EARLIER_JOURNAL = "20260101-120000-{}.jsonl"
# Long enough for more than STRIKES attempts of the retry schedule (0.5, 1, 2 ... s).
FIRST_ATTEMPTS_SECONDS = 0.5 * (2 ** STRIKES)


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory):
    """One SQLite store for this file's tests (building one takes seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    return uri, mlflow.MlflowClient(uri)


@pytest.fixture
def store(sqlite_store, tmp_path, request):
    """The store, and a new experiment in it for the test alone."""
    uri, client = sqlite_store
    return uri, client, client.create_experiment(request.node.name, artifact_location=str(
        tmp_path / "artifacts"))


def _write_a_grid(writes: StoreWrites, experiment_id: str, folder: Path,
                  superseded: str | None = None) -> str:
    """A parent run and a cell run, as the tracker writes them (the cell replacing the
    run ``superseded``, as a --rerun does). Returns the cell's reference."""
    parent = writes.create_run(experiment_id, "grid", {schema.GRID_TAG: "g"})
    cell = writes.create_run(experiment_id, "cell", {schema.PARENT_TAG: parent,
                                                     schema.CELL_TAG: "abc"})
    writes.log_batch(cell, params={"model.activation": "relu"})
    for epoch in (1, 2):
        writes.log_metrics(cell, [("loss", 2.0 / epoch, 1000 + epoch, epoch),
                                  ("val_accuracy", 0.1 * epoch, 1000 + epoch, epoch)],
                           {schema.HEARTBEAT_TAG: str(epoch)})
    writes.log_artifacts(cell, str(plots_to_send(folder)))
    writes.log_batch(cell, tags={schema.OUTCOME_TAG: "ok"})
    writes.set_terminated(cell, "FINISHED")
    if superseded:
        writes.log_batch(superseded, tags={schema.SUPERSEDED_TAG: cell})
        writes.delete_run(superseded)
    writes.set_terminated(parent, "FINISHED")
    return cell


def _earlier_copy(journal: Journal, folder: Path, number: int, acks: bool = False) -> Path:
    """A copy of a journal, with its files, as an earlier command would have left it:
    without the store's acknowledgements (as if its answers had been lost), unless
    ``acks``."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / EARLIER_JOURNAL.format(number)
    lines = [line for line in journal.path.read_text().splitlines()
             if acks or "ack" not in json.loads(line)]
    copy.write_text("\n".join(lines) + "\n")
    if journal.files_folder.exists():
        shutil.copytree(journal.files_folder, copy.with_suffix(".files"))
    return copy


def _cell_runs(client, experiment_id) -> dict:
    return {run.info.run_name: run for run in client.search_runs(
        [experiment_id], run_view_type=ViewType.ALL)}


def test_a_journal_replayed_after_its_writes_arrived_creates_nothing_twice(store, tmp_path):
    uri, client, experiment_id = store
    old = client.create_run(experiment_id, run_name="old").info.run_id
    folder = tmp_path / "journal"
    journal = Journal.create(folder, uri)
    writes = JournaledWrites(client, journal)
    _write_a_grid(writes, experiment_id, tmp_path, superseded=old)
    assert writes.wait(patience=30)
    for replay in (1, 2):  # each copy holds every write, none acknowledged
        copy = _earlier_copy(journal, folder, replay)
        lines = []
        # The live command's own journal is locked: only the copy is replayed. Its
        # writes to the run it moved to the trash go unsaid.
        assert replay_journals(client, uri, folder, 30, lines.append)
        assert len(lines) == 1 and "sent 11 writes" in lines[0], lines
        assert not copy.exists() and not copy.with_suffix(".files").exists()
    assert writes.close() and not journal.path.exists()

    runs = _cell_runs(client, experiment_id)
    assert sorted(runs) == ["cell", "grid", "old"]
    cell, grid = runs["cell"], runs["grid"]
    assert cell.data.tags[schema.PARENT_TAG] == grid.info.run_id
    assert cell.info.status == grid.info.status == "FINISHED"
    assert cell.data.params == {"model.activation": "relu"}
    assert cell.data.tags[schema.OUTCOME_TAG] == "ok"
    assert [(m.step, m.value) for m in client.get_metric_history(cell.info.run_id, "loss")
            ] == [(1, 2.0), (2, 1.0)]
    assert [a.path for a in client.list_artifacts(cell.info.run_id, "plots")] == [
        "plots/curves.png"]
    assert runs["old"].info.lifecycle_stage == "deleted"
    assert runs["old"].data.tags[schema.SUPERSEDED_TAG] == cell.info.run_id
    assert not rejected_file(folder).exists()


@pytest.mark.parametrize("journal_format", ["cvlib-journal-1", journal_module.FORMAT])
def test_a_moved_project_replays_its_files(journal_format, store, tmp_path):
    """A project folder moved (or copied to another machine) with its journal: the
    copies are found beside the journal, whatever the format named."""
    uri, client, experiment_id = store
    before, after = tmp_path / "project", tmp_path / "moved" / "project"
    journal = Journal.create(before / "mlruns" / "journal", uri)
    _write_a_grid(JournalOnly(journal), experiment_id, tmp_path)
    journal.close(remove=False)
    if journal_format == "cvlib-journal-1":  # copies named by absolute path
        lines = [json.loads(line) for line in journal.path.read_text().splitlines()]
        lines[0]["journal"] = journal_format
        for line in lines:
            if "folder" in line:
                line["folder"] = str(journal.path.parent.resolve() / line["folder"])
        journal.path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    after.parent.mkdir()
    shutil.move(before, after)
    lines = []
    assert replay_journals(client, uri, after / "mlruns" / "journal", 30, lines.append)
    assert len(lines) == 1 and "sent 9 writes" in lines[0], lines
    cell = _cell_runs(client, experiment_id)["cell"]
    assert cell.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(cell.info.run_id, "plots")] == [
        "plots/curves.png"]


def test_a_torn_last_line_is_dropped_and_later_acknowledgements_kept(store, tmp_path):
    """A command killed while it wrote a line leaves it cut short; the command that
    replays the journal appends its acknowledgements after it. A third reader must find
    every one of them, not lose the first glued to the torn line."""
    uri, client, experiment_id = store
    folder = tmp_path / "journal"
    journal = Journal.create(folder, uri)
    cell = _write_a_grid(JournalOnly(journal), experiment_id, tmp_path)
    journal.close(remove=False)
    whole = len(journal.path.read_bytes())
    with journal.path.open("ab") as file:  # the start of one more write, no line end
        file.write(json.dumps({"seq": 10, "op": "log_batch", "run": cell})[:25].encode())

    [torn] = Journal.unfinished(folder, uri)
    assert len(torn.notices) == 1 and "cut short" in torn.notices[0], torn.notices
    assert [seq for seq, _ in torn.pending] == list(range(1, 10))
    assert len(torn.path.read_bytes()) == whole, "the torn line must be cut off"
    writes = JournaledWrites(client, torn)
    assert writes.wait(patience=30)
    after_replay = _earlier_copy(torn, tmp_path / "reader", 1, acks=True)
    [reread] = Journal.unfinished(after_replay.parent, uri)
    assert reread.pending == [] and reread.notices == []
    assert writes.close() and not torn.path.exists()
    assert _cell_runs(client, experiment_id)["cell"].info.status == "FINISHED"


def test_what_the_journal_holds_is_on_disk_before_it_is_sent(store, tmp_path, monkeypatch):
    """Each line is with the operating system when its write is handed over; a write's
    files, their folders and the journal's folder are fsynced before the line that
    names them, the journal at a run's end and within SYNC_SECONDS of a metric."""
    uri, _, experiment_id = store
    synced, real_fsync = [], os.fsync
    journal_synced = threading.Event()

    def recording_fsync(descriptor: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{descriptor}"))
        synced.append(path)
        if path.suffix == ".jsonl":
            journal_synced.set()
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(journal_module, "SYNC_SECONDS", 3600.0)
    folder = (tmp_path / "journal").resolve()
    journal = Journal.create(folder, uri)
    assert synced == [journal.path, folder]
    writes = JournalOnly(journal)
    synced.clear()
    run = writes.create_run(experiment_id, "cell", {})
    writes.log_metrics(run, [("loss", 1.0, 1000, 1)])
    assert synced == [] and b'"loss"' in journal.path.read_bytes()

    writes.log_artifacts(run, str(plots_to_send(tmp_path)))
    copy = journal.files_folder / "3"
    assert synced == [copy / "plots" / "curves.png", copy / "plots", copy,
                      journal.files_folder, folder, journal.path]
    synced.clear()
    journal.append({"op": "set_terminated", "run": run, "status": "FINISHED",
                    "time": 1}, durable=True)
    assert synced == [journal.path]

    synced.clear()
    journal_synced.clear()
    monkeypatch.setattr(journal_module, "SYNC_SECONDS", 0.2)
    writes.log_metrics(run, [("loss", 0.5, 2000, 2)])  # wakes the syncing thread
    assert journal_synced.wait(timeout=60), "metrics were never fsynced"
    assert synced == [journal.path]
    journal.close(remove=True)


def test_a_write_that_fails_for_good_is_set_aside_and_the_rest_goes_on(store, tmp_path):
    """An earlier command's journal holds three bad writes: a changed param (the store
    refuses it), an artifacts write whose files are gone and a malformed metrics write
    (local errors that recur while the store answers). Each is set aside with a notice;
    the writes after them arrive; the next command says where they are, and never
    sends them again."""
    uri, client, experiment_id = store
    folder = tmp_path / "journal"
    journal = Journal.create(folder, uri)
    writes = JournalOnly(journal)
    run = writes.create_run(experiment_id, "cell", {})
    writes.log_batch(run, params={"lr": "0.1"})
    writes.log_batch(run, params={"lr": "0.2"})
    writes.log_artifacts(run, str(plots_to_send(tmp_path)))
    shutil.rmtree(journal.files_folder / "4")
    journal.append({"op": "log_metrics", "run": run, "metrics": [["loss", 1.0, 1000]],
                    "tags": {}})
    writes.log_metrics(run, [("loss", 0.5, 1000, 1)])
    writes.set_terminated(run, "FINISHED")
    journal.close(remove=False)

    lines = []
    assert replay_journals(client, uri, folder, 30, lines.append)
    failed = [line for line in lines if "failed for good" in line]
    assert [line.split("(")[1].split(" ")[0] for line in failed] == [
        "log_batch", "log_artifacts", "log_metrics"], lines
    assert all(str(rejected_file(folder)) in line for line in failed)
    assert "sent 7 writes" in lines[-1], lines
    cell = _cell_runs(client, experiment_id)["cell"]
    assert cell.info.status == "FINISHED" and cell.data.params == {"lr": "0.1"}
    assert [m.value for m in client.get_metric_history(cell.info.run_id, "loss")] == [0.5]
    rejected = [json.loads(line) for line in rejected_file(folder).read_text().splitlines()]
    assert [(r["seq"], r["run_id"], r["write"]["op"]) for r in rejected] == [
        (3, cell.info.run_id, "log_batch"), (4, cell.info.run_id, "log_artifacts"),
        (5, cell.info.run_id, "log_metrics")]
    assert "Changing param values is not allowed" in rejected[0]["error"]
    assert "gone" in rejected[1]["error"] and "missing" in rejected[2]["error"]

    # The next command: one line about them, and nothing sent again.
    later = Journal.create(folder, uri)
    JournalOnly(later).log_batch(cell.info.run_id, tags={"later": "yes"})
    later.close(remove=False)
    lines.clear()
    assert replay_journals(client, uri, folder, 30, lines.append)
    assert lines[0].startswith(f"3 writes to this tracking server failed for good earlier "
                               f"and are set aside in {rejected_file(folder)}"), lines
    assert len(lines) == 2 and "sent 1 writes" in lines[1], lines
    assert len(rejected_file(folder).read_text().splitlines()) == 3
    assert client.get_run(cell.info.run_id).data.tags["later"] == "yes"


def test_a_write_failing_during_the_command_is_set_aside_at_once(store, tmp_path):
    """A live command: a write the store refuses is set aside without holding back the
    writes after it, and one whose run's creation failed goes with it."""
    uri, client, experiment_id = store
    folder = tmp_path / "journal"
    notices = []
    writes = JournaledWrites(client, Journal.create(folder, uri), notify=notices.append)
    run = writes.create_run(experiment_id, "cell", {})
    writes.log_batch(run, params={"lr": "0.1"})
    writes.log_batch(run, params={"lr": "0.2"})
    lost = writes.create_run("no-such-experiment", "lost", {})
    writes.log_metrics(lost, [("loss", 1.0, 1000, 1)])
    writes.set_terminated(lost, "FINISHED")
    writes.set_terminated(run, "FINISHED")
    started = time.monotonic()
    assert writes.wait(patience=30)
    assert time.monotonic() - started < 20, "a refused write must not be retried"
    assert writes.close()
    assert len(notices) == 2, notices
    assert "log_batch" in notices[0] and "with the later writes of its run" in notices[1]
    rejected = [json.loads(line)["write"]["op"]
                for line in rejected_file(folder).read_text().splitlines()]
    assert rejected == ["log_batch", "create_run", "log_metrics", "set_terminated"]
    assert _cell_runs(client, experiment_id)["cell"].info.status == "FINISHED"


def test_two_runs_with_one_key_are_repaired_when_found(store, tmp_path):
    """A creation that reached the store twice (an old client's retry): the replay that
    finds both keeps the run holding the most data, moves the other to the trash, and
    writes to the one kept."""
    uri, client, experiment_id = store
    folder = tmp_path / "journal"
    journal = Journal.create(folder, uri)
    writes = JournalOnly(journal)
    key = writes.create_run(experiment_id, "cell", {})
    writes.set_terminated(key, "FINISHED")
    journal.close(remove=False)
    twins = [client.create_run(experiment_id, run_name="cell",
                               tags={schema.RUN_KEY_TAG: key}).info.run_id for _ in (1, 2)]
    client.log_metric(twins[1], "loss", 1.0, step=1)

    lines = []
    assert replay_journals(client, uri, folder, 30, lines.append)
    assert len(lines) == 2 and "two runs were created under one key" in lines[0], lines
    kept, trashed = client.get_run(twins[1]), client.get_run(twins[0])
    assert kept.info.status == "FINISHED" and kept.info.lifecycle_stage == "active"
    assert trashed.info.lifecycle_stage == "deleted"


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
    assert not writes.wait(patience=FIRST_ATTEMPTS_SECONDS)
    assert not writes.close(), "a journal with unsent writes must stay"
    assert not rejected_file(folder).exists(), "a server away is no reason to give up"
    text = journal.path.read_text()
    assert "s3cret-pw" not in text and "alice" not in text
    assert json.loads(text.splitlines()[0])["store"] == uri
    # Found again by the next command on that store (the login aside), and only by it.
    assert [j.path for j in Journal.unfinished(folder, uri)] == [journal.path]
    assert Journal.unfinished(folder, "http://elsewhere:5000") == []
