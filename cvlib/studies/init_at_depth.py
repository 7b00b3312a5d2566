"""Initialization at depth: a 10-layer mlp at initialization, activation std and
saturation per layer, for tanh and ReLU under each initializer (the lecture's slides)."""
from __future__ import annotations

import numpy as np

from cvlib.studies import verdicts
from cvlib.studies.context import Outcome, StudyContext, per_seed

INIT_LAYERS = [f"dense{index}_act" for index in range(1, 11)]


def init_study(ctx: StudyContext) -> dict[str, Outcome]:
    """mlp 10 x 500 at initialization: activation std and saturation per layer."""
    from cvlib.plots import layer_profiles

    raw = {"name": "init-at-depth",
           "data": {"train_size": 1000, "val_size": 500, "test_size": 500},
           "model": {"arch": "mlp", "depth": 10, "width": 500, "bn": "none"},
           "train": {"epochs": 0, "stats_probe": 500},
           "grid": {"model.activation": ["tanh", "relu"],
                    "model.initializer": ["small_gaussian", "unit_gaussian", "xavier", "he"]},
           "seeds": list(ctx.scale.init_seeds)}
    with ctx.study("init-at-depth") as parent:
        runs = ctx.run(raw, parent)

        def profiles(activation: str, initializer: str, statistic: str) -> list[list[float]]:
            chosen = runs[(runs["activation"] == activation)
                          & (runs["initializer"] == initializer)].sort_values("seed")
            return [[row[f"act/{layer}/{statistic}"] for layer in INIT_LAYERS]
                    for _, row in chosen.iterrows()]

        seed0 = {f"{a} + {i}": profiles(a, i, "std")[0] for a in ("tanh", "relu")
                 for i in ("small_gaussian", "unit_gaussian", "xavier", "he")}
        ctx.experiment.log_outputs(parent, figures={"layer_std.png": layer_profiles(
            seed0, INIT_LAYERS, "activation std at initialization (seed 0)")})
    setup = (f"mlp 10 x 500, no BN, at initialization (epochs 0), 500 validation images; "
             f"{len(ctx.scale.init_seeds)} seed(s)")

    def ratio_outcome(activation, initializer, test) -> Outcome:
        stds = profiles(activation, initializer, "std")
        return (setup, "std last/first: " + per_seed(
                    f"{verdicts.std_ratio(s):.2g}" for s in stds),
                verdicts.agreement([verdicts.judge(test, s) for s in stds]))

    saturated = profiles("tanh", "unit_gaussian", "saturated")
    xavier = profiles("tanh", "xavier", "std")
    return {
        "init_small": ratio_outcome("tanh", "small_gaussian", verdicts.collapses),
        "init_unit": (setup, "least saturated layer: " + per_seed(
            f"{min(s):.0%}" for s in saturated) + "; mean over layers: " + per_seed(
            f"{np.mean(s):.0%}" for s in saturated),
            verdicts.agreement([verdicts.judge(verdicts.saturated_everywhere, s)
                                for s in saturated])),
        "init_xavier": (setup, "std range over layers: " + per_seed(
            f"[{min(s):.2g}, {max(s):.2g}]" for s in xavier),
            verdicts.agreement([verdicts.judge(verdicts.stds_within, s) for s in xavier])),
        "init_relu_xavier": ratio_outcome("relu", "xavier", verdicts.decays),
        "init_he": ratio_outcome("relu", "he", verdicts.holds_steady),
    }
