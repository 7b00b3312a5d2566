"""Sanity checks before a long run, from the CS231n notes on babysitting training:

1. **Initial loss.** With small weights and no regularization, a 10-way softmax
   starts at chance: loss ln(10) = 2.303.
2. **Overfit a tiny subset.** Without regularization, 20 training images must be
   learned perfectly (100% training accuracy) within a bounded number of epochs.

Each check runs as ordinary cells through the engine (:mod:`cvlib.engine`), so its runs
land in MLflow (nested under one ``sanity`` parent run that also holds the table).
The verdicts are plain functions of the measured figures.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from cvlib.cells import Cell
from cvlib.grids import Grid
from cvlib.tracking.schema import ACCURACY, DIVERGED, ERROR_TAG, VAL_LOSS

# pandas and the engine are imported where they are used: the cvlib command's parser
# reads this module's
# defaults, and every command (its one-line errors too) would otherwise pay for them.
if TYPE_CHECKING:
    import pandas as pd

    from cvlib.engine.experiment import Experiment
    from cvlib.engine.options import EngineOptions

LN10 = math.log(10)
INITIAL_LOSS_TOLERANCE = 0.1
OVERFIT_IMAGES = 20
DEFAULT_OVERFIT_EPOCHS = 100
# Validation and test images of the overfitting cell: validated every epoch, so few.
OVERFIT_HELD_OUT = 100
# The notes' "small weights": 0.01 * randn. Only these cells must start at ln(10).
# Other initializers are measured and reported without failing: on the default cnn
# Xavier starts at 2.31-2.33, He at 2.47-2.67 (its logits layer is not small) and
# 1.0 * randn far off (16 with tanh, ~1e5 with ReLU).
SMALL_WEIGHT_INITIALIZERS = ("small_gaussian",)
PASS, FAIL, REPORTED = "pass", "FAIL", "reported"
TABLE_COLUMNS = ["cell", "check", "measured", "expected", "result"]


@dataclass(frozen=True)
class Check:
    """The outcome of one check on one cell."""

    cell: str
    check: str
    # The figure, in words (e.g. "2.3026", "100% at epoch 12").
    measured: str
    expected: str
    # pass, FAIL, or "reported" for a check that this cell is measured by, not judged.
    result: str

    @property
    def failed(self) -> bool:
        """A check that should pass did not."""
        return self.result == FAIL


def initial_loss_check(cell: str, initializer: str, loss: float) -> Check:
    """Judge the loss of the initialized model against ln(10).

    Args:
        cell: The cell's name.
        initializer: Its weight initializer; only small weights must pass.
        loss: The loss at step 0 (no update, no regularization).

    Returns:
        For small weights, pass within INITIAL_LOSS_TOLERANCE of ln(10), else FAIL; for
        other initializers, "reported": the loss is measured, not judged.
    """
    expected = f"ln(10) = {LN10:.3f} ± {INITIAL_LOSS_TOLERANCE}"
    if initializer not in SMALL_WEIGHT_INITIALIZERS:
        return Check(cell, "initial loss", f"{loss:.4f}",
                     f"{expected} for small weights only", REPORTED)
    close = math.isfinite(loss) and abs(loss - LN10) <= INITIAL_LOSS_TOLERANCE
    return Check(cell, "initial loss", f"{loss:.4f}", expected, PASS if close else FAIL)


def overfit_check(cell: str, accuracies: list[tuple[int, float]], bound: int,
                  diverged_at: int | None = None) -> Check:
    """Judge whether the tiny subset was learned perfectly within the bound.

    Args:
        cell: The cell's name.
        accuracies: (epoch, training accuracy) of every epoch trained.
        bound: The epochs allowed.
        diverged_at: The epoch in which training diverged, if it did.

    Returns:
        pass, saying the first epoch at 100%; FAIL otherwise.
    """
    expected = f"100% of {OVERFIT_IMAGES} images within {bound} epochs"
    reached = [epoch for epoch, accuracy in accuracies if accuracy >= 1.0 and epoch <= bound]
    if reached:
        return Check(cell, "overfit tiny subset", f"100% at epoch {min(reached)}", expected, PASS)
    best = max((accuracy for _, accuracy in accuracies), default=float("nan"))
    measured = f"best {best:.0%} in {len(accuracies)} epochs"
    if diverged_at is not None:
        measured += f", diverged in epoch {diverged_at}"
    return Check(cell, "overfit tiny subset", measured, expected, FAIL)


def initial_loss_cell(cell: Cell) -> Cell:
    """The cell evaluated at initialization, without regularization (``epochs: 0``)."""
    return dataclasses.replace(
        cell, train=dataclasses.replace(cell.train, epochs=0, weight_decay=0.0),
        varied=(*cell.varied, "train.epochs"))


def overfit_cell(cell: Cell, epochs: int = DEFAULT_OVERFIT_EPOCHS) -> Cell:
    """The cell trained on 20 images without regularization for ``epochs`` epochs.

    Statistics are off: a figure per epoch would cost more than the training.
    """
    data = dataclasses.replace(cell.data, train_size=OVERFIT_IMAGES,
                               val_size=min(cell.data.val_size, OVERFIT_HELD_OUT),
                               test_size=OVERFIT_HELD_OUT)
    train = dataclasses.replace(cell.train, epochs=epochs, weight_decay=0.0, stats_every=0)
    return dataclasses.replace(cell, data=data, train=train,
                               varied=(*cell.varied, "data.train_size"))


@dataclass
class SanityReport:
    """The checks of every cell, and where they were logged."""

    checks: list[Check]
    parent_run_id: str

    @property
    def failed(self) -> bool:
        """Whether any check that should pass failed."""
        return any(check.failed for check in self.checks)

    def summary(self) -> str:
        """One line: how many judged checks passed or failed, and how many were reported."""
        judged = [check for check in self.checks if check.result != REPORTED]
        failed = sum(check.failed for check in judged)
        reported = len(self.checks) - len(judged)
        line = (f"{failed} of {len(judged)} checks failed" if failed
                else f"all {len(judged)} checks passed")
        return line + (f"; {reported} reported only (not small weights)" if reported else "")

    def table(self) -> pd.DataFrame:
        """One row per cell and check."""
        import pandas as pd

        return pd.DataFrame([dataclasses.asdict(c) for c in self.checks], columns=TABLE_COLUMNS)


def run_sanity(grid: Grid, tracking_uri: str, experiment: str = "sanity",
               engine: EngineOptions | None = None, echo: Callable[[str], None] = print,
               overfit_epochs: int = DEFAULT_OVERFIT_EPOCHS) -> SanityReport:
    """Run both checks on every cell of a grid; log the runs and the table to MLflow.

    Args:
        grid: The cells to check (each seed is checked).
        tracking_uri: The MLflow store.
        experiment: The experiment for the check runs.
        engine: What trains the check cells, from what data (default: one after
            another in this process).
        echo: Receives progress lines.
        overfit_epochs: The bound on epochs for the overfitting check.

    Returns:
        The SanityReport; its table is also logged to the parent run as
        ``sanity.md`` and ``sanity.csv``.
    """
    from cvlib.engine.experiment import Experiment
    from cvlib.engine.options import GridOptions

    cells = grid.cells()
    loss_cells = [initial_loss_cell(cell) for cell in cells]
    fit_cells = [overfit_cell(cell, overfit_epochs) for cell in cells]
    params = {"grid": grid.name, "cells": len(cells), "overfit_images": OVERFIT_IMAGES,
              "overfit_epochs": overfit_epochs}
    with Experiment(tracking_uri, experiment, engine, echo) as opened, \
            opened.parent_run(f"sanity-{grid.name}", params) as parent_id:
        opened.train(grid, GridOptions(cells=loss_cells + fit_cells, parent_run_id=parent_id,
                                       show_accuracy=False))
        checks = _checks(opened, cells, loss_cells, fit_cells, overfit_epochs)
        report = SanityReport(checks, parent_id)
        table = report.table()
        opened.log_outputs(parent_id, texts={"sanity.md": table.to_markdown(index=False),
                                             "sanity.csv": table.to_csv(index=False)},
                           metrics={"checks_failed": sum(c.failed for c in checks)})
    return report


def _checks(experiment: Experiment, cells: list[Cell], loss_cells: list[Cell],
            fit_cells: list[Cell], overfit_epochs: int) -> list[Check]:
    """Both checks of every cell, read from the check cells' runs."""
    runs = experiment.finished_runs(loss_cells + fit_cells)
    checks = []
    for cell, loss_cell, fit_cell in zip(cells, loss_cells, fit_cells):
        if loss_cell.cell_hash in runs.index:
            loss = runs.loc[loss_cell.cell_hash, VAL_LOSS]
            checks.append(initial_loss_check(cell.name, cell.model.initializer, loss))
        else:
            checks.append(_no_run(cell.name, "initial loss"))
        if fit_cell.cell_hash in runs.index:
            run = runs.loc[fit_cell.cell_hash]
            history = experiment.metric_history(run["run_id"], ACCURACY)
            diverged = len(history) if run["outcome"] == DIVERGED else None
            checks.append(overfit_check(cell.name, history, overfit_epochs, diverged))
        else:
            checks.append(_no_run(cell.name, "overfit tiny subset"))
    return checks


def _no_run(cell: str, check: str) -> Check:
    """A check whose cell has no finished run (it raised; see its FAILED run)."""
    return Check(cell, check, f"no result: the run failed (see {ERROR_TAG})", "", FAIL)
