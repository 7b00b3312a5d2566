"""What the studies of ``cvlib claims`` share: their sizes (a :class:`Scale` for each
of smoke, quick and full) and a :class:`Context` that trains their grids under their
parent runs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd
import yaml

from cvlib.config import grid_from_dict
from cvlib.lr_search import SearchPlan


@dataclass(frozen=True)
class Scale:
    """The sizes of the studies: ``quick`` (2 to 5 minutes here) or ``full``."""

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

# Outcome of one claim: (setup, measured figure in words, verdict).
Outcome = tuple[str, str, str]


@dataclass
class Context:
    """What every study needs: the store, the sizes, the data, the parent run."""

    tracking_uri: str
    experiment: str
    scale: Scale
    data_dir: str | None
    echo: Callable[[str], None]
    tracker: Any = None
    experiment_id: str = ""
    parent_run_id: str = ""
    data: Any = None
    # cvlib.grid_processes.GridProcesses shared by every study's grids, or None: each
    # grid starts its own (one worker: trains in this process).
    processes: Any = None

    def study(self, name: str, params: dict[str, Any] | None = None):
        """A parent run for one study, nested under the claims run."""
        from cvlib.tracking import parent_run

        self.echo(f"== study {name}")
        return parent_run(self.tracker, self.experiment_id, name, self.parent_run_id, params)

    def run(self, raw: dict[str, Any], parent: str) -> pd.DataFrame:
        """Train a grid (given as a dict) under ``parent``; one row per cell.

        Returns:
            The cells' settings (short names: activation, initializer, bn, preprocess,
            learning_rate, seed), the run's id and outcome and every metric; cells
            without a finished run have NaN figures.
        """
        return self.run_together([raw], parent)[0]

    def run_together(self, raws: list[dict[str, Any]], parent: str) -> list[pd.DataFrame]:
        """Train several grids (given as dicts) under ``parent`` as one batch of cells,
        so that workers train cells of different grids side by side.

        Returns:
            One table per grid, as :meth:`run` returns it.
        """
        from cvlib.results import finished_cell_runs
        from cvlib.runner import run_grid
        from cvlib.tracking import log_outputs

        grids = [grid_from_dict(raw) for raw in raws]
        cells = [grid.cells() for grid in grids]
        log_outputs(self.tracker, parent, texts={
            f"grids/{grid.name}.yaml": yaml.safe_dump(raw) for grid, raw in zip(grids, raws)})
        run_grid(grids[0], self.tracking_uri, experiment=self.experiment,
                 data_dir=self.data_dir, echo=self.echo,
                 cells=[cell for grid_cells in cells for cell in grid_cells],
                 parent_run_id=parent, data=self.data, processes=self.processes)
        runs = finished_cell_runs(self.tracking_uri, self.experiment,
                                  [cell.cell_hash for grid_cells in cells for cell in grid_cells])
        return [pd.DataFrame([
            {"activation": c.model.activation, "initializer": c.model.initializer,
             "bn": c.model.bn, "preprocess": c.data.preprocess,
             "learning_rate": c.train.learning_rate, "seed": c.seed, "cell": c.cell_hash}
            for c in grid_cells]).join(runs, on="cell") for grid_cells in cells]

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
