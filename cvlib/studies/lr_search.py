"""Coarse-to-fine random search of the learning rate (and optionally weight decay).

As the CS231n notes describe it: sample log-uniformly over a wide range (1e-6 to 1)
with short runs, stopping a trial whose loss explodes (``DivergenceStop``: NaN, or an
epoch loss above 3x the initial loss); then sample a narrower range around the best
coarse values with longer runs; report the best range found, and warn when the best
value lies at an edge of the range searched (the optimum may lie beyond it).

Every trial is an ordinary cell trained through the engine (:mod:`cvlib.engine`), nested
under one parent run per search, which also gets the plot and the trials table. The
range logic (sampling, narrowing, edges) is plain functions over figures.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from cvlib.cells import Cell
from cvlib.engine.progress import counted
from cvlib.errors import CvlibError
from cvlib.grids import Grid
from cvlib.tracking.schema import OK, VAL_ACCURACY

# pandas and the engine are imported where they are used: the cvlib command's parser
# reads this module's
# defaults, and every command (its one-line errors too) would otherwise pay for them.
if TYPE_CHECKING:
    import pandas as pd

    from cvlib.engine.experiment import Experiment
    from cvlib.engine.options import EngineOptions

LEARNING_RATE = "train.learning_rate"
WEIGHT_DECAY = "train.weight_decay"
COARSE_LEARNING_RATES = (1e-6, 1.0)
# A best value within this fraction of the range's width (in log space) from either
# end lies "at the edge".
EDGE_FRACTION = 0.1
# Sampled values keep 3 significant digits: readable run names, stable cell hashes.
SIGNIFICANT_DIGITS = 3
# CIFAR-10's chance accuracy, and the margin a search's best trial must beat it by
# for its learning rate to mean anything (3 standard deviations of chance on 1,000
# validation images).
CHANCE_ACCURACY = 0.1
LEARNED_MARGIN = 0.03

STAGES = ("coarse", "fine")
# Setting key -> (low, high), searched log-uniformly.
Space = dict[str, tuple[float, float]]


class SearchError(CvlibError):
    """A search that cannot go on (every trial of a stage diverged or failed)."""


@dataclass(frozen=True)
class SearchPlan:
    """How many trials each stage runs, and for how long."""

    coarse_trials: int = 8
    coarse_epochs: int = 2
    fine_trials: int = 6
    fine_epochs: int = 5
    # The best trials of a stage, whose values span the next range and the best range.
    top: int = 3
    # The fine range is the top coarse values' span widened by this factor each way.
    widen: float = 2.0
    # Seed of the sampling (the trials' own seed is the grid's first seed).
    seed: int = 0
    # The coarse range of each searched setting.
    space: tuple[tuple[str, tuple[float, float]], ...] = ((LEARNING_RATE, COARSE_LEARNING_RATES),)


def _round(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def sample(space: Space, trials: int, rng: np.random.Generator) -> list[dict[str, float]]:
    """Draw trials log-uniformly from the space, one per equal slice of each range.

    Stratified (Latin hypercube) sampling: with few trials, pure random draws leave
    wide gaps; one draw per slice, slices shuffled per setting, covers the range
    while each value stays log-uniform.

    Args:
        space: Setting key -> (low, high), low > 0.
        trials: How many.
        rng: The random generator.

    Returns:
        One dict of setting values per trial.
    """
    values = {}
    for key, (low, high) in space.items():
        slices = (rng.permutation(trials) + rng.random(trials)) / trials
        exponents = math.log10(low) + slices * (math.log10(high) - math.log10(low))
        values[key] = [min(max(_round(10 ** e), low), high) for e in exponents]
    return [{key: values[key][index] for key in space} for index in range(trials)]


def ranked(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials that trained normally, best validation accuracy first."""
    valid = trials[(trials["outcome"] == OK) & trials["val_accuracy"].notna()]
    return valid.sort_values("val_accuracy", ascending=False, kind="stable")


def span(trials: pd.DataFrame, keys, top: int) -> Space:
    """The range of each setting over the ``top`` best trials.

    Raises:
        SearchError: if no trial trained normally.
    """
    best = ranked(trials).head(top)
    if best.empty:
        raise SearchError("every trial diverged or failed: lower the range searched")
    return {key: (float(best[key].min()), float(best[key].max())) for key in keys}


def narrow(trials: pd.DataFrame, space: Space, top: int, widen: float) -> Space:
    """The fine range: the top trials' span, widened by ``widen`` each way, inside ``space``.

    Args:
        trials: The coarse trials (setting columns, val_accuracy, outcome).
        space: The coarse range, which the fine range never leaves.
        top: How many of the best trials set the span.
        widen: Factor by which the span grows at each end.

    Returns:
        The fine Space.
    """
    found = span(trials, space, top)
    return {key: (max(low / widen, space[key][0]), min(high * widen, space[key][1]))
            for key, (low, high) in found.items()}


def edge(value: float, low: float, high: float, fraction: float = EDGE_FRACTION) -> str | None:
    """``"low"`` or ``"high"`` when value lies at that edge of [low, high] (log scale)."""
    width = math.log10(high) - math.log10(low)
    if width <= 0:
        return None
    position = (math.log10(value) - math.log10(low)) / width
    if position <= fraction:
        return "low"
    if position >= 1 - fraction:
        return "high"
    return None


def edge_warnings(best: dict[str, float], space: Space) -> list[str]:
    """A warning for each best value at an edge of the range searched."""
    warnings = []
    for key, value in best.items():
        side = edge(value, *space[key])
        if side:
            low, high = space[key]
            warnings.append(f"the best {key.split('.')[-1]} {value:.3g} lies at the {side} edge "
                            f"of the range searched [{low:.3g}, {high:.3g}]: the optimum may "
                            f"lie beyond it; search again with a range that extends past it")
    return warnings


@dataclass
class SearchResult:
    """What one search found."""

    # The cell searched for (its learning rate etc. are the searched ones' defaults).
    cell: Cell
    # One row per trial: stage, the searched settings, val_accuracy, outcome, run_id.
    trials: pd.DataFrame
    coarse_space: Space
    fine_space: Space
    # The best trial's settings and validation accuracy (from the last stage run).
    best: dict[str, float]
    best_accuracy: float
    # The span of the best trials' settings: the range to use.
    best_range: Space
    # A warning per best value at an edge of the range its stage searched.
    edge_warnings: list[str] = field(default_factory=list)
    parent_run_id: str = ""

    @property
    def learned(self) -> bool:
        """Whether the best trial beat chance: otherwise its settings are a tie-break."""
        return self.best_accuracy > CHANCE_ACCURACY + LEARNED_MARGIN

    @property
    def warnings(self) -> list[str]:
        """Everything that makes the best values doubtful."""
        if self.learned:
            return self.edge_warnings
        return self.edge_warnings + [
            f"no trial beat chance ({CHANCE_ACCURACY:.0%}) by {LEARNED_MARGIN:.0%}: the best "
            f"values are a tie-break and mean nothing; train the trials longer"]

    def summary(self) -> list[str]:
        """Lines for the terminal: best values, best range, warnings."""
        lines = ["best: " + ", ".join(f"{k.split('.')[-1]}={v:.3g}" for k, v in self.best.items())
                 + f" (val_accuracy {self.best_accuracy:.3f})"]
        lines += [f"best range of {key.split('.')[-1]}: [{low:.3g}, {high:.3g}]"
                  for key, (low, high) in self.best_range.items()]
        lines += [f"WARNING: {warning}" for warning in self.warnings]
        return lines


def trial_cells(cell: Cell, values: list[dict[str, float]], epochs: int) -> list[Cell]:
    """The cell with each trial's settings, trained for ``epochs`` epochs."""
    keys = sorted({key for trial in values for key in trial})
    varied = tuple(k for k in cell.varied if k not in keys) + (*keys, "train.epochs")
    cells = []
    for trial in values:
        sections = {"train": {"epochs": epochs}}
        for key, value in trial.items():
            section, name = key.split(".", 1)
            sections.setdefault(section, {})[name] = value
        cells.append(dataclasses.replace(cell, varied=varied, **{
            section: dataclasses.replace(getattr(cell, section), **changes)
            for section, changes in sections.items()}))
    return cells


def search_run_name(label: str) -> str:
    """The name of a search's parent run, from its label."""
    return f"lr-search-{label}"


def search_cell(experiment: Experiment, cell: Cell, grid: Grid,
                plan: SearchPlan = SearchPlan(), parent_run_id: str | None = None,
                label: str | None = None) -> SearchResult:
    """Search one cell's learning rate (and the plan's other settings), coarse then fine.

    Args:
        experiment: The open experiment the trials train in.
        cell: The cell to search for; its searched settings are replaced per trial.
        grid: The grid it came from (its name tags the trial runs).
        plan: Trials, epochs and ranges.
        parent_run_id: Nest the search's parent run under this run.
        label: Names the search in its parent run and its lines (default: the cell's
            name without the seed).

    Returns:
        The SearchResult; the parent run holds ``lr_search.png``, ``trials.csv`` and
        the best values as metrics.

    Raises:
        SearchError: if every trial of a stage diverged or failed.
    """
    import pandas as pd

    from cvlib.engine.options import GridOptions
    from cvlib.plots import lr_search_figure

    echo = experiment.echo
    coarse_space = dict(plan.space)
    keys = list(coarse_space)
    base_name = label or cell.name.rsplit("-s", 1)[0]
    params = {"plan." + f.name: getattr(plan, f.name) for f in dataclasses.fields(plan)}

    def run_stage(stage: str, space: Space, trials: int, epochs: int, parent: str):
        # Seeded per stage: a repeated search draws the same trials, which resume skips.
        rng = np.random.default_rng([plan.seed, STAGES.index(stage)])
        cells = trial_cells(cell, sample(space, trials, rng), epochs)
        echo(f"lr-search {base_name}: {stage} stage, {counted(trials, 'trial')} of "
             f"{counted(epochs, 'epoch')} in "
             + ", ".join(f"{k.split('.')[-1]} [{lo:.3g}, {hi:.3g}]" for k, (lo, hi) in space.items()))
        experiment.train(grid, GridOptions(cells=cells, parent_run_id=parent))
        return _trial_table(stage, cells, keys, experiment.finished_runs(cells))

    with experiment.parent_run(search_run_name(base_name), params, parent_run_id) as parent:
        coarse = run_stage("coarse", coarse_space, plan.coarse_trials, plan.coarse_epochs, parent)
        fine_space = narrow(coarse, coarse_space, plan.top, plan.widen)
        stages = [coarse]
        if plan.fine_trials:
            stages.append(run_stage("fine", fine_space, plan.fine_trials, plan.fine_epochs,
                                    parent))
        last, last_space = stages[-1], (fine_space if plan.fine_trials else coarse_space)
        best_row = ranked(last).head(1)
        if best_row.empty:
            raise SearchError(f"lr-search {base_name}: every trial of the last stage "
                              f"diverged or failed")
        best = {key: float(best_row[key].iloc[0]) for key in keys}
        result = SearchResult(
            cell=cell, trials=pd.concat(stages, ignore_index=True), coarse_space=coarse_space,
            fine_space=fine_space, best=best,
            best_accuracy=float(best_row[VAL_ACCURACY].iloc[0]),
            best_range=span(last, keys, plan.top),
            edge_warnings=edge_warnings(best, last_space), parent_run_id=parent)
        experiment.log_outputs(
            parent, texts={"trials.csv": result.trials.to_csv(index=False),
                           "summary.txt": "\n".join(result.summary()) + "\n"},
            figures={"lr_search.png": lr_search_figure(
                result.trials, keys, fine_space, result.best_range, title=base_name)},
            metrics={**{f"best_{k.split('.')[-1]}": v for k, v in best.items()},
                     "best_val_accuracy": result.best_accuracy,
                     **{f"best_range_{k.split('.')[-1]}_{end}": value
                        for k, (low, high) in result.best_range.items()
                        for end, value in (("low", low), ("high", high))}})
    for line in result.summary():
        echo(f"lr-search {base_name}: {line}")
    return result


def _trial_table(stage: str, cells: list[Cell], keys: list[str], runs: pd.DataFrame) -> pd.DataFrame:
    """One row per trial cell: stage, settings, val_accuracy, outcome (``failed`` if no run)."""
    import pandas as pd

    rows = []
    for cell in cells:
        settings = cell.settings()
        row = {"stage": stage, **{key: settings[key] for key in keys},
               "val_accuracy": np.nan, "outcome": "failed", "run_id": ""}
        if cell.cell_hash in runs.index:
            run = runs.loc[cell.cell_hash]
            row.update(val_accuracy=run.get(VAL_ACCURACY, np.nan), outcome=run["outcome"],
                       run_id=run["run_id"])
        rows.append(row)
    return pd.DataFrame(rows)


def search_grid(grid: Grid, tracking_uri: str, experiment: str | None = None,
                plan: SearchPlan = SearchPlan(), engine: EngineOptions | None = None,
                echo: Callable[[str], None] = print) -> list[SearchResult]:
    """Search every cell of a grid (axes over searched settings are dropped; the
    trials use the grid's first seed).

    Args:
        grid: The grid.
        tracking_uri: The MLflow store.
        experiment: The experiment for the trials (default: ``NAME-lr-search``).
        plan: Trials, epochs and ranges.
        engine: What trains the trials, from what data; its workers are shared by every
            stage and cell (default: one after another in this process).
        echo: Receives progress lines.

    Returns:
        One SearchResult per cell, in grid order.
    """
    from cvlib.engine.experiment import Experiment

    searched = {key for key, _ in plan.space}
    base = dataclasses.replace(grid, axes=tuple((k, v) for k, v in grid.axes if k not in searched),
                               seeds=grid.seeds[:1])
    with Experiment(tracking_uri, experiment or f"{grid.name}-lr-search", engine,
                    echo) as opened:
        return [search_cell(opened, cell, grid, plan) for cell in base.cells()]
