"""Optuna's side of a sampling search (``search.strategy`` random or tpe): the study, its
sampler and pruner, asked and told in the command's process. The only module that
imports Optuna.

The study lives in memory and is built again, before each batch of proposals, from the
trials that have ended (read back from the store on a rerun): each is replayed through
Optuna's ask-and-tell with its values fixed (``enqueue_trial``), its epochs' val_accuracy
reported and the pruner asked at each rung as when it trained, so that the pruner's rung
records are Optuna's own. A proposal's sampler is seeded by the search's seed and the
study's trial count: the same seed and the same ended trials give the same proposals,
whether the search runs uninterrupted or resumes after a kill.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from cvlib.config import SearchConfig
from cvlib.spaces import CHOICE, INT_RANGES, LOG_RANGES, Dimension

optuna.logging.set_verbosity(optuna.logging.WARNING)

# The objective of a diverged trial: below every trial that learned anything.
DIVERGED_VALUE = 0.0


@dataclass(frozen=True)
class EndedTrial:
    """A trial that has a result: what the study is told again before each proposal."""

    # Its number (the cvlib.trial tag).
    number: int
    # Its sampled values, by dotted key.
    values: dict[str, Any]
    # Its objective (val_accuracy at its last epoch; DIVERGED_VALUE if it diverged).
    value: float
    # Whether the pruner stopped it.
    pruned: bool = False
    # Its val_accuracy after each epoch (from 1), as reported to the pruner.
    epochs: dict[int, float] = field(default_factory=dict)
    # Its cell's hash: a proposal of the same cell is not trained again.
    cell_hash: str = ""


def distribution(dimension: Dimension) -> BaseDistribution:
    """The Optuna distribution of one searched setting."""
    if dimension.kind == CHOICE:
        return CategoricalDistribution([_choice(value) for value in dimension.values])
    low, high = dimension.values
    log = dimension.kind in LOG_RANGES
    if dimension.kind in INT_RANGES:
        return IntDistribution(low, high, log=log)
    return FloatDistribution(low, high, log=log)


def _choice(value: Any) -> Any:
    """A choice as Optuna holds it: None, bool, int, float or str as they are, a list
    (model.widths) as its JSON text."""
    return json.dumps(value) if isinstance(value, (list, tuple)) else value


class Search:
    """The study of one sampling search, rebuilt from its ended trials.

    Args:
        space: What is searched.
        search: The search settings (strategy, seed, pruner, rungs).
        epochs: Each trial's full epochs (train.epochs): the pruner's largest resource.
    """

    def __init__(self, space: tuple[Dimension, ...], search: SearchConfig, epochs: int):
        self.space = space
        self.search = search
        self.epochs = epochs
        self.distributions = {d.key: distribution(d) for d in space}

    def rungs(self) -> list[int]:
        """The epochs after which a trial is reported and may be pruned (the last one
        alone without a pruner)."""
        if self.search.pruner == "none":
            return [self.epochs]
        return self.search.rungs(self.epochs)

    def study(self, ended: list[EndedTrial]) -> optuna.Study:
        """A fresh study told every ended trial, in order of their numbers."""
        study = optuna.create_study(direction="maximize", sampler=self._sampler(0),
                                    pruner=self._pruner())
        for trial in sorted(ended, key=lambda t: t.number):
            study.enqueue_trial({key: _choice(value) for key, value in trial.values.items()})
            live = study.ask(self.distributions)
            last, previous = max(trial.epochs, default=0), 0
            for rung in self.rungs():
                if rung > last:
                    break
                self.report(live, trial.epochs, previous, rung)
                live.should_prune()  # records the trial's rung as its training did
                previous = rung
            self.tell_ended(study, live, trial.value, trial.pruned)
        return study

    def holds(self, values: dict[str, Any]) -> bool:
        """Whether the space holds a trial's values (a space changed since it ran may
        not)."""
        return set(values) == {d.key for d in self.space} and all(
            dimension.holds(values[dimension.key]) for dimension in self.space)

    def ask(self, study: optuna.Study) -> optuna.trial.Trial:
        """A new proposal, by a sampler seeded with the search's seed and the study's
        trial count."""
        study.sampler = self._sampler(len(study.trials))
        return study.ask(self.distributions)

    def values(self, trial: optuna.trial.Trial) -> dict[str, Any]:
        """A proposal's values as its cell takes them (floats rounded, choices as
        written)."""
        values = {}
        for dimension in self.space:
            value = trial.params[dimension.key]
            if dimension.is_choice:
                value = dimension.values[[_choice(v) for v in dimension.values].index(value)]
            values[dimension.key] = dimension.rounded(value)
        return values

    @staticmethod
    def report(trial: optuna.trial.Trial, epochs: dict[int, float], after: int,
               until: int) -> None:
        """Report a trial's val_accuracy of the epochs after ``after`` up to ``until``
        (a diverged epoch's NaN as DIVERGED_VALUE)."""
        for epoch in range(after + 1, until + 1):
            if epoch in epochs:
                value = epochs[epoch]
                trial.report(DIVERGED_VALUE if not math.isfinite(value) else value, epoch)

    @staticmethod
    def tell_ended(study: optuna.Study, trial: optuna.trial.Trial, value: float,
                   pruned: bool) -> None:
        """Tell a trial that has a result: its objective, or pruned."""
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, value)

    @staticmethod
    def tell_failed(study: optuna.Study, trial: optuna.trial.Trial) -> None:
        """Tell a trial whose cell failed."""
        study.tell(trial, state=TrialState.FAIL)

    @staticmethod
    def tell_duplicate(study: optuna.Study, trial: optuna.trial.Trial,
                       value: float | None) -> None:
        """Tell a proposal whose cell is already taken: the taken cell's objective, or
        failed when it has none yet (it trains in this batch, or failed)."""
        if value is None:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, value)

    def _sampler(self, count: int) -> optuna.samplers.BaseSampler:
        seed = int(np.random.SeedSequence([self.search.seed, count]).generate_state(1)[0])
        if self.search.strategy == "tpe":
            return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        return optuna.samplers.RandomSampler(seed=seed)

    def _pruner(self) -> optuna.pruners.BasePruner:
        search = self.search
        if search.pruner == "halving":
            return optuna.pruners.SuccessiveHalvingPruner(
                min_resource=search.min_epochs, reduction_factor=search.reduction)
        if search.pruner == "hyperband":
            return optuna.pruners.HyperbandPruner(
                min_resource=search.min_epochs, max_resource=self.epochs,
                reduction_factor=search.reduction)
        return optuna.pruners.NopPruner()
