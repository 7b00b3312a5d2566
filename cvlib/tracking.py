"""MLflow tracking: the only module that imports mlflow.

One parent run per ``cvlib run``, one nested child run per cell and seed.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from cvlib.config import DEFAULT_TRACKING_URI, Cell, Grid
CELL_TAG = "cvlib.cell"
GRID_TAG = "cvlib.grid"
ERROR_TAG = "cvlib.error"
PARENT_TAG = "mlflow.parentRunId"
# Short params for the UI's columns, beside the full dotted settings.
SHORT_PARAMS = {"activation": "model.activation", "initializer": "model.initializer",
                "bn": "model.bn"}


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri[len("sqlite:///"):])


def _artifact_root(tracking_uri: str) -> str | None:
    """Artifacts sit beside a SQLite store, in ``artifacts/`` (mlruns/artifacts by default)."""
    database = sqlite_path(tracking_uri)
    return (database.parent / "artifacts").resolve().as_uri() if database else None


class CellRun:
    """One child run: log metrics to it while the cell trains."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client = client
        self.run_id = run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log all metrics of one step in a single call."""
        timestamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            Metric(key, float(value), timestamp, step) for key, value in metrics.items()])

    def log_artifacts(self, folder: str) -> None:
        """Copy a folder's files into the run's artifacts, in one call."""
        self.client.log_artifacts(self.run_id, folder)

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params (values are stringified) in one call."""
        self.client.log_batch(self.run_id, params=[
            Param(key, str(value)) for key, value in params.items()])


class Tracker:
    """Creates experiments and runs in one MLflow store."""

    def __init__(self, tracking_uri: str = DEFAULT_TRACKING_URI):
        database = sqlite_path(tracking_uri)
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)

    def experiment_id(self, name: str) -> str:
        """The id of the named experiment, created (with its artifact root) if new."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        root = _artifact_root(self.tracking_uri)
        location = f"{root}/{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}" if root else None
        return self.client.create_experiment(name, artifact_location=location)

    @contextlib.contextmanager
    def grid_run(self, grid: Grid, experiment: str | None = None) -> Iterator[tuple[str, str]]:
        """Open the parent run of a grid; it ends FINISHED, or FAILED/KILLED on error.

        Yields:
            (experiment_id, parent_run_id).
        """
        experiment_id = self.experiment_id(experiment or grid.name)
        run = self.client.create_run(experiment_id, run_name=f"grid-{time.strftime('%Y%m%d-%H%M%S')}",
                                     tags={GRID_TAG: grid.name, **software_tags()})
        run_id = run.info.run_id
        self.client.log_batch(run_id, params=[
            Param("cells", str(len(grid.cells()))), Param("seeds", str(list(grid.seeds))),
            *(Param(f"grid.{key}", str(list(values))) for key, values in grid.axes)])
        if grid.source:
            self.client.log_text(run_id, grid.source, "grid.yaml")
        with self._terminating(run_id):
            yield experiment_id, run_id

    @contextlib.contextmanager
    def cell_run(self, experiment_id: str, parent_run_id: str, cell: Cell,
                 grid_name: str, params: dict[str, Any] | None = None) -> Iterator[CellRun]:
        """Open a cell's child run with its settings as params, and its tags.

        Args:
            params: Further params (e.g. the data's preprocessing statistics).

        Yields:
            The CellRun; it ends FINISHED, or FAILED with the error in a tag.
        """
        run = self.client.create_run(experiment_id, run_name=cell.name, tags={
            PARENT_TAG: parent_run_id, CELL_TAG: cell.cell_hash, GRID_TAG: grid_name})
        cell_run = CellRun(self.client, run.info.run_id)
        settings = cell.settings()
        cell_run.log_params({**settings, "seed": cell.seed, **(params or {}),
                             **{short: settings[key] for short, key in SHORT_PARAMS.items()}})
        with self._terminating(cell_run.run_id):
            yield cell_run

    @contextlib.contextmanager
    def _terminating(self, run_id: str) -> Iterator[None]:
        """End the run FINISHED, or FAILED (KILLED on Ctrl-C) if the body raises."""
        try:
            yield
        except BaseException as error:
            status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
            message = f"{type(error).__name__}: {error}"[:5000]
            self.client.set_tag(run_id, ERROR_TAG, message)
            self.client.set_terminated(run_id, status)
            raise
        self.client.set_terminated(run_id, "FINISHED")


def search_cell_runs(tracking_uri: str, experiment: str):
    """All cell runs of an experiment as mlflow.search_runs's DataFrame.

    Returns:
        The DataFrame (params.*, metrics.*, tags.* columns), or None when the
        experiment does not exist.
    """
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    mlflow.set_tracking_uri(tracking_uri)  # search_runs reads the global URI
    return mlflow.search_runs(experiment_ids=[found.experiment_id],
                              filter_string=f"tags.`{CELL_TAG}` != ''")


def experiment_names(tracking_uri: str) -> list[str]:
    """Names of the store's experiments, newest first."""
    return [e.name for e in MlflowClient(tracking_uri).search_experiments(
        order_by=["creation_time DESC"])]


# --- Reading a grid back, for cvlib.report ------------------------------------------------
# (Kept together at the end of the module.)

OUTCOME_TAG = "cvlib.outcome"
VERSION_TAG_PREFIX = "cvlib.version."
# Distributions whose versions a grid's parent run records, beside Python's.
RECORDED_SOFTWARE = ("tensorflow", "keras", "mlflow")


@dataclass(frozen=True)
class GridRun:
    """A grid's parent run: where its grid file is, and where the report goes."""

    run_id: str
    run_name: str
    tags: dict[str, str]


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


def newest_grid_run(tracking_uri: str, experiment: str) -> GridRun | None:
    """The most recently started parent run of an experiment.

    Several ``cvlib run`` invocations may write several parent runs into one experiment.

    Returns:
        The GridRun, or None when the experiment or its parent runs are missing.
    """
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
        filter_string=f"tags.`{GRID_TAG}` != '' and tags.`{PARENT_TAG}` IS NULL")
    if not runs:
        return None
    return GridRun(runs[0].info.run_id, runs[0].info.run_name, dict(runs[0].data.tags))


def metric_histories(tracking_uri: str, run_ids: list[str],
                     key: str) -> dict[str, list[tuple[int, float]]]:
    """One metric's history in each run.

    Returns:
        run id -> [(step, value), ...] in step order (empty when never logged).
    """
    client = MlflowClient(tracking_uri)
    return {run_id: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            for run_id in run_ids}


def download_artifact(tracking_uri: str, run_id: str, path: str, folder: str | Path) -> Path | None:
    """Copy one artifact file of a run into a local folder.

    Args:
        path: The artifact's path in the run, e.g. ``stats/activations.parquet``.

    Returns:
        The local file, or None when the run has no such artifact.
    """
    # MLflow draws a progress bar per download on stderr: noise for one small file.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = MlflowClient(tracking_uri)
    parent = path.rpartition("/")[0] or None
    if path not in [a.path for a in client.list_artifacts(run_id, parent)]:
        return None
    return Path(client.download_artifacts(run_id, path, str(folder)))


def log_text_artifact(tracking_uri: str, run_id: str, text: str, path: str) -> None:
    """Write text as an artifact of a run (a finished run takes artifacts too)."""
    MlflowClient(tracking_uri).log_text(run_id, text, path)
