"""The report's section on a sampling search (search.strategy random or tpe): the
objective (val_accuracy) against each searched key, and the best so far against the
trials, from the trials' runs (their schema.TRIAL_TAG and TRIAL_VALUES_TAG)."""
from __future__ import annotations

import json
from typing import Callable

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cvlib.tracking import schema
from cvlib.tracking.reads import finished_trial_rows

# Marker colours by outcome: finished trials, pruned ones (their val_accuracy is of
# fewer epochs), diverged ones.
COLOURS = {schema.OK: "#1f77b4", schema.PRUNED: "#aaaaaa", schema.DIVERGED: "#ff7f0e"}
# A numeric key spread over more than this ratio is drawn on a log axis.
LOG_AXIS_RATIO = 100


def trial_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The FINISHED trial runs of one search, by trial number, with each searched key's
    value as a column and the run's ``outcome`` and ``val_accuracy``.

    Args:
        runs: Cell runs, newest first, with ``outcome`` and ``val_accuracy``
            (report_page._runs_with_outcome); runs without a trial are left out.
    """
    trials = finished_trial_rows(runs)
    values = pd.DataFrame([json.loads(text) for text in trials["trial_values"]],
                          index=trials.index)
    table = pd.concat([trials[["trial", "outcome", "val_accuracy"]], values], axis=1)
    table["trial"] = table["trial"].astype(int)
    return table.sort_values("trial", ignore_index=True)


def objective_by_key(trials: pd.DataFrame, keys: list[str]) -> Figure:
    """val_accuracy against each searched key, one panel per key, a point per trial."""
    figure = Figure(figsize=(3.2 * len(keys) + 0.5, 3.2), layout="constrained")
    axes = figure.subplots(1, len(keys), squeeze=False)[0]
    colours = trials["outcome"].map(COLOURS).fillna("#d62728")
    for ax, key in zip(axes, keys):
        column = trials[key]
        numeric = pd.to_numeric(column, errors="coerce")
        if numeric.notna().all() and not column.map(lambda v: isinstance(v, bool)).any():
            ax.scatter(numeric, trials["val_accuracy"], c=colours, s=18)
            if (numeric > 0).all() and numeric.max() / numeric.min() > LOG_AXIS_RATIO:
                ax.set_xscale("log")
        else:
            labels = list(dict.fromkeys(column.map(str)))
            ax.scatter(column.map(str).map(labels.index), trials["val_accuracy"],
                       c=colours, s=18)
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_xlabel(key, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val_accuracy")
    return figure


def best_so_far(trials: pd.DataFrame) -> Figure:
    """The best val_accuracy of the trials that trained all their epochs, against the
    trials in order of their numbers (each trial's own as a point)."""
    figure = Figure(figsize=(6, 3.2), layout="constrained")
    ax = figure.subplots()
    complete = trials["val_accuracy"].where(trials["outcome"] == schema.OK)
    ax.scatter(trials["trial"], trials["val_accuracy"],
               c=trials["outcome"].map(COLOURS).fillna("#d62728"), s=14)
    ax.step(trials["trial"], complete.cummax().ffill().to_numpy(dtype=float), where="post",
            color="black", label="best so far")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("val_accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure


def search_section(runs: pd.DataFrame, image: Callable[[Figure, str], str]) -> str:
    """The HTML sections of an experiment's searches' figures, one per search (the grid
    its trials tag, such as each stage of an lr-search); empty for an experiment without
    trials.

    Args:
        runs: The experiment's cell runs (see :func:`trial_table`), with ``grid``.
        image: Turns a figure and its alt text into an ``<img>``.
    """
    if "trial" not in runs:
        return ""
    grids = list(dict.fromkeys(runs.loc[runs["trial"].notna(), "grid"]))
    sections = [_search_section(runs[runs["grid"] == grid], image,
                                f" {grid}" if len(grids) > 1 else "",
                                "search" if index == 0 else f"search-{index + 1}")
                for index, grid in enumerate(grids)]
    return "".join(sections)


def _search_section(runs: pd.DataFrame, image: Callable[[Figure, str], str], name: str,
                    anchor: str) -> str:
    """The HTML section of one search's figures; empty without trials that have a
    val_accuracy."""
    trials = trial_table(runs)
    if trials.empty:
        return ""
    trials = trials[trials["val_accuracy"].notna()]
    keys = [key for key in trials.columns if key not in ("trial", "outcome", "val_accuracy")]
    if trials.empty or not keys:
        return ""
    best = trials[trials["outcome"] == schema.OK]
    top = "" if best.empty else (
        f"<p>Best trial: {int(best.loc[best['val_accuracy'].idxmax(), 'trial'])}, "
        f"val_accuracy {best['val_accuracy'].max():.4f}; grey points were pruned (their "
        f"val_accuracy is of fewer epochs), orange ones diverged.</p>")
    return (f'<section id="{anchor}"><h2>Search{name}: {len(trials)} trials</h2>\n{top}\n'
            f"{image(objective_by_key(trials, keys), 'val_accuracy by searched key')}\n"
            f"{image(best_so_far(trials), 'best val_accuracy so far by trial')}"
            f"</section>\n")
