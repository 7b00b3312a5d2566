"""Results tables as text: csv, markdown, latex or html, and the line that says how far
their ranking is tested.

csv keeps every figure in a column of its own, for programs; the formats for people show
``mean ± std``, val_accuracy's 95% interval as ``[low, high]``, and a cell's label where it
has no value (``diverged``, ``failed``), never NaN or a blank.
"""
from __future__ import annotations

import math

import pandas as pd

from cvlib.pivot import OUTCOME_LABELS
from cvlib.ranking import ALPHA, VS_BEST_MEANING
from cvlib.tracking import schema

TABLE_FORMATS = ("csv", "markdown", "latex", "html")
INTERVAL_COLUMN = "val_accuracy_ci95"
CI_LOW, CI_HIGH = f"{schema.VAL_ACCURACY}_ci_low", f"{schema.VAL_ACCURACY}_ci_high"
NO_VALUE = "no value"
# A row whose runs kept no model (diverged, failed, or train.save_model: none).
NO_MODEL = "no model"


def displayed(table: pd.DataFrame) -> pd.DataFrame:
    """A results table for people: each metric with a ``*_std`` column as ``mean ± std``,
    the interval columns as one ``[low, high]`` column, and a cell's label (OUTCOME_LABELS)
    or NO_VALUE where a metric has no value, NO_MODEL where its runs kept no model.

    Args:
        table: From cvlib.results.results_table.

    Returns:
        The table, every metric column as text.
    """
    shown = table.copy()
    label = [OUTCOME_LABELS.get(outcome, NO_VALUE) for outcome in table["outcome"]]
    metrics = [c for c in table.columns if pd.api.types.is_float_dtype(table[c])
               and not c.endswith("_std") and c not in (CI_LOW, CI_HIGH)]
    for metric in metrics:
        stds = table.get(f"{metric}_std", pd.Series(math.nan, index=table.index))
        shown[metric] = [missing if math.isnan(mean) else f"{mean:.4f}" if math.isnan(std)
                         else f"{mean:.4f} ± {std:.4f}"
                         for mean, std, missing in zip(table[metric], stds, label)]
    shown = shown.drop(columns=[c for c in table.columns if c.endswith("_std")])
    if schema.MODEL_URI_COLUMN in shown:
        shown[schema.MODEL_URI_COLUMN] = [uris or NO_MODEL
                                          for uris in shown[schema.MODEL_URI_COLUMN]]
    low, high = CI_LOW, CI_HIGH
    if low in table:
        place = shown.columns.get_loc(low)
        interval = ["one seed" if seeds < 2 else missing if math.isnan(lo)
                    else f"[{lo:.4f}, {hi:.4f}]"
                    for lo, hi, seeds, missing in zip(table[low], table[high], table["seeds"],
                                                      label)]
        shown = shown.drop(columns=[low, high])
        shown.insert(place, INTERVAL_COLUMN, interval)
    return shown


def ranking_note(table: pd.DataFrame, pivot: bool = False) -> str:
    """One line on what the table's ranking rests on: its intervals and test with several
    seeds, or that its differences are untested with one, and how to test them.

    Args:
        table: From cvlib.results.results_table.
        pivot: The line goes with a pivot of it (which shows no intervals).
    """
    if "vs_best" in table and pivot:
        return ("mean ± std over seeds; `cvlib table` without --pivot gives the 95% "
                "intervals and the cells that cannot be told apart from the best")
    if "vs_best" in table:
        return (f"mean ± std over seeds; {INTERVAL_COLUMN}: the 95% confidence interval of "
                f"the mean (t distribution); {VS_BEST_MEANING}")
    return ("one seed per cell: the differences between cells are untested; to test them, train more seeds "
            "(seeds: [0, 1, 2] in the grid file) or confirm the best: cvlib run GRID.yaml "
            f"--confirm 6 (Welch's t-test at {ALPHA})")


def render(table: pd.DataFrame, fmt: str) -> str:
    """A table as csv, markdown, latex (special characters escaped) or html text.

    Args:
        table: A results table, or a pivot flattened by cvlib.pivot.labelled_pivot.
        fmt: One of TABLE_FORMATS.

    Returns:
        The text; csv as it is, the other formats through :func:`displayed` when the
        table is a results table (it has an ``outcome`` column), markdown and latex
        without its ``model_uri`` column.
    """
    if fmt not in TABLE_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(TABLE_FORMATS)}")
    if fmt == "csv":
        return table.to_csv(index=False, float_format="%.4f")
    if "outcome" in table:
        table = displayed(table)
        if fmt != "html":  # tables to read, not to load from: model URIs go to csv and html
            table = table.drop(columns=[schema.MODEL_URI_COLUMN], errors="ignore")
    if fmt == "markdown":
        # Settings stay as the grid spells them (a learning rate of 0.001, not 0.0010).
        return table.to_markdown(index=False, floatfmt=".4f", disable_numparse=True)
    if fmt == "latex":  # ± is not in LaTeX's default text encoding
        return table.to_latex(index=False, float_format="%.4f", escape=True) \
            .replace("±", r"$\pm$")
    return table.to_html(index=False, float_format="%.4f", na_rep="")

