"""Reading an MLflow store back, in cvlib's own names: cell runs as DataFrames for tables
and studies, a grid's parent run, metric histories and artifacts for reports.

A cell-runs table has one row per run and these columns: ``run_id``, ``status``,
``start_time`` (unix milliseconds), the cvlib tags under their short names
(``schema.TAG_COLUMNS``: ``cell``, ``outcome``, ``error``, ...), every param under its
own name (``model.activation``, ``seed``, ``activation``) and every metric's last value
under its own name (``val_accuracy``, ``act/dense1_act/std``).
"""
from __future__ import annotations

import ast
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from cvlib.tracking import schema
from cvlib.tracking.models import model_uri
from cvlib.tracking.owner import Owner
from cvlib.tracking.records import RunRecord, TrialRun
from cvlib.tracking.store import open_client

SEARCH_PAGE = 1000


@dataclass
class CellRuns:
    """The cell runs of an experiment (see the module docstring for the table's columns)."""

    # One row per active cell run, newest first.
    table: pd.DataFrame
    # The names of the params and of the metrics among the table's columns.
    params: list[str]
    metrics: list[str]


def cell_runs(tracking_uri: str, experiment: str) -> CellRuns | None:
    """Every active cell run of an experiment.

    Returns:
        The CellRuns, or None when the experiment does not exist.
    """
    client = open_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    rows, params, metrics, token = [], {}, {}, None
    while True:
        page = client.search_runs([found.experiment_id], f"tags.`{schema.CELL_TAG}` != ''",
                                  run_view_type=ViewType.ACTIVE_ONLY, max_results=SEARCH_PAGE,
                                  page_token=token)
        for run in page:
            row = {"run_id": run.info.run_id, "status": run.info.status,
                   "start_time": run.info.start_time}
            if schema.MODEL_TAG in run.data.tags:
                row[schema.MODEL_URI_COLUMN] = model_uri(run.info.run_id,
                                                         run.data.tags[schema.MODEL_TAG])
            row.update({column: run.data.tags[tag] for tag, column in schema.TAG_COLUMNS.items()
                        if tag in run.data.tags})
            row.update(run.data.params)
            row.update(run.data.metrics)
            params.update(dict.fromkeys(run.data.params))
            metrics.update(dict.fromkeys(run.data.metrics))
            rows.append(row)
        token = page.token
        if not token:
            break
    columns = [*schema.RUN_COLUMNS, *schema.TAG_COLUMNS.values()]
    table = pd.DataFrame(rows).reindex(columns=[*columns, *params, *metrics])
    return CellRuns(table.sort_values("start_time", ascending=False, ignore_index=True),
                    list(params), list(metrics))


def finished_cell_runs(tracking_uri: str, experiment: str, cell_hashes) -> pd.DataFrame:
    """The finished run of each given cell, found by its cell hash.

    Args:
        tracking_uri: The MLflow store.
        experiment: The experiment the cells ran in.
        cell_hashes: The cells' ``Cell.cell_hash`` values.

    Returns:
        One row per cell that has a FINISHED run (the newest, if several), indexed by
        cell hash: ``run_id``, ``outcome`` (ok or diverged) and every metric's last
        value under its own name.
    """
    runs = cell_runs(tracking_uri, experiment)
    if runs is None:
        return pd.DataFrame(columns=["run_id", "outcome"]).rename_axis("cell")
    table = runs.table
    table = table[(table["status"] == "FINISHED") & table["cell"].isin(set(cell_hashes))]
    table = table.drop_duplicates("cell", keep="first")  # newest first
    return table[["cell", "run_id", "outcome", *runs.metrics]].set_index("cell")


def finished_trial_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """The FINISHED runs of a sampling search's trials among cell runs (those with a
    ``trial`` column's value, schema.TRIAL_TAG), one per trial number: of a number run
    twice, the newest.

    Args:
        runs: Cell runs (:func:`cell_runs`' table), newest first.
    """
    finished = runs[(runs["status"] == "FINISHED") & runs["trial"].notna()]
    return finished.drop_duplicates("trial", keep="first")


def trial_runs(tracking_uri: str, experiment: str, grid: str,
               with_epochs: bool = False, with_failed: bool = False) -> list[TrialRun]:
    """The FINISHED runs of a sampling search's trials (those with schema.TRIAL_TAG), by
    trial number; of a number run twice, the newest.

    Args:
        tracking_uri: The MLflow store.
        experiment: The search's experiment.
        grid: The search's grid name (schema.GRID_TAG): an experiment may hold several
            searches, such as lr-search's stages, each numbering its trials from 0.
        with_epochs: Read each run's val_accuracy per epoch too (for a pruner).
        with_failed: Add the newest FAILED trial run of each cell that has no FINISHED
            one (its outcome schema.ERROR).

    Returns:
        The TrialRuns, in order of their numbers.
    """
    runs = cell_runs(tracking_uri, experiment)
    if runs is None or runs.table.empty:
        return []
    searched = runs.table[runs.table["grid"] == grid]
    table = finished_trial_rows(searched)
    if with_failed:
        failed = searched[(searched["status"] == "FAILED") & searched["trial"].notna()
                          & ~searched["cell"].isin(set(table["cell"]))]
        table = pd.concat([table, failed.drop_duplicates("cell", keep="first")])
    histories = metric_histories(tracking_uri, list(table["run_id"]), schema.VAL_ACCURACY) \
        if with_epochs else {}
    trials = []
    for row in table.itertuples(index=False):
        row = row._asdict()
        accuracy = row.get(schema.VAL_ACCURACY)
        trials.append(TrialRun(
            number=int(row["trial"]), values=json.loads(row["trial_values"]),
            outcome=row["outcome"], cell_hash=row["cell"], run_id=row["run_id"],
            val_accuracy=None if pd.isna(accuracy) else float(accuracy),
            epochs={step: value for step, value in histories.get(row["run_id"], [])
                    if step >= 1}))
    return sorted(trials, key=lambda trial: trial.number)


def records_of(client: MlflowClient, experiment_id: str) -> list[RunRecord]:
    """Every active run of an experiment (cells' and parents'), as resume needs them,
    newest first.

    Reads search pages of 1,000 runs; the cost grows with the number of runs, not with
    the number of steps their metrics logged.
    """
    records, token = [], None
    while True:
        page = client.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=SEARCH_PAGE, page_token=token,
                                  order_by=["attributes.start_time DESC"])
        for run in page:
            tags = run.data.tags
            records.append(RunRecord(
                run_id=run.info.run_id, cell_hash=tags.get(schema.CELL_TAG),
                status=run.info.status, heartbeat=_unix_time(tags.get(schema.HEARTBEAT_TAG)),
                owner=Owner.from_tags(tags),
                plots_pending=tags.get(schema.PLOTS_TAG) == schema.PLOTS_PENDING))
        token = page.token
        if not token:
            return records


def last_steps(client: MlflowClient, run_id: str) -> dict[str, int]:
    """The last step logged of each metric of a run."""
    keys = client.get_run(run_id).data.metrics
    return {key: max(point.step for point in client.get_metric_history(run_id, key))
            for key in keys}


def _unix_time(text: str | None) -> float | None:
    """A heartbeat tag's time; None for a tag that holds no finite number (a run with
    such a heartbeat must not look alive for ever)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def run_records(tracking_uri: str, experiment: str) -> list[RunRecord]:
    """Every active run of the named experiment, as resume needs them (none when the
    experiment does not exist; nothing is created)."""
    client = open_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else records_of(client, found.experiment_id)


@dataclass(frozen=True)
class GridAxes:
    """What an experiment's grid files asked for, from their parent runs' params."""

    # Each axis's dotted key -> its values as the cells' params spell them, in the grid
    # file's order (axes of several grid runs merged, oldest first).
    axes: dict[str, list[str]]
    # The most seeds a grid run asked for (0: no grid run recorded any).
    seeds: int


def grid_axes(tracking_uri: str, experiment: str) -> GridAxes:
    """The axes and seeds recorded by an experiment's top-level grid runs.

    Returns:
        The GridAxes; empty when the experiment or its grid runs are missing, and
        without any axis whose recorded value cannot be read back as a list.
    """
    client = open_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    runs = found and client.search_runs(
        [found.experiment_id], max_results=SEARCH_PAGE, order_by=["attributes.start_time ASC"],
        filter_string=f"tags.`{schema.GRID_TAG}` != '' and tags.`{schema.PARENT_TAG}` IS NULL "
                      f"and tags.`{schema.CELL_TAG}` IS NULL")
    axes: dict[str, list[str]] = {}
    seeds = 0
    for run in runs or []:
        for name, text in run.data.params.items():
            values = _listed(text)
            if name.startswith(schema.AXIS_PARAM_PREFIX) and values is not None:
                merged = axes.setdefault(name[len(schema.AXIS_PARAM_PREFIX):], [])
                merged += [value for value in values if value not in merged]
            elif name == schema.SEEDS_PARAM and values is not None:
                seeds = max(seeds, len(values))
    return GridAxes(axes, seeds)


def _listed(text: str) -> list[str] | None:
    """A param that holds a Python list, as its items' str (how cell params spell them);
    None for anything else (a value cut at the param limit, say)."""
    try:
        values = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return [str(value) for value in values] if isinstance(values, list) else None


def experiment_ids(tracking_uri: str) -> dict[str, str]:
    """The store's experiments, newest first: name -> id."""
    return {e.name: e.experiment_id for e in open_client(tracking_uri).search_experiments(
        order_by=["creation_time DESC"])}


@dataclass(frozen=True)
class GridRun:
    """A grid's parent run: where its grid file is, and where the report goes."""

    run_id: str
    run_name: str
    # The software versions it recorded (schema.VERSION_TAG_PREFIX tags), by name.
    versions: dict[str, str]
    # The --set overrides its grid ran with (schema.OVERRIDES_PARAM); None when it did
    # not record them (a run of an older cvlib, whose grid.yaml is the file as written).
    overrides: tuple[str, ...] | None = None


def newest_grid_run(tracking_uri: str, experiment: str) -> GridRun | None:
    """The most recently started grid parent run of an experiment.

    Several ``cvlib run`` invocations may write several parent runs into one experiment.

    Returns:
        The GridRun, or None when the experiment or its parent runs are missing.
    """
    client = open_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    runs = found and client.search_runs(
        [found.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
        filter_string=f"tags.`{schema.GRID_TAG}` != '' and tags.`{schema.PARENT_TAG}` IS NULL")
    if not runs:
        return None
    tags = runs[0].data.tags
    versions = {key[len(schema.VERSION_TAG_PREFIX):]: value for key, value in tags.items()
                if key.startswith(schema.VERSION_TAG_PREFIX)}
    recorded = runs[0].data.params.get(schema.OVERRIDES_PARAM)
    overrides = None if recorded is None else tuple(_json_list(recorded))
    return GridRun(runs[0].info.run_id, runs[0].info.run_name, versions, overrides)


def _json_list(text: str) -> list[str]:
    """A param that holds a JSON list of strings; a value MLflow cut short is shown as
    it is, one item."""
    try:
        items = json.loads(text)
    except ValueError:
        return [text]
    return [str(item) for item in items] if isinstance(items, list) else [text]


def metric_histories(tracking_uri: str, run_ids: list[str],
                     key: str) -> dict[str, list[tuple[int, float]]]:
    """One metric's history in each run.

    Returns:
        run id -> [(step, value), ...] in step order (empty when never logged).
    """
    client = open_client(tracking_uri)
    return {run_id: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            for run_id in run_ids}


def metric_history(tracking_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """Every logged (step, value) of one metric of a run, in step order."""
    return metric_histories(tracking_uri, [run_id], key)[run_id]


def epoch_history(tracking_uri: str, run_id: str, keys) -> dict[str, list[float]]:
    """Per-epoch metrics of a run as Keras's history holds them: for each key logged, its
    values of epochs 1, 2, ... in order (step 0, the initialized model, left out).

    Args:
        tracking_uri: The MLflow store.
        run_id: The run.
        keys: The metrics (``loss``, ``val_accuracy``, ...).

    Returns:
        Metric -> values, for the keys logged at some epoch.
    """
    client = open_client(tracking_uri)
    history = {}
    for key in keys:
        by_epoch = {m.step: m.value for m in client.get_metric_history(run_id, key)
                    if m.step >= 1}
        if by_epoch:
            history[key] = [by_epoch[epoch] for epoch in sorted(by_epoch)]
    return history


def _download(client: MlflowClient, run_id: str, path: str, folder: str) -> Path | None:
    """Copy one artifact file of a run into a local folder; None when there is none."""
    parent = path.rpartition("/")[0] or None
    if path not in [a.path for a in client.list_artifacts(run_id, parent)]:
        return None
    return Path(client.download_artifacts(run_id, path, folder))


def read_text_artifact(tracking_uri: str, run_id: str, path: str) -> str | None:
    """A text artifact of a run (such as ``schema.GRID_FILE``), or None when it has none."""
    with tempfile.TemporaryDirectory() as folder:
        local = _download(open_client(tracking_uri), run_id, path, folder)
        return local.read_text() if local else None


def read_stats_table(tracking_uri: str, run_id: str) -> pd.DataFrame | None:
    """A cell run's statistics table (``schema.STATS_TABLE``), or None when it logged none."""
    with tempfile.TemporaryDirectory() as folder:
        local = _download(open_client(tracking_uri), run_id, schema.STATS_TABLE, folder)
        return pd.read_parquet(local) if local else None
