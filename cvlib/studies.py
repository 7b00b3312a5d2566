"""The studies behind ``cvlib claims``: what each trains and measures.

Each study trains through the same machinery as ``cvlib run`` (``run_grid``, or
``train_cell`` with the Tracker) under a parent run of its own, and returns, for each
claim it answers, its setup, the measured figure in words and the verdict (from
:mod:`cvlib.verdicts`). The sizes come from a :class:`cvlib.study_context.Scale`.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass, field

import numpy as np

from cvlib import verdicts
from cvlib.config import grid_from_dict
from cvlib.lr_search import LEARNING_RATE
from cvlib.study_context import Context, Outcome

# The learning rates the notes recommend cross-validating.
NOTES_LR_RANGE = (1e-5, 1e-3)
# The speed-up Krizhevsky et al. report, and the factor within which "about" holds.
CLAIMED_SPEEDUP, SPEEDUP_TOLERANCE = 6.0, 2.0
# The fixed training recipe of the BN study (the seed grid's): no per-cell tuning,
# since robustness to the initializer is the question.
BN_STUDY_LEARNING_RATE = 0.01
# Images on which the BN test-time check compares predictions alone and in a batch.
BN_PROBE_IMAGES = 100
INIT_LAYERS = [f"dense{index}_act" for index in range(1, 11)]


def _per_seed(values) -> str:
    """Figures of each seed, comma-separated."""
    return ", ".join(values)


# --- Initialization at depth. ---

def init_study(ctx: Context) -> dict[str, Outcome]:
    """mlp 10 x 500 at initialization: activation std and saturation per layer."""
    from cvlib.plots import layer_profiles
    from cvlib.tracking import log_outputs

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
        log_outputs(ctx.tracker, parent, figures={"layer_std.png": layer_profiles(
            seed0, INIT_LAYERS, "activation std at initialization (seed 0)")})
    setup = (f"mlp 10 x 500, no BN, at initialization (epochs 0), 500 validation images; "
             f"{len(ctx.scale.init_seeds)} seed(s)")

    def ratio_outcome(activation, initializer, test) -> Outcome:
        stds = profiles(activation, initializer, "std")
        return (setup, "std last/first: " + _per_seed(
                    f"{verdicts.std_ratio(s):.2g}" for s in stds),
                verdicts.agreement([verdicts.judge(test, s) for s in stds]))

    saturated = profiles("tanh", "unit_gaussian", "saturated")
    xavier = profiles("tanh", "xavier", "std")
    return {
        "init_small": ratio_outcome("tanh", "small_gaussian", verdicts.collapses),
        "init_unit": (setup, "least saturated layer: " + _per_seed(
            f"{min(s):.0%}" for s in saturated) + "; mean over layers: " + _per_seed(
            f"{np.mean(s):.0%}" for s in saturated),
            verdicts.agreement([verdicts.judge(verdicts.saturated_everywhere, s)
                                for s in saturated])),
        "init_xavier": (setup, "std range over layers: " + _per_seed(
            f"[{min(s):.2g}, {max(s):.2g}]" for s in xavier),
            verdicts.agreement([verdicts.judge(verdicts.stds_within, s) for s in xavier])),
        "init_relu_xavier": ratio_outcome("relu", "xavier", verdicts.decays),
        "init_he": ratio_outcome("relu", "he", verdicts.holds_steady),
    }


# --- Steps to a fixed training accuracy: activations, and zero-centering. ---

SPEED_VARIANTS = {
    # Each activation with the initializer the notes pair it with.
    "relu": {"activation": "relu", "initializer": "he"},
    "tanh": {"activation": "tanh", "initializer": "xavier"},
    "sigmoid": {"activation": "sigmoid", "initializer": "xavier"},
    "relu-uncentered": {"activation": "relu", "initializer": "he", "preprocess": "none"},
}


@dataclass
class SpeedRuns:
    """One variant's search and its runs at the best learning rate."""

    learning_rate: float
    # Whether the search's best trial beat chance (else its rate means nothing), and
    # whether its best rate lies at an edge of the range searched.
    search_learned: bool
    search_at_edge: bool
    # Per seed, in seed order: steps to the threshold (None: not reached), steps trained,
    # and the smoothed accuracy curve.
    steps: list[int | None] = field(default_factory=list)
    budgets: list[int] = field(default_factory=list)
    curves: list[np.ndarray] = field(default_factory=list)


def speed_study(ctx: Context) -> dict[str, Outcome]:
    """Each variant: a learning-rate search, then runs at its best rate, timed in steps."""
    from cvlib.lr_search import search_cell
    from cvlib.plots import step_curves
    from cvlib.tracking import log_outputs, metric_history

    scale = ctx.scale
    results: dict[str, SpeedRuns] = {}
    with ctx.study("steps-to-accuracy", {"threshold": scale.threshold,
                                         "window": scale.window}) as parent:
        timed = {}  # each variant's runs at its best rate, trained together below
        for name, variant in SPEED_VARIANTS.items():
            model = {"bn": "none", "activation": variant["activation"],
                     "initializer": variant["initializer"]}
            data = {"preprocess": variant.get("preprocess", "per_channel_mean")}
            searched = grid_from_dict(ctx.cnn_grid(f"speed-{name}-search", model,
                                                   {"stats_every": 0}, data,
                                                   seeds=[scale.seeds[0]]))
            search = search_cell(searched.cells()[0], searched, ctx.tracking_uri,
                                 ctx.experiment, scale.search, ctx.data_dir, ctx.echo,
                                 parent_run_id=parent, data=ctx.data, label=name,
                                 processes=ctx.processes)
            rate = search.best[LEARNING_RATE]
            results[name] = SpeedRuns(rate, search.learned, bool(search.edge_warnings))
            timed[name] = ctx.cnn_grid(f"speed-{name}", model,
                                       {"learning_rate": rate, "epochs": scale.speed_epochs},
                                       data, seeds=list(scale.seeds))
        for found, runs in zip(results.values(), ctx.run_together(list(timed.values()), parent)):
            for run_id in runs.sort_values("seed")["run_id"]:
                history = metric_history(ctx.tracking_uri, run_id, "batch/accuracy") \
                    if isinstance(run_id, str) else []
                accuracies = [value for _, value in history]
                found.steps.append(verdicts.steps_to_accuracy(accuracies, scale.threshold,
                                                              scale.window))
                found.budgets.append(len(accuracies))
                found.curves.append(verdicts.trailing_mean(accuracies, scale.window))
        log_outputs(ctx.tracker, parent, figures={"steps_to_accuracy.png": step_curves(
            {name: r.curves[0] for name, r in results.items() if r.curves},
            scale.threshold, f"training accuracy, mean of {scale.window} steps (seed "
                             f"{scale.seeds[0]})")})
    return _speed_outcomes(ctx, results)


def _ratios(results: dict[str, SpeedRuns], fast: str, slow: str) -> list[verdicts.Ratio]:
    first, second = results[fast], results[slow]
    return [verdicts.step_ratio(a, b, budget_a, budget_b) for a, b, budget_a, budget_b in
            zip(first.steps, second.steps, first.budgets, second.budgets)]


def _steps_text(results: dict[str, SpeedRuns], names) -> str:
    return "; ".join(f"{name} (lr {results[name].learning_rate:.2g}): " + _per_seed(
        str(s) if s is not None else f">{b}" for s, b in
        zip(results[name].steps, results[name].budgets)) + " steps" for name in names)


def _speed_outcomes(ctx: Context, results: dict[str, SpeedRuns]) -> dict[str, Outcome]:
    """The claims that rest on the steps-to-accuracy runs and their searches."""
    scale, plan = ctx.scale, ctx.scale.search
    setup = (f"cnn {list(scale.widths)}+{scale.dense_units}, no BN, SGD momentum 0.9, batch "
             f"128, {scale.train_size} images x {scale.speed_epochs} epochs; each variant at "
             f"the best lr of its own lr-search ({plan.coarse_trials} coarse trials x "
             f"{plan.coarse_epochs} epochs, {plan.fine_trials} fine x {plan.fine_epochs}); "
             f"steps until the training accuracy over {scale.window} steps reaches "
             f"{scale.threshold:.0%}; {len(scale.seeds)} seed(s)")
    outcomes = {}
    for claim, other in (("relu_vs_tanh", "tanh"), ("relu_vs_sigmoid", "sigmoid")):
        ratios = _ratios(results, "relu", other)
        outcomes[claim] = (f"relu + He vs {other} + Xavier; " + setup,
                           _steps_text(results, ("relu", other)) + "; ratio "
                           + _per_seed(str(r) for r in ratios),
                           verdicts.faster_by(ratios, CLAIMED_SPEEDUP / SPEEDUP_TOLERANCE))
    to_sigmoid = list(zip(_ratios(results, "relu", "sigmoid"), _ratios(results, "tanh", "sigmoid")))
    outcomes["sigmoid"] = (setup, _steps_text(results, ("relu", "tanh", "sigmoid")),
                           verdicts.slowest(to_sigmoid))
    centering = _ratios(results, "relu", "relu-uncentered")
    outcomes["zero_center"] = (
        "relu + He, per_channel_mean vs none (raw [0, 1] pixels); " + setup,
        _steps_text(results, ("relu", "relu-uncentered")) + "; uncentered/centered "
        + _per_seed(str(r) for r in centering), verdicts.faster(centering))
    # A search whose best trial stayed at chance found no rate: it is left out.
    rates = {name: r.learning_rate for name, r in results.items() if r.search_learned}
    notes = [f"{name}: no trial beat chance, left out" for name, r in results.items()
             if not r.search_learned]
    notes += [f"{name}: best at an edge of its fine range" for name, r in results.items()
              if r.search_learned and r.search_at_edge]
    outcomes["lr_range"] = (
        f"the {len(results)} lr-searches above (SGD momentum 0.9, {scale.train_size} images, "
        f"coarse range 1e-6 to 1)",
        "best lr: " + _per_seed(f"{name} {rate:.2g}" for name, rate in rates.items())
        + (f" ({'; '.join(notes)})" if notes else ""),
        verdicts.agreement([verdicts.in_range(rate, *NOTES_LR_RANGE) for rate in rates.values()]))
    return outcomes


# --- Batch normalization. ---

def bn_study(ctx: Context) -> dict[str, Outcome]:
    """relu cnn, 4 initializers x 3 BN placements, one fixed recipe: final val accuracy."""
    scale = ctx.scale
    raw = ctx.cnn_grid("bn-vs-init", {"activation": "relu"},
                       {"learning_rate": BN_STUDY_LEARNING_RATE, "epochs": scale.bn_epochs},
                       grid={"model.initializer": ["small_gaussian", "unit_gaussian",
                                                   "xavier", "he"],
                             "model.bn": ["none", "before", "after"]},
                       seeds=list(scale.seeds))
    with ctx.study("bn-vs-init") as parent:
        runs = ctx.run(raw, parent)
    # A diverged model (NaN weights) predicts one class: chance. A cell whose run
    # failed has no figure (NaN), and the seeds it touches cannot tell.
    diverged = (runs["outcome"] == "diverged") & runs["val_accuracy"].isna()
    runs.loc[diverged, "val_accuracy"] = 0.1
    accuracy = runs.pivot(index="seed", columns=["bn", "initializer"], values="val_accuracy")
    spreads = {bn: [verdicts.spread(accuracy.loc[seed, bn]) for seed in accuracy.index]
               for bn in ("none", "before", "after")}
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
            f"{bn} {_per_seed(f'{s:.3f}' for s in spreads[bn])}" for bn in spreads)
            + f" | mean val acc by init: {by_init}",
            verdicts.much_smaller_spread(spreads["before"], spreads["none"])),
        "bn_placement": (setup, "mean val acc over initializers: before " + _per_seed(
            f"{m:.3f}" for m in means["before"]) + "; after " + _per_seed(
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
    return {"bn_test/max_logit_difference": inference, "bn_test/same_classes": float(same),
            "bn_test/max_logit_difference_training_mode": training}


def bn_test_time_study(ctx: Context) -> dict[str, Outcome]:
    """Train a BN cnn, then compare its predictions alone and in a batch."""
    import keras

    from cvlib.results import finished_cell_runs
    from cvlib.training import train_cell

    scale = ctx.scale
    raw = ctx.cnn_grid("bn-test-time", {"activation": "relu", "initializer": "he",
                                        "bn": "before"},
                       {"learning_rate": BN_STUDY_LEARNING_RATE, "epochs": scale.bn_test_epochs},
                       seeds=[scale.seeds[0]])
    grid = grid_from_dict(raw)
    (cell,) = grid.cells()
    with ctx.study("bn-test-time") as parent:
        runs = finished_cell_runs(ctx.tracking_uri, ctx.experiment, [cell.cell_hash])
        if cell.cell_hash in runs.index and "bn_test/same_classes" in runs.columns:
            figures = runs.loc[cell.cell_hash].to_dict()  # resumed: measured before
        else:
            dataset = ctx.data.get(cell.data)
            run = ctx.tracker.start_cell(ctx.experiment_id, parent, cell, grid.name,
                                         dataset.params)
            try:
                keeper = keras.callbacks.Callback()  # fit hands it the model
                result = train_cell(cell, dataset, run.log_metrics, callbacks=[keeper])
                figures = batch_dependence(keeper.model, dataset.x_test[:BN_PROBE_IMAGES])
                run.log_metrics(figures, result.epochs)
                run.finish(result.outcome)
            except Exception as error:
                run.fail(f"{type(error).__name__}: {error}", details=traceback.format_exc())
                raise
            finally:
                keras.backend.clear_session(free_memory=False)
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
