"""The metric writer's group commits into SQLite, read back through MLflow's API against
the same metrics logged by MLflow itself: values (NaN, infinities), steps, timestamps,
the latest value of each key, tags; and when it writes what it holds."""
import math

import mlflow
import pytest
from mlflow.entities import Metric, RunTag

from cvlib.tracking.metric_writer import MetricWriter, client_group_writer, sqlite_group_writer

# Out of step order, repeated, a NaN, both infinities, a step logged twice with two values.
EPOCHS = [
    (2, {"loss": 0.5, "val_accuracy": 0.25, "stats.dense.mean": float("nan")}),
    (1, {"loss": 1.5, "val_accuracy": 0.125, "stats.dense.mean": float("inf")}),
    (3, {"loss": 0.25, "val_accuracy": float("-inf"), "stats.dense.mean": 1e-30}),
    (3, {"loss": 0.75}),
    (2, {"loss": 0.5, "val_accuracy": 0.25}),
]


def _records(run_id: str) -> list:
    return [(run_id, [Metric(key, value, 1_000 + index, step) for key, value in values.items()],
             [RunTag("cvlib.heartbeat", str(index))])
            for index, (step, values) in enumerate(EPOCHS)]


def _seen(client, run_id: str) -> dict:
    run = client.get_run(run_id)
    history = {key: sorted((m.step, m.timestamp, repr(m.value))
                           for m in client.get_metric_history(run_id, key))
               for key in run.data.metrics}
    return {"latest": {k: repr(v) for k, v in run.data.metrics.items()},
            "history": history, "heartbeat": run.data.tags["cvlib.heartbeat"]}


@pytest.mark.parametrize("groups", [[5], [2, 3], [1, 1, 1, 1, 1]])
def test_group_commits_read_back_as_mlflow_writes_them(tracking_uri, groups):
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.create_experiment("x")
    ours, theirs = (client.create_run(experiment).info.run_id for _ in range(2))
    write, records = sqlite_group_writer(tracking_uri), _records(ours)
    start = 0
    for size in groups:
        write(records[start:start + size])
        start += size
    for _, metrics, tags in _records(theirs):
        client.log_batch(theirs, metrics=metrics, tags=tags)
    assert _seen(client, ours) == _seen(client, theirs)
    assert math.isnan(client.get_run(ours).data.metrics["stats.dense.mean"]) is False
    assert client.get_run(ours).data.metrics["loss"] == 0.75  # step 3's larger value


def test_the_client_writer_gives_the_same_runs(tracking_uri):
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.create_experiment("x")
    ours, theirs = (client.create_run(experiment).info.run_id for _ in range(2))
    client_group_writer(client)(_records(ours))
    for _, metrics, tags in _records(theirs):
        client.log_batch(theirs, metrics=metrics, tags=tags)
    assert _seen(client, ours) == _seen(client, theirs)


def test_records_are_held_until_a_flush_or_a_full_group(tracking_uri, monkeypatch):
    client = mlflow.MlflowClient(tracking_uri)
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    writer = MetricWriter(tracking_uri, client)
    records = _records(run_id)
    writer.add(*records[0])
    assert client.get_metric_history(run_id, "loss") == []  # held back
    writer.flush()
    assert len(client.get_metric_history(run_id, "loss")) == 1
    monkeypatch.setattr("cvlib.tracking.metric_writer.MAX_PENDING_RECORDS", 2)
    writer.add(*records[1])
    assert len(client.get_metric_history(run_id, "loss")) == 1
    writer.add(*records[2])  # the group is full: written
    assert len(client.get_metric_history(run_id, "loss")) == 3
