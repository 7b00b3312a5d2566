"""Verdicts on the notes' claims, from synthetic figures."""
import math
import re

import numpy as np
import pytest

from cvlib.studies import verdicts
from cvlib.studies.claims import CLAIMS, TABLE_COLUMNS, claims_lines, claims_markdown, claims_table
from cvlib.studies.verdicts import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, Ratio


@pytest.mark.parametrize("per_seed, expected", [
    ([True, True, True], HOLDS),
    ([False, False, False], DOES_NOT_HOLD),
    ([True, False, True], INCONCLUSIVE),   # seeds disagree
    ([True, None, True], INCONCLUSIVE),    # one seed cannot tell
    ([], INCONCLUSIVE),
    ([True], HOLDS),
])
def test_agreement_needs_every_seed(per_seed, expected):
    assert verdicts.agreement(per_seed) == expected


def test_initialization_judges_on_layer_profiles():
    collapsing = [0.2 * 0.2 ** depth for depth in range(10)]     # last/first 5e-7
    steady = [0.8, 0.75, 0.7, 0.72, 0.69, 0.7, 0.71, 0.68, 0.7, 0.66]
    decaying = [0.6 * 0.7 ** depth for depth in range(10)]       # last/first 0.04
    assert verdicts.collapses(collapsing) and not verdicts.collapses(steady)
    assert verdicts.decays(decaying) and not verdicts.decays(steady)
    assert verdicts.holds_steady(steady) and not verdicts.holds_steady(decaying)
    assert verdicts.holds_steady([1.0, 2.9]) and not verdicts.holds_steady([1.0, 3.1])
    assert verdicts.stds_within([0.6, 0.3, 0.2]) and not verdicts.stds_within([0.6, 0.09])
    assert verdicts.saturated_everywhere([0.85, 0.9, 0.92])
    assert not verdicts.saturated_everywhere([0.79, 0.95, 0.95])  # one layer below
    assert verdicts.judge(verdicts.collapses, [0.2, math.nan]) is None  # a failed run
    assert verdicts.judge(verdicts.collapses, collapsing) is True


def test_steps_to_accuracy_uses_a_trailing_window():
    accuracies = [0.1] * 10 + [0.5] * 10
    # The mean of the last 4 steps first reaches 0.29 at step 12 (0.1, 0.1, 0.5, 0.5).
    assert verdicts.steps_to_accuracy(accuracies, 0.29, window=4) == 12
    assert verdicts.steps_to_accuracy(accuracies, 0.5, window=4) == 14
    assert verdicts.steps_to_accuracy(accuracies, 0.5, window=1) == 11
    assert verdicts.steps_to_accuracy(accuracies, 0.6, window=4) is None
    # One lucky batch does not count as reaching it.
    assert verdicts.steps_to_accuracy([0.1, 0.9, 0.1, 0.1], 0.5, window=3) is None
    assert verdicts.steps_to_accuracy([0.9], 0.5, window=3) is None
    # A diverged run's NaN batches count as not reaching it.
    assert verdicts.steps_to_accuracy([math.nan] * 5, 0.1, window=2) is None


def test_step_ratio_with_runs_that_did_not_get_there():
    assert verdicts.step_ratio(100, 600, 800, 800) == Ratio(6.0, 6.0)
    slow_never = verdicts.step_ratio(100, None, 800, 800)
    assert slow_never.low == 8.0 and math.isinf(slow_never.high)
    assert str(slow_never) == ">8x"
    fast_never = verdicts.step_ratio(None, 200, 800, 800)
    assert fast_never == Ratio(0.0, 0.25) and str(fast_never) == "<0.25x"
    neither = verdicts.step_ratio(None, None, 800, 800)
    assert neither.above(1.0) is None and str(neither) == "?"


def test_speed_verdicts():
    three_x = [Ratio(3.5, 3.5), Ratio(4.0, 4.0), Ratio(8.0, math.inf)]
    assert verdicts.faster_by(three_x, 3.0) == HOLDS
    assert verdicts.faster_by([Ratio(1.5, 1.5)] * 3, 3.0) == DOES_NOT_HOLD
    assert verdicts.faster_by([Ratio(4, 4), Ratio(2, 2), Ratio(4, 4)], 3.0) == INCONCLUSIVE
    # A censored ratio whose bound is below the factor cannot tell.
    assert verdicts.faster_by([Ratio(2.0, math.inf)], 3.0) == INCONCLUSIVE
    assert verdicts.faster([Ratio(1.3, 1.3)] * 3) == HOLDS
    assert verdicts.faster([Ratio(0.7, 0.7)] * 3) == DOES_NOT_HOLD
    assert verdicts.faster([Ratio(1.05, 1.05)] * 3) == INCONCLUSIVE  # inside the noise margin
    # Sigmoid slower than both in every seed; then slower than only one.
    assert verdicts.slowest([[Ratio(5, 5), Ratio(2, 2)]] * 3) == HOLDS
    assert verdicts.slowest([[Ratio(5, 5), Ratio(0.5, 0.5)]] * 3) == DOES_NOT_HOLD
    assert verdicts.slowest([[Ratio(5, 5), Ratio(1.0, 1.0)]] * 3) == INCONCLUSIVE


def test_batch_norm_verdicts():
    assert verdicts.spread([0.1, 0.45, 0.4, 0.5]) == pytest.approx(0.4)
    assert verdicts.much_smaller_spread([0.03, 0.05, 0.02], [0.4, 0.38, 0.41]) == HOLDS
    assert verdicts.much_smaller_spread([0.3, 0.35, 0.3], [0.4, 0.38, 0.41]) == DOES_NOT_HOLD
    assert verdicts.much_smaller_spread([0.03, 0.3, 0.02], [0.4, 0.38, 0.41]) == INCONCLUSIVE
    assert verdicts.much_smaller_spread([math.nan], [0.4]) == INCONCLUSIVE
    assert verdicts.better([0.52, 0.50, 0.51], [0.48, 0.47, 0.49]) == HOLDS
    assert verdicts.better([0.48, 0.47, 0.49], [0.52, 0.50, 0.51]) == DOES_NOT_HOLD
    assert verdicts.better([0.500, 0.52, 0.51], [0.495, 0.47, 0.49]) == INCONCLUSIVE
    assert verdicts.batch_independent(2e-6, True) == HOLDS
    assert verdicts.batch_independent(0.5, True) == DOES_NOT_HOLD
    assert verdicts.batch_independent(0.0, False) == DOES_NOT_HOLD


def test_learning_rate_range():
    assert verdicts.in_range(3e-4, 1e-5, 1e-3)
    assert verdicts.in_range(2.9e-3, 1e-5, 1e-3)      # near: within 3x
    assert not verdicts.in_range(4e-2, 1e-5, 1e-3)
    assert not verdicts.in_range(1e-6, 1e-5, 1e-3)


def test_activation_cost_needs_a_clear_ratio_in_every_measurement():
    assert verdicts.costlier([1.6, 1.4, 1.3]) == HOLDS
    assert verdicts.costlier([1.0, 0.95, 1.05]) == DOES_NOT_HOLD
    assert verdicts.costlier([1.6, 1.15, 1.4]) == INCONCLUSIVE   # one inside the margin
    assert verdicts.costlier([1.6, math.nan]) == INCONCLUSIVE


def test_single_signed_gradients_after_sigmoid_only():
    assert verdicts.single_signed([1.0, 1.0], [[0.0, 0.01], [0.02, 0.0]]) == HOLDS
    assert verdicts.single_signed([0.05], [[0.0, 0.0]]) == DOES_NOT_HOLD
    assert verdicts.single_signed([1.0], [[0.95, 0.0]]) == DOES_NOT_HOLD  # centered too
    assert verdicts.single_signed([1.0, 0.5], [[0.0, 0.0], [0.0, 0.0]]) == INCONCLUSIVE


def test_vanishing_gradients_need_sigmoid_to_vanish_and_he_to_hold():
    assert verdicts.vanishes([2e-6, 1e-4], [2.8, 0.9]) == HOLDS
    assert verdicts.vanishes([0.5], [2.8]) == DOES_NOT_HOLD
    assert verdicts.vanishes([2e-6], [0.01]) == INCONCLUSIVE      # He vanished too
    assert verdicts.vanishes([0.05], [1.0]) == INCONCLUSIVE       # in between
    assert verdicts.vanishes([math.nan], [1.0]) == INCONCLUSIVE


def test_dead_units_verdict_compares_relu_with_each_other():
    assert verdicts.only_relu_dies([0.3, 0.2], [[0.0, 0.0, 0.0, 0.0], [0.0, 0.005, 0, 0]]) == HOLDS
    assert verdicts.only_relu_dies([0.3], [[0.0, 0.2, 0.0, 0.0]]) == DOES_NOT_HOLD
    # No ReLU unit died at this rate: the comparison cannot tell.
    assert verdicts.only_relu_dies([0.0], [[0.0, 0.0, 0.0, 0.0]]) == INCONCLUSIVE
    assert verdicts.only_relu_dies([math.nan], [[0.0, 0.0, 0.0, 0.0]]) == INCONCLUSIVE


def test_maxout_doubles_only_when_every_layer_does():
    assert verdicts.doubles([2.0, 2.0, 2.0]) == HOLDS
    assert verdicts.doubles([2.0, 1.5]) == DOES_NOT_HOLD
    assert verdicts.doubles([]) == DOES_NOT_HOLD


def test_small_init_is_judged_by_depth():
    fine = {2: 0.4, 4: 0.35, 6: 0.2, 8: 0.1, 10: 0.1}
    he = {2: 0.45, 4: 0.44, 6: 0.42, 8: 0.4, 10: 0.38}
    assert verdicts.fine_only_when_shallow([fine, fine], [he, he]) == HOLDS
    deep_fine = {2: 0.4, 4: 0.4, 6: 0.4, 8: 0.4, 10: 0.4}
    assert verdicts.fine_only_when_shallow([deep_fine], [he]) == DOES_NOT_HOLD
    never = {depth: 0.1 for depth in fine}
    assert verdicts.fine_only_when_shallow([never], [he]) == DOES_NOT_HOLD
    assert verdicts.fine_only_when_shallow([fine], [never]) == DOES_NOT_HOLD  # He fails
    between = {**fine, 10: 0.2}  # neither trains nor sits near chance at depth 10
    assert verdicts.fine_only_when_shallow([between], [he]) == INCONCLUSIVE
    assert verdicts.fine_only_when_shallow([{**fine, 4: math.nan}], [he]) == INCONCLUSIVE


def test_preprocessings_agree_within_the_noise():
    same, slower = Ratio(1.1, 1.1), Ratio(2.0, 2.0)
    assert verdicts.agree([[same, Ratio(0.9, 0.9)], [same, same]]) == HOLDS
    assert verdicts.agree([[same, slower]]) == DOES_NOT_HOLD
    assert verdicts.agree([[same, Ratio(1.3, 1.3)]]) == INCONCLUSIVE
    assert verdicts.agree([[same, Ratio(0.0, math.inf)]]) == INCONCLUSIVE  # neither got there
    assert verdicts.agree([[Ratio(3.0, math.inf), same]]) == DOES_NOT_HOLD  # bound beyond


def test_claims_table_keeps_the_order_and_columns():
    outcomes = {"lr_range": ("setup b", "0.05", DOES_NOT_HOLD),
                "init_small": ("setup a", "1e-6", HOLDS)}
    table = claims_table(outcomes)
    assert list(table.columns) == TABLE_COLUMNS
    assert table["claim"].tolist() == [CLAIMS["init_small"].text, CLAIMS["lr_range"].text]
    assert table["key"].tolist() == ["init_small", "lr_range"]
    assert table["verdict"].tolist() == [HOLDS, DOES_NOT_HOLD]
    assert table["source"].str.len().min() > 0


def test_claims_markdown_keeps_five_fields_a_row_and_the_terminal_lines_fit():
    table = claims_table({"bn_test_time": ("setup | with a pipe", "max |logit difference| 1e-7",
                                           HOLDS),
                          "init_small": ("setup", "std last/first: " + "1e-6, " * 40, HOLDS)})
    for line in claims_markdown(table).splitlines():
        # Every column but the key, and the two empty fields outside the bars.
        assert len(re.split(r"(?<!\\)\|", line)) == 1 + len(TABLE_COLUMNS), line
    lines = claims_lines(table, width=80)
    assert max(len(line) for line in lines) <= 80
    assert lines[0].startswith("HOLDS: ")
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
