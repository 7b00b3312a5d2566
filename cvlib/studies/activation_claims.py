"""The activation functions' claims that need no steps-to-accuracy: sigmoid's cost, its
single-signed gradients, dead units at a high learning rate, and maxout's parameters.

Each study trains (or only initializes) a small grid whose cells take one of
:mod:`cvlib.studies.probes`' measures at their end, and judges its claim from them.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cvlib.studies import probes, verdicts
from cvlib.studies.context import (
    AT_INIT_DATA,
    Outcome,
    StudyContext,
    figure,
    outcome,
    per_seed,
)

# The cost study's cells: one learning rate and initializer for all, since only the
# activation may differ between them.
COST_ACTIVATIONS = ("relu", "tanh", "sigmoid")
COST_EPOCHS = 2
# The gradient-sign study: sigmoid, its centered twin, and tanh, on an mlp (no pooling,
# whose maximum would make a centered function's outputs mostly positive again).
SIGN_ACTIVATIONS = ("sigmoid", "centered_sigmoid", "tanh")
SIGN_MLP = {"arch": "mlp", "depth": 3, "width": 500, "initializer": "xavier", "bn": "none"}
# The dead-unit study's rate, fixed before it ran: the notes warn that a too-high rate
# kills ReLU units. 0.1 with momentum 0.9 is 10x the BN study's fixed rate and about 2x
# the best rate ReLU's search found on this cnn (0.045).
DEAD_UNITS_LEARNING_RATE = 0.1
DEAD_UNIT_ACTIVATIONS = ("relu", "leaky_relu", "prelu", "elu", "maxout")


def _by_seed(runs: pd.DataFrame, column: str, setting: str = "activation") -> dict[str, list]:
    """Setting value -> the column's figure of each seed, in seed order."""
    table = runs.pivot(index="seed", columns=setting, values=column).sort_index()
    return {name: [float(value) for value in table[name]] for name in table.columns}


def activation_cost_study(ctx: StudyContext) -> dict[str, Outcome]:
    """relu, tanh and sigmoid cells that differ only in activation: the functions'
    own forward+backward time, and the cells' epoch time."""
    from cvlib.plots import seed_bars

    scale = ctx.scale
    raw = ctx.cnn_grid("activation-cost", {"initializer": "xavier", "bn": "none"},
                       {"learning_rate": 0.01, "epochs": COST_EPOCHS, "stats_every": 0},
                       grid={"model.activation": list(COST_ACTIVATIONS)},
                       seeds=list(scale.seeds))
    with ctx.study("activation-cost") as parent:
        runs = ctx.run(raw, parent, final_measure=probes.activation_timing)
        # Every cell times all three functions: a seed's figure is the median of its cells.
        def median(column: str) -> list[float]:
            return runs.groupby("seed")[column].median(skipna=False).tolist()

        op_ratio, op_tanh = median("act_time/sigmoid_over_relu"), median("act_time/tanh_over_relu")
        epoch = _by_seed(runs, "epoch_time_s")
        epoch_ratio = [s / r for s, r in zip(epoch["sigmoid"], epoch["relu"])]
        op_ms = {name: median(f"act_time/{name}_ms") for name in COST_ACTIVATIONS}
        ctx.show(parent, ("sigmoid_cost",), "activation_cost.png", seed_bars(
            {**{f"{name} alone": op_ms[name] for name in COST_ACTIVATIONS}},
            "ms per forward+backward", "the functions alone, on the cnn's activation shapes"),
            "Forward+backward time of each function alone on a batch of the cnn's "
            "activation shapes (bars: mean over seeds; dots: seeds). Epoch times of the "
            "whole cells are in the figures above.")
    setup = (f"{probes.TIMING_ROUNDS} interleaved rounds of forward+backward on batch-128 "
             f"tensors of the cnn {list(scale.widths)}+{scale.dense_units}'s activation "
             f"shapes, median; and the epoch time of cnn cells that differ only in "
             f"activation (Xavier, SGD lr 0.01, {scale.train_size} images, epoch "
             f"{COST_EPOCHS}); {len(scale.seeds)} seed(s)")
    def times(ratios: list[float]) -> str:
        return per_seed(f"{figure(r, '.2f')}x" for r in ratios)

    measured = ("sigmoid/relu alone: " + times(op_ratio) + "; tanh/relu alone: " + times(op_tanh)
                + "; whole cnn epoch sigmoid/relu: " + times(epoch_ratio)
                + " (" + "; ".join(f"{name} " + per_seed(f"{figure(t, '.1f')} s"
                                                         for t in epoch[name])
                                   for name in COST_ACTIVATIONS) + ")")
    return {"sigmoid_cost": outcome(setup, measured, verdicts.costlier(op_ratio), runs)}


def gradient_sign_study(ctx: StudyContext) -> dict[str, Outcome]:
    """sigmoid, centered_sigmoid and tanh mlps at initialization: how often a logits
    unit's per-example weight gradient has a single sign, and the zig-zag path."""
    from cvlib.plots import weight_paths

    raw = {"name": "gradient-signs", "data": AT_INIT_DATA, "model": SIGN_MLP,
           "train": {"epochs": 0, "stats_every": 0},
           "grid": {"model.activation": list(SIGN_ACTIVATIONS)},
           "seeds": list(ctx.scale.init_seeds)}
    with ctx.study("gradient-signs") as parent:
        runs = ctx.run(raw, parent, final_measure=probes.gradient_signs)
        single = _by_seed(runs, "sign/single_sign_fraction")
        same = _by_seed(runs, "zigzag/same_direction_fraction")
        first = runs[runs["seed"] == runs["seed"].min()].set_index("activation")
        paths = {name: np.array([[first.loc[name, probes.zigzag_key(w, step)] for w in (0, 1)]
                                 for step in range(probes.ZIGZAG_STEPS + 1)])
                 for name in ("sigmoid", "centered_sigmoid")}
        ctx.show(parent, ("sigmoid_signs",), "zigzag.png", weight_paths(
            paths, f"two weights of one logits unit over {probes.ZIGZAG_STEPS} single-image "
                   f"SGD steps (seed {runs['seed'].min()})"),
            "The path of two weights of one unit over its first updates: after sigmoid "
            "(inputs all positive) every update moves both weights the same way, so the "
            "path can only run along one diagonal; after centered_sigmoid it turns freely.")
    setup = (f"mlp {SIGN_MLP['depth']} x {SIGN_MLP['width']}, Xavier, at initialization; the "
             f"logits layer's per-image weight gradient on {probes.PROBE_IMAGES} validation "
             f"images; the zig-zag: {probes.ZIGZAG_STEPS} single-image SGD steps (lr "
             f"{probes.ZIGZAG_LEARNING_RATE:g}) of the logits layer; "
             f"{len(ctx.scale.init_seeds)} seed(s)")
    measured = ("units with a single-signed weight gradient: " + "; ".join(
        f"{name} " + per_seed(figure(f, ".0%") for f in single[name]) for name in SIGN_ACTIVATIONS)
        + " | updates moving two weights the same way: " + "; ".join(
        f"{name} " + per_seed(figure(f, ".0%") for f in same[name]) for name in SIGN_ACTIVATIONS))
    centered = [list(values) for values in zip(single["centered_sigmoid"], single["tanh"])]
    return {"sigmoid_signs": outcome(setup, measured,
                                     verdicts.single_signed(single["sigmoid"], centered), runs)}


def dead_unit_study(ctx: StudyContext) -> dict[str, Outcome]:
    """relu and its alternatives trained at a too-high rate: the units left dead."""
    from cvlib.plots import seed_bars

    scale = ctx.scale
    raw = ctx.cnn_grid("dead-units", {"initializer": "he", "bn": "none"},
                       {"learning_rate": DEAD_UNITS_LEARNING_RATE, "epochs": scale.bn_epochs,
                        "stats_every": 0},
                       grid={"model.activation": list(DEAD_UNIT_ACTIVATIONS)},
                       seeds=list(scale.seeds))
    with ctx.study("dead-units") as parent:
        runs = ctx.run(raw, parent, final_measure=probes.dead_units)
        dead = _by_seed(runs, "dead/fraction")
        negative = _by_seed(runs, "dead/negative_fraction")
        ctx.show(parent, ("dead_units",), "dead_units.png", seed_bars(
            {name: dead[name] for name in DEAD_UNIT_ACTIVATIONS}, "fraction of units dead",
            f"after {scale.bn_epochs} epochs at lr {DEAD_UNITS_LEARNING_RATE:g}"),
            "Fraction of units through which no gradient passes for any of 500 validation "
            "images, after training at a too-high learning rate (bars: mean; dots: seeds).")
    setup = (f"cnn {list(scale.widths)}+{scale.dense_units}, He, no BN, SGD lr "
             f"{DEAD_UNITS_LEARNING_RATE:g} momentum 0.9 (fixed in advance as too high), "
             f"{scale.train_size} images x {scale.bn_epochs} epochs; a unit is dead when "
             f"its local derivative is 0 on all {probes.PROBE_IMAGES} probe images; "
             f"{len(scale.seeds)} seed(s)")

    def percents(fractions: list[float]) -> str:
        return per_seed(figure(fraction, ".1%") for fraction in fractions)

    measured = ("dead units: " + "; ".join(f"{name} {percents(dead[name])}"
                                           for name in DEAD_UNIT_ACTIVATIONS)
                + " | input negative on every image: " + "; ".join(
                    f"{name} {percents(negative[name])}" for name in DEAD_UNIT_ACTIVATIONS[1:4]))
    others = [list(values) for values in zip(*(dead[name] for name in DEAD_UNIT_ACTIVATIONS[1:]))]
    return {"dead_units": outcome(setup, measured,
                                  verdicts.only_relu_dies(dead["relu"], others), runs)}


def maxout_parameter_study(ctx: StudyContext) -> dict[str, Outcome]:
    """maxout and relu cnns at the same widths: parameters per layer (exact)."""
    from cvlib.plots import seed_bars

    scale = ctx.scale
    raw = ctx.cnn_grid("maxout-parameters", {"initializer": "he", "bn": "none"},
                       {"epochs": 0, "stats_every": 0}, data=AT_INIT_DATA,
                       grid={"model.activation": ["relu", "maxout"]}, seeds=[scale.seeds[0]])
    with ctx.study("maxout-parameters") as parent:
        runs = ctx.run(raw, parent, final_measure=probes.parameter_counts)
        by_activation = runs.set_index("activation")
        layers = [column.split("/", 1)[1] for column in runs.columns
                  if column.startswith("params/") and column != "params/total"]
        counts = {layer: tuple(by_activation.loc[name, f"params/{layer}"]
                               for name in ("relu", "maxout")) for layer in layers}
        ctx.show(parent, ("maxout_params",), "maxout_parameters.png", seed_bars(
            {f"{layer} {name}": [count[index]] for layer, count in counts.items()
             for index, name in enumerate(("relu", "maxout"))}, "parameters",
            "parameters per layer", log=True),
            "Parameters of each layer of the same cnn with relu and with maxout (k = 2).")
    feeding = [layer for layer in layers if layer != "logits"]
    setup = f"cnn {list(scale.widths)}+{scale.dense_units}, maxout k=2 vs relu, counted by Keras"
    totals = by_activation.reindex(columns=["params/total"])["params/total"]
    measured = "; ".join(f"{layer} {figure(relu, ',.0f')} vs {figure(maxout, ',.0f')} "
                         f"({figure(maxout / relu, '.3g')}x)"
                         for layer, (relu, maxout) in counts.items()) + (
        f"; total {figure(totals['relu'], ',.0f')} vs {figure(totals['maxout'], ',.0f')}")
    return {"maxout_params": outcome(setup, measured, verdicts.doubles(
        [counts[layer][1] / counts[layer][0] for layer in feeding]), runs)}
