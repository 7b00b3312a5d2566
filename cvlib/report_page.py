"""An experiment's HTML report: one self-contained page to compare a grid's cells by eye.

The page holds the results table (sortable, with diverged and failed cells marked), a
heatmap of test accuracy per BN placement, the validation curves of the best cells, one
cell's look inside (layer std by depth, activation histograms at initialization and at
the end), the grid as it ran (with the overrides it ran with), the software versions and
what the cell runs recorded of their environment. Figures are PNGs inlined as data
URIs and the sorting script is inline, so the page loads nothing from anywhere.

Everything a run holds (its name, tags, params, the grid file, the experiment's name) is
text from whoever wrote to the store, and the page is shared through it: every such value
is escaped as HTML, and drawn into figures as typed, never parsed as mathtext.
"""
from __future__ import annotations

import base64
import html
import io
import re
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cvlib import plots
from cvlib.errors import CvlibError
from cvlib.pivot import OUTCOME_LABELS, pivot_outcomes, pivot_table
from cvlib.results import results_table, run_outcomes
from cvlib.search_report import search_section
from cvlib.tracking import reads, schema
from cvlib.tracking.uris import command_line, sqlite_path
from cvlib.tracking.writer import Tracker, software_versions

# Cells whose validation curves are overlaid.
BEST_CURVES = 10
# Row colours of the results table, by outcome (ok rows stay white).
OUTCOME_COLOURS = {"diverged": "#fde1b0", "error": "#f6c1c1", "running": "#dbe6f6"}
# Figures are drawn at this resolution: the page then fills a 1400-pixel window.
DPI = 120

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
.meta, .note { color: #555; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
table.sortable th { cursor: pointer; background: #f3f3f3; user-select: none; }
table.sortable th[aria-sort=ascending]::after { content: " \\25B2"; }
table.sortable th[aria-sort=descending]::after { content: " \\25BC"; }
img { max-width: 100%; display: block; margin: .5em 0; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
"""

# Click a header to sort by that column; again to reverse. Numbers sort as numbers,
# and empty cells (a failed run's missing metrics) stay last either way.
SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach((table) => {
  const headers = Array.from(table.tHead.rows[0].cells);
  headers.forEach((header, column) => header.addEventListener("click", () => {
    const ascending = header.getAttribute("aria-sort") !== "ascending";
    headers.forEach((other) => other.removeAttribute("aria-sort"));
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    const key = (row) => {
      const text = row.cells[column].textContent.trim();
      return text === "" ? null : (isNaN(Number(text)) ? text : Number(text));
    };
    const body = table.tBodies[0];
    const rows = Array.from(body.rows).sort((a, b) => {
      const x = key(a), y = key(b);
      if (x === null || y === null) return (x === null) - (y === null);
      const order = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0)
                                          : (typeof x === "number" ? -1 : 1);
      return ascending ? order : -order;
    });
    body.append(...rows);
  }));
});
"""


class ReportError(CvlibError):
    """A report that cannot be made as asked; the message says why."""


@dataclass
class Report:
    """A made report and what it shows."""

    # The page.
    html: str
    experiment: str
    # Cell runs in the experiment, and the run name of the cell looked inside (or None).
    runs: int
    cell: str | None
    # The grid's newest parent run, where the report is logged (None if there is none).
    grid_run: reads.GridRun | None


def _image(figure: Figure, alt: str) -> str:
    """A figure as an inline PNG ``<img>``."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def results_html(table: pd.DataFrame) -> str:
    """The results table as a sortable HTML table, its rows coloured by outcome.

    Args:
        table: From ``results_table(..., every_run=True)``.
    """
    def colour(row: pd.Series) -> list[str]:
        background = OUTCOME_COLOURS.get(row["outcome"])
        return [f"background-color: {background}" if background else ""] * len(row)

    return (table.style.hide(axis="index").format(precision=4, na_rep="", escape="html")
            .format_index(escape="html", axis=1)
            .apply(colour, axis=1)
            .set_table_attributes('class="sortable"').to_html())


def accuracy_heatmaps(table: pd.DataFrame, metric: str = "test_accuracy") -> Figure:
    """Activation x initializer heatmaps of a metric, one panel per BN placement.

    Args:
        table: From results_table; a cell's runs are averaged. Settings varied beyond
            the three key ones join the row labels.
        metric: The metric shown; a cell that is no result is grey and labelled
            (diverged, failed, running, not run).
    """
    # Every combination in the grid file's order, the same rows in every panel: a row
    # reads across the placements.
    outcomes = pivot_outcomes(table)
    pivot = pivot_table(table, metric).where(outcomes == schema.OK)
    placements = list(dict.fromkeys(pivot.index.get_level_values("bn")))
    panels = [pivot.xs(bn, level="bn") for bn in placements]
    labels_of = [outcomes.xs(bn, level="bn") for bn in placements]
    rows = panels[0].index
    figure = Figure(figsize=(1.2 + 1.3 * len(pivot.columns) * len(panels),
                            1.2 + 0.45 * len(rows)),
                    layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    colours = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    values = pivot.to_numpy(dtype=float)
    low, high = (np.nanmin(values), np.nanmax(values)) if np.isfinite(values).any() \
        else (0.0, 1.0)
    for ax, bn, panel, outcome in zip(axes, placements, panels, labels_of):
        image = ax.imshow(panel.to_numpy(dtype=float), cmap=colours, vmin=low, vmax=high,
                          aspect="auto")
        for (row, column), value in np.ndenumerate(panel.to_numpy(dtype=float)):
            bright = np.isnan(value) or value > low + 0.6 * (high - low)  # grey is bright
            label = outcome.iat[row, column]
            text = f"{value:.3f}" if not np.isnan(value) else "-" if label == schema.OK \
                else OUTCOME_LABELS.get(label, label)
            ax.text(column, row, text, ha="center", va="center", fontsize=8,
                    color="black" if bright else "white")
        # Further varied settings lead the labels, e.g. "learning_rate=0.1 relu".
        labels = [" ".join([*(f"{name}={value}" for name, value in zip(
            panel.index.names[:-1], key[:-1])), str(key[-1])]) if isinstance(key, tuple)
            else str(key) for key in panel.index]
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xticks(range(len(panel.columns)), panel.columns, rotation=30, ha="right",
                      fontsize=8)
        ax.set_title(f"bn = {bn}", fontsize=9)
        ax.set_xlabel("initializer", fontsize=8)
        ax.set_ylabel(" ".join([*panel.index.names[:-1], panel.index.names[-1]]), fontsize=8)
    figure.colorbar(image, ax=list(axes), label=metric, shrink=0.9)
    return figure


def validation_curves(histories: dict[str, list[tuple[int, float]]]) -> Figure:
    """Validation accuracy by epoch, one line per run, overlaid.

    Args:
        histories: Run name -> [(epoch, val_accuracy), ...], best first.
    """
    figure = Figure(figsize=(9, 4), layout="constrained")
    ax = figure.subplots()
    for name, points in histories.items():
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o", markersize=3, label=f"{name} ({values[-1]:.3f})")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("val_accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return figure


def _runs_with_outcome(tracking_uri: str, experiment: str) -> pd.DataFrame:
    """Every cell run, newest first, with ``name``, ``outcome`` and ``val_accuracy``."""
    runs = reads.cell_runs(tracking_uri, experiment).table
    return runs.assign(name=runs["run_name"], outcome=run_outcomes(runs),
                       val_accuracy=runs.get(schema.VAL_ACCURACY, np.nan)) \
        .sort_values("start_time", ascending=False, ignore_index=True)


def _best_runs(runs: pd.DataFrame, count: int) -> pd.DataFrame:
    """The ok runs with the highest final val_accuracy, best first."""
    ok = runs[(runs["outcome"] == "ok") & runs["val_accuracy"].notna()]
    return ok.sort_values("val_accuracy", ascending=False, kind="stable").head(count)


def _chosen_run(runs: pd.DataFrame, cell: str | None) -> pd.Series | None:
    """The run to look inside: the named one (its newest ok run, if re-run), else the best."""
    if cell is None:
        best = _best_runs(runs, 1)
        return None if best.empty else best.iloc[0]
    named = runs[runs["name"] == cell]
    if named.empty:
        raise ReportError(f"no cell run named {cell!r}; there are: "
                          f"{', '.join(sorted(runs['name'].unique()))}")
    return named.sort_values("outcome", key=lambda o: o != "ok", kind="stable").iloc[0]


def _cell_section(tracking_uri: str, experiment: str, run: pd.Series | None) -> str:
    """The chosen cell's model URI, layer-std plot and activation histograms, first and
    last."""
    if run is None:
        return _note("No cell finished with a val_accuracy yet.")
    stats = reads.read_stats_table(tracking_uri, run["run_id"])
    accuracy = "" if pd.isna(run["val_accuracy"]) else \
        f", val_accuracy {run['val_accuracy']:.4f}"
    another = command_line("report", "--experiment", experiment, "--cell", "RUN_NAME",
                           tracking_uri=tracking_uri)
    model = run.get(schema.MODEL_URI_COLUMN)
    kept = (f" Its model: <code>{html.escape(model)}</code>, for "
            f"<code>mlflow.pyfunc.load_model</code>." if isinstance(model, str) else "")
    heading = (f"<p>Run <b>{html.escape(run['name'])}</b> ({html.escape(run['outcome'])}"
               f"{accuracy}).{kept} "
               f"Pick another with <code>{html.escape(another)}</code>.</p>")
    if stats is None or stats.empty:
        return heading + _note(f"This run logged no {schema.STATS_TABLE} (statistics off with "
                               f"train.stats_every: 0, or it failed before measuring).")
    steps = sorted({int(stats["step"].min()), int(stats["step"].max())})
    figures = [_image(plots.layer_std(stats), "activation std by depth")]
    figures += [_image(plots.activation_histograms(stats, step),
                       f"activation histograms at step {step}") for step in steps]
    return heading + "\n".join(figures)


def _grid_section(grid_run: reads.GridRun | None, grid_file: str | None) -> str:
    """The grid as the newest grid run ran it (schema.GRID_FILE: overrides applied,
    defaults filled in), and the overrides it ran with, listed."""
    if not grid_file:
        return _note(f"No {schema.GRID_FILE} logged.")
    if grid_run is None or grid_run.overrides is None:  # an older cvlib's run
        caption = _note("The grid file as written (this grid run recorded no overrides).")
    elif grid_run.overrides:
        items = "".join(f"<li><code>--set {html.escape(o)}</code></li>"
                        for o in grid_run.overrides)
        caption = (f'<p>The settings as the grid ran, its grid file with these overrides '
                   f'applied and every default filled in:</p><ul id="overrides">{items}</ul>')
    else:
        caption = _note("The settings as the grid ran: its grid file, with no overrides, "
                        "every default filled in.")
    return f'{caption}<pre id="resolved-grid">{html.escape(grid_file)}</pre>'


def _software_section(grid_run: reads.GridRun | None) -> str:
    """The versions the grid run recorded, else those of the report's own environment."""
    recorded = grid_run.versions if grid_run else {}
    caption = "Recorded by the grid run." if recorded else (
        "The grid run recorded no versions; these are the report's own.")
    versions = pd.DataFrame(list((recorded or software_versions()).items()),
                            columns=["software", "version"])
    return _note(caption) + versions.to_html(index=False, table_id="software", escape=True)


def _environment_section(runs: pd.DataFrame) -> str:
    """What the cell runs' figures depend on besides their settings
    (schema.ENVIRONMENT_COLUMNS): each recorded value of each fact, with how many runs
    recorded it; a fact with several values is marked, as ``cvlib table --every-run``
    marks the rows whose runs differ."""
    rows = []
    for fact in schema.ENVIRONMENT_COLUMNS.values():
        counts = runs[fact].value_counts(sort=False) if fact in runs else pd.Series()
        for value, count in counts.items():
            rows.append((fact, value, count, "differs" if len(counts) > 1 else ""))
    if not rows:
        return _note("The cell runs recorded no environment (an older cvlib's runs).")
    table = pd.DataFrame(rows, columns=["fact", "value", "runs", "across runs"])
    return (_note("Recorded by each cell run where it trained; "
                  "cvlib table --every-run names the rows whose runs differ.")
            + table.to_html(index=False, table_id="environment", escape=True))


def build_report(tracking_uri: str, experiment: str, cell: str | None = None) -> Report:
    """Make the HTML report of an experiment (see the module docstring on the values
    from runs).

    Args:
        tracking_uri: The MLflow store.
        experiment: The experiment (a grid's name).
        cell: Run name of the cell to look inside; default: the best by val_accuracy.

    Returns:
        The Report.

    Raises:
        ResultsError: if the experiment is missing or has no cell runs.
        ReportError: if ``cell`` names no run.
    """
    # A run name or param with "$" in it would otherwise be parsed as mathtext, which
    # fails on text such as "$\\x$" and would end the report.
    with matplotlib.rc_context({"text.parse_math": False}):
        return _build_report(tracking_uri, experiment, cell)


def _build_report(tracking_uri: str, experiment: str, cell: str | None) -> Report:
    table = results_table(tracking_uri, experiment, every_run=True)
    runs = _runs_with_outcome(tracking_uri, experiment)
    chosen = _chosen_run(runs, cell)
    grid_run = reads.newest_grid_run(tracking_uri, experiment)
    counts = runs["outcome"].value_counts()
    tally = ", ".join(f"{counts.get(outcome, 0)} {label}" for outcome, label in (
        ("ok", "ok"), ("diverged", "diverged"), ("error", "failed"), ("running", "running")))

    if "test_accuracy" in table and table["test_accuracy"].notna().any():
        heatmap = _image(accuracy_heatmaps(table), "test accuracy heatmaps")
    else:
        heatmap = _note("No cell has a test_accuracy yet.")
    best = _best_runs(runs, BEST_CURVES)
    histories = reads.metric_histories(tracking_uri, list(best["run_id"]), schema.VAL_ACCURACY)
    curves = {name: histories[run_id] for name, run_id in zip(best["name"], best["run_id"])
              if histories[run_id]}
    curves_html = (_image(validation_curves(curves), "validation accuracy curves") if curves
                   else _note("No cell finished with a val_accuracy history yet."))
    grid_file = None if grid_run is None else \
        reads.read_text_artifact(tracking_uri, grid_run.run_id, schema.GRID_FILE)

    title = f"cvlib report: {html.escape(experiment)}"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{STYLE}</style></head>
<body>
<h1>{title}</h1>
<p class="meta">{len(runs)} cell runs: {tally}.
Store <code>{html.escape(tracking_uri)}</code>; grid run
<code>{html.escape(grid_run.run_name if grid_run else "none")}</code>.
Made {time.strftime("%Y-%m-%d %H:%M:%S")}.</p>

<section id="results"><h2>Results</h2>
<p>One row per cell setting (mean over its seeds), best val_accuracy first; click a
column header to sort. Diverged cells are orange, failed ones red, running ones blue.</p>
{results_html(table)}</section>

{search_section(runs, _image)}
<section id="heatmap"><h2>Test accuracy: activation &times; initializer, per BN placement</h2>
{heatmap}</section>

<section id="curves"><h2>Validation accuracy of the best {len(curves)} cells</h2>
{curves_html}</section>

<section id="cell"><h2>Inside one cell</h2>
{_cell_section(tracking_uri, experiment, chosen)}</section>

<section id="grid"><h2>Grid</h2>
{_grid_section(grid_run, grid_file)}
<h3>Software</h3>
{_software_section(grid_run)}
<h3>Environment</h3>
{_environment_section(runs)}</section>
<script>{SORT_SCRIPT}</script>
</body></html>
"""
    return Report(html=page, experiment=experiment, runs=len(runs),
                  cell=None if chosen is None else chosen["name"], grid_run=grid_run)


def default_report_path(tracking_uri: str, experiment: str) -> Path:
    """Where ``cvlib report`` writes an experiment's page unless told: ``reports/`` beside a
    SQLite store (``mlruns/reports/NAME.html`` by default), else ``reports/`` here."""
    database = sqlite_path(tracking_uri)
    folder = (database.parent if database else Path(".")) / "reports"
    return folder / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', experiment)}.html"


def write_report(tracking_uri: str, experiment: str, out: str | Path,
                 cell: str | None = None) -> Report:
    """Make the report, write it to a file, and log it as ``schema.REPORT_FILE`` to the
    grid's newest parent run (when there is one).

    Args:
        out: The HTML file to write.

    Returns:
        The Report (see build_report, which also says what it raises).
    """
    report = build_report(tracking_uri, experiment, cell)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(report.html, encoding="utf-8")
    if report.grid_run is not None:
        Tracker(tracking_uri).log_outputs(report.grid_run.run_id,
                                          texts={schema.REPORT_FILE: report.html})
    return report
