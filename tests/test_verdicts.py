"""Verdicts on the notes' claims, from synthetic figures."""
import math
import re

import numpy as np
import pandas as pd
import pytest

from cvlib.studies import judgments, step_verdicts, verdicts
from cvlib.studies.claims import CLAIMS, TABLE_COLUMNS, claims_lines, claims_markdown, claims_table
from cvlib.studies.context import Outcome
from cvlib.studies.judgments import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, Unknown, Verdict
from cvlib.studies.step_verdicts import Ratio

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("per_seed, expected", [
    ([True, True, True], HOLDS),
    ([False, False, False], DOES_NOT_HOLD),
    ([True, False, True], INCONCLUSIVE),   # seeds disagree
    ([True, Unknown("why"), True], INCONCLUSIVE),    # one seed cannot tell
    ([], INCONCLUSIVE),
    ([True], HOLDS),
    ([np.True_, True], HOLDS),
])
def test_agreement_needs_every_seed(per_seed, expected):
    assert judgments.agreement(per_seed).kind == expected


def test_an_inconclusive_verdict_says_why():
    disagree = judgments.agreement([True, False, True])
    assert disagree.reason == "true for seed 0, seed 2, false for seed 1"
    unknown = judgments.agreement([Unknown("a figure is missing (NaN)"), True,
                                  Unknown("a figure is missing (NaN)"), Unknown("noise")])
    assert unknown.reason == "seed 0, seed 2: a figure is missing (NaN); seed 3: noise"
    assert str(unknown) == "inconclusive: " + unknown.reason
    assert judgments.agreement([]).reason == "nothing was measured"
    labelled = judgments.agreement([True, Unknown("x")], labels=["relu", "tanh"])
    assert labelled.reason == "tanh: x"
    assert str(judgments.Verdict(HOLDS)) == HOLDS
    with pytest.raises(ValueError):
        judgments.Verdict(INCONCLUSIVE)  # never without its reason
    with pytest.raises(ValueError):
        judgments.Verdict(HOLDS, "because")
    with pytest.raises(ValueError):
        judgments.Verdict("maybe", "x")


def _inconclusive(verdict: judgments.Verdict, words: str = "") -> bool:
    return verdict.kind == INCONCLUSIVE and words in verdict.reason


def test_initialization_judges_on_layer_profiles():
    collapsing = [0.2 * 0.2 ** depth for depth in range(10)]     # last/first 5e-7
    steady = [0.8, 0.75, 0.7, 0.72, 0.69, 0.7, 0.71, 0.68, 0.7, 0.66]
    decaying = [0.6 * 0.7 ** depth for depth in range(10)]       # last/first 0.04
    assert verdicts.collapses(collapsing) is True and verdicts.collapses(steady) is False
    assert verdicts.decays(decaying) is True and verdicts.decays(steady) is False
    assert verdicts.holds_steady(steady) is True and verdicts.holds_steady(decaying) is False
    assert verdicts.holds_steady([1.0, 2.9]) is True and verdicts.holds_steady([1.0, 3.1]) is False
    assert verdicts.stds_within([0.6, 0.3, 0.2]) is True
    assert verdicts.stds_within([0.6, 0.09]) is False
    assert verdicts.saturated_everywhere([0.85, 0.9, 0.92]) is True
    assert verdicts.saturated_everywhere([0.79, 0.95, 0.95]) is False  # one layer below
    assert verdicts.collapses([0.0, 0.0]) == Unknown("the first layer's std is 0")


@pytest.mark.parametrize("test", [verdicts.collapses, verdicts.decays, verdicts.holds_steady,
                                  verdicts.stds_within, verdicts.saturated_everywhere])
@pytest.mark.parametrize("broken", [NAN, INF, -INF])
def test_initialization_tests_cannot_tell_from_a_failed_or_diverged_profile(test, broken):
    profile = [0.5, 0.4, 0.3, 0.2]
    for index in range(len(profile)):
        figures = list(profile)
        figures[index] = broken
        assert isinstance(test(figures), Unknown), (test, figures)
    assert isinstance(test([]), Unknown)
    # A failed seed among good ones makes the verdict inconclusive, saying which seed.
    verdict = judgments.agreement([test(profile), test([broken] * 4)])
    assert _inconclusive(verdict, "seed 1: a figure is")


def test_steps_to_accuracy_uses_a_trailing_window():
    accuracies = [0.1] * 10 + [0.5] * 10
    # The mean of the last 4 steps first reaches 0.29 at step 12 (0.1, 0.1, 0.5, 0.5).
    assert step_verdicts.steps_to_accuracy(accuracies, 0.29, window=4) == 12
    assert step_verdicts.steps_to_accuracy(accuracies, 0.5, window=4) == 14
    assert step_verdicts.steps_to_accuracy(accuracies, 0.5, window=1) == 11
    assert step_verdicts.steps_to_accuracy(accuracies, 0.6, window=4) is None
    # One lucky batch does not count as reaching it.
    assert step_verdicts.steps_to_accuracy([0.1, 0.9, 0.1, 0.1], 0.5, window=3) is None
    assert step_verdicts.steps_to_accuracy([0.9], 0.5, window=3) is None


def test_steps_to_accuracy_cannot_tell_for_a_failed_or_diverged_run():
    # Failed: no step logged.
    assert step_verdicts.steps_to_accuracy([], 0.1, window=2) == Unknown("no training step logged")
    # Diverged before getting there: whether it would have is unknown, not "never".
    diverged = step_verdicts.steps_to_accuracy([0.1, 0.2, NAN, NAN, NAN], 0.3, window=2)
    assert diverged == Unknown("the training accuracy is not finite from step 3")
    assert isinstance(step_verdicts.steps_to_accuracy([NAN] * 5, 0.1, window=2), Unknown)
    # Diverged after reaching it: the crossing stands.
    assert step_verdicts.steps_to_accuracy([0.5, 0.5, NAN], 0.4, window=2) == 2
    assert np.isnan(step_verdicts.trailing_mean([0.1, NAN, 0.3], 2)).all()


def test_step_ratio_with_runs_that_did_not_get_there():
    assert step_verdicts.step_ratio(100, 600, 800, 800) == Ratio(6.0, 6.0)
    slow_never = step_verdicts.step_ratio(100, None, 800, 800)
    assert slow_never.low == 8.0 and math.isinf(slow_never.high)
    assert str(slow_never) == ">8x"
    fast_never = step_verdicts.step_ratio(None, 200, 800, 800)
    assert fast_never == Ratio(0.0, 0.25) and str(fast_never) == "<0.25x"
    neither = step_verdicts.step_ratio(None, None, 800, 800)
    assert isinstance(neither.above(1.0), Unknown) and str(neither) == "?"


def test_step_ratio_of_a_failed_or_diverged_run_has_no_interval():
    # A failed run trained no step: its budget is 0, and nothing is divided by it.
    failed = step_verdicts.step_ratio(None, 200, 0, 800)
    assert failed.reason == "no training step logged" and str(failed) == "n/a"
    assert failed.above(1.0) == Unknown("no training step logged")
    diverged = step_verdicts.step_ratio(100, Unknown("the training accuracy is not finite"), 800, 80)
    assert diverged.reason == "the training accuracy is not finite"
    assert step_verdicts.step_ratio(Unknown("x"), 100, 800, 800).reason == "x"


GOOD, FAILED = Ratio(4.0, 4.0), step_verdicts.step_ratio(None, 100, 0, 800)
DIVERGED = step_verdicts.step_ratio(100, Unknown("the training accuracy is not finite from step 3"),
                               800, 800)


def test_speed_verdicts():
    # "~6x faster": every seed within [3x, 12x], either way.
    about_six = [Ratio(3.5, 3.5), Ratio(8.0, 8.0), Ratio(4.0, 4.0)]
    assert step_verdicts.about(about_six, 6.0, 2.0).kind == HOLDS
    assert step_verdicts.about([Ratio(1.5, 1.5)] * 3, 6.0, 2.0).kind == DOES_NOT_HOLD
    assert step_verdicts.about([Ratio(20.0, 20.0)] * 3, 6.0, 2.0).kind == DOES_NOT_HOLD
    assert step_verdicts.about([Ratio(4, 4), Ratio(2, 2), Ratio(4, 4)], 6.0, 2.0).kind \
        == INCONCLUSIVE
    assert step_verdicts.faster([Ratio(1.3, 1.3)] * 3).kind == HOLDS
    assert step_verdicts.faster([Ratio(0.7, 0.7)] * 3).kind == DOES_NOT_HOLD
    assert _inconclusive(step_verdicts.faster([Ratio(1.05, 1.05)] * 3),
                         "no difference beyond 1.1x")
    # Sigmoid slower than both in every seed; then slower than only one.
    assert step_verdicts.slowest([[Ratio(5, 5), Ratio(2, 2)]] * 3).kind == HOLDS
    assert step_verdicts.slowest([[Ratio(5, 5), Ratio(0.5, 0.5)]] * 3).kind == DOES_NOT_HOLD
    assert step_verdicts.slowest([[Ratio(5, 5), Ratio(1.0, 1.0)]] * 3).kind == INCONCLUSIVE


def test_a_censored_ratio_decides_only_where_its_bound_does():
    # The slow network never reached the accuracy: relu 190 steps, sigmoid > 790 (its
    # budget). ">4.2x" cannot tell "about 6x" (it may be 100x): raise the budget.
    never = step_verdicts.step_ratio(190, None, 790, 790)
    assert never.censored and str(never) == ">4.2x"
    assert _inconclusive(step_verdicts.about([never], 6.0, 2.0), "raise the budget")
    # A bound beyond the range's top does decide: over 12x is not about 6x.
    assert step_verdicts.about([step_verdicts.step_ratio(50, None, 790, 790)], 6.0, 2.0).kind \
        == DOES_NOT_HOLD
    # A bound below the range's bottom decides too: the fast one never got there.
    assert step_verdicts.about([step_verdicts.step_ratio(None, 500, 790, 790)], 6.0, 2.0).kind \
        == DOES_NOT_HOLD
    # "Slower": a bound past the margin decides; "?" (neither got there) never does.
    assert step_verdicts.faster([never]).kind == HOLDS
    assert step_verdicts.slowest([[never, never]]).kind == HOLDS
    neither = step_verdicts.step_ratio(None, None, 790, 790)
    for verdict in (step_verdicts.faster([neither]), step_verdicts.slowest([[never, neither]]),
                    step_verdicts.about([neither], 6.0, 2.0),
                    step_verdicts.no_faster([[Ratio(1.0, 1.0), neither]])):
        assert _inconclusive(verdict, "neither network reached the accuracy"), verdict
        assert verdict.reason.endswith("raise the budget")
    # The fast one did not get there, the slow one at 1.05x its budget: no tell.
    assert _inconclusive(step_verdicts.faster([step_verdicts.step_ratio(None, 830, 790, 790)]),
                         "<1.1x is only a bound")
    # An exact ratio in the margin is noise, not a budget question.
    assert "budget" not in step_verdicts.faster([Ratio(1.05, 1.05)]).reason
    assert not Ratio(2.0, 2.0).censored and not FAILED.censored


@pytest.mark.parametrize("broken", [FAILED, DIVERGED])
def test_speed_verdicts_cannot_tell_from_a_failed_or_diverged_run(broken):
    for position in range(3):
        ratios = [GOOD] * 3
        ratios[position] = broken
        assert _inconclusive(step_verdicts.about(ratios, 6.0, 2.0),
                             f"seed {position}: {broken.reason}")
        assert _inconclusive(step_verdicts.faster(ratios), f"seed {position}: {broken.reason}")
        # Even where another ratio alone would say "does not hold".
        pairs = [[GOOD, GOOD]] * 3
        pairs[position] = [Ratio(0.5, 0.5), broken]
        assert _inconclusive(step_verdicts.slowest(pairs), broken.reason)
        pairs[position] = [broken, Ratio(3.0, 3.0)]
        assert _inconclusive(step_verdicts.no_faster(pairs), broken.reason)
    assert _inconclusive(step_verdicts.faster([broken] * 3), "seed 0, seed 1, seed 2")


def test_batch_norm_verdicts():
    assert verdicts.spread([0.1, 0.45, 0.4, 0.5]) == pytest.approx(0.4)
    assert verdicts.much_smaller_spread([0.03, 0.05, 0.02], [0.4, 0.38, 0.41]).kind == HOLDS
    assert verdicts.much_smaller_spread([0.3, 0.35, 0.3], [0.4, 0.38, 0.41]).kind == DOES_NOT_HOLD
    assert verdicts.much_smaller_spread([0.03, 0.3, 0.02], [0.4, 0.38, 0.41]).kind == INCONCLUSIVE
    assert verdicts.better([0.52, 0.50, 0.51], [0.48, 0.47, 0.49]).kind == HOLDS
    assert verdicts.better([0.48, 0.47, 0.49], [0.52, 0.50, 0.51]).kind == DOES_NOT_HOLD
    assert _inconclusive(verdicts.better([0.500, 0.52, 0.51], [0.495, 0.47, 0.49]),
                         "seed 0: +0.005: within 0.01")
    assert verdicts.batch_independent(2e-6, 1.0).kind == HOLDS
    assert verdicts.batch_independent(0.5, 1.0).kind == DOES_NOT_HOLD
    assert verdicts.batch_independent(0.0, 0.0).kind == DOES_NOT_HOLD


@pytest.mark.parametrize("broken", [NAN, INF])
def test_batch_norm_verdicts_cannot_tell_from_a_failed_or_diverged_cell(broken):
    # spread sees a pandas Series, whose own max and min would skip NaN.
    assert math.isnan(verdicts.spread(pd.Series([0.1, NAN, 0.5, 0.4])))
    assert math.isnan(verdicts.spread(pd.Series([NAN, 0.1, 0.5, 0.4])))
    assert math.isnan(verdicts.spread([]))
    for position in range(3):
        figures = [0.03, 0.05, 0.02]
        figures[position] = broken
        assert _inconclusive(verdicts.much_smaller_spread(figures, [0.4, 0.38, 0.41]),
                             f"seed {position}: a figure is")
        assert _inconclusive(verdicts.much_smaller_spread([0.03] * 3, figures[::-1]))
        assert _inconclusive(verdicts.better(figures, [0.5] * 3), f"seed {position}")
        assert _inconclusive(verdicts.better([0.5] * 3, figures), f"seed {position}")
    assert _inconclusive(verdicts.batch_independent(broken, 1.0), "the test cell: a figure is")
    assert _inconclusive(verdicts.batch_independent(0.0, NAN), "the test cell: a figure is")


def test_learning_rate_range():
    assert verdicts.in_range(3e-4, 1e-5, 1e-3) is True
    assert verdicts.in_range(2.9e-3, 1e-5, 1e-3) is True      # near: within 3x
    assert verdicts.in_range(4e-2, 1e-5, 1e-3) is False
    assert verdicts.in_range(1e-6, 1e-5, 1e-3) is False
    assert isinstance(verdicts.in_range(NAN, 1e-5, 1e-3), Unknown)
    assert isinstance(verdicts.in_range(INF, 1e-5, 1e-3), Unknown)
    verdict = judgments.agreement([verdicts.in_range(rate, 1e-5, 1e-3) for rate in (3e-4, NAN)],
                                 labels=["relu", "tanh"])
    assert verdict.reason == "tanh: a figure is missing (NaN)"


def test_activation_cost_needs_a_clear_ratio_in_every_measurement():
    assert verdicts.costlier([1.6, 1.4, 1.3]).kind == HOLDS
    assert verdicts.costlier([1.0, 0.95, 1.05]).kind == DOES_NOT_HOLD
    assert _inconclusive(verdicts.costlier([1.6, 1.15, 1.4]), "seed 1: 1.15x lies between")
    for broken in (NAN, INF):
        for figures in ([1.6, broken], [broken, 1.6], [1.0, broken], [broken, 1.0]):
            assert _inconclusive(verdicts.costlier(figures), "a figure is")


def test_single_signed_gradients_after_sigmoid_only():
    assert verdicts.single_signed([1.0, 1.0], [[0.0, 0.01], [0.02, 0.0]]).kind == HOLDS
    assert verdicts.single_signed([0.05], [[0.0, 0.0]]).kind == DOES_NOT_HOLD
    assert verdicts.single_signed([1.0], [[0.95, 0.0]]).kind == DOES_NOT_HOLD  # centered too
    assert verdicts.single_signed([1.0, 0.5], [[0.0, 0.0], [0.0, 0.0]]).kind == INCONCLUSIVE


@pytest.mark.parametrize("broken", [NAN, INF])
def test_single_signed_cannot_tell_from_a_failed_or_diverged_cell_in_any_order(broken):
    # Python's max() of [nan, 0.95] is nan and of [0.95, nan] 0.95: no order may matter.
    for centered in ([broken, 0.95], [0.95, broken], [broken, 0.0], [0.0, broken]):
        assert _inconclusive(verdicts.single_signed([1.0], [centered]), "a figure is")
    assert _inconclusive(verdicts.single_signed([broken], [[0.0, 0.0]]), "a figure is")
    assert _inconclusive(verdicts.single_signed([1.0], [[]]), "no figure")


def test_vanishing_gradients_need_sigmoid_to_vanish_and_he_to_hold():
    assert verdicts.vanishes([2e-6, 1e-4], [2.8, 0.9]).kind == HOLDS
    assert verdicts.vanishes([0.5], [2.8]).kind == DOES_NOT_HOLD
    assert verdicts.vanishes([2e-6], [0.01]).kind == INCONCLUSIVE      # He in between
    assert verdicts.vanishes([2e-6], [1e-3]).kind == DOES_NOT_HOLD     # He vanished too
    assert verdicts.vanishes([0.05], [1.0]).kind == INCONCLUSIVE       # in between
    for broken in (NAN, INF):
        assert _inconclusive(verdicts.vanishes([broken], [1.0]), "a figure is")
        assert _inconclusive(verdicts.vanishes([0.5], [broken]), "a figure is")


def test_dead_units_verdict_compares_relu_with_each_other():
    assert verdicts.only_relu_dies([0.3, 0.2],
                                   [[0.0, 0.0, 0.0, 0.0], [0.0, 0.005, 0, 0]]).kind == HOLDS
    assert verdicts.only_relu_dies([0.3], [[0.0, 0.2, 0.0, 0.0]]).kind == DOES_NOT_HOLD
    # No ReLU unit died at this rate: the comparison cannot tell.
    assert _inconclusive(verdicts.only_relu_dies([0.0], [[0.0, 0.0, 0.0, 0.0]]),
                         "nothing to compare")
    for broken in (NAN, INF):
        assert _inconclusive(verdicts.only_relu_dies([broken], [[0.0] * 4]), "a figure is")
        # Even where another activation alone would say "does not hold".
        assert _inconclusive(verdicts.only_relu_dies([0.3], [[0.2, broken, 0, 0]]),
                             "a figure is")


def test_maxout_doubles_only_when_every_layer_does():
    assert verdicts.doubles([2.0, 2.0, 2.0]).kind == HOLDS
    assert verdicts.doubles([2.0, 1.5]).kind == DOES_NOT_HOLD
    assert _inconclusive(verdicts.doubles([]), "no figure")  # no layer was counted
    for broken in (NAN, INF):
        assert _inconclusive(verdicts.doubles([2.0, broken]), "a figure is")
        assert _inconclusive(verdicts.doubles([broken, 1.5]), "a figure is")


def test_small_init_is_judged_by_depth():
    fine = {2: 0.4, 4: 0.35, 6: 0.2, 8: 0.1, 10: 0.1}
    he = {2: 0.45, 4: 0.44, 6: 0.42, 8: 0.4, 10: 0.38}
    assert verdicts.fine_only_when_shallow([fine, fine], [he, he]).kind == HOLDS
    deep_fine = {2: 0.4, 4: 0.4, 6: 0.4, 8: 0.4, 10: 0.4}
    assert verdicts.fine_only_when_shallow([deep_fine], [he]).kind == DOES_NOT_HOLD
    never = {depth: 0.1 for depth in fine}
    assert verdicts.fine_only_when_shallow([never], [he]).kind == DOES_NOT_HOLD
    assert verdicts.fine_only_when_shallow([fine], [never]).kind == DOES_NOT_HOLD  # He fails
    between = {**fine, 10: 0.2}  # neither trains nor sits near chance at depth 10
    assert verdicts.fine_only_when_shallow([between], [he]).kind == INCONCLUSIVE
    for broken in (NAN, INF):
        for depth in fine:
            assert _inconclusive(verdicts.fine_only_when_shallow(
                [fine, {**fine, depth: broken}], [he, he]), "seed 1: a figure is")
            # He failed at one depth: even "0.01*randn trains deep" cannot decide it.
            assert _inconclusive(verdicts.fine_only_when_shallow(
                [deep_fine], [{**he, depth: broken}]), "a figure is")
    assert _inconclusive(verdicts.fine_only_when_shallow([{}], [he]), "no figure")


def test_no_faster_is_one_sided():
    # "Standardizing trains no faster than the per-channel mean": ratios are the
    # variant's steps over the per-channel mean's.
    same, slower, faster = Ratio(1.1, 1.1), Ratio(2.0, 2.0), Ratio(0.5, 0.5)
    assert step_verdicts.no_faster([[same, Ratio(0.9, 0.9)], [same, same]]).kind == HOLDS
    # A variant twice as slow agrees: it is no faster.
    assert step_verdicts.no_faster([[same, slower]]).kind == HOLDS
    assert step_verdicts.no_faster([[slower, slower]] * 3).kind == HOLDS
    # One that never got there (a bound above 1) agrees too.
    assert step_verdicts.no_faster([[Ratio(3.0, math.inf), same]]).kind == HOLDS
    # Twice as fast contradicts it; 1.3x fewer steps lies in the noise band.
    assert step_verdicts.no_faster([[same, faster]]).kind == DOES_NOT_HOLD
    assert _inconclusive(step_verdicts.no_faster([[same, Ratio(0.75, 0.75)]]),
                         "between 1.25x and 1.5x fewer steps")
    # The per-channel mean never got there and the variant did at half its budget: the
    # bound decides; at 0.9 of it, it cannot tell.
    assert step_verdicts.no_faster([[same, Ratio(0.0, 0.5)]]).kind == DOES_NOT_HOLD
    assert _inconclusive(step_verdicts.no_faster([[same, Ratio(0.0, 0.9)]]), "raise the budget")
    assert _inconclusive(step_verdicts.no_faster([[]]), "no ratio")


def test_claims_table_keeps_the_order_and_columns():
    outcomes = {"lr_range": Outcome("setup b", "0.05", Verdict(DOES_NOT_HOLD)),
                "init_small": Outcome("setup a", "1e-6", Verdict(HOLDS)),
                "init_he": Outcome("setup c", "n/a", judgments.inconclusive("failed: relu-he-s1"))}
    table = claims_table(outcomes)
    assert list(table.columns) == TABLE_COLUMNS
    assert table["claim"].tolist() == [CLAIMS["init_small"].text, CLAIMS["init_he"].text,
                                       CLAIMS["lr_range"].text]
    assert table["key"].tolist() == ["init_small", "init_he", "lr_range"]
    assert table["verdict"].tolist() == [HOLDS, INCONCLUSIVE, DOES_NOT_HOLD]
    assert table["reason"].tolist() == ["", "failed: relu-he-s1", ""]
    assert table["source"].str.len().min() > 0


def test_claims_markdown_keeps_five_fields_a_row_and_the_terminal_lines_fit():
    table = claims_table({
        "bn_test_time": Outcome("setup | with a pipe", "max |logit difference| 1e-7",
                                Verdict(HOLDS)),
        "init_small": Outcome("setup", "std last/first: " + "1e-6, " * 40, Verdict(HOLDS)),
        "init_he": Outcome("setup", "n/a", judgments.inconclusive("diverged: relu | he-s2"))})
    markdown = claims_markdown(table)
    for line in markdown.splitlines():
        # Every column but the key and the reason, and the two empty fields outside the bars.
        assert len(re.split(r"(?<!\\)\|", line)) == len(TABLE_COLUMNS), line
    assert "inconclusive: diverged: relu \\| he-s2" in markdown
    lines = claims_lines(table, width=80)
    assert max(len(line) for line in lines) <= 80
    assert lines[0].startswith("HOLDS: ")
    assert "    inconclusive: diverged: relu | he-s2" in lines
    assert "setup | with a pipe" not in "\n".join(lines)  # setups go to the files


def test_batch_dependence_is_nil_in_inference_mode_and_not_in_training_mode():
    import keras

    from cvlib.models import build_model
    from cvlib.studies.batch_norm import batch_dependence

    keras.utils.set_random_seed(0)
    model = build_model(arch="cnn", widths=[4], dense_units=8, bn="before")
    images = np.random.default_rng(0).normal(size=(16, 32, 32, 3)).astype("float32")
    figures = batch_dependence(model, images)
    assert figures["bn_test/max_logit_difference"] < 1e-4
    assert figures["bn_test/same_classes"] == 1.0
    assert figures["bn_test/max_logit_difference_training_mode"] > 1e-2
