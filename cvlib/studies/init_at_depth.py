"""Initialization at depth: a 10-layer mlp at initialization, activation std and
saturation per layer, for tanh and ReLU under each initializer (the lecture's slides),
with the gradient norms of sigmoid beside them; and 0.01*randn against He trained at
growing depth."""
from __future__ import annotations

import numpy as np
import pandas as pd

from cvlib.studies import judgments, verdicts
from cvlib.studies.context import (
    AT_INIT_DATA,
    LECTURE_INITIALIZERS,
    Outcome,
    StudyContext,
    figure,
    outcome,
    per_seed,
)

INIT_LAYERS = [f"dense{index}_act" for index in range(1, 11)]
KERNELS = [f"dense{index}_dense" for index in range(1, 11)]
# Each init claim's cell, whose activation histograms show its evidence.
INIT_CLAIM_CELLS = {"init_small": ("tanh", "small_gaussian"),
                    "init_unit": ("tanh", "unit_gaussian"),
                    "init_xavier": ("tanh", "xavier"),
                    "init_relu_xavier": ("relu", "xavier"), "init_he": ("relu", "he")}
# 0.01*randn against He by depth: relu mlps of this width, one fixed recipe.
DEPTHS = (2, 4, 6, 8, 10)
DEPTH_WIDTH = 256
DEPTH_LEARNING_RATE = 0.01


def _relu_accuracy_note(runs: pd.DataFrame) -> str:
    """Why the ReLU cells score the same at initialization with every initializer, with
    their val accuracies (first seed), for the page that shows the ReLU figures: equal
    figures that would otherwise look like a bug.

    Args:
        runs: The init study's cells (StudyContext.run's table).
    """
    first = runs[(runs["activation"] == "relu") & (runs["seed"] == runs["seed"].min())]
    accuracies = ", ".join(f"{row['initializer']} {figure(row.get('val_accuracy', np.nan), '.3f')}"
                           for _, row in first.iterrows())
    return (f" Every ReLU initializer gives the same val accuracy at initialization "
            f"({accuracies}), and must: for a seed the four draw the same normal weights, "
            f"each layer scaled by its own factor, and with zero biases ReLU is positively "
            f"homogeneous (relu(c x) = c relu(x) for c > 0), so the logits are the same up "
            f"to one positive factor and their argmax, the predicted class, does not change.")


def init_study(ctx: StudyContext) -> dict[str, Outcome]:
    """mlp 10 x 500 at initialization: activation std and saturation per layer."""
    from cvlib.plots import activation_histograms, layer_profiles

    raw = {"name": "init-at-depth",
           "data": AT_INIT_DATA,
           "model": {"arch": "mlp", "depth": 10, "width": 500, "bn": "none"},
           "train": {"epochs": 0, "stats_probe": 500},
           "grid": {"model.activation": ["tanh", "relu"],
                    "model.initializer": list(LECTURE_INITIALIZERS)},
           "seeds": list(ctx.scale.init_seeds)}
    sigmoid = {**raw, "name": "init-at-depth-sigmoid",
               "model": {**raw["model"], "activation": "sigmoid", "initializer": "xavier"},
               "grid": {}}
    with ctx.study("init-at-depth") as parent:
        runs, sigmoid_runs = ctx.run_together([raw, sigmoid], parent)
        runs = pd.concat([runs, sigmoid_runs], ignore_index=True)

        def chosen(activation: str, initializer: str) -> pd.DataFrame:
            return runs[(runs["activation"] == activation)
                        & (runs["initializer"] == initializer)].sort_values("seed")

        def profiles(activation: str, initializer: str, statistic: str) -> list[list[float]]:
            return [[row[f"act/{layer}/{statistic}"] for layer in INIT_LAYERS]
                    for _, row in chosen(activation, initializer).iterrows()]

        def gradients(activation: str, initializer: str) -> list[list[float]]:
            return [[row[f"grad/{kernel}/norm"] for kernel in KERNELS]
                    for _, row in chosen(activation, initializer).iterrows()]

        seed0 = {f"{a} + {i}": profiles(a, i, "std")[0] for a in ("tanh", "relu")
                 for i in LECTURE_INITIALIZERS}
        ctx.experiment.log_outputs(parent, figures={"layer_std.png": layer_profiles(
            seed0, INIT_LAYERS, "activation std at initialization (seed 0)")})
        for claim, (activation, initializer) in INIT_CLAIM_CELLS.items():
            run_id = chosen(activation, initializer)["run_id"].iloc[0]
            stats = ctx.experiment.stats_table(run_id) if isinstance(run_id, str) else None
            if stats is not None:
                ctx.show(parent, (claim,), f"histograms/{activation}_{initializer}.png",
                         activation_histograms(stats, 0),
                         f"{activation} + {initializer}: each layer's activations at "
                         f"initialization, as in the lecture's slides (first seed)."
                         + (_relu_accuracy_note(runs) if activation == "relu" else ""))
        vanishing = {"sigmoid + xavier": gradients("sigmoid", "xavier"),
                     "tanh + xavier": gradients("tanh", "xavier"),
                     "relu + he": gradients("relu", "he")}
        ctx.show(parent, ("vanishing",), "gradient_norms.png", layer_profiles(
            {label: values[0] for label, values in vanishing.items()}, KERNELS,
            "gradient norm of each layer's kernel at initialization (first seed)"),
            "The gradient's norm on each layer's weights, first to last hidden layer: "
            "through sigmoid layers it shrinks toward the input; with relu + He it holds.")
    setup = (f"mlp 10 x 500, no BN, at initialization (epochs 0), 500 validation images; "
             f"{len(ctx.scale.init_seeds)} seed(s)")

    def ratio_outcome(activation, initializer, test) -> Outcome:
        stds = profiles(activation, initializer, "std")
        return outcome(setup, "std last/first: " + per_seed(
                           figure(verdicts.std_ratio(s), ".2g") for s in stds),
                       judgments.agreement([test(s) for s in stds]),
                       chosen(activation, initializer))

    first_over_last = {label: [seed[0] / seed[-1] for seed in values]
                       for label, values in vanishing.items()}
    saturated = profiles("tanh", "unit_gaussian", "saturated")
    xavier = profiles("tanh", "xavier", "std")
    return {
        "init_small": ratio_outcome("tanh", "small_gaussian", verdicts.collapses),
        "init_unit": outcome(
            setup, "least saturated layer: " + per_seed(
                figure(np.min(s), ".0%") for s in saturated)
            + "; mean over layers: " + per_seed(figure(np.mean(s), ".0%") for s in saturated),
            judgments.agreement([verdicts.saturated_everywhere(s) for s in saturated]),
            chosen("tanh", "unit_gaussian")),
        "init_xavier": outcome(
            setup, "std range over layers: " + per_seed(
                f"[{figure(np.min(s), '.2g')}, {figure(np.max(s), '.2g')}]" for s in xavier),
            judgments.agreement([verdicts.stds_within(s) for s in xavier]),
            chosen("tanh", "xavier")),
        "init_relu_xavier": ratio_outcome("relu", "xavier", verdicts.decays),
        "init_he": ratio_outcome("relu", "he", verdicts.holds_steady),
        "vanishing": outcome(
            setup + "; gradient of the loss on one 128-image batch",
            "gradient norm first/last hidden layer: " + "; ".join(
                f"{label} " + per_seed(figure(ratio, ".2g") for ratio in ratios)
                for label, ratios in first_over_last.items()),
            verdicts.vanishes(first_over_last["sigmoid + xavier"], first_over_last["relu + he"]),
            chosen("sigmoid", "xavier"), chosen("relu", "he")),
    }


def small_init_depth_study(ctx: StudyContext) -> dict[str, Outcome]:
    """relu mlps of growing depth, 0.01*randn against He, one fixed recipe: the training
    accuracy after a fixed budget."""
    from cvlib.plots import lines_by

    scale = ctx.scale
    raw = {"name": "small-init-by-depth",
           "data": {"train_size": scale.train_size, "val_size": scale.val_size,
                    "test_size": scale.test_size},
           "model": {"arch": "mlp", "width": DEPTH_WIDTH, "activation": "relu", "bn": "none"},
           "train": {"optimizer": "sgd", "momentum": 0.9, "learning_rate": DEPTH_LEARNING_RATE,
                     "epochs": scale.bn_epochs, "stats_every": 0},
           "grid": {"model.depth": list(DEPTHS), "model.initializer": ["small_gaussian", "he"]},
           "seeds": list(scale.seeds)}
    with ctx.study("small-init-by-depth") as parent:
        runs = ctx.run(raw, parent)
        accuracy = runs.pivot_table(index="seed", columns=["initializer", "depth"],
                                    values="accuracy", dropna=False)
        by_seed = {init: [{depth: float(accuracy.loc[seed, (init, depth)]) for depth in DEPTHS}
                          for seed in accuracy.index] for init in ("small_gaussian", "he")}
        ctx.show(parent, ("small_init_depth",), "accuracy_by_depth.png", lines_by(
            list(DEPTHS), {init: [np.nanmean([seed[d] for seed in by_seed[init]]) for d in DEPTHS]
                           for init in by_seed}, "hidden layers", "training accuracy",
            f"relu mlp x {DEPTH_WIDTH}, after {scale.bn_epochs} epochs (mean over seeds)"),
            "Training accuracy after a fixed budget by depth: 0.01*randn against He "
            "(chance is 0.1).")
    setup = (f"relu mlp, width {DEPTH_WIDTH}, depths {', '.join(map(str, DEPTHS))}, SGD lr "
             f"{DEPTH_LEARNING_RATE} momentum 0.9, {scale.train_size} images x "
             f"{scale.bn_epochs} epochs; trains: training accuracy >= {verdicts.TRAINS}, "
             f"near chance: < {verdicts.FAILS}; {len(scale.seeds)} seed(s)")
    measured = "training accuracy by depth: " + "; ".join(
        f"{init} " + ", ".join(f"d{depth} " + "/".join(figure(seed[depth], ".2f")
                                                       for seed in seeds)
                               for depth in DEPTHS)
        for init, seeds in by_seed.items())
    return {"small_init_depth": outcome(setup, measured, verdicts.fine_only_when_shallow(
        by_seed["small_gaussian"], by_seed["he"]), runs)}
