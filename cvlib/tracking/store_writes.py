"""The writes cvlib makes to a store, as plain JSON-ready records, and the two ways they
reach it: at once (:class:`DirectWrites`, a SQLite file) or through a local journal and
a sending thread (tracking.journaled_writes, a tracking server).

A write names its run by a reference: the store's run id, or the key a run was created
under (``cvlib-`` and a UUID), which the store's id replaces when the write is sent.
Every write can be sent twice without changing the store: a metric that is already
there is skipped by MLflow, and tags, params, artifacts and statuses are the same when
set again. A run is created at most once per key: the creation is one request that is
never resent (tracking.rest_once), and any later attempt (a retry, a replay) first looks
the run up by its key, a tag of the run. Should two runs ever carry one key, the one
that holds the most data is kept and the other moved to MLflow's trash.
"""
from __future__ import annotations

import contextlib
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from mlflow.entities import LifecycleStage, Metric, Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cvlib.tracking import schema
from cvlib.tracking.metric_writer import MAX_METRICS_PER_CALL, MetricWriter
from cvlib.tracking.rest_once import create_run_once

# Kinds of write (op["op"]).
CREATE_RUN, LOG_BATCH, LOG_METRICS = "create_run", "log_batch", "log_metrics"
LOG_ARTIFACTS, SET_TERMINATED, DELETE_RUN = "log_artifacts", "set_terminated", "delete_run"
REOPEN_RUN = "reopen_run"
# Writes after which a run's results must be on disk (the journal is fsynced).
RUN_ENDINGS = (SET_TERMINATED, DELETE_RUN)
RUN_KEY_PREFIX = "cvlib-"
# Runs a key lookup reads at most: more than one is a duplicate to repair.
MAX_RUNS_PER_KEY = 10

# One metric as a write carries it: key, value, timestamp (ms), step.
MetricPoint = tuple[str, float, int, int]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _tags(tags: dict[str, str], run_ids: dict[str, str]) -> list[RunTag]:
    """Tags, with a run key as a value (a parent run's) replaced by the run's id."""
    return [RunTag(key, run_ids.get(value, value)) for key, value in tags.items()]


def metric_record(op: dict, run_ids: dict[str, str]) -> tuple[str, list[Metric], list[RunTag]]:
    """A LOG_METRICS write as tracking.metric_writer's record."""
    return (run_ids.get(op["run"], op["run"]), [Metric(*point) for point in op["metrics"]],
            _tags(op["tags"], run_ids))


def apply(client: MlflowClient, op: dict, run_ids: dict[str, str],
          maybe_done: bool = False, notify: Callable[[str], None] = print) -> None:
    """Make one write in a store.

    Args:
        client: The store's client.
        op: The write (a ``folder`` it carries is a path that exists).
        run_ids: Run keys -> run ids; a created run's id is added.
        maybe_done: The write may have reached the store already (a retry, a replay): a
            run is looked up by its key before it is created.
        notify: Receives a line when two runs with one key are found and one is removed.

    Raises:
        FileNotFoundError: The files of an artifacts write are gone.
    """
    kind, run = op["op"], run_ids.get(op["run"], op["run"])
    if kind == CREATE_RUN:
        tags = {**op["tags"], schema.RUN_KEY_TAG: op["run"]}
        created = (run_with_key(client, op["experiment_id"], op["run"], notify)
                   if maybe_done else None)
        run_ids[op["run"]] = created or create_run_once(
            client, op["experiment_id"], op["time"],
            {tag.key: tag.value for tag in _tags(tags, run_ids)}, op["run_name"])
    elif kind == LOG_BATCH:
        client.log_batch(run, params=[Param(key, value) for key, value in op["params"].items()],
                         tags=_tags(op["tags"], run_ids))
    elif kind == LOG_METRICS:
        _, metrics, tags = metric_record(op, run_ids)
        for start in range(0, max(len(metrics), 1), MAX_METRICS_PER_CALL):
            client.log_batch(run, metrics=metrics[start:start + MAX_METRICS_PER_CALL],
                             tags=tags if start == 0 else [])
    elif kind == LOG_ARTIFACTS:
        if not Path(op["folder"]).is_dir():  # MLflow would send nothing, and succeed
            raise FileNotFoundError(f"the files of this write are gone: {op['folder']}")
        client.log_artifacts(run, op["folder"])
    elif kind == SET_TERMINATED:
        client.set_terminated(run, op["status"], end_time=op["time"])
    elif kind == DELETE_RUN:
        client.delete_run(run)
    elif kind == REOPEN_RUN:
        client.update_run(run, status="RUNNING")
        with contextlib.suppress(MlflowException):  # already gone: a write sent twice
            client.delete_tag(run, schema.ERROR_TAG)
    else:
        raise ValueError(f"unknown write {kind!r}")


def _data_held(run: Run) -> tuple[int, int, str]:
    """How much a run holds (its metrics and params), the earlier run first on a tie."""
    return (len(run.data.metrics) + len(run.data.params), -run.info.start_time,
            run.info.run_id)


def run_with_key(client: MlflowClient, experiment_id: str, key: str,
                 notify: Callable[[str], None] = print) -> str | None:
    """The run created under a key, if any. Of two active runs with one key (a creation
    sent twice), the one holding the most data is kept, the other moved to the trash.

    Returns:
        The run's id, or None when no run has the key.
    """
    found = client.search_runs([experiment_id],
                               filter_string=f"tags.`{schema.RUN_KEY_TAG}` = '{key}'",
                               run_view_type=ViewType.ALL, max_results=MAX_RUNS_PER_KEY)
    active = [run for run in found if run.info.lifecycle_stage == LifecycleStage.ACTIVE]
    if not active:  # none, or one deleted on purpose (a superseded run)
        return found[0].info.run_id if found else None
    kept = max(active, key=_data_held)
    for twin in active:
        if twin is not kept:
            client.delete_run(twin.info.run_id)
            notify(f"two runs were created under one key ({twin.info.run_name}): kept "
                   f"{kept.info.run_id}, which holds the most data, and moved "
                   f"{twin.info.run_id} to the trash")
    return kept.info.run_id


class StoreWrites:
    """The writes the tracker makes, each built as a record and handed to :meth:`_submit`."""

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, Any]) -> str:
        """Create a run.

        Returns:
            Its reference (the run id, or its key until the store has created it).
        """
        key = f"{RUN_KEY_PREFIX}{uuid.uuid4().hex}"
        self._submit({"op": CREATE_RUN, "run": key, "experiment_id": experiment_id,
                      "run_name": run_name, "time": _now_ms(),
                      "tags": {k: str(v) for k, v in tags.items()}})
        return self.run_id(key)

    def log_batch(self, run: str, params: dict[str, Any] | None = None,
                  tags: dict[str, Any] | None = None) -> None:
        """Log params and set tags of a run."""
        self._submit({"op": LOG_BATCH, "run": run,
                      "params": {k: str(v) for k, v in (params or {}).items()},
                      "tags": {k: str(v) for k, v in (tags or {}).items()}})

    def log_metrics(self, run: str, metrics: list[MetricPoint],
                    tags: dict[str, str] | None = None) -> None:
        """Log metrics (and tags that go with them, such as a heartbeat); they may be held
        back and written with others (tracking.metric_writer)."""
        self._submit({"op": LOG_METRICS, "run": run, "metrics": metrics, "tags": tags or {}})

    def log_artifacts(self, run: str, folder: str) -> None:
        """Copy a folder's files into a run's artifacts."""
        self._submit({"op": LOG_ARTIFACTS, "run": run}, folder)

    def set_terminated(self, run: str, status: str) -> None:
        """End a run with a status."""
        self._submit({"op": SET_TERMINATED, "run": run, "status": status, "time": _now_ms()})

    def delete_run(self, run: str) -> None:
        """Move a run to MLflow's trash."""
        self._submit({"op": DELETE_RUN, "run": run})

    def reopen_run(self, run: str) -> None:
        """Set an ended run RUNNING again, without the error its ending recorded."""
        self._submit({"op": REOPEN_RUN, "run": run})

    def run_id(self, run: str) -> str:
        """A run's reference as handed out (the id, once the store has given one)."""
        return run

    def flush(self) -> None:
        """Write what is held back."""

    def _submit(self, op: dict, folder: str | None = None) -> None:
        raise NotImplementedError


class DirectWrites(StoreWrites):
    """Writes made at once, by the caller's thread (a SQLite store: a file that is
    always there). Metrics go through a MetricWriter, and are written before a run ends.

    Args:
        tracking_uri: The store.
        client: Its client.
    """

    def __init__(self, tracking_uri: str, client: MlflowClient):
        self._client = client
        self._metric_writer = MetricWriter(tracking_uri, client)
        self._run_ids: dict[str, str] = {}

    def run_id(self, run: str) -> str:
        return self._run_ids.get(run, run)

    def flush(self) -> None:
        self._metric_writer.flush()

    def _submit(self, op: dict, folder: str | None = None) -> None:
        if op["op"] == LOG_METRICS:
            self._metric_writer.add(*metric_record(op, self._run_ids))
            return
        if op["op"] in RUN_ENDINGS:
            self._metric_writer.flush()
        if folder is not None:
            op = {**op, "folder": folder}
        apply(self._client, op, self._run_ids)
