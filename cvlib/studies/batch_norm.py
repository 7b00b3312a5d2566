"""Batch normalization: robustness to the initializer, placement before or after the
activation, and the training statistics it uses at test time."""
from __future__ import annotations

import numpy as np
import pandas as pd

from cvlib.engine.options import GridOptions
from cvlib.grids import grid_from_dict
from cvlib.studies import verdicts
from cvlib.studies.context import (
    LECTURE_INITIALIZERS,
    Outcome,
    StudyContext,
    figure,
    outcome,
    per_seed,
)

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
    """Val accuracy by seed (rows) and (bn, initializer) (columns); NaN for a cell that
    failed or diverged."""
    return runs.pivot(index="seed", columns=["bn", "initializer"], values="val_accuracy")


def _by_init(accuracy: pd.DataFrame, placements) -> str:
    """Each placement's val accuracy per initializer, the mean over seeds (n/a when a
    seed has none)."""
    return "; ".join(f"{bn}: " + ", ".join(
        f"{init} {figure(accuracy[bn][init].mean(skipna=False), '.3f')}"
        for init in accuracy[bn].columns) for bn in placements)


def _spreads(accuracy, placements) -> dict[str, list[float]]:
    return {bn: [verdicts.spread(accuracy.loc[seed, bn]) for seed in accuracy.index]
            for bn in placements}


def _bars(accuracy: pd.DataFrame, placements) -> dict[str, list[float]]:
    """Each placement's val accuracy per initializer, by seed: a figure's bars."""
    return {f"{init} {bn}": [float(value) for value in accuracy[(bn, init)]]
            for bn in placements for init in LECTURE_INITIALIZERS}


def bn_grids(ctx: StudyContext) -> tuple[dict, dict]:
    """The BN study's two grids: relu cnn, 4 initializers x 3 BN placements, one fixed
    recipe; and 4 initializers without BN and with BN before, the logits layer's initializer
    fixed (its cells with that very initializer are cells of the first grid: trained once)."""
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
    return raw, fixed


def bn_study(ctx: StudyContext) -> dict[str, Outcome]:
    """relu cnn, 4 initializers x 3 BN placements, one fixed recipe: final val accuracy;
    and again without BN and with BN before, the logits layer's initializer fixed."""
    from cvlib.plots import seed_bars

    scale = ctx.scale
    raw, fixed = bn_grids(ctx)
    with ctx.study("bn-vs-init") as parent:
        runs, fixed_runs = ctx.run_together([raw, fixed], parent)
        accuracy, fixed_accuracy = _val_accuracy(runs), _val_accuracy(fixed_runs)
        title = f"after {scale.bn_epochs} epochs at lr {BN_STUDY_LEARNING_RATE}"
        ctx.show(parent, ("bn_robust",), "bn_robust.png", seed_bars(
            _bars(accuracy, ("none", "before")), "val accuracy", title),
            "Validation accuracy of each initializer without BN and with BN before the "
            "activation: the claim compares the spread of each set of four (bars: mean; "
            "dots: seeds).")
        ctx.show(parent, ("bn_robust_fixed_logits",), "bn_robust_fixed_logits.png", seed_bars(
            _bars(fixed_accuracy, ("none", "before")), "val accuracy",
            f"{title}; logits layer {FIXED_LOGITS_INITIALIZER}"),
            "The same, with the initializer varied only in the layers BN normalizes: the "
            f"logits layer keeps {FIXED_LOGITS_INITIALIZER} (bars: mean; dots: seeds).")
        means = {bn: [float(accuracy.loc[seed, bn].mean(skipna=False))
                      for seed in accuracy.index] for bn in ("before", "after")}
        ctx.show(parent, ("bn_placement",), "bn_placement.png", seed_bars(
            {**_bars(accuracy, ("before", "after")),
             **{f"mean {bn}": means[bn] for bn in ("before", "after")}}, "val accuracy", title),
            "Validation accuracy of each initializer with BN before and after the activation, "
            "and each placement's mean over the initializers, which the claim compares "
            "(bars: mean over seeds; dots: seeds).")
    spreads = _spreads(accuracy, ("none", "before", "after"))
    fixed_spreads = _spreads(fixed_accuracy, ("none", "before"))
    setup = (f"cnn {list(scale.widths)}+{scale.dense_units} relu, SGD lr "
             f"{BN_STUDY_LEARNING_RATE} momentum 0.9, {scale.train_size} images x "
             f"{scale.bn_epochs} epochs, initializers small_gaussian/unit_gaussian/xavier/he; "
             f"{len(scale.seeds)} seed(s)")

    def spread_text(table: dict[str, list[float]]) -> str:
        return "spread (max-min val acc): " + "; ".join(
            f"{bn} {per_seed(figure(s, '.3f') for s in table[bn])}" for bn in table)

    return {
        "bn_robust": outcome(
            setup, spread_text(spreads) + " | mean val acc by init: "
            + _by_init(accuracy, ("none", "before", "after")),
            verdicts.much_smaller_spread(spreads["before"], spreads["none"]),
            runs[runs["bn"].isin(["none", "before"])]),
        "bn_robust_fixed_logits": outcome(
            setup + f"; the initializer varies in the conv and dense layers only, the logits "
                    f"layer keeps {FIXED_LOGITS_INITIALIZER}",
            spread_text(fixed_spreads) + " | mean val acc by init: "
            + _by_init(fixed_accuracy, ("none", "before")),
            verdicts.much_smaller_spread(fixed_spreads["before"], fixed_spreads["none"]),
            fixed_runs),
        "bn_placement": outcome(
            setup, "mean val acc over initializers: before " + per_seed(
                figure(m, ".3f") for m in means["before"]) + "; after " + per_seed(
                figure(m, ".3f") for m in means["after"]),
            verdicts.better(means["before"], means["after"]),
            runs[runs["bn"].isin(["before", "after"])]),
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
        runs = ctx.table([cell])
    figures = runs.iloc[0].reindex(list(BN_TEST_METRICS))
    difference, same, training = (float(figures[name]) for name in BN_TEST_METRICS)
    classes = {1.0: "same", 0.0: "different"}.get(same, "n/a")
    setup = (f"cnn {list(scale.widths)}+{scale.dense_units} relu + He, BN before, trained "
             f"{scale.bn_test_epochs} epoch(s) on {scale.train_size} images; "
             f"{BN_PROBE_IMAGES} test images alone vs in one batch")
    return {"bn_test_time": outcome(
        setup, f"inference mode: max |logit difference| {figure(difference, '.2g')}, "
               f"{classes} classes; training mode (batch statistics): "
               f"{figure(training, '.2g')}",
        verdicts.batch_independent(difference, same), runs)}
