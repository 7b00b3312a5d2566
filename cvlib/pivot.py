"""A results table pivoted: one row per bn placement and activation (and any other varied
setting), one column per initializer, in the grid file's order.

Every combination of the grid's values has its place, whether it has run or not, so a
partial experiment's pivot has the columns and rows of a complete one; a place without a
result says why: ``diverged``, ``failed``, ``running`` or ``not run``.
"""
from __future__ import annotations

import math

import pandas as pd

from cvlib.results import (
    KEY_SETTINGS,
    RESULT_METRICS,
    RUNNING,
    ResultsError,
    results_table,
    worst_outcome,
)
from cvlib.tracking import schema

NOT_RUN = "not run"
# What a pivot shows in place of a value, by the cell's outcome.
OUTCOME_LABELS = {schema.DIVERGED: "diverged", schema.ERROR: "failed", RUNNING: "running"}
COLUMN_SETTING = "initializer"


def pivot_table(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The means of a metric, one place per combination of the settings' values.

    Args:
        table: From cvlib.results.results_table.
        metric: A metric column of it, e.g. ``test_accuracy``.

    Returns:
        The pivoted means (NaN where a cell has none), indexed by bn, any other varied
        setting, and activation; its columns are the initializers (``columns.name`` is
        ``initializer``); rows and columns in the grid file's order.
    """
    return _pivoted(table, table[_checked(table, metric)].astype(float))


def pivot_outcomes(table: pd.DataFrame) -> pd.DataFrame:
    """What each place of :func:`pivot_table` holds: the outcome of its cell (the worst
    of its runs, cvlib.results.OUTCOMES), or NOT_RUN."""
    outcomes = _pivoted(table, table["outcome"]).astype(object)
    return outcomes.where(outcomes.notna(), NOT_RUN)


def pivot_text(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """:func:`pivot_table` as text: ``mean ± std`` (std over seeds, where a cell has
    several), and in place of a missing or unusable value its label (OUTCOME_LABELS,
    NOT_RUN)."""
    means = pivot_table(table, metric)
    std_column = f"{metric}_std"
    stds = _pivoted(table, table[std_column].astype(float)) if std_column in table else None
    outcomes = pivot_outcomes(table)
    text = means.astype(object)
    for row in range(means.shape[0]):
        for column in range(means.shape[1]):
            outcome, mean = outcomes.iat[row, column], means.iat[row, column]
            std = math.nan if stds is None else stds.iat[row, column]
            text.iat[row, column] = (
                OUTCOME_LABELS.get(outcome, outcome) if outcome != schema.OK
                else "no value" if math.isnan(mean)
                else f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}")
    return text


def labelled_pivot(pivot: pd.DataFrame, metric: str) -> pd.DataFrame:
    """A pivot table as a flat table whose column names say both axes: the row settings
    (``bn``, ``activation``, ...) and one ``METRIC (initializer=NAME)`` per column."""
    flat = pivot.rename(columns=lambda name: f"{metric} ({pivot.columns.name}={name})")
    flat.columns.name = None
    return flat.reset_index()


def _checked(table: pd.DataFrame, metric: str) -> str:
    """The metric, if the table has it as a column."""
    if metric not in table.columns:
        raise ResultsError(f"no metric {metric!r} to pivot; there are: "
                           f"{', '.join(c for c in table.columns if c in RESULT_METRICS)}")
    return metric


def _pivoted(table: pd.DataFrame, values: pd.Series) -> pd.DataFrame:
    """One value per cell pivoted onto every combination of the settings' values (a
    cell's runs' values, if several rows share a place: the mean, or the worst outcome)."""
    rows = ["bn", *(c for c in table.attrs.get("settings", KEY_SETTINGS)
                    if c not in KEY_SETTINGS), "activation"]
    places = [*rows, COLUMN_SETTING]
    grouped = values.groupby([table[c] for c in places], dropna=False)
    combined = grouped.mean() if pd.api.types.is_float_dtype(values) else \
        grouped.agg(worst_outcome)
    order = table.attrs.get("order", {})
    levels = [order.get(c) or sorted(table[c].dropna().unique(), key=str) for c in places]
    return combined.unstack(COLUMN_SETTING).reindex(
        index=pd.MultiIndex.from_product(levels[:-1], names=rows),
        columns=pd.Index(levels[-1], name=COLUMN_SETTING))



def experiment_table(tracking_uri: str, experiment: str, columns: tuple[str, ...] = (),
                     every_run: bool = False,
                     pivot: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The table ``cvlib table`` shows of an experiment: its results, or their pivot.

    Args:
        tracking_uri: The MLflow store.
        experiment: The experiment.
        columns: Further metrics to add as columns (results_table).
        every_run: Count every cell's latest run, failed and unfinished ones too.
        pivot: A metric to pivot on (:func:`labelled_pivot`); None: no pivot.

    Returns:
        The table shown, and the results table it comes from (its ranking note).
    """
    # The pivot has a place for every cell, failed ones too, each saying what it holds.
    results = results_table(tracking_uri, experiment, columns,
                            every_run=every_run or bool(pivot))
    shown = labelled_pivot(pivot_text(results, pivot), pivot) if pivot else results
    return shown, results
