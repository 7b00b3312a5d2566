"""Steps to a fixed training accuracy: ReLU against tanh and sigmoid, and zero-centered
input against raw pixels, each variant at the best learning rate of its own search;
the searches' best rates also answer the learning-rate range claim."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cvlib.grids import grid_from_dict
from cvlib.studies import verdicts
from cvlib.studies.context import Outcome, StudyContext, per_seed
from cvlib.studies.lr_search import LEARNING_RATE, search_cell
from cvlib.tracking.schema import BATCH_PREFIX

# The learning rates the notes recommend cross-validating.
NOTES_LR_RANGE = (1e-5, 1e-3)
# The speed-up Krizhevsky et al. report, and the factor within which "about" holds.
CLAIMED_SPEEDUP, SPEEDUP_TOLERANCE = 6.0, 2.0


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


def speed_study(ctx: StudyContext) -> dict[str, Outcome]:
    """Each variant: a learning-rate search, then runs at its best rate, timed in steps."""
    from cvlib.plots import step_curves

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
            search = search_cell(ctx.experiment, searched.cells()[0], searched, scale.search,
                                 parent_run_id=parent, label=name)
            rate = search.best[LEARNING_RATE]
            results[name] = SpeedRuns(rate, search.learned, bool(search.edge_warnings))
            timed[name] = ctx.cnn_grid(f"speed-{name}", model,
                                       {"learning_rate": rate, "epochs": scale.speed_epochs},
                                       data, seeds=list(scale.seeds))
        for found, runs in zip(results.values(), ctx.run_together(list(timed.values()), parent)):
            for run_id in runs.sort_values("seed")["run_id"]:
                history = ctx.experiment.metric_history(run_id, f"{BATCH_PREFIX}accuracy") \
                    if isinstance(run_id, str) else []
                accuracies = [value for _, value in history]
                found.steps.append(verdicts.steps_to_accuracy(accuracies, scale.threshold,
                                                              scale.window))
                found.budgets.append(len(accuracies))
                found.curves.append(verdicts.trailing_mean(accuracies, scale.window))
        ctx.experiment.log_outputs(parent, figures={"steps_to_accuracy.png": step_curves(
            {name: r.curves[0] for name, r in results.items() if r.curves},
            scale.threshold, f"training accuracy, mean of {scale.window} steps (seed "
                             f"{scale.seeds[0]})")})
    return _speed_outcomes(ctx, results)


def _ratios(results: dict[str, SpeedRuns], fast: str, slow: str) -> list[verdicts.Ratio]:
    first, second = results[fast], results[slow]
    return [verdicts.step_ratio(a, b, budget_a, budget_b) for a, b, budget_a, budget_b in
            zip(first.steps, second.steps, first.budgets, second.budgets)]


def _steps_text(results: dict[str, SpeedRuns], names) -> str:
    return "; ".join(f"{name} (lr {results[name].learning_rate:.2g}): " + per_seed(
        str(s) if s is not None else f">{b}" for s, b in
        zip(results[name].steps, results[name].budgets)) + " steps" for name in names)


def _speed_outcomes(ctx: StudyContext, results: dict[str, SpeedRuns]) -> dict[str, Outcome]:
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
                           + per_seed(str(r) for r in ratios),
                           verdicts.faster_by(ratios, CLAIMED_SPEEDUP / SPEEDUP_TOLERANCE))
    to_sigmoid = list(zip(_ratios(results, "relu", "sigmoid"), _ratios(results, "tanh", "sigmoid")))
    outcomes["sigmoid"] = (setup, _steps_text(results, ("relu", "tanh", "sigmoid")),
                           verdicts.slowest(to_sigmoid))
    centering = _ratios(results, "relu", "relu-uncentered")
    outcomes["zero_center"] = (
        "relu + He, per_channel_mean vs none (raw [0, 1] pixels); " + setup,
        _steps_text(results, ("relu", "relu-uncentered")) + "; uncentered/centered "
        + per_seed(str(r) for r in centering), verdicts.faster(centering))
    # A search whose best trial stayed at chance found no rate: it is left out.
    rates = {name: r.learning_rate for name, r in results.items() if r.search_learned}
    notes = [f"{name}: no trial beat chance, left out" for name, r in results.items()
             if not r.search_learned]
    notes += [f"{name}: best at an edge of its fine range" for name, r in results.items()
              if r.search_learned and r.search_at_edge]
    outcomes["lr_range"] = (
        f"the {len(results)} lr-searches above (SGD momentum 0.9, {scale.train_size} images, "
        f"coarse range 1e-6 to 1)",
        "best lr: " + per_seed(f"{name} {rate:.2g}" for name, rate in rates.items())
        + (f" ({'; '.join(notes)})" if notes else ""),
        verdicts.agreement([verdicts.in_range(rate, *NOTES_LR_RANGE) for rate in rates.values()]))
    return outcomes
