"""What the studies of ``cvlib claims`` share: their sizes (a :class:`Scale` for each
of smoke, quick and full) and a :class:`StudyContext` that trains their grids under their
parent runs."""
from __future__ import annotations

import contextlib
import dataclasses
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import pandas as pd
import yaml

from cvlib.cells import Cell
from cvlib.engine.experiment import Experiment
from cvlib.engine.options import GridOptions
from cvlib.grids import grid_from_dict
from cvlib.studies.claims_page import Evidence
from cvlib.studies.judgments import Verdict, inconclusive
from cvlib.studies.lr_search import SearchPlan
from cvlib.tracking.schema import DIVERGED

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cvlib.training import FinalMeasure


@dataclass(frozen=True)
class Scale:
    """The sizes of the studies: ``smoke``, ``quick`` (1 seed, fewer images) or ``full``."""

    name: str
    # Seeds of every trained study (verdicts resting on small differences need 3).
    seeds: tuple[int, ...]
    # Seeds of the initialization study (statistics at step 0: cheap).
    init_seeds: tuple[int, ...]
    # Images of the trained studies.
    train_size: int
    val_size: int
    test_size: int
    # The cnn of the trained studies.
    widths: tuple[int, ...]
    dense_units: int
    # Epochs of each steps-to-accuracy run, of each BN study cell, of the BN test cell.
    speed_epochs: int
    bn_epochs: int
    bn_test_epochs: int
    # The learning-rate search each speed variant gets.
    search: SearchPlan
    # Steps-to-accuracy: the training accuracy to reach, averaged over `window` steps.
    # Set from a pilot of the ReLU reference alone (full: 45% at step ~130 of ~790), so
    # that the budget is ~6x what ReLU needs: a network 6x slower can still be timed,
    # and one that never gets there bounds the ratio above ~6x.
    threshold: float
    window: int
    # Statistics every N epochs in the trained studies (0: off, for the smoke scale).
    stats_every: int = 1

    def __post_init__(self):
        # The verdicts name a seed by its place ("seed 1"): that must be its number.
        for seeds in (self.seeds, self.init_seeds):
            if tuple(seeds) != tuple(range(len(seeds))):
                raise ValueError(f"a scale's seeds are 0, 1, ...: not {seeds}")


SCALES = {
    # Checks the wiring in about two minutes; its verdicts mean nothing.
    "smoke": Scale("smoke", seeds=(0,), init_seeds=(0,), train_size=256, val_size=200,
                   test_size=200, widths=(4, 8, 8), dense_units=16, speed_epochs=2,
                   bn_epochs=1, bn_test_epochs=1,
                   search=SearchPlan(coarse_trials=2, coarse_epochs=1, fine_trials=0, top=1),
                   threshold=0.12, window=2, stats_every=0),
    "quick": Scale("quick", seeds=(0,), init_seeds=(0,), train_size=4000, val_size=1000,
                   test_size=1000, widths=(16, 32, 64), dense_units=128, speed_epochs=4,
                   bn_epochs=2, bn_test_epochs=1,
                   search=SearchPlan(coarse_trials=5, coarse_epochs=1, fine_trials=2,
                                     fine_epochs=2, top=2),
                   threshold=0.30, window=10),
    "full": Scale("full", seeds=(0, 1, 2), init_seeds=(0, 1, 2), train_size=10000,
                  val_size=2000, test_size=2000, widths=(16, 32, 64), dense_units=128,
                  speed_epochs=10, bn_epochs=4, bn_test_epochs=2,
                  search=SearchPlan(coarse_trials=8, coarse_epochs=2, fine_trials=5,
                                    fine_epochs=3, top=3),
                  threshold=0.45, window=20),
}

# The four initializers the lecture compares: 0.01*randn, 1.0*randn, Xavier and He.
LECTURE_INITIALIZERS = ("small_gaussian", "unit_gaussian", "xavier", "he")
# Data of the studies at initialization (epochs 0): only the 500-image probe is used.
AT_INIT_DATA = {"train_size": 1000, "val_size": 500, "test_size": 500}


@dataclass(frozen=True)
class Outcome:
    """What a study found about one claim."""

    setup: str
    measured: str  # the figures per seed, in words
    verdict: Verdict


def faults(runs: pd.DataFrame) -> str:
    """The cells of a study's table (:meth:`StudyContext.run`) that failed (no finished
    run) or diverged, by run name, e.g. ``failed: tanh-xavier-none-s1``; "" if none."""
    failed = runs.loc[runs["run_id"].isna(), "name"]
    diverged = runs.loc[runs["outcome"] == DIVERGED, "name"]
    return "; ".join(f"{kind}: {', '.join(names)}" for kind, names in
                     (("failed", failed), ("diverged", diverged)) if len(names))


def outcome(setup: str, measured: str, verdict: Verdict, *rests_on: pd.DataFrame) -> Outcome:
    """A claim's outcome. The verdict stands only when every run the claim rests on
    finished without diverging; else it is inconclusive, naming the others.

    Args:
        setup: What was run.
        measured: The figures, in words.
        verdict: The verdict of the figures.
        rests_on: The tables (:meth:`StudyContext.run`'s columns ``name``, ``run_id``
            and ``outcome``) of the runs it rests on.
    """
    tables = [table for table in rests_on if len(table)]
    found = faults(pd.concat(tables, ignore_index=True)) if tables else ""
    return Outcome(setup, measured, inconclusive(found) if found else verdict)


def distinctly_named(cells: list[Cell]) -> list[Cell]:
    """Cells of several grids trained together, each named by every setting in which any two
    of them differ (two grids' ``relu-he-none-s0`` would otherwise share a run name). The
    names only: a cell's hash, and so its resume, does not depend on them."""
    settings = [cell.settings() for cell in cells]
    differing = [key for key in settings[0] if len({str(s[key]) for s in settings}) > 1] \
        if settings else []
    return [dataclasses.replace(cell, varied=tuple(dict.fromkeys((*cell.varied, *differing))))
            for cell in cells]


def _cell_table(cells: list[Cell], runs: pd.DataFrame) -> pd.DataFrame:
    """The cells joined with their finished runs (Experiment.finished_runs), as
    :meth:`StudyContext.run` returns them."""
    runs = runs.copy()
    runs.loc[runs["outcome"] == DIVERGED, runs.columns.difference(["run_id", "outcome"])] = np.nan
    return pd.DataFrame([
        {"activation": c.model.activation, "initializer": c.model.initializer,
         "bn": c.model.bn, "depth": c.model.depth, "preprocess": c.data.preprocess,
         "learning_rate": c.train.learning_rate, "seed": c.seed, "name": c.name,
         "cell": c.cell_hash} for c in cells]).join(runs, on="cell")


def per_seed(values) -> str:
    """Figures of each seed, comma-separated."""
    return ", ".join(values)


def figure(value: float, spec: str) -> str:
    """A figure formatted by ``spec`` (e.g. ``".3f"``), or ``n/a`` when it is NaN or
    infinite (a failed or diverged cell: the verdict's reason says which)."""
    return format(value, spec) if np.isfinite(value) else "n/a"


@dataclass
class StudyContext:
    """What every study needs: the experiment it trains in, its sizes, and the parent run
    of the whole claims study."""

    experiment: Experiment
    scale: Scale
    parent_run_id: str
    # The figure that shows each claim's evidence, by claim key, for claims.html.
    evidence: dict[str, Evidence] = field(default_factory=dict)

    @property
    def echo(self) -> Callable[[str], None]:
        """Where progress lines go."""
        return self.experiment.echo

    @contextlib.contextmanager
    def study(self, name: str, params: dict[str, Any] | None = None) -> Iterator[str]:
        """A parent run for one study, nested under the claims run."""
        self.echo(f"== study {name}")
        with self.experiment.parent_run(name, params, self.parent_run_id) as run_id:
            yield run_id

    def show(self, parent: str, claims: tuple[str, ...], name: str, figure: Figure,
             caption: str) -> None:
        """Log a study's figure to its run and keep it as the evidence of some claims.

        Args:
            parent: The study's run.
            claims: The keys of the claims it shows.
            name: Its artifact path (``*.png``).
            figure: The matplotlib figure.
            caption: What it shows, for the page.
        """
        self.experiment.log_outputs(parent, figures={name: figure})
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90)
        for claim in claims:
            self.evidence[claim] = Evidence(buffer.getvalue(), caption)

    def run(self, raw: dict[str, Any], parent: str,
            final_measure: FinalMeasure | None = None) -> pd.DataFrame:
        """Train a grid (given as a dict) under ``parent``; one row per cell.

        Args:
            raw: The grid, as a grid file's dict.
            parent: The study's run.
            final_measure: Measures each trained model once more (training.train_cell).

        Returns:
            The cells' settings (short names: activation, initializer, bn, depth,
            preprocess, learning_rate, seed), run ``name``, the run's id and outcome and
            every metric. A cell without a finished run has no run id and NaN figures; a
            diverged cell keeps its run id and outcome, and has NaN figures too: what a
            model with NaN or exploded weights measures is no evidence.
        """
        return self.run_together([raw], parent, final_measure)[0]

    def run_together(self, raws: list[dict[str, Any]], parent: str,
                     final_measure: FinalMeasure | None = None) -> list[pd.DataFrame]:
        """Train several grids (given as dicts) under ``parent`` as one batch of cells,
        so that workers train cells of different grids side by side.

        Returns:
            One table per grid, as :meth:`run` returns it.
        """
        grids = [grid_from_dict(raw) for raw in raws]
        cells = [grid.cells() for grid in grids]
        self.experiment.log_outputs(parent, texts={
            f"grids/{grid.name}.yaml": yaml.safe_dump(raw) for grid, raw in zip(grids, raws)})
        every_cell = distinctly_named([cell for grid_cells in cells for cell in grid_cells])
        self.experiment.train(grids[0], GridOptions(cells=every_cell, parent_run_id=parent,
                                                    final_measure=final_measure))
        runs = self.experiment.finished_runs(every_cell)
        named = iter(every_cell)
        return [_cell_table([next(named) for _ in grid_cells], runs) for grid_cells in cells]

    def table(self, cells: list[Cell]) -> pd.DataFrame:
        """The cells' table, as :meth:`run` returns it, from their finished runs."""
        return _cell_table(cells, self.experiment.finished_runs(cells))

    def cnn_grid(self, name: str, model: dict[str, Any], train: dict[str, Any],
                 data: dict[str, Any] | None = None, **rest) -> dict[str, Any]:
        """A grid dict on the scale's cnn and data, SGD with momentum 0.9."""
        scale = self.scale
        return {"name": name,
                "data": {"train_size": scale.train_size, "val_size": scale.val_size,
                         "test_size": scale.test_size, **(data or {})},
                "model": {"arch": "cnn", "widths": list(scale.widths),
                          "dense_units": scale.dense_units, **model},
                "train": {"optimizer": "sgd", "momentum": 0.9, "batch_size": 128,
                          "stats_every": scale.stats_every, **train},
                **rest}
