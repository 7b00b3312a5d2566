"""Steps to a fixed training accuracy: ReLU against tanh and sigmoid, sigmoid against its
zero-centered twin, and zero-centered input against raw pixels and against other
preprocessings, each variant at the best learning rate of its own search; the searches'
best rates (and one Adam search) also answer the learning-rate range claims."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cvlib.grids import grid_from_dict
from cvlib.studies import judgments, step_verdicts, verdicts
from cvlib.studies.context import Outcome, StudyContext, figure, outcome, per_seed
from cvlib.studies.lr_search import LEARNING_RATE, SearchError, search_cell, search_run_name
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
    # Sigmoid's shape and saturation, zero-centered: what centering alone changes.
    "centered_sigmoid": {"activation": "centered_sigmoid", "initializer": "xavier"},
    # Zero-centered and scaled to unit variance, and centered per pixel.
    "relu-standardize": {"activation": "relu", "initializer": "he", "preprocess": "standardize"},
    "relu-mean-image": {"activation": "relu", "initializer": "he", "preprocess": "mean_image"},
}
# The variant whose search is repeated with Adam, for the learning-rate range that the
# notes' range is typical of.
ADAM_VARIANT = "relu"
# Each speed claim's figure: the curves of exactly the variants its verdict compares.
CURVE_FIGURES = {
    "relu_vs_tanh": ("relu", "tanh"),
    "relu_vs_sigmoid": ("relu", "sigmoid"),
    "sigmoid": ("relu", "tanh", "sigmoid"),
    "centering_speed": ("sigmoid", "centered_sigmoid"),
    "zero_center": ("relu", "relu-uncentered"),
    "zero_center_enough": ("relu", "relu-standardize", "relu-mean-image"),
}


@dataclass(frozen=True)
class FoundRate:
    """A search's best learning rate, and whether it can be trusted."""

    # The search's parent run.
    run_name: str
    # NaN when the search failed: every trial of a stage diverged or failed.
    learning_rate: float
    # Whether the search's best trial beat chance (else its rate means nothing), and
    # whether its best rate lies at an edge of the range searched.
    search_learned: bool
    search_at_edge: bool

    @property
    def failed(self) -> bool:
        """Whether the search found no rate at all."""
        return bool(np.isnan(self.learning_rate))

    def failure(self) -> pd.DataFrame:
        """A failed search as the table of a run that failed (StudyContext.run's
        columns): what the claims resting on it rest on. Empty if it did not fail."""
        rows = [{"name": self.run_name, "run_id": np.nan, "outcome": np.nan}] \
            if self.failed else []
        return pd.DataFrame(rows, columns=["name", "run_id", "outcome"])


@dataclass
class SpeedRuns:
    """One variant's search and its runs at the best learning rate."""

    found: FoundRate
    # The runs at the best rate (StudyContext.run's table); the failed search's instead
    # when there is no best rate to train at.
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)
    # Per seed, in seed order: steps to the threshold (None: not reached; Unknown: the
    # run cannot tell), steps trained, and the smoothed accuracy curve.
    steps: list[int | None | judgments.Unknown] = field(default_factory=list)
    budgets: list[int] = field(default_factory=list)
    curves: list[np.ndarray] = field(default_factory=list)


def speed_study(ctx: StudyContext) -> dict[str, Outcome]:
    """Each variant: a learning-rate search, then runs at its best rate, timed in steps."""
    from cvlib.plots import step_curves

    scale = ctx.scale
    results: dict[str, SpeedRuns] = {}
    with ctx.study("steps-to-accuracy", {"threshold": scale.threshold,
                                         "window": scale.window}) as parent:

        def search(name: str, model: dict, data: dict, train: dict) -> FoundRate:
            searched = grid_from_dict(ctx.cnn_grid(f"speed-{name}-search", model,
                                                   {"stats_every": 0, **train}, data,
                                                   seeds=[scale.seeds[0]]))
            try:
                found = search_cell(ctx.experiment, searched.cells()[0], searched,
                                    scale.search, parent_run_id=parent, label=name)
            except SearchError as error:  # the claims resting on it say so; others go on
                ctx.echo(f"{search_run_name(name)} failed: {error}")
                return FoundRate(search_run_name(name), np.nan, False, False)
            return FoundRate(search_run_name(name), found.best[LEARNING_RATE], found.learned,
                             bool(found.edge_warnings))

        timed = {}  # each variant's runs at its best rate, trained together below
        for name, variant in SPEED_VARIANTS.items():
            model = {"bn": "none", "activation": variant["activation"],
                     "initializer": variant["initializer"]}
            data = {"preprocess": variant.get("preprocess", "per_channel_mean")}
            found = search(name, model, data, {})
            results[name] = SpeedRuns(found, found.failure())
            if not found.failed:
                timed[name] = ctx.cnn_grid(
                    f"speed-{name}", model, {"learning_rate": found.learning_rate,
                                             "epochs": scale.speed_epochs},
                    data, seeds=list(scale.seeds))
        for name, runs in zip(timed, ctx.run_together(list(timed.values()), parent)):
            speed = results[name]
            speed.runs = runs
            for run_id in runs.sort_values("seed")["run_id"]:
                history = ctx.experiment.metric_history(run_id, f"{BATCH_PREFIX}accuracy") \
                    if isinstance(run_id, str) else []
                accuracies = [value for _, value in history]
                speed.steps.append(step_verdicts.steps_to_accuracy(
                    accuracies, scale.threshold, scale.window))
                speed.budgets.append(len(accuracies))
                speed.curves.append(step_verdicts.trailing_mean(accuracies, scale.window))
        adam_variant = SPEED_VARIANTS[ADAM_VARIANT]
        adam = search(f"{ADAM_VARIANT}-adam", {"bn": "none", **adam_variant}, {},
                      {"optimizer": "adam"})
        for claim, names in CURVE_FIGURES.items():
            curves = {_curve_label(name, results[name]): results[name].curves[0]
                      for name in names if results[name].curves}
            missing = [name for name in names if not results[name].curves]
            ctx.show(parent, (claim,), f"steps_to_accuracy_{claim}.png", step_curves(
                curves, scale.threshold,
                f"training accuracy, mean of {scale.window} steps (seed {scale.seeds[0]})"
                + (f"; no run: {', '.join(missing)}" if missing else "")),
                "Training accuracy by gradient step, each network at the best learning rate "
                "of its own search; the dashed line is the accuracy the steps are counted to. "
                "A network that never reaches it is marked: its step count is only a bound.")
        found = {f"{name} (SGD)": r.found for name, r in results.items()}
        ctx.show(parent, ("lr_range",), "best_learning_rates_sgd.png",
                 _rates_figure(found, "each SGD search's best rate"),
                 "The best learning rate of each SGD search, on a log axis; the band is the "
                 "notes' range. A search whose best trial stayed at chance found no rate: "
                 "it is left out, as in the verdict.")
        ctx.show(parent, ("lr_range_adam",), "best_learning_rates_adam.png",
                 _rates_figure({f"{ADAM_VARIANT} (Adam)": adam}, "the Adam search's best rate"),
                 "The best learning rate of the Adam search, on a log axis; the band is the "
                 "notes' range.")
    return _speed_outcomes(ctx, results, adam)


def _curve_label(name: str, speed: SpeedRuns) -> str:
    """A variant's label in a speed figure (its first seed's curve), saying when the
    curve never reaches the accuracy: then its step count is only a bound."""
    steps, budget = speed.steps[0], speed.budgets[0]
    return f"{name}: not reached in {budget} steps" if steps is None else name


def _learned_rates(found: dict[str, FoundRate]) -> tuple[dict[str, float], dict[str, list[str]]]:
    """The rates a learning-rate claim judges (searches that beat chance), and the
    searches it leaves out (none of their trials beat chance) or cannot use (the search
    failed), by why."""
    rates = {name: rate.learning_rate for name, rate in found.items() if rate.search_learned}
    unused = {"no trial beat chance, left out": [
                  name for name, rate in found.items() if not rate.search_learned
                  and not rate.failed],
              "search failed": [name for name, rate in found.items() if rate.failed]}
    return rates, {why: names for why, names in unused.items() if names}


def _rates_figure(found: dict[str, FoundRate], title: str):
    """The best rates a learning-rate claim judges, against the notes' range; what the
    verdict leaves out is left out here too, and named in the title."""
    from cvlib.plots import seed_bars

    rates, unused = _learned_rates(found)
    lines = [title, *(f"{why}: {', '.join(names)}" for why, names in unused.items())]
    return seed_bars({name: [rate] for name, rate in rates.items()}, "best learning rate",
                     "\n".join(textwrap.fill(line, 45) for line in lines), log=True,
                     band=NOTES_LR_RANGE)


def _ratios(results: dict[str, SpeedRuns], fast: str, slow: str) -> list[step_verdicts.Ratio]:
    first, second = results[fast], results[slow]
    return [step_verdicts.step_ratio(a, b, budget_a, budget_b) for a, b, budget_a, budget_b in
            zip(first.steps, second.steps, first.budgets, second.budgets)]


def _steps(steps: int | None | judgments.Unknown, budget: int) -> str:
    """A run's steps to the accuracy: the count, more than its budget, or n/a."""
    return "n/a" if isinstance(steps, judgments.Unknown) else \
        f">{budget}" if steps is None else str(steps)


def _steps_text(results: dict[str, SpeedRuns], names, threshold: float) -> str:
    """Each variant's steps per seed, then which runs are censored: did not reach the
    accuracy in their budget, so that their counts (and ratios) are bounds."""
    counts = "; ".join(f"{name} (lr {figure(results[name].found.learning_rate, '.2g')}): " + (
        per_seed(_steps(s, b) for s, b in zip(results[name].steps, results[name].budgets))
        or "n/a") + " steps" for name in names)
    censored = []
    for name in names:
        seeds = [str(seed) for seed, steps in enumerate(results[name].steps) if steps is None]
        if seeds:
            censored.append(f"{name} seed {', '.join(seeds)}")
    return counts + (f" (censored, did not reach {threshold:.0%} within the budget: "
                     f"{'; '.join(censored)})" if censored else "")


def _runs(results: dict[str, SpeedRuns], *names: str) -> list[pd.DataFrame]:
    return [results[name].runs for name in names]


def _range_outcome(found: dict[str, FoundRate], setup: str) -> Outcome:
    """The learning-rate range claim, from the searches' best rates."""
    # A search whose best trial stayed at chance found no rate: it is left out. One that
    # failed cannot tell (its failure() makes the outcome inconclusive).
    rates, unused = _learned_rates(found)
    notes = [f"{name}: {why}" for why, names in unused.items() for name in names]
    notes += [f"{name}: best at an edge of its fine range" for name, rate in found.items()
              if rate.search_learned and rate.search_at_edge]
    return outcome(setup, "best lr: " + per_seed(f"{name} {rate:.2g}"
                                                 for name, rate in rates.items())
                   + (f" ({'; '.join(notes)})" if notes else ""),
                   judgments.agreement([verdicts.in_range(rate, *NOTES_LR_RANGE)
                                       for rate in rates.values()], labels=list(rates)),
                   *(rate.failure() for rate in found.values()))


def _speed_outcomes(ctx: StudyContext, results: dict[str, SpeedRuns],
                    adam: FoundRate) -> dict[str, Outcome]:
    """The claims that rest on the steps-to-accuracy runs and their searches."""
    scale, plan = ctx.scale, ctx.scale.search
    setup = (f"cnn {list(scale.widths)}+{scale.dense_units}, no BN, SGD momentum 0.9, batch "
             f"128, {scale.train_size} images x {scale.speed_epochs} epochs; each variant at "
             f"the best lr of its own lr-search ({plan.coarse_trials} coarse trials x "
             f"{plan.coarse_epochs} epochs, {plan.fine_trials} fine x {plan.fine_epochs}); "
             f"steps until the training accuracy over {scale.window} steps reaches "
             f"{scale.threshold:.0%}; {len(scale.seeds)} seed(s)")
    outcomes = {}

    def steps_text(*names: str) -> str:
        return _steps_text(results, names, scale.threshold)

    for claim, other in (("relu_vs_tanh", "tanh"), ("relu_vs_sigmoid", "sigmoid")):
        ratios = _ratios(results, "relu", other)
        outcomes[claim] = outcome(
            f"relu + He vs {other} + Xavier; " + setup,
            steps_text("relu", other) + "; ratio " + per_seed(str(r) for r in ratios),
            step_verdicts.about(ratios, CLAIMED_SPEEDUP, SPEEDUP_TOLERANCE),
            *_runs(results, "relu", other))
    to_sigmoid = list(zip(_ratios(results, "relu", "sigmoid"), _ratios(results, "tanh", "sigmoid")))
    outcomes["sigmoid"] = outcome(
        setup, steps_text("relu", "tanh", "sigmoid") + "; sigmoid/relu, sigmoid/tanh: "
        + per_seed(f"{a} {b}" for a, b in to_sigmoid), step_verdicts.slowest(to_sigmoid),
        *_runs(results, "relu", "tanh", "sigmoid"))
    centering = _ratios(results, "relu", "relu-uncentered")
    outcomes["zero_center"] = outcome(
        "relu + He, per_channel_mean vs none (raw [0, 1] pixels); " + setup,
        steps_text("relu", "relu-uncentered") + "; uncentered/centered "
        + per_seed(str(r) for r in centering), step_verdicts.faster(centering),
        *_runs(results, "relu", "relu-uncentered"))
    sigmoid_centering = _ratios(results, "centered_sigmoid", "sigmoid")
    outcomes["centering_speed"] = outcome(
        "sigmoid vs centered_sigmoid (sigmoid - 0.5: same saturation), both + Xavier; " + setup,
        steps_text("centered_sigmoid", "sigmoid") + "; sigmoid/centered "
        + per_seed(str(r) for r in sigmoid_centering), step_verdicts.faster(sigmoid_centering),
        *_runs(results, "centered_sigmoid", "sigmoid"))
    scalings = [list(pair) for pair in zip(_ratios(results, "relu", "relu-standardize"),
                                           _ratios(results, "relu", "relu-mean-image"))]
    outcomes["zero_center_enough"] = outcome(
        f"relu + He, per_channel_mean vs standardize (per-channel mean and std) and vs "
        f"mean_image; holds: neither needs {step_verdicts.NO_FASTER:g}x fewer steps, a slower "
        f"one agrees; does not hold: one surely needs {step_verdicts.FASTER:g}x fewer; " + setup,
        steps_text("relu", "relu-standardize", "relu-mean-image")
        + "; standardize/per_channel_mean, mean_image/per_channel_mean: "
        + per_seed(f"{a} {b}" for a, b in scalings), step_verdicts.no_faster(scalings),
        *_runs(results, "relu", "relu-standardize", "relu-mean-image"))
    search_setup = (f"{scale.train_size} images, coarse range 1e-6 to 1, {plan.coarse_trials} "
                    f"coarse trials x {plan.coarse_epochs} epochs, {plan.fine_trials} fine x "
                    f"{plan.fine_epochs}")
    outcomes["lr_range"] = _range_outcome(
        {name: r.found for name, r in results.items()},
        f"the {len(results)} lr-searches above (SGD momentum 0.9, {search_setup})")
    outcomes["lr_range_adam"] = _range_outcome(
        {f"{ADAM_VARIANT} (Adam)": adam},
        f"the same search for {ADAM_VARIANT} + He with Adam ({search_setup})")
    return outcomes
