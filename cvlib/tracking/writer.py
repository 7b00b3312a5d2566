"""Writing runs to an MLflow store: one parent run per grid, one nested child run per cell
and seed, and the parent runs of searches and studies, as records that the command's
connection (tracking.connection) takes to the store.

Every write goes through one process (the one that runs the command), so a SQLite store
is never written by two processes of one grid at once.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import platform
import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from cvlib.cells import Cell
from cvlib.grids import Grid
from cvlib.tracking import schema
from cvlib.tracking.connection import StoreConnection
from cvlib.tracking.heartbeats import Heartbeats, heartbeat_tags
from cvlib.tracking.models import write_model_files
from cvlib.tracking.reads import last_steps, records_of
from cvlib.tracking.records import RunRecord
from cvlib.tracking.store import writable_experiment
from cvlib.tracking.store_writes import MetricPoint, StoreWrites
from cvlib.tracking.uris import artifact_root
from cvlib.tracking.view import experiment_tags

if TYPE_CHECKING:
    import pandas as pd

# Distributions whose versions a grid's parent run records, beside Python's.
RECORDED_SOFTWARE = ("tensorflow", "keras", "mlflow")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _points(metrics: dict[str, float], timestamp: int, step: int) -> list[MetricPoint]:
    """Metrics as MLflow stores them, at float32's 7 significant digits: Keras computes in
    float32, and its figures would otherwise show as 0.15000000596046448 in the UI."""
    return [(key, float(f"{float(value):.7g}"), timestamp, int(step))
            for key, value in metrics.items()]


def _log_files(writes: StoreWrites, run: str, files: dict[str, Callable[[Path], Any]]) -> None:
    """Write files (artifact path -> a function that writes it) into a run's artifacts, in
    one write."""
    if not files:
        return
    with tempfile.TemporaryDirectory(prefix="cvlib-artifacts-") as folder:
        for relative, save in files.items():
            path = Path(folder, relative)
            path.parent.mkdir(parents=True, exist_ok=True)
            save(path)
        writes.log_artifacts(run, folder)


def _text(text: str) -> Callable[[Path], Any]:
    return lambda path: path.write_text(text, encoding="utf-8")


class CellRun:
    """One child run, written to while its cell trains. Its metrics may be held back and
    written in groups (tracking.metric_writer); the run ends only once they are written.

    Args:
        writes: How writes reach the store.
        run_id: The run's reference (tracking.store_writes).
        heartbeats: The command's heartbeats: each step's metrics are a sign of life.
    """

    def __init__(self, writes: StoreWrites, run_id: str, heartbeats: Heartbeats | None = None):
        self._writes = writes
        self.run_id = run_id
        self._heartbeats = heartbeats

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log all metrics of one step, with the run's heartbeat (and its parents')."""
        self._writes.log_metrics(self.run_id, _points(metrics, _now_ms(), step),
                                 heartbeat_tags())
        if self._heartbeats is not None:
            self._heartbeats.beat()

    def log_series(self, series: dict[str, list[tuple[int, float]]]) -> None:
        """Log whole metric histories (e.g. one value per gradient step).

        Args:
            series: Metric key -> [(step, value), ...].
        """
        timestamp = _now_ms()
        self._writes.log_metrics(self.run_id, [
            point for key, points in series.items() for step, value in points
            for point in _points({key: value}, timestamp, step)])

    def log_stats_table(self, stats: pd.DataFrame | None) -> None:
        """Log the statistics' long table as ``schema.STATS_TABLE`` (nothing when None or
        empty: statistics were off)."""
        if stats is not None and not stats.empty:
            _log_files(self._writes, self.run_id, {
                schema.STATS_TABLE: lambda path: stats.to_parquet(path, index=False)})

    def log_artifacts(self, folder: str) -> None:
        """Copy a folder's files into the run's artifacts, in one write."""
        self._writes.log_artifacts(self.run_id, folder)

    def log_model(self, files: dict[str, bytes]) -> dict[str, str]:
        """Log a cell's trained model (tracking.models.model_files) under
        ``schema.MODEL_FOLDER``, in one write.

        Returns:
            The tag that says the run holds it, for the run's ending write.
        """
        with tempfile.TemporaryDirectory(prefix="cvlib-model-") as folder:
            write_model_files(files, folder)
            self._writes.log_artifacts(self.run_id, folder)
        return {schema.MODEL_TAG: schema.MODEL_FOLDER}

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Set tags (also on a finished run), in one write."""
        self._writes.log_batch(self.run_id, tags=tags)

    def finish(self, outcome: str, diverged_at: int | None = None,
               divergence: str | None = None, tags: dict[str, Any] | None = None) -> None:
        """End the run FINISHED with its outcome (``ok`` or ``diverged``).

        Args:
            outcome: One of schema.OUTCOMES but error.
            diverged_at: A diverged cell's epoch (from 1).
            divergence: Why it diverged.
            tags: Further tags (successive halving's rung).
        """
        ending = {schema.OUTCOME_TAG: outcome, **(tags or {})}
        if outcome == schema.DIVERGED:
            ending.update({schema.DIVERGED_AT_TAG: diverged_at,
                           schema.DIVERGENCE_TAG: divergence})
        self.set_tags(ending)
        self._writes.set_terminated(self.run_id, "FINISHED")

    def fail(self, message: str, status: str = "FAILED", details: str = "") -> None:
        """End the run FAILED (or KILLED) with outcome ``error`` and the message.

        Args:
            details: A traceback, kept as the artifact ``schema.ERROR_FILE``.
        """
        self.set_tags({schema.OUTCOME_TAG: schema.ERROR,
                       schema.ERROR_TAG: message[:schema.TAG_VALUE_LIMIT]})
        if details:
            _log_files(self._writes, self.run_id, {schema.ERROR_FILE: _text(details)})
        self._writes.set_terminated(self.run_id, status)


class Tracker:
    """Creates experiments and runs in one MLflow store, through the command's connection
    to it (tracking.connection: written at once, or through a journal).

    Args:
        tracking_uri: The store; checked on creation.
        connection: How its writes go: ``journal``, ``store_timeout`` and ``echo`` of
            tracking.connection.StoreConnection.

    Raises:
        TrackingError: when the store cannot be used (see store.check_reachable).
        StoreUnavailable: when an earlier command's journal could not be sent.
    """

    def __init__(self, tracking_uri: str, **connection: Any):
        self.tracking_uri = tracking_uri
        self.connection = StoreConnection(tracking_uri, **connection)
        self._client = self.connection.client
        self._writes = self.connection.writes
        self._heartbeats = Heartbeats(self._writes)

    def experiment_id(self, name: str) -> str:
        """The id of the named experiment; created (with its artifact root) if new, and
        tagged so that MLflow's UI opens it as cvlib's runs table (tracking.view).

        Raises:
            TrackingError: the server does not let this login write to it
                (store.writable_experiment).
        """
        root = artifact_root(self.tracking_uri)
        location = f"{root}/{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}" if root else None
        return writable_experiment(self._client, self.tracking_uri, name, location,
                                   experiment_tags())

    def run_records(self, experiment_id: str) -> list[RunRecord]:
        """Every active run of an experiment (cells' and parents'), as resume needs them,
        once the store has every write made so far."""
        self.connection.sync()
        return records_of(self._client, experiment_id)

    def heartbeat(self, run_id: str) -> None:
        """Record a sign of life on a run and on every parent run this tracker has open
        (written with the metrics; tracking.heartbeats)."""
        self._heartbeats.beat(run_id)

    def mark_killed(self, records: list[RunRecord], reason: str) -> None:
        """End runs left RUNNING by a dead process as KILLED, saying why."""
        for record in records:
            CellRun(self._writes, record.run_id).fail(reason, status="KILLED")

    def start_grid(self, grid: Grid, experiment_id: str, cells: int, workers: int = 1,
                   backend: dict[str, str] | None = None) -> str:
        """Create the parent run of a grid, recording the grid as it runs: the grid file
        as written (``schema.GRID_SOURCE_FILE``), its overrides (``schema.OVERRIDES_PARAM``),
        and the resolved grid (``schema.GRID_FILE``) with the settings every cell shares as
        params, under their dotted keys.

        Args:
            grid: The grid.
            experiment_id: Its experiment.
            cells: How many cells this run trains.
            workers: How many cells train at once (each in a worker process or Ray
                actor when more than 1).
            backend: Params that say what trains the cells (schema.BACKEND_PARAM...).

        Returns:
            The parent run's reference.
        """
        versions = {schema.VERSION_TAG_PREFIX + name: version
                    for name, version in software_versions().items()}
        run_id = self._writes.create_run(
            experiment_id, f"grid-{time.strftime('%Y%m%d-%H%M%S')}",
            {schema.GRID_TAG: grid.name, **Heartbeats.new_run_tags(), **versions})
        self._heartbeats.open_parent(run_id)
        self._writes.log_batch(run_id, params={
            **grid.shared_settings(),
            schema.CELLS_PARAM: cells, schema.WORKERS_PARAM: workers,
            schema.SEEDS_PARAM: list(grid.seeds), **(backend or {}),
            schema.OVERRIDES_PARAM: json.dumps(list(grid.overrides))[:schema.PARAM_VALUE_LIMIT],
            **{f"{schema.AXIS_PARAM_PREFIX}{key}": list(values) for key, values in grid.axes}})
        files = {schema.GRID_FILE: _text(grid.resolved_text())}
        if grid.source:
            files[schema.GRID_SOURCE_FILE] = _text(grid.source)
        _log_files(self._writes, run_id, files)
        return run_id

    def start_cell(self, experiment_id: str, parent_run_id: str, cell: Cell, grid_name: str,
                   params: dict[str, Any] | None = None,
                   tags: dict[str, str] | None = None) -> CellRun:
        """Create a cell's child run with its settings as params, and its tags.

        Args:
            params: Further params (e.g. the data's preprocessing statistics).
            tags: Further tags (what its figures depend on: schema.ENVIRONMENT_COLUMNS).

        Returns:
            The CellRun.
        """
        run_id = self._writes.create_run(experiment_id, cell.name, {
            schema.PARENT_TAG: parent_run_id, schema.CELL_TAG: cell.cell_hash,
            schema.GRID_TAG: grid_name, **Heartbeats.new_run_tags(), **(tags or {})})
        settings = cell.settings()
        self._writes.log_batch(run_id, params={
            **settings, schema.SEED_PARAM: cell.seed, **(params or {}),
            **{short: settings[key] for short, key in schema.SHORT_PARAMS.items()}})
        return CellRun(self._writes, run_id, self._heartbeats)

    def resume_cell(self, run_id: str, tags: dict[str, str] | None = None) -> CellRun:
        """Open an interrupted cell's run again (RUNNING, owned by this process), to
        continue its training in it.

        Args:
            run_id: The run (KILLED, or FAILED).
            tags: Further tags (what its figures depend on where it trains now).

        Returns:
            The CellRun.
        """
        self._writes.reopen_run(run_id)
        self._writes.log_batch(run_id, tags={**Heartbeats.new_run_tags(), **(tags or {})})
        return CellRun(self._writes, run_id, self._heartbeats)

    def logged_steps(self, run_id: str) -> dict[str, int]:
        """The last step logged of each metric of a run, once the store has every write
        made so far."""
        self.connection.sync()
        return last_steps(self._client, run_id)

    def cell_run(self, run_id: str) -> CellRun:
        """An existing cell run, to write to once more (plots drawn after it ended)."""
        return CellRun(self._writes, run_id)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """End a run (a grid's or a study's parent) with the given status."""
        self._heartbeats.close_parent(run_id)
        self._writes.set_terminated(run_id, status)

    def supersede(self, run_ids: list[str], by_run_id: str) -> None:
        """Move FINISHED runs that a forced rerun replaced to MLflow's trash.

        They stay restorable (``mlflow.tracking.MlflowClient().restore_run``) and are
        tagged with the run that replaced them, so no result is lost, while a cell
        still has one active FINISHED run.
        """
        for run_id in run_ids:
            self._writes.log_batch(run_id, tags={schema.SUPERSEDED_TAG: by_run_id})
            self._writes.delete_run(run_id)

    @contextlib.contextmanager
    def parent_run(self, experiment_id: str, name: str, parent_run_id: str | None = None,
                   params: dict[str, Any] | None = None) -> Iterator[str]:
        """A run that other runs nest under (a search, a study, a sanity check), for the
        block: FINISHED when it ends, KILLED when interrupted (a BaseException such as
        Ctrl-C), FAILED on any other exception. It carries the owner tags, so that a
        later command marks it KILLED if its process dies, and a heartbeat with every
        sign of life the command records while it is open.

        Args:
            experiment_id: Where the run goes.
            name: The run's name.
            parent_run_id: Nest this run itself under another one.
            params: Params to log on it.

        Yields:
            The run's reference.
        """
        tags = Heartbeats.new_run_tags()
        if parent_run_id:
            tags[schema.PARENT_TAG] = parent_run_id
        run_id = self._writes.create_run(experiment_id, name, tags)
        self._heartbeats.open_parent(run_id)
        if params:
            self._writes.log_batch(run_id, params={
                key: str(value)[:schema.PARAM_VALUE_LIMIT] for key, value in params.items()})
        status = "KILLED"  # unless the block ends normally or with an ordinary exception
        try:
            yield run_id
            status = "FINISHED"
        except Exception:
            status = "FAILED"
            raise
        finally:
            self.end_run(run_id, status)

    def log_outputs(self, run_id: str, texts: dict[str, str] | None = None,
                    figures: dict[str, Any] | None = None,
                    metrics: dict[str, float] | None = None) -> None:
        """Log a parent run's outputs: text files, matplotlib figures and metrics.

        Args:
            texts: Artifact path -> text (a markdown or CSV table, a summary, a report).
            figures: Artifact path -> matplotlib Figure (saved as PNG).
            metrics: Metrics logged at step 0.
        """
        _log_files(self._writes, run_id, {
            **{path: _text(text) for path, text in (texts or {}).items()},
            **{path: figure.savefig for path, figure in (figures or {}).items()}})
        if metrics:
            self._writes.log_metrics(run_id, _points(metrics, _now_ms(), 0))
            self._writes.flush()  # a Tracker opened for one report is never closed


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
