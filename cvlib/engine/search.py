"""Optuna's side of a sampling search (``search.strategy`` random or tpe): the study, its
sampler and pruner, asked and told in the command's process. The only module that
imports Optuna.

The study lives in memory and is built again, before each proposal and each pruning
decision, from the trials that have ended (read back from the store on a rerun) and those
still training: each is replayed through Optuna's ask-and-tell with its values fixed
(``enqueue_trial``), its epochs' val_accuracy reported and the pruner asked at each rung
as when it trained, so that the pruner's rung records are Optuna's own. A proposal's
sampler is seeded by the search's seed and the study's trial count: the same seed and the
same ended and running trials give the same proposals, whether the search runs
uninterrupted or resumes after a kill. With one trainer nothing runs beside a proposal,
so a search's proposals follow from its seed alone; with more, they also depend on the
order in which its trials reach their rungs and ends, which timing decides.
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
# Every study's name (see Search.live_study).
STUDY_NAME = "cvlib-search"


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


@dataclass(frozen=True)
class RunningTrial:
    """A trial still training: held by the study while others are proposed or pruned."""

    number: int
    values: dict[str, Any]
    # Its val_accuracy after each epoch (from 1) of the rungs it has passed.
    epochs: dict[int, float] = field(default_factory=dict)
    # The last rung it passed (0: none yet).
    passed: int = 0


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
        return self.live_study(ended, [])[0]

    def live_study(self, ended: list[EndedTrial], running: list[RunningTrial]
                   ) -> tuple[optuna.Study, dict[int, optuna.trial.Trial]]:
        """A fresh study told every ended trial and holding the running ones, all in
        order of their numbers: each ended trial's rungs replayed and its end told, each
        running trial's rungs passed replayed and left running (TPE's constant liar then
        keeps new proposals away from it).

        Returns:
            The study, and the Optuna trial of each running trial by its number.
        """
        # A fixed name: Hyperband's brackets are drawn from the study's name and the
        # trial's number, and every rebuilt study must draw the same.
        study = optuna.create_study(direction="maximize", sampler=self._sampler(0),
                                    pruner=self._pruner(), study_name=STUDY_NAME)
        live = {}
        for trial in sorted([*ended, *running], key=lambda t: t.number):
            study.enqueue_trial({key: _choice(value) for key, value in trial.values.items()})
            asked = study.ask(self.distributions)
            if isinstance(trial, RunningTrial):
                self._replay(asked, trial.epochs, trial.passed)
                live[trial.number] = asked
            else:
                self._replay(asked, trial.epochs, max(trial.epochs, default=0))
                self.tell_ended(study, asked, trial.value, trial.pruned)
        return study, live

    def _replay(self, trial: optuna.trial.Trial, epochs: dict[int, float], last: int) -> None:
        """Report a trial's epochs and ask the pruner at each rung up to ``last``, as
        its training did (which records the trial's rungs)."""
        previous = 0
        for rung in self.rungs():
            if rung > last:
                break
            self.report(trial, epochs, previous, rung)
            trial.should_prune()
            previous = rung

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
