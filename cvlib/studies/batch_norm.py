"""Batch normalization: robustness to the initializer, placement before or after the
activation, and the training statistics it uses at test time."""
from __future__ import annotations

import numpy as np
import pandas as pd

from cvlib.engine.options import GridOptions
from cvlib.grids import grid_from_dict
from cvlib.studies import verdicts
from cvlib.studies.context import LECTURE_INITIALIZERS, Outcome, StudyContext, per_seed
from cvlib.tracking.schema import ERROR_TAG

# The fixed training recipe of the BN study (the seed grid's): no per-cell tuning,
# since robustness to the initializer is the question.
BN_STUDY_LEARNING_RATE = 0.01
# Images on which the BN test-time check compares predictions alone and in a batch.
BN_PROBE_IMAGES = 100
# The logits layer's initializer in the controlled robustness variant: no BN follows the
# logits, so there the initializer varies only where BN normalizes.
FIXED_LOGITS_INITIALIZER = "xavier"
BN_TEST_METRICS = ("bn_test/max_logit_difference", "bn_test/same_classes",
                   "bn_test/max_logit_difference_training_mode")


def _val_accuracy(runs: pd.DataFrame) -> pd.DataFrame:
    """Val accuracy by seed (rows) and (bn, initializer) (columns). A diverged model (NaN
    weights) predicts one class: chance. A cell whose run failed has no figure (NaN),
    and the seeds it touches cannot tell."""
    diverged = (runs["outcome"] == "diverged") & runs["val_accuracy"].isna()
    runs.loc[diverged, "val_accuracy"] = 0.1
    return runs.pivot(index="seed", columns=["bn", "initializer"], values="val_accuracy")


def _spreads(accuracy, placements) -> dict[str, list[float]]:
    return {bn: [verdicts.spread(accuracy.loc[seed, bn]) for seed in accuracy.index]
            for bn in placements}


def bn_study(ctx: StudyContext) -> dict[str, Outcome]:
    """relu cnn, 4 initializers x 3 BN placements, one fixed recipe: final val accuracy;
    and again without BN and with BN before, the logits layer's initializer fixed."""
    from cvlib.plots import seed_bars

    scale = ctx.scale
    train = {"learning_rate": BN_STUDY_LEARNING_RATE, "epochs": scale.bn_epochs}
    raw = ctx.cnn_grid("bn-vs-init", {"activation": "relu"}, train,
                       grid={"model.initializer": list(LECTURE_INITIALIZERS),
                             "model.bn": ["none", "before", "after"]},
                       seeds=list(scale.seeds))
    fixed = ctx.cnn_grid("bn-vs-init-fixed-logits",
                         {"activation": "relu", "logits_initializer": FIXED_LOGITS_INITIALIZER},
                         train, grid={"model.initializer": list(LECTURE_INITIALIZERS),
                                      "model.bn": ["none", "before"]},
                         seeds=list(scale.seeds))
    with ctx.study("bn-vs-init") as parent:
        runs, fixed_runs = ctx.run_together([raw, fixed], parent)
        accuracy, fixed_accuracy = _val_accuracy(runs), _val_accuracy(fixed_runs)
        bars = {f"{init} {bn}{suffix}": [float(v) for v in table[(bn, init)]]
                for suffix, table in (("", accuracy), (" fixed logits", fixed_accuracy))
                for bn in ("none", "before") for init in LECTURE_INITIALIZERS}
        ctx.show(parent, ("bn_robust", "bn_robust_fixed_logits", "bn_placement"),
                 "bn_vs_init.png", seed_bars(bars, "val accuracy",
                                             f"after {scale.bn_epochs} epochs at lr "
                                             f"{BN_STUDY_LEARNING_RATE}"),
                 "Validation accuracy of each initializer without BN and with BN before the "
                 "activation; \"fixed logits\": the logits layer keeps "
                 f"{FIXED_LOGITS_INITIALIZER} (bars: mean; dots: seeds).")
    spreads = _spreads(accuracy, ("none", "before", "after"))
    fixed_spreads = _spreads(fixed_accuracy, ("none", "before"))
    means = {bn: [float(accuracy.loc[seed, bn].mean(skipna=False)) for seed in accuracy.index]
             for bn in ("before", "after")}
    setup = (f"cnn {list(scale.widths)}+{scale.dense_units} relu, SGD lr "
             f"{BN_STUDY_LEARNING_RATE} momentum 0.9, {scale.train_size} images x "
             f"{scale.bn_epochs} epochs, initializers small_gaussian/unit_gaussian/xavier/he; "
             f"{len(scale.seeds)} seed(s)")
    by_init = "; ".join(f"{bn}: " + ", ".join(f"{init} {accuracy[bn][init].mean():.3f}"
                                               for init in accuracy[bn].columns)
                        for bn in ("none", "before", "after"))
    return {
        "bn_robust": (setup, "spread (max-min val acc): " + "; ".join(
            f"{bn} {per_seed(f'{s:.3f}' for s in spreads[bn])}" for bn in spreads)
            + f" | mean val acc by init: {by_init}",
            verdicts.much_smaller_spread(spreads["before"], spreads["none"])),
        "bn_robust_fixed_logits": (
            setup + f"; the initializer varies in the conv and dense layers only, the logits "
                    f"layer keeps {FIXED_LOGITS_INITIALIZER}",
            "spread (max-min val acc): " + "; ".join(
                f"{bn} {per_seed(f'{s:.3f}' for s in fixed_spreads[bn])}" for bn in fixed_spreads)
            + " | mean val acc by init: " + "; ".join(
                f"{bn}: " + ", ".join(f"{init} {fixed_accuracy[bn][init].mean():.3f}"
                                      for init in fixed_accuracy[bn].columns)
                for bn in ("none", "before")),
            verdicts.much_smaller_spread(fixed_spreads["before"], fixed_spreads["none"])),
        "bn_placement": (setup, "mean val acc over initializers: before " + per_seed(
            f"{m:.3f}" for m in means["before"]) + "; after " + per_seed(
            f"{m:.3f}" for m in means["after"]),
            verdicts.better(means["before"], means["after"])),
    }


def batch_dependence(model, images: np.ndarray) -> dict[str, float]:
    """How much an image's logits depend on the rest of its batch.

    Args:
        model: A trained Keras model with BatchNormalization.
        images: The images, predicted one by one and as one batch.

    Returns:
        ``bn_test/max_logit_difference`` and ``bn_test/same_classes`` (1.0 or 0.0) in
        inference mode, and ``bn_test/max_logit_difference_training_mode``: the same
        comparison with batch statistics, for contrast. The last call updates BN's
        moving averages, so it comes after the others.
    """
    def difference(training: bool) -> tuple[float, bool]:
        together = np.asarray(model(images, training=training))
        alone = np.concatenate([np.asarray(model(images[i:i + 1], training=training))
                                for i in range(len(images))])
        return (float(np.max(np.abs(together - alone))),
                bool((together.argmax(axis=1) == alone.argmax(axis=1)).all()))

    inference, same = difference(training=False)
    training, _ = difference(training=True)
    return dict(zip(BN_TEST_METRICS, (inference, float(same), training)))


def bn_test_figures(model, dataset) -> dict[str, float]:
    """The trained model's batch dependence on the first BN_PROBE_IMAGES test images: the
    final measurement of the BN test-time cell (training.train_cell's final_measure)."""
    return batch_dependence(model, dataset.x_test[:BN_PROBE_IMAGES])


def bn_test_time_study(ctx: StudyContext) -> dict[str, Outcome]:
    """Train a BN cnn, then compare its predictions alone and in a batch."""
    scale = ctx.scale
    grid = grid_from_dict(ctx.cnn_grid(
        "bn-test-time", {"activation": "relu", "initializer": "he", "bn": "before"},
        {"learning_rate": BN_STUDY_LEARNING_RATE, "epochs": scale.bn_test_epochs},
        seeds=[scale.seeds[0]]))
    (cell,) = grid.cells()
    with ctx.study("bn-test-time") as parent:
        measured = ctx.experiment.finished_runs([cell])
        # The same cell may have finished in another study (the BN grid, at the smoke
        # scale), without these figures: it trains again, and that run stays.
        again = cell.cell_hash in measured.index and not set(BN_TEST_METRICS) <= set(
            measured.loc[cell.cell_hash].dropna().index)
        ctx.experiment.train(grid, GridOptions(cells=[cell], parent_run_id=parent,
                                               rerun=again, supersede=False,
                                               final_measure=bn_test_figures))
        runs = ctx.experiment.finished_runs([cell])
    if cell.cell_hash not in runs.index:
        raise RuntimeError(f"the BN test-time cell {cell.name} has no finished run "
                           f"(see its run's {ERROR_TAG} tag)")
    figures = runs.loc[cell.cell_hash]
    difference = figures["bn_test/max_logit_difference"]
    same = bool(figures["bn_test/same_classes"])
    setup = (f"cnn {list(scale.widths)}+{scale.dense_units} relu + He, BN before, trained "
             f"{scale.bn_test_epochs} epoch(s) on {scale.train_size} images; "
             f"{BN_PROBE_IMAGES} test images alone vs in one batch")
    return {"bn_test_time": (
        setup, f"inference mode: max |logit difference| {difference:.2g}, "
               f"{'same' if same else 'different'} classes; training mode (batch "
               f"statistics): {figures['bn_test/max_logit_difference_training_mode']:.2g}",
        verdicts.batch_independent(difference, same))}
