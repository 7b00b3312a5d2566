"""Per-cell figures (matplotlib's object API: no pyplot state, no display needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

PANEL_INCHES = 2.4


def _layer_order(stats: pd.DataFrame, suffix: str) -> list[str]:
    """Layers with this suffix, in depth order (as first recorded)."""
    names = stats["layer"].drop_duplicates()
    return [name for name in names if name.endswith(suffix)]


def activation_histograms(stats: pd.DataFrame, step: int) -> Figure:
    """One histogram per layer, side by side, mean and std in each title: the layout
    of the CS231n lecture 6 slides. ``*_act`` layers on the first row, ``*_bn`` below.

    Args:
        stats: The long table of cvlib.stats.StatsRecorder.table().
        step: The step (epoch) to show.
    """
    at_step = stats[stats["step"] == step]
    rows = [layers for layers in (_layer_order(stats, "_act"), _layer_order(stats, "_bn"))
            if layers]
    columns = max(len(layers) for layers in rows)
    figure = Figure(figsize=(PANEL_INCHES * columns, PANEL_INCHES * len(rows)))
    figure.subplots_adjust(left=0.03, right=0.98, bottom=0.1, top=0.8, wspace=0.15,
                           hspace=0.6)
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for row, layers in enumerate(rows):
        for column in range(columns):
            ax = axes[row][column]
            if column >= len(layers):
                ax.set_axis_off()
                continue
            layer = at_step[at_step["layer"] == layers[column]]
            figures = layer.set_index("statistic")["value"]
            bins = layer[layer["statistic"] == "hist_count"]
            # One step patch, not a patch per bar: 40 rectangles per panel made these
            # figures the slowest part of a cell's plots.
            ax.stairs(bins["value"].to_numpy(),
                      np.append(bins["bin_low"].to_numpy(), bins["bin_high"].iloc[-1]),
                      fill=True, color="tab:blue" if row == 0 else "tab:green")
            ax.set_title(f"{layers[column]}\nmean {figures['mean']:.3g}  std {figures['std']:.3g}",
                         fontsize=8)
            ax.tick_params(labelsize=6)
            ax.locator_params(axis="x", nbins=4)  # ticks are most of the drawing time
            ax.set_yticks([])
    figure.suptitle(f"Activations at {'initialization' if step == 0 else f'epoch {step}'}",
                    fontsize=10)
    return figure


def training_curves(history: dict[str, list[float]]) -> Figure:
    """Loss and accuracy, train and validation, by epoch."""
    figure = Figure(figsize=(8, 3))
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.17, top=0.9, wspace=0.25)
    for ax, metric in zip(figure.subplots(1, 2), ("loss", "accuracy")):
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            values = history.get(key, [])
            ax.plot(np.arange(1, len(values) + 1), values, marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend(fontsize=8)
    return figure


def layer_std(stats: pd.DataFrame) -> Figure:
    """The std of every activation layer by depth, one line per logged step."""
    layers = _layer_order(stats, "_act")
    stds = stats[(stats["statistic"] == "std") & stats["layer"].isin(layers)] \
        .pivot(index="layer", columns="step", values="value").reindex(layers)
    figure = Figure(figsize=(max(4.0, 0.6 * len(layers) + 2), 3.2))
    # Fixed margins: matplotlib's automatic layouts cost more than drawing does.
    figure.subplots_adjust(left=0.15, right=0.97, bottom=0.3, top=0.95)
    ax = figure.subplots()
    for step in stds.columns:
        ax.plot(range(len(layers)), stds[step], marker="o",
                label="init" if step == 0 else f"epoch {step}")
    ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("activation std")
    if (stds.to_numpy() > 0).all() and stds.to_numpy().max() / stds.to_numpy().min() > 100:
        ax.set_yscale("log")  # collapsing or exploding activations span decades
    ax.legend(fontsize=7)
    return figure


def write_cell_plots(history: dict[str, list[float]], stats: pd.DataFrame | None,
                     folder: str | Path) -> None:
    """Draw a cell's figures as PNG files: training curves, and with statistics the
    histograms at the first and last step and the layer-std plot.

    Args:
        history: Keras's per-epoch history.
        stats: The statistics' long table, or None when they were off.
        folder: Where to write (created if missing).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures = {}
    if history.get("loss"):
        figures["curves.png"] = training_curves(history)
    if stats is not None and not stats.empty:
        for step in sorted({int(stats["step"].min()), int(stats["step"].max())}):
            figures[f"activations_epoch_{step:03d}.png"] = activation_histograms(stats, step)
        figures["layer_std.png"] = layer_std(stats)
    for name, figure in figures.items():
        figure.savefig(folder / name, dpi=80)


def lr_search_figure(trials: pd.DataFrame, keys: list[str], fine_space: dict,
                     best_range: dict, title: str = "") -> Figure:
    """Validation accuracy against each searched setting (log axis), one panel each.

    Coarse trials are circles, fine trials squares, diverged or failed trials crosses
    on the x axis; the fine range is shaded and the best range marked.

    Args:
        trials: One row per trial: stage, the setting columns, val_accuracy, outcome.
        keys: The searched setting columns, e.g. ``train.learning_rate``.
        fine_space: Setting -> (low, high) of the fine stage.
        best_range: Setting -> (low, high) of the best trials.
        title: The figure's title.
    """
    figure = Figure(figsize=(5.5 * len(keys), 3.6), layout="constrained")
    for ax, key in zip(figure.subplots(1, len(keys), squeeze=False)[0], keys):
        ok = trials["outcome"] == "ok"
        for stage, marker in (("coarse", "o"), ("fine", "s")):
            shown = trials[ok & (trials["stage"] == stage)]
            ax.scatter(shown[key], shown["val_accuracy"], marker=marker, label=f"{stage} trials")
        lost = trials[~ok]
        if len(lost):
            ax.scatter(lost[key], np.zeros(len(lost)), marker="x", color="tab:red",
                       label="diverged or failed")
        ax.axvspan(*fine_space[key], color="tab:gray", alpha=0.15, label="fine range")
        for bound in best_range[key]:
            ax.axvline(bound, color="tab:green", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel(key.split(".")[-1])
        ax.set_ylabel("validation accuracy")
        ax.legend(fontsize=7)
    figure.suptitle(f"{title}: best range dashed" if title else "best range dashed", fontsize=10)
    return figure


def layer_profiles(profiles: dict[str, list[float]], layers: list[str], title: str) -> Figure:
    """One line per labelled network: a figure of each layer, by depth (log axis).

    Args:
        profiles: Label -> one value per layer, e.g. the activation std.
        layers: The layers' names, in depth order.
        title: The axis title.
    """
    figure = Figure(figsize=(max(5.0, 0.55 * len(layers) + 2.5), 3.6), layout="constrained")
    ax = figure.subplots()
    for label, values in profiles.items():
        ax.plot(range(len(layers)), values, marker="o", label=label)
    ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, ncols=2)
    return figure


def step_curves(curves: dict[str, np.ndarray], threshold: float, title: str) -> Figure:
    """Smoothed training accuracy against the gradient step, one line per network,
    with the threshold whose first crossing times the networks."""
    figure = Figure(figsize=(6, 3.6), layout="constrained")
    ax = figure.subplots()
    for label, values in curves.items():
        ax.plot(np.arange(1, len(values) + 1), values, label=label)
    ax.axhline(threshold, color="black", linestyle="--", linewidth=1, label="threshold")
    ax.set_xlabel("gradient step")
    ax.set_ylabel("training accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return figure


def seed_bars(values: dict[str, list[float]], ylabel: str, title: str,
              log: bool = False, band: tuple[float, float] | None = None) -> Figure:
    """One bar per label at the mean of its seeds, with each seed's figure as a dot.

    Args:
        values: Label -> the figure of each seed (NaN for a missing one).
        ylabel: The figure's name.
        title: The axis title.
        log: A log y axis.
        band: A range of the figure to shade (e.g. the one a claim names).
    """
    figure = Figure(figsize=(max(4.0, 0.9 * len(values) + 1.5), 3.4), layout="constrained")
    ax = figure.subplots()
    for index, seeds in enumerate(values.values()):
        ax.bar(index, np.nanmean(seeds) if np.isfinite(seeds).any() else 0.0, color="tab:blue",
               alpha=0.6)
        ax.plot([index] * len(seeds), seeds, "o", color="black", markersize=3)
    ax.set_xticks(range(len(values)), list(values), rotation=20, ha="right", fontsize=8)
    if band is not None:
        ax.axhspan(*band, color="tab:green", alpha=0.15, zorder=0)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    return figure


def lines_by(x: list, series: dict[str, list[float]], xlabel: str, ylabel: str,
             title: str, log: bool = False) -> Figure:
    """One line per label over shared x values (e.g. accuracy by depth)."""
    figure = Figure(figsize=(5.5, 3.4), layout="constrained")
    ax = figure.subplots()
    for label, values in series.items():
        ax.plot(range(len(x)), values, marker="o", label=label)
    ax.set_xticks(range(len(x)), [str(value) for value in x], fontsize=7,
                  rotation=45 if len(x) > 6 else 0)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return figure


def weight_paths(paths: dict[str, np.ndarray], title: str) -> Figure:
    """The path of two weights of one unit over SGD updates, one panel per network:
    updates that move both weights the same way only step along the diagonals."""
    figure = Figure(figsize=(3.4 * len(paths), 3.4), layout="constrained")
    for ax, (label, path) in zip(figure.subplots(1, len(paths), squeeze=False)[0],
                                 paths.items()):
        ax.plot(path[:, 0], path[:, 1], "-o", markersize=2.5, linewidth=1)
        ax.plot(*path[0], "s", color="tab:green", label="start")
        ax.plot(*path[-1], "*", color="tab:red", markersize=9, label="end")
        ax.set_xlabel("w0", fontsize=8)
        ax.set_ylabel("w1", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6)
    figure.suptitle(title, fontsize=9)
    return figure
