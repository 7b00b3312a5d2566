"""Reading an MLflow store back: cell runs for tables, a grid's parent run, metric
histories and artifacts for reports and studies."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import mlflow

from cvlib.tracking.runs import CELL_TAG, GRID_TAG, PARENT_TAG
from cvlib.tracking.store import open_client


def search_cell_runs(tracking_uri: str, experiment: str):
    """All cell runs of an experiment as mlflow.search_runs's DataFrame.

    Returns:
        The DataFrame (params.*, metrics.*, tags.* columns), or None when the
        experiment does not exist.
    """
    found = open_client(tracking_uri).get_experiment_by_name(experiment)
    if found is None:
        return None
    mlflow.set_tracking_uri(tracking_uri)  # search_runs reads the global URI
    return mlflow.search_runs(experiment_ids=[found.experiment_id],
                              filter_string=f"tags.`{CELL_TAG}` != ''")


def experiment_names(tracking_uri: str) -> list[str]:
    """Names of the store's experiments, newest first."""
    return [e.name for e in open_client(tracking_uri).search_experiments(
        order_by=["creation_time DESC"])]


@dataclass(frozen=True)
class GridRun:
    """A grid's parent run: where its grid file is, and where the report goes."""

    run_id: str
    run_name: str
    tags: dict[str, str]


def newest_grid_run(tracking_uri: str, experiment: str) -> GridRun | None:
    """The most recently started parent run of an experiment.

    Several ``cvlib run`` invocations may write several parent runs into one experiment.

    Returns:
        The GridRun, or None when the experiment or its parent runs are missing.
    """
    client = open_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    runs = found and client.search_runs(
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
    client = open_client(tracking_uri)
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
    client = open_client(tracking_uri)
    parent = path.rpartition("/")[0] or None
    if path not in [a.path for a in client.list_artifacts(run_id, parent)]:
        return None
    return Path(client.download_artifacts(run_id, path, str(folder)))


def metric_history(tracking_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """Every logged (step, value) of one metric of a run, in step order."""
    return metric_histories(tracking_uri, [run_id], key)[run_id]
