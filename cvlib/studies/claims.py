"""``cvlib claims``: test the statements of the notes on real CIFAR-10.

The studies (one module each in this package) run into one experiment: a parent run for the
whole study holds the claims table (``claims.md``, ``claims.csv``), with one nested
parent per study (its grid, figures and learning-rate searches under it). Running it
again resumes: finished cells are not trained again.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import textwrap
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from cvlib.engine.experiment import Experiment
from cvlib.engine.options import EngineOptions
from cvlib.studies import judgments, step_verdicts, verdicts
from cvlib.studies.activation_claims import (
    DEAD_UNITS_LEARNING_RATE,
    activation_cost_study,
    dead_unit_study,
    gradient_sign_study,
    maxout_parameter_study,
)
from cvlib.studies.batch_norm import FIXED_LOGITS_INITIALIZER, bn_study, bn_test_time_study
from cvlib.studies.claims_page import Evidence, PageRow, claims_page
from cvlib.studies.context import SCALES, Outcome, StudyContext
from cvlib.studies.init_at_depth import init_study, small_init_depth_study
from cvlib.studies.steps_to_accuracy import (
    CLAIMED_SPEEDUP,
    NOTES_LR_RANGE,
    SPEEDUP_TOLERANCE,
    speed_study,
)

# "verdict" is holds, does not hold or inconclusive; "reason" says why an inconclusive
# one is (else it is empty).
TABLE_COLUMNS = ["key", "claim", "source", "setup", "measured", "verdict", "reason"]


@dataclass(frozen=True)
class Claim:
    """One statement of the notes, and where it comes from."""

    text: str
    source: str
    # The other claims whose figure this one's is, byte for byte. Empty for every claim:
    # each figure shows its own claim's cells and the variants its verdict compares, and
    # a figure shared with an undeclared claim is reported (shared_figures).
    shares_figure_with: tuple[str, ...] = ()


# "~6x": within a factor SPEEDUP_TOLERANCE of it, either way.
SPEEDUP_RANGE = (f"{CLAIMED_SPEEDUP / SPEEDUP_TOLERANCE:g}x to "
                 f"{CLAIMED_SPEEDUP * SPEEDUP_TOLERANCE:g}x")
LECTURE6 = "CS231n lecture 6 (Training Neural Networks I)"
ACTIVATIONS_SOURCE = f"{LECTURE6}, activation functions"
CLAIMS = {
    "sigmoid_cost": Claim("exp() makes sigmoid computationally expensive; ReLU is cheap "
                          f"(verdict: sigmoid's own forward+backward > "
                          f"{verdicts.COST_RATIO:g}x ReLU's)", ACTIVATIONS_SOURCE),
    "sigmoid_signs": Claim("Sigmoid outputs are not zero-centered, so the gradients on a "
                           "neuron's weights all have the same sign (zig-zag updates); "
                           "zero-centered outputs do not do this", ACTIVATIONS_SOURCE),
    "centering_speed": Claim("...and so sigmoid trains slower than the same function "
                             "zero-centered (centered_sigmoid = sigmoid - 0.5)",
                             ACTIVATIONS_SOURCE),
    "vanishing": Claim("Sigmoid kills gradients: through a deep sigmoid mlp the gradient "
                       "vanishes toward the input (first/last layer < 0.01), not with "
                       "ReLU + He (>= 0.1)", ACTIVATIONS_SOURCE),
    "dead_units": Claim(f"ReLU units can die at a too-high learning rate (SGD "
                        f"{DEAD_UNITS_LEARNING_RATE:g}, momentum 0.9); Leaky ReLU, "
                        f"PReLU, ELU and Maxout do not (dead: no gradient for any probe "
                        f"image; more than {verdicts.DEAD_LIMIT:.0%} of the units)",
                        ACTIVATIONS_SOURCE),
    "maxout_params": Claim("Maxout (k = 2) doubles the parameters of every layer that "
                           "feeds it", f"{ACTIVATIONS_SOURCE}; Goodfellow et al. 2013"),
    "relu_vs_tanh": Claim(f"ReLU converges ~{CLAIMED_SPEEDUP:g}x faster than tanh "
                          f"(verdict: {SPEEDUP_RANGE} fewer steps)",
                          "Krizhevsky et al. 2012, Figure 1; " + LECTURE6),
    "relu_vs_sigmoid": Claim(f"ReLU converges ~{CLAIMED_SPEEDUP:g}x faster than sigmoid "
                             f"(verdict: {SPEEDUP_RANGE} fewer steps)", LECTURE6),
    "sigmoid": Claim("sigmoid should not be used: of the three it trains slowest",
                     f"{LECTURE6}, activation functions"),
    "init_small": Claim("tanh + 0.01*randn: activations collapse toward zero at depth "
                        "(std last/first layer < 1e-3)", f"{LECTURE6}, weight initialization"),
    "init_unit": Claim("tanh + 1.0*randn: most outputs saturated in every layer (> 80%)",
                       f"{LECTURE6}, weight initialization"),
    "init_xavier": Claim("tanh + Xavier: std stays within [0.1, 1] in every layer",
                         f"{LECTURE6}, weight initialization"),
    "init_relu_xavier": Claim("ReLU + Xavier: std decays with depth (last/first < 0.1)",
                              f"{LECTURE6}, weight initialization"),
    "init_he": Claim("ReLU + He (randn/sqrt(fan_in/2)): std holds (last/first in [1/3, 3])",
                     f"{LECTURE6}; He et al. 2015"),
    "small_init_depth": Claim("0.01*randn is fine for small networks, not for deep ones "
                              f"(trains: training accuracy >= {verdicts.TRAINS:g}; fails: "
                              f"< {verdicts.FAILS:g}), while He trains at every depth",
                              f"{LECTURE6}, weight initialization"),
    "bn_robust": Claim("BN makes training robust to the initialization: spread of val "
                       "accuracy across 4 initializers with BN before <= half that without BN",
                       f"{LECTURE6}; Ioffe & Szegedy 2015"),
    "bn_robust_fixed_logits": Claim(
        "The same, with the initializer varied only in the layers BN normalizes (the "
        f"logits layer keeps {FIXED_LOGITS_INITIALIZER})", f"{LECTURE6}; Ioffe & Szegedy 2015"),
    "bn_placement": Claim("BN before the nonlinearity beats BN after it (mean val accuracy "
                          "over the initializers; published results disagree)",
                          f"{LECTURE6} (places BN before); Ioffe & Szegedy 2015"),
    "bn_test_time": Claim("At test time BN uses the mean and variance from training: an "
                          "image's prediction alone equals its prediction inside a batch",
                          f"{LECTURE6}; Ioffe & Szegedy 2015, Algorithm 2"),
    "zero_center": Claim("Zero-centering the input (per-channel mean) makes the network "
                         "train faster than raw [0, 1] pixels",
                         "CS231n notes, data preprocessing"),
    "zero_center_enough": Claim("For images, zero-centering is enough: normalizing the "
                                "scale (standardize) or subtracting the mean image trains "
                                "no faster than the per-channel mean (verdict: neither "
                                f"needs {step_verdicts.NO_FASTER:g}x fewer steps in any "
                                "seed; slower agrees)",
                                "CS231n notes, data preprocessing"),
    "lr_range": Claim(f"The best SGD learning rate lies in, or near (within 3x), "
                      f"[{NOTES_LR_RANGE[0]:g}, {NOTES_LR_RANGE[1]:g}]",
                      f"{LECTURE6}, babysitting the learning process"),
    "lr_range_adam": Claim(f"The best Adam learning rate lies in, or near (within 3x), "
                           f"[{NOTES_LR_RANGE[0]:g}, {NOTES_LR_RANGE[1]:g}]",
                           f"{LECTURE6}, babysitting the learning process"),
}


# The studies in the order they run, and the claims each one answers.
STUDIES: list[tuple[Callable[[StudyContext], dict[str, Outcome]], tuple[str, ...]]] = [
    (init_study, ("init_small", "init_unit", "init_xavier", "init_relu_xavier", "init_he",
                  "vanishing")),
    (gradient_sign_study, ("sigmoid_signs",)),
    (maxout_parameter_study, ("maxout_params",)),
    (activation_cost_study, ("sigmoid_cost",)),
    (speed_study, ("relu_vs_tanh", "relu_vs_sigmoid", "sigmoid", "centering_speed",
                   "zero_center", "zero_center_enough", "lr_range", "lr_range_adam")),
    (dead_unit_study, ("dead_units",)),
    (small_init_depth_study, ("small_init_depth",)),
    (bn_study, ("bn_robust", "bn_robust_fixed_logits", "bn_placement")),
    (bn_test_time_study, ("bn_test_time",)),
]


def undeclared_shared_figures(evidence: dict[str, Evidence]) -> list[tuple[str, ...]]:
    """The groups of claims whose figures are the same PNG although a claim of the group
    does not declare the others in its ``shares_figure_with``.

    Args:
        evidence: Each claim's figure, by claim key (keys of CLAIMS).

    Returns:
        Each such group's keys, in the order of ``evidence``; empty when every figure is
        its own claim's or declared.
    """
    by_png: dict[bytes, list[str]] = defaultdict(list)
    for key, shown in evidence.items():
        by_png[shown.png].append(key)
    return [tuple(keys) for keys in by_png.values() if len(keys) > 1 and any(
        set(keys) - {key} - set(CLAIMS[key].shares_figure_with) for key in keys)]


def claims_table(outcomes: dict[str, Outcome]) -> pd.DataFrame:
    """The table: one row per claim, in CLAIMS order, for the claims measured."""
    rows = [{"key": key, "claim": claim.text, "source": claim.source,
             "setup": outcomes[key].setup, "measured": outcomes[key].measured,
             "verdict": outcomes[key].verdict.kind, "reason": outcomes[key].verdict.reason}
            for key, claim in CLAIMS.items() if key in outcomes]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def table_verdicts(table: pd.DataFrame) -> list[judgments.Verdict]:
    """Each row's verdict with its reason, as the table holds them."""
    return [judgments.Verdict(row.verdict, row.reason) for row in table.itertuples()]


def claims_markdown(table: pd.DataFrame) -> str:
    """The claims table as markdown, each verdict with its reason (``inconclusive:
    ...``), with ``|`` inside a cell escaped, so that every row keeps its five fields
    (``max |logit difference|`` would split a cell)."""
    shown = table.drop(columns=["key", "reason"]).assign(
        verdict=[str(verdict) for verdict in table_verdicts(table)])
    escaped = shown.map(
        lambda value: value.replace("|", "\\|") if isinstance(value, str) else value)
    return escaped.to_markdown(index=False)


def claims_lines(table: pd.DataFrame, width: int = 100) -> list[str]:
    """The claims for a terminal: each claim wrapped to ``width`` after its verdict, then
    its figure and, for an inconclusive one, why, indented (the setups are in the files).

    Args:
        table: From :func:`claims_table`.
        width: The terminal's width in characters.

    Returns:
        The lines.
    """
    width = max(width, 40)
    lines = []
    for row in table.itertuples():
        lines += textwrap.wrap(f"{row.verdict.upper()}: {row.claim}", width,
                               subsequent_indent="    ")
        lines += textwrap.wrap(f"measured: {row.measured}", width, initial_indent="    ",
                               subsequent_indent="      ")
        if row.reason:
            lines += textwrap.wrap(f"{row.verdict}: {row.reason}", width,
                                   initial_indent="    ", subsequent_indent="      ")
    return lines


@dataclass
class ClaimsResult:
    """What ``cvlib claims`` found: the table, each claim's figure, and how it was run."""

    table: pd.DataFrame
    evidence: dict[str, Evidence] = field(default_factory=dict)
    # scale, date, machine, command, wall_time: for the page and docs/claims.md.
    about: dict[str, str] = field(default_factory=dict)

    def page(self) -> str:
        """The evidence page, claims.html."""
        rows = [PageRow(row.key, row.claim, row.source, row.setup, row.measured, verdict,
                        self.evidence.get(row.key))
                for row, verdict in zip(self.table.itertuples(), table_verdicts(self.table))]
        return claims_page(rows, f"What cvlib claims found ({self.about.get('scale', '')})",
                           self.about)

    def write(self, folder: str | Path) -> None:
        """Write claims.md, claims.csv, claims.html, about.json and figures/<key>.png
        (with figures/captions.json) into ``folder``."""
        folder = Path(folder)
        (folder / "figures").mkdir(parents=True, exist_ok=True)
        (folder / "claims.md").write_text(claims_markdown(self.table) + "\n")
        self.table.to_csv(folder / "claims.csv", index=False)
        (folder / "claims.html").write_text(self.page())
        (folder / "about.json").write_text(json.dumps(self.about, indent=1) + "\n")
        for key, evidence in self.evidence.items():
            (folder / "figures" / f"{key}.png").write_bytes(evidence.png)
        (folder / "figures" / "captions.json").write_text(json.dumps(
            {key: evidence.caption for key, evidence in self.evidence.items()}, indent=1) + "\n")


def machine_description() -> str:
    """The machine in a few words: processor, cores, system."""
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}")


def run_claims(tracking_uri: str, scale: str = "full", engine: EngineOptions | None = None,
               echo: Callable[[str], None] = print, experiment: str | None = None,
               command: str = "cvlib claims") -> ClaimsResult:
    """Run every study and judge every claim; log the table and the page to a parent run.

    Args:
        tracking_uri: The MLflow store.
        scale: ``quick``, ``full`` or ``smoke`` (see SCALES).
        engine: What trains the cells, from what data; its workers are shared by every
            study (default: one after another in this process).
        echo: Receives progress lines.
        experiment: The experiment (default: ``claims``, or ``claims-<scale>``).
        command: The command line, as the page and the docs show it.

    Returns:
        The ClaimsResult: its table has one row per claim (key, claim, source, setup,
        measured, verdict, reason). A study that raises makes its claims inconclusive,
        with the error as the reason; the others still run.
    """
    sizes = SCALES[scale]
    experiment = experiment or ("claims" if scale == "full" else f"claims-{scale}")
    params = {f"scale.{key}": value for key, value in dataclasses.asdict(sizes).items()}
    started = time.monotonic()
    about = {"scale": scale, "date": datetime.date.today().isoformat(),
             "machine": machine_description(), "command": command}
    with Experiment(tracking_uri, experiment, engine, echo) as opened, \
            opened.parent_run(f"claims-{scale}", params) as parent:
        ctx = StudyContext(opened, sizes, parent)
        outcomes: dict[str, Outcome] = {}
        for study, keys in STUDIES:
            try:
                outcomes.update(study(ctx))
            except Exception as error:  # one broken study must not lose the others
                echo(traceback.format_exc())
                failed = judgments.inconclusive(f"study {study.__name__} failed: "
                                               f"{type(error).__name__}: {error}")
                outcomes.update({key: Outcome("", "", failed) for key in keys})
        about["wall_time"] = f"{(time.monotonic() - started) / 60:.0f} min"
        for keys in undeclared_shared_figures(ctx.evidence):
            echo(f"warning: claims {', '.join(keys)} show the very same figure, and not "
                 f"every one of them declares it (Claim.shares_figure_with)")
        result = ClaimsResult(claims_table(outcomes), ctx.evidence, about)
        table = result.table
        opened.log_outputs(parent, texts={"claims.md": claims_markdown(table),
                                          "claims.csv": table.to_csv(index=False),
                                          "claims.html": result.page()},
                           metrics={f"verdicts_{verdict.replace(' ', '_')}": int(count)
                                    for verdict, count in table["verdict"].value_counts().items()})
    return result
