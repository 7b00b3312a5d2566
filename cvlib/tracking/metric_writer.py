"""Cells' metrics (each epoch's, and the batch series) written in groups, so that one
recording process keeps up with many trainers.

Through MLflow's API, one epoch of 120 metrics costs a SQLite store about 16 ms of the
recording process's CPU (its ORM builds an object per metric and reads back the run's
latest values), which caps a driver near 60 epoch records a second. Here the recorder
holds each record back, and writes all it holds when it has nothing else to do:

- into a SQLite store, with three SQL statements for the whole group (the metrics, the
  runs' latest values by MLflow's own rule, and the heartbeat tags), in MLflow's schema
  (tests/test_metric_writer.py reads them back through MLflow's API against its own
  writes);
- into any other store (a tracking server), with one MLflow ``log_batch`` per run, the
  runs' calls in flight together.

A run ends only once its records are written.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from cvlib.tracking.uris import sqlite_path

# MLflow's log_batch takes at most 1,000 metrics per call.
MAX_METRICS_PER_CALL = 1000
# MLflow stores an infinity as the largest float, and a NaN as 0 with is_nan set.
LARGEST_FLOAT = 1.7976931348623157e308
# Calls to a tracking server in flight at once, each for another run.
CONCURRENT_CALLS = 8
# A group is written once it holds this many records, or its oldest is this old.
MAX_PENDING_RECORDS = 200
MAX_PENDING_SECONDS = 1.0
# A group waits at most this long for SQLite's lock (another process reading or writing).
SQLITE_LOCK_SECONDS = 60

# (run id, metrics, tags) of one epoch.
Record = tuple[str, list[Metric], list[RunTag]]

# Rows as positional tuples, in these columns' order.
INSERT_METRICS = """
    INSERT OR IGNORE INTO metrics (key, value, timestamp, run_uuid, step, is_nan)
    VALUES (?, ?, ?, ?, ?, ?)"""
# MLflow's rule (SqlAlchemyStore._update_latest_metrics_if_necessary): a value replaces the
# latest when (step, timestamp, value) is greater.
UPSERT_LATEST = """
    INSERT INTO latest_metrics (key, value, timestamp, run_uuid, step, is_nan)
    VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value,
        timestamp = excluded.timestamp, step = excluded.step, is_nan = excluded.is_nan
    WHERE (excluded.step, excluded.timestamp, excluded.value)
        > (latest_metrics.step, latest_metrics.timestamp, latest_metrics.value)"""
UPSERT_TAGS = """
    INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)
    ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value"""


def _stored(value: float) -> tuple[bool, float]:
    """(is_nan, value) as MLflow's SQL store keeps a metric's value."""
    if math.isnan(value):
        return True, 0.0
    if math.isinf(value):
        return False, math.copysign(LARGEST_FLOAT, value)
    return False, value


def sqlite_group_writer(tracking_uri: str) -> Callable[[list[Record]], None]:
    """Write groups of records into a SQLite store, one transaction each."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(tracking_uri,
                                      connect_args={"timeout": SQLITE_LOCK_SECONDS})

    def write(records: list[Record]) -> None:
        rows, latest, tags = [], {}, {}
        for run_id, metrics, run_tags in records:
            for metric in metrics:
                is_nan, value = _stored(metric.value)
                row = (metric.key, value, metric.timestamp, run_id, metric.step, is_nan)
                rows.append(row)
                held = latest.get((metric.key, run_id))
                if held is None or (row[4], row[2], row[1]) > (held[4], held[2], held[1]):
                    latest[(metric.key, run_id)] = row  # one upsert per key and run
            for tag in run_tags:  # the last value of a tag wins
                tags[(tag.key, run_id)] = (tag.key, tag.value, run_id)
        with engine.begin() as connection:
            if rows:
                connection.exec_driver_sql(INSERT_METRICS, rows)
                connection.exec_driver_sql(UPSERT_LATEST, list(latest.values()))
            if tags:
                connection.exec_driver_sql(UPSERT_TAGS, list(tags.values()))

    return write


def client_group_writer(client: MlflowClient) -> Callable[[list[Record]], None]:
    """Write groups of epoch records through MLflow's API: one log_batch per run, the
    runs' calls sent at once (a tracking server takes them side by side: one call waits
    on the server far more than it works here)."""
    senders = ThreadPoolExecutor(max_workers=CONCURRENT_CALLS, thread_name_prefix="metrics")

    def log_run(run_id: str, metrics: list[Metric], tags: list[RunTag]) -> None:
        for start in range(0, max(len(metrics), 1), MAX_METRICS_PER_CALL):
            client.log_batch(run_id, metrics=metrics[start:start + MAX_METRICS_PER_CALL],
                             tags=tags if start == 0 else [])

    def write(records: list[Record]) -> None:
        by_run: dict[str, tuple[list[Metric], dict[str, RunTag]]] = defaultdict(
            lambda: ([], {}))
        for run_id, metrics, tags in records:
            by_run[run_id][0].extend(metrics)
            by_run[run_id][1].update({tag.key: tag for tag in tags})
        calls = [senders.submit(log_run, run_id, metrics, list(tags.values()))
                 for run_id, (metrics, tags) in by_run.items()]
        for call in calls:
            call.result()  # raises the first error

    return write


class MetricWriter:
    """Metric records held back and written in groups, by the thread that records (the
    store has one writer: no lock to wait for).

    A group is written when the caller has nothing else to record for the moment
    (:meth:`flush`: the engine calls it when no event is waiting), when it holds
    MAX_PENDING_RECORDS records, when its oldest is MAX_PENDING_SECONDS old, and before
    a run ends.

    Args:
        tracking_uri: The store.
        client: The MLflow client of that store (for stores other than SQLite).
    """

    def __init__(self, tracking_uri: str, client: MlflowClient):
        self._write = (sqlite_group_writer(tracking_uri) if sqlite_path(tracking_uri)
                       else client_group_writer(client))
        self._pending: list[Record] = []
        self._oldest = 0.0

    def add(self, run_id: str, metrics: list[Metric], tags: list[RunTag]) -> None:
        """Hold one record (a step's metrics, a batch series, a heartbeat) of a run."""
        if not self._pending:
            self._oldest = time.monotonic()
        self._pending.append((run_id, metrics, tags))
        if (len(self._pending) >= MAX_PENDING_RECORDS
                or time.monotonic() - self._oldest > MAX_PENDING_SECONDS):
            self.flush()

    def flush(self) -> None:
        """Write the records held, as one group."""
        if self._pending:
            records, self._pending = self._pending, []
            self._write(records)
