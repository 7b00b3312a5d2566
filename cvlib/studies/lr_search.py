"""Coarse-to-fine random search of the learning rate (and optionally weight decay).

As the CS231n notes describe it: sample log-uniformly over a wide range (1e-6 to 1)
with short runs, stopping a trial whose loss explodes (``DivergenceStop``: NaN, or an
epoch loss above 3x the initial loss); then sample a narrower range around the best
coarse values with longer runs; report the best range found, and warn when the best
value lies at an edge of the range searched (the optimum may lie beyond it).

Each stage is a sampling search of the engine (:mod:`cvlib.engine.search_run`): a
``random`` search (Optuna's RandomSampler, seeded per stage) over ``loguniform`` ranges,
whose trials are ordinary cells nested under one parent run per search, which also gets
the plot and the trials table. A rerun reads the finished trials back from the store and
trains only the missing ones. The range logic (narrowing, edges, the margin over chance)
is plain functions over figures.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from cvlib.cells import Cell
from cvlib.config import SearchConfig
from cvlib.engine.progress import counted
from cvlib.errors import CvlibError
from cvlib.grids import Grid
from cvlib.spaces import Dimension
from cvlib.tracking.schema import OK, VAL_ACCURACY

# pandas and the engine are imported where they are used: the cvlib command's parser
# reads this module's
# defaults, and every command (its one-line errors too) would otherwise pay for them.
if TYPE_CHECKING:
    import pandas as pd

    from cvlib.engine.experiment import Experiment
    from cvlib.engine.options import EngineOptions
    from cvlib.tracking.records import TrialRun

LEARNING_RATE = "train.learning_rate"
WEIGHT_DECAY = "train.weight_decay"
COARSE_LEARNING_RATES = (1e-6, 1.0)
# A best value within this fraction of the range's width (in log space) from either
# end lies "at the edge".
EDGE_FRACTION = 0.1
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
    # Seed of the sampling, from which each stage's sampler seed derives (the trials' own
    # seed is the grid's first seed).
    seed: int = 0
    # The coarse range of each searched setting.
    space: tuple[tuple[str, tuple[float, float]], ...] = ((LEARNING_RATE, COARSE_LEARNING_RATES),)


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


def stage_grid(grid: Grid, cell: Cell, name: str, space: Space, trials: int, epochs: int,
               seed: int) -> Grid:
    """One stage as a sampling search: a ``random`` search of ``trials`` cells, each the
    given cell with values drawn log-uniformly from ``space``, trained ``epochs`` epochs.

    Args:
        grid: The grid the cell came from (its source and overrides stay on record).
        cell: The cell searched for.
        name: The stage grid's name, which tags its trials' runs and sets them apart
            from other stages and searches in the experiment.
        space: Setting key -> (low, high), low > 0.
        trials: How many trials.
        epochs: Epochs of each trial.
        seed: Seed of the stage's sampler.

    Returns:
        The Grid, whose search the engine runs (engine.search_run).
    """
    return dataclasses.replace(
        grid, name=name, data=cell.data, model=cell.model,
        train=dataclasses.replace(cell.train, epochs=epochs), axes=(), seeds=(cell.seed,),
        search=SearchConfig(strategy="random", trials=trials, seed=seed),
        space=tuple(Dimension(key, "loguniform", bounds) for key, bounds in space.items()))


def stage_seed(seed: int, stage: str) -> int:
    """The sampler seed of one stage of a search with ``seed``: distinct for every pair."""
    return seed * len(STAGES) + STAGES.index(stage)


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
        searched = stage_grid(grid, cell, f"{search_run_name(base_name)}-{stage}", space,
                              trials, epochs, stage_seed(plan.seed, stage))
        echo(f"lr-search {base_name}: {stage} stage, {counted(trials, 'trial')} of "
             f"{counted(epochs, 'epoch')} in "
             + ", ".join(f"{k.split('.')[-1]} [{lo:.3g}, {hi:.3g}]" for k, (lo, hi) in space.items()))
        experiment.train(searched, GridOptions(parent_run_id=parent))
        return _trial_table(stage, keys, experiment.trial_runs(searched.name, with_failed=True))

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


def _trial_table(stage: str, keys: list[str], runs: list[TrialRun]) -> pd.DataFrame:
    """One row per trial of a stage, finished or failed: stage, settings, val_accuracy,
    outcome, run_id."""
    import pandas as pd

    return pd.DataFrame(
        [{"stage": stage, **{key: run.values[key] for key in keys},
          VAL_ACCURACY: np.nan if run.val_accuracy is None else run.val_accuracy,
          "outcome": run.outcome, "run_id": run.run_id} for run in runs],
        columns=["stage", *keys, VAL_ACCURACY, "outcome", "run_id"])


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
