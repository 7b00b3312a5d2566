"""Runs to pandas DataFrames and tables."""
from __future__ import annotations

import dataclasses

import pandas as pd

from cvlib.config import CELL_SECTIONS
from cvlib.errors import CvlibError
from cvlib.ranking import compare_to_best, confidence_interval
from cvlib.tracking import schema
from cvlib.tracking.reads import cell_runs, grid_axes

# Final metrics summarised per cell (mean and std across seeds).
RESULT_METRICS = (schema.VAL_ACCURACY, schema.TEST_ACCURACY, schema.VAL_LOSS, schema.TEST_LOSS)
# Always shown first: the three questions of the seed study.
KEY_SETTINGS = ("activation", "initializer", "bn")
# Every setting's dotted key, in the order the config declares them: the table's columns
# follow it, so that two calls give the same columns in the same order.
SETTING_ORDER = tuple(f"{section}.{field.name}" for section, cls in CELL_SECTIONS.items()
                      for field in dataclasses.fields(cls))
# A run's outcome, best first: a cell's mark is the worst outcome of its seeds' runs.
RUNNING = "running"
OUTCOMES = (schema.OK, schema.PRUNED, RUNNING, schema.DIVERGED, schema.ERROR)
# A table's working column: each cell's val_accuracy per seed, until ranked.
SAMPLES = "_val_accuracy_samples"
# The column of an every-run table that names what differs between a row's runs besides
# their seeds (schema.ENVIRONMENT_COLUMNS: threads, CPU, oneDNN, data, git commit).
ENVIRONMENT_DIFFERS = "env_differs"
# A fact that some of a row's runs recorded and others did not (an older cvlib's).
NOT_RECORDED = "not recorded"


class ResultsError(CvlibError):
    """Nothing to tabulate; the message says why."""


def run_outcomes(runs: pd.DataFrame) -> pd.Series:
    """Each run's outcome (one of OUTCOMES): its outcome tag; for runs without one,
    FINISHED counts as ok, RUNNING or SCHEDULED as running, else error.

    Args:
        runs: A cell-runs table (tracking.reads.cell_runs).
    """
    from_status = runs["status"].map(
        {"FINISHED": schema.OK, "RUNNING": RUNNING, "SCHEDULED": RUNNING}).fillna(schema.ERROR)
    return runs["outcome"].fillna(from_status)


def results_table(tracking_uri: str, experiment: str, columns: tuple[str, ...] = (),
                  every_run: bool = False) -> pd.DataFrame:
    """One row per cell (its settings without the seed), sorted by val_accuracy.

    Args:
        tracking_uri: The MLflow store.
        experiment: The experiment (a grid's name).
        columns: Further metrics to add, e.g. ``("act_std_last",)``.
        every_run: Count every cell's latest attempt, failed and unfinished ones too,
            and add the columns ``runs`` (the run names), ENVIRONMENT_DIFFERS (what its
            runs' figures depend on where they differ, ``intra_op_threads: 1, 2``; empty
            where they agree) and ``error`` (a failed run's message; only when some run
            failed). Either way ``outcome`` is the worst of the cell's runs (OUTCOMES).

    Returns:
        A DataFrame with, in this order: the grid's axes and the other settings that
        vary across the experiment's runs (in the order cvlib.config declares them),
        the key settings activation, initializer and bn where they do not vary,
        ``seeds``, ``outcome``, and the mean of each metric. When the grid or the runs
        have several seeds, also each metric's ``*_std`` across seeds, the 95%
        confidence interval of val_accuracy's mean (``val_accuracy_ci_low``,
        ``val_accuracy_ci_high``) and ``vs_best`` (cvlib.ranking: best, tied, below,
        untested). The columns depend on the grid, not on how much of it has run.
        Rows: ok cells first, then those with more seeds (a confirmation's), then by
        val_accuracy, ties in the grid file's order. Only FINISHED runs count unless ``every_run``.
        ``attrs["settings"]`` names the setting columns, ``attrs["order"]`` each
        setting's values in the grid file's order.

    Raises:
        ResultsError: if the experiment is missing or has no (finished) cell runs.
    """
    found = cell_runs(tracking_uri, experiment)
    if found is None:
        raise ResultsError(f"no experiment named {experiment!r} in {tracking_uri}")
    runs = found.table
    if len(runs):
        runs = _latest_attempts(runs.assign(outcome=run_outcomes(runs)))
    if len(runs) and not every_run:
        runs = runs[runs["status"] == "FINISHED"]
    if runs.empty:
        raise ResultsError(f"experiment {experiment!r} has no "
                           f"{'' if every_run else 'finished '}cell runs yet")
    recorded = grid_axes(tracking_uri, experiment)
    settings = sorted((c for c in found.params if c.startswith(schema.SETTING_PREFIXES)),
                      key=_setting_rank)
    varying = [c for c in settings
               if c in recorded.axes or runs[c].nunique(dropna=False) > 1]
    key_settings = [schema.SHORT_PARAMS[name] for name in KEY_SETTINGS]
    # The grid's axes (what varies) first, then the key settings that do not vary.
    shown = varying + [c for c in key_settings if c not in varying]
    metrics = [m for m in RESULT_METRICS + tuple(columns) if m in found.metrics]
    missing = [m for m in columns if m not in found.metrics]
    if missing:
        raise ResultsError(f"no metric {', '.join(missing)} in {experiment!r}; there are: "
                           f"{_metric_names(found.metrics)}")
    grouped = runs.groupby(settings, dropna=False)
    table = grouped[shown].first()
    table["seeds"] = grouped.size()
    # diverged cells are results (FINISHED), marked as such
    table["outcome"] = grouped["outcome"].agg(worst_outcome)
    if every_run:  # the run names that `cvlib report --cell` takes
        table["runs"] = grouped["run_name"].agg(lambda names: " ".join(sorted(names)))
        table[ENVIRONMENT_DIFFERS] = grouped[list(schema.ENVIRONMENT_COLUMNS.values())] \
            .apply(environment_differences)
        if runs["error"].notna().any():
            table["error"] = grouped["error"].first()
    several_seeds = table["seeds"].max() > 1 or recorded.seeds > 1
    for metric in metrics:
        values = grouped[metric]
        table[metric] = values.mean()
        if several_seeds:  # a std of one seed is NaN: leave those columns out
            table[f"{metric}_std"] = values.std()
    # The models of its runs, to load with MLflow (one per seed, in the runs' order).
    table[schema.MODEL_URI_COLUMN] = grouped[schema.MODEL_URI_COLUMN].agg(
        lambda uris: " ".join(uris.dropna()))
    ranked = several_seeds and schema.VAL_ACCURACY in metrics
    if ranked:
        table[SAMPLES] = grouped[schema.VAL_ACCURACY].agg(list)
    table = table.reset_index(drop=True)
    # Setting names are unique across sections, so the last part is enough.
    table.columns = [c.split(".")[-1] for c in table.columns]
    shown_columns = [c.split(".")[-1] for c in shown]
    order = {column: _grid_order(recorded.axes.get(key, []), table[column])
             for key, column in zip(shown, shown_columns)}
    # Ties broken by the settings in the grid's order, so that the order never depends
    # on the store's.
    table = table.sort_values(
        ["outcome", "seeds", "val_accuracy", *shown_columns],
        ascending=[True, False, False] + [True] * len(shown_columns), na_position="last",
        ignore_index=True, kind="stable", key=lambda column: column.map(
            {value: rank for rank, value in enumerate(order[column.name])})
        if column.name in order else column.map(_outcome_rank) if column.name == "outcome"
        else column)
    if ranked:  # after sorting: of cells with equal means, the first shown is the best
        _add_ranking(table)
    table.attrs["settings"] = shown_columns
    table.attrs["order"] = order
    return table


def environment_differences(runs: pd.DataFrame) -> str:
    """What a row's runs recorded differently of what their figures depend on.

    Args:
        runs: The runs' environment columns (schema.ENVIRONMENT_COLUMNS' values).

    Returns:
        ``name: value, value`` for each fact with more than one value (NOT_RECORDED for
        runs without it, when others have it), joined by ``; ``; empty when they agree.
    """
    differences = []
    for name in runs.columns:
        values = runs[name]
        if values.notna().any() and values.fillna(NOT_RECORDED).nunique() > 1:
            differences.append(f"{name}: {', '.join(sorted(values.fillna(NOT_RECORDED).unique()))}")
    return "; ".join(differences)


def _add_ranking(table: pd.DataFrame) -> None:
    """Replace the SAMPLES column (each cell's val_accuracy per seed) by val_accuracy's
    95% interval and each cell's ``vs_best`` label (cvlib.ranking), after its std; a cell
    that is not all ok takes no part in the test."""
    samples = table.pop(SAMPLES)
    intervals = [confidence_interval(values) for values in samples]
    usable = table["outcome"] == schema.OK
    added = {"val_accuracy_ci_low": [low for low, _ in intervals],
             "val_accuracy_ci_high": [high for _, high in intervals],
             "vs_best": compare_to_best([values if ok else None
                                         for values, ok in zip(samples, usable)])}
    after = table.columns.get_loc(f"{schema.VAL_ACCURACY}_std") + 1
    for offset, (name, values) in enumerate(added.items()):
        table.insert(after + offset, name, values)


def _grid_order(listed: list[str], present: pd.Series) -> list:
    """A setting's values: as the grid file lists them, then any others by name."""
    others = sorted({value for value in present.dropna() if value not in listed}, key=str)
    return [*listed, *others]


def _setting_rank(key: str) -> tuple[int, str]:
    """A setting's place in SETTING_ORDER (unknown settings last, by name)."""
    return (SETTING_ORDER.index(key) if key in SETTING_ORDER else len(SETTING_ORDER), key)


def _metric_names(metrics: list[str]) -> str:
    """The headline metrics by name, and how many per-layer ones there are besides."""
    headline = sorted(m for m in metrics if "/" not in m)
    per_layer = len(metrics) - len(headline)
    return ", ".join(headline) + (f" (and {per_layer} per-layer metrics such as "
                                  f"{schema.ACTIVATION_PREFIX}<layer>/std)" if per_layer else "")


def _latest_attempts(runs: pd.DataFrame) -> pd.DataFrame:
    """One run per cell hash: its FINISHED run if it has one, else its newest attempt
    (a failure that a resumed grid redid successfully is history, not the result)."""
    finished_first = runs.assign(_finished=runs["status"] == "FINISHED") \
        .sort_values(["_finished", "start_time"], ascending=False)
    return finished_first.drop_duplicates("cell").drop(columns="_finished")


def worst_outcome(outcomes: pd.Series) -> str:
    """The last in OUTCOMES of a cell's runs; an unknown outcome counts as worst.

    Args:
        outcomes: The outcomes of a cell's runs.

    Returns:
        The worst of them.
    """
    return max(outcomes, key=_outcome_rank)


def _outcome_rank(outcome: str) -> int:
    """An outcome's place in OUTCOMES, best first; an unknown one counts as worst."""
    return OUTCOMES.index(outcome) if outcome in OUTCOMES else len(OUTCOMES)

