"""Writing to an MLflow store: one parent run per ``cvlib run``, one nested child run
per cell and seed, and the parent runs of searches and studies.

Every write goes through one process (the one that runs ``cvlib run``), so a SQLite
store is never written by two processes of one grid at once.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import platform
import re
import time
import urllib.error
import urllib.request
from typing import Any, Iterator

from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.tracking import MlflowClient

from cvlib.config import DEFAULT_TRACKING_URI, Cell, Grid, sqlite_path
from cvlib.errors import CvlibError
from cvlib.planning import RunRecord, this_process
from cvlib.tracking.store import open_client

CELL_TAG = "cvlib.cell"
GRID_TAG = "cvlib.grid"
OUTCOME_TAG = "cvlib.outcome"  # ok | diverged | error
ERROR_TAG = "cvlib.error"
DIVERGED_AT_TAG = "cvlib.diverged_at"
HEARTBEAT_TAG = "cvlib.heartbeat"
HOST_TAG = "cvlib.host"
PID_TAG = "cvlib.pid"
SUPERSEDED_TAG = "cvlib.superseded_by"
PARENT_TAG = "mlflow.parentRunId"
# Short params for the UI's columns, beside the full dotted settings.
SHORT_PARAMS = {"activation": "model.activation", "initializer": "model.initializer",
                "bn": "model.bn"}
SEARCH_PAGE = 1000


class TrackingError(CvlibError):
    """The MLflow store cannot be used; the message says why."""


def _artifact_root(tracking_uri: str) -> str | None:
    """Artifacts sit beside a SQLite store, in ``artifacts/`` (mlruns/artifacts by default)."""
    database = sqlite_path(tracking_uri)
    return (database.parent / "artifacts").resolve().as_uri() if database else None


def _heartbeat_tags() -> list[RunTag]:
    return [RunTag(HEARTBEAT_TAG, f"{time.time():.0f}")]


class CellRun:
    """One child run, written to while its cell trains."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client = client
        self.run_id = run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log all metrics of one step, and a heartbeat, in a single call."""
        timestamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            Metric(key, float(value), timestamp, step) for key, value in metrics.items()],
            tags=_heartbeat_tags())

    def log_artifacts(self, folder: str) -> None:
        """Copy a folder's files into the run's artifacts, in one call."""
        self.client.log_artifacts(self.run_id, folder)

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Set tags (also on a finished run), in one call."""
        self.client.log_batch(self.run_id, tags=[RunTag(key, str(value))
                                                 for key, value in tags.items()])

    def finish(self, outcome: str, tags: dict[str, str] | None = None) -> None:
        """End the run FINISHED with ``cvlib.outcome`` (``ok`` or ``diverged``)."""
        self.set_tags({OUTCOME_TAG: outcome, **(tags or {})})
        self.client.set_terminated(self.run_id, "FINISHED")

    def fail(self, message: str, status: str = "FAILED", details: str = "") -> None:
        """End the run FAILED (or KILLED) with ``cvlib.outcome=error`` and the message.

        Args:
            details: A traceback, kept as the artifact ``error.txt``.
        """
        self.set_tags({OUTCOME_TAG: "error", ERROR_TAG: message[:5000]})
        if details:
            self.client.log_text(self.run_id, details, "error.txt")
        self.client.set_terminated(self.run_id, status)


class Tracker:
    """Creates experiments and runs in one MLflow store."""

    def __init__(self, tracking_uri: str = DEFAULT_TRACKING_URI):
        self.tracking_uri = tracking_uri

    @functools.cached_property
    def client(self) -> MlflowClient:
        """The store's client, opened on first use (check_reachable's errors say why not)."""
        return open_client(self.tracking_uri)

    def check_reachable(self) -> None:
        """Fail fast, with a one-line reason, when the store cannot be used.

        Raises:
            TrackingError: for an unreachable server, an unusable SQLite path, or a
                store MLflow refuses (such as a plain folder: MLflow 3 wants a database).
        """
        uri = self.tracking_uri
        if uri.startswith(("http://", "https://")):
            try:  # MLflow's own client retries for minutes; a user wants to know now
                urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5)
            except urllib.error.HTTPError:
                pass  # something answers: let MLflow judge it
            except (urllib.error.URLError, OSError) as error:
                raise TrackingError(f"cannot reach the tracking server {uri}: "
                                    f"{getattr(error, 'reason', error)}") from None
        database = sqlite_path(uri)
        try:
            if database is not None:
                database.parent.mkdir(parents=True, exist_ok=True)
            self.client.search_experiments(max_results=1)
        except Exception as error:  # MLflow raises many kinds for a bad store
            message = " ".join(str(error).split())[:300]
            raise TrackingError(f"cannot use the tracking URI {uri!r}: {message} (the "
                                f"default is {DEFAULT_TRACKING_URI})") from None

    def experiment_id(self, name: str, create: bool = True) -> str | None:
        """The id of the named experiment; created (with its artifact root) if new."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        if not create:
            return None
        root = _artifact_root(self.tracking_uri)
        location = f"{root}/{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}" if root else None
        return self.client.create_experiment(name, artifact_location=location)

    def run_records(self, experiment_id: str) -> list[RunRecord]:
        """Every active run of an experiment (cells' and grids'), as resume needs them.

        Reads search pages of 1,000 runs; the cost grows with the number of runs,
        not with the number of steps their metrics logged.
        """
        records, token = [], None
        while True:
            page = self.client.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY,
                                           max_results=SEARCH_PAGE, page_token=token)
            for run in page:
                tags = run.data.tags
                records.append(RunRecord(
                    run_id=run.info.run_id, cell_hash=tags.get(CELL_TAG), status=run.info.status,
                    heartbeat=float(tags[HEARTBEAT_TAG]) if HEARTBEAT_TAG in tags else None,
                    host=tags.get(HOST_TAG),
                    pid=int(tags[PID_TAG]) if tags.get(PID_TAG, "").isdigit() else None))
            token = page.token
            if not token:
                return records

    def heartbeat(self, run_id: str) -> None:
        """Record a sign of life on a run."""
        self.client.log_batch(run_id, tags=_heartbeat_tags())

    def mark_killed(self, records: list[RunRecord], reason: str) -> None:
        """End runs left RUNNING by a dead process as KILLED, saying why."""
        for record in records:
            CellRun(self.client, record.run_id).fail(reason, status="KILLED")

    def start_grid(self, grid: Grid, experiment_id: str, cells: int, workers: int = 1) -> str:
        """Create the parent run of a grid, with the grid file as ``grid.yaml``.

        Args:
            grid: The grid.
            experiment_id: Its experiment.
            cells: How many cells this run trains.
            workers: How many cells train at once (each in a worker process when
                more than 1).

        Returns:
            The parent run's id.
        """
        host, pid = this_process()
        run = self.client.create_run(
            experiment_id, run_name=f"grid-{time.strftime('%Y%m%d-%H%M%S')}",
            tags={GRID_TAG: grid.name, HOST_TAG: host, PID_TAG: str(pid),
                  HEARTBEAT_TAG: f"{time.time():.0f}", **software_tags()})
        self.client.log_batch(run.info.run_id, params=[
            Param("cells", str(cells)), Param("workers", str(workers)),
            Param("seeds", str(list(grid.seeds))),
            *(Param(f"grid.{key}", str(list(values))) for key, values in grid.axes)])
        if grid.source:
            self.client.log_text(run.info.run_id, grid.source, "grid.yaml")
        return run.info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """End a run (the grid's parent) with the given status."""
        self.client.set_terminated(run_id, status)

    def start_cell(self, experiment_id: str, parent_run_id: str, cell: Cell, grid_name: str,
                   params: dict[str, Any] | None = None) -> CellRun:
        """Create a cell's child run with its settings as params, and its tags.

        Args:
            params: Further params (e.g. the data's preprocessing statistics).

        Returns:
            The CellRun.
        """
        host, pid = this_process()
        run = self.client.create_run(experiment_id, run_name=cell.name, tags={
            PARENT_TAG: parent_run_id, CELL_TAG: cell.cell_hash, GRID_TAG: grid_name,
            HOST_TAG: host, PID_TAG: str(pid), HEARTBEAT_TAG: f"{time.time():.0f}"})
        settings = cell.settings()
        all_params = {**settings, "seed": cell.seed, **(params or {}),
                      **{short: settings[key] for short, key in SHORT_PARAMS.items()}}
        self.client.log_batch(run.info.run_id, params=[
            Param(key, str(value)) for key, value in all_params.items()])
        return CellRun(self.client, run.info.run_id)

    def supersede(self, run_ids: list[str], by_run_id: str) -> None:
        """Move FINISHED runs that a forced rerun replaced to MLflow's trash.

        They stay restorable (``mlflow.tracking.MlflowClient().restore_run``) and are
        tagged with the run that replaced them, so no result is lost, while a cell
        still has one active FINISHED run.
        """
        for run_id in run_ids:
            self.client.set_tag(run_id, SUPERSEDED_TAG, by_run_id)
            self.client.delete_run(run_id)


VERSION_TAG_PREFIX = "cvlib.version."
# Distributions whose versions a grid's parent run records, beside Python's.
RECORDED_SOFTWARE = ("tensorflow", "keras", "mlflow")


def software_versions() -> dict[str, str]:
    """Versions of Python and of the libraries that train and log, without importing them.

    Returns:
        ``{"python": "3.11.7", "tensorflow": ..., "keras": ..., "mlflow": ...}``.
    """
    versions = {"python": platform.python_version()}
    for name in RECORDED_SOFTWARE:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def software_tags() -> dict[str, str]:
    """The ``cvlib.version.*`` tags that a grid's parent run records."""
    return {VERSION_TAG_PREFIX + name: version for name, version in software_versions().items()}


def log_text_artifact(tracking_uri: str, run_id: str, text: str, path: str) -> None:
    """Write text as an artifact of a run (a finished run takes artifacts too)."""
    open_client(tracking_uri).log_text(run_id, text, path)


# --- Parent runs, per-step series and outputs, for the sanity checks, the
# learning-rate search and the claims study. ---
# MLflow's log_batch takes at most 1,000 metrics per call.
MAX_METRICS_PER_CALL = 1000


def log_series(run: CellRun, series: dict[str, list[tuple[int, float]]]) -> None:
    """Log whole metric histories (e.g. one value per gradient step) in few calls.

    Args:
        run: The cell's run.
        series: Metric key -> [(step, value), ...].
    """
    timestamp = int(time.time() * 1000)
    metrics = [Metric(key, float(value), timestamp, int(step))
               for key, points in series.items() for step, value in points]
    for start in range(0, len(metrics), MAX_METRICS_PER_CALL):
        run.client.log_batch(run.run_id, metrics=metrics[start:start + MAX_METRICS_PER_CALL])


def start_parent(tracker: Tracker, experiment_id: str, name: str,
                 parent_run_id: str | None = None, params: dict[str, Any] | None = None) -> str:
    """Create a run that other runs nest under (a search, a study, the claims table).

    Args:
        tracker: The store's Tracker.
        experiment_id: Where the run goes.
        name: The run's name.
        parent_run_id: Nest this run itself under another one.
        params: Params to log on it.

    Returns:
        The run's id. It carries host, pid and heartbeat tags, so that a later
        ``cvlib run`` marks it KILLED if its process dies.
    """
    host, pid = this_process()
    tags = {HOST_TAG: host, PID_TAG: str(pid), HEARTBEAT_TAG: f"{time.time():.0f}"}
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    run_id = tracker.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    if params:
        tracker.client.log_batch(run_id, params=[Param(key, str(value)[:6000])
                                                 for key, value in params.items()])
    return run_id


@contextlib.contextmanager
def parent_run(tracker: Tracker, experiment_id: str, name: str,
               parent_run_id: str | None = None,
               params: dict[str, Any] | None = None) -> Iterator[str]:
    """A parent run for the block: FINISHED when it ends, KILLED when interrupted
    (Ctrl-C, SIGTERM turned into an exception), FAILED on any other exception.

    Yields:
        The run's id.
    """
    run_id = start_parent(tracker, experiment_id, name, parent_run_id, params)
    status = "KILLED"  # unless the block ends normally or with an ordinary exception
    try:
        yield run_id
        status = "FINISHED"
    except Exception:
        status = "FAILED"
        raise
    finally:
        tracker.end_run(run_id, status)


def log_outputs(tracker: Tracker, run_id: str, texts: dict[str, str] | None = None,
                figures: dict[str, Any] | None = None,
                metrics: dict[str, float] | None = None) -> None:
    """Log a parent run's outputs: text files, matplotlib figures and metrics.

    Args:
        texts: Artifact path -> text (a markdown or CSV table, a summary).
        figures: Artifact path -> matplotlib Figure (saved as PNG).
        metrics: Metrics logged at step 0.
    """
    for path, text in (texts or {}).items():
        tracker.client.log_text(run_id, text, path)
    for path, figure in (figures or {}).items():
        tracker.client.log_figure(run_id, figure, path)
    if metrics:
        timestamp = int(time.time() * 1000)
        tracker.client.log_batch(run_id, metrics=[
            Metric(key, float(value), timestamp, 0) for key, value in metrics.items()])
