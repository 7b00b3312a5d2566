"""Rankings that respect seed noise, through the real command and a real MLflow store:
intervals and ties with two seeds, labelled cells in every table format, the grid file's
order, and the confirmation stage (its runs, and a rerun that trains nothing)."""
import io
import math
import re
import signal
import textwrap

import pandas as pd
import pytest
from conftest import read_until, run_cvlib, start_cvlib
from mlflow.tracking import MlflowClient
from scipy import stats

from cvlib import cli

# Two seeds; the learning rate of 1000 makes Adam's steps blow the loss up (diverged).
# Values listed against the alphabet: the pivot must keep this order.
TWO_SEEDS = textwrap.dedent("""\
    name: ranked
    data: {train_size: 200, val_size: 100, test_size: 100, preprocess: per_channel_mean}
    model: {arch: cnn, widths: [8], dense_units: 16, activation: relu}
    train: {epochs: 1, batch_size: 50, optimizer: adam, stats_every: 0}
    grid:
      model.initializer: [xavier, he]
      train.learning_rate: [1000.0, 0.001]
    seeds: [0, 1]
    """)

CONFIRMED = textwrap.dedent("""\
    name: confirmed
    data: {train_size: 200, val_size: 100, test_size: 100, preprocess: per_channel_mean}
    model: {arch: cnn, widths: [8], dense_units: 16, initializer: he}
    train: {epochs: 1, batch_size: 50, optimizer: adam, learning_rate: 0.001, stats_every: 0}
    grid:
      model.activation: [tanh, relu, elu]
    seeds: [0]
    search: {confirm: {seeds: 2}}
    """)

FORMATS = ("markdown", "csv", "latex", "html")


def _table(capsys, uri, experiment, *args):
    """`cvlib table` in this process: its stdout and stderr."""
    assert cli.main(["table", "--tracking-uri", uri, "--experiment", experiment, *args]) == 0
    return capsys.readouterr()


def _pivot(capsys, uri, experiment):
    """The csv pivot of val_accuracy, as a DataFrame of text."""
    out = _table(capsys, uri, experiment, "--pivot", "val_accuracy", "--format", "csv").out
    return pd.read_csv(io.StringIO(out), dtype=str, keep_default_na=False)


def _seed_values(uri, experiment):
    """Each finished cell's val_accuracy per seed, from MLflow, by (initializer, lr)."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    values = {}
    for run in client.search_runs([found.experiment_id], "tags.`cvlib.cell` != ''"):
        if run.info.status == "FINISHED" and run.data.tags.get("cvlib.outcome") == "ok":
            params = run.data.params
            values.setdefault((params["model.initializer"], params["train.learning_rate"]),
                              []).append(run.data.metrics["val_accuracy"])
    return values


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_seeds_rank_with_intervals_and_label_what_is_no_result(capsys, tmp_path,
                                                                   cifar_dir):
    grid = tmp_path / "ranked.yaml"
    grid.write_text(TWO_SEEDS)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Partial: stopped once the first cell's run has finished.
    command = start_cvlib("run", str(grid), "--workers", "1", "--tracking-uri", uri,
                          "--data-dir", str(cifar_dir))
    read_until(command, "[1/8]")
    command.send_signal(signal.SIGTERM)
    assert command.wait(timeout=120) == 143
    partial = _pivot(capsys, uri, "ranked")
    assert "not run" in partial.to_numpy()
    result = run_cvlib("run", str(grid), "--tracking-uri", uri, "--data-dir", str(cifar_dir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    complete = _pivot(capsys, uri, "ranked")

    # The same rows and columns, partial or complete, in the grid file's order.
    assert list(partial.columns) == list(complete.columns) == [
        "bn", "learning_rate", "activation", "val_accuracy (initializer=xavier)",
        "val_accuracy (initializer=he)"]
    assert partial[["bn", "learning_rate", "activation"]].equals(
        complete[["bn", "learning_rate", "activation"]])
    assert list(complete["learning_rate"]) == ["1000.0", "0.001"]
    # The diverged row says so in every place; the trained one gives mean ± std.
    values = complete.iloc[:, 3:]
    assert (values.iloc[0] == "diverged").all(), complete
    assert all(" ± " in text for text in values.iloc[1]), complete

    # Every format labels the diverged cells, and none shows NaN or a blank place.
    for fmt in FORMATS:
        text = _table(capsys, uri, "ranked", "--pivot", "val_accuracy", "--format", fmt).out
        assert text.count("diverged") == 2, (fmt, text)
        assert "nan" not in text.lower(), (fmt, text)
        assert "<td></td>" not in text and "||" not in text.replace(" ", ""), (fmt, text)

    # The table: intervals and the mark agree with scipy on the seeds' values in MLflow.
    table = pd.read_csv(io.StringIO(_table(capsys, uri, "ranked", "--format", "csv").out))
    trained = table[table["outcome"] == "ok"].reset_index(drop=True)
    assert len(trained) == 2 and set(table["outcome"]) == {"ok", "diverged"}
    seeds = _seed_values(uri, "ranked")
    best = seeds[(trained.loc[0, "initializer"], str(trained.loc[0, "learning_rate"]))]
    assert trained.loc[0, "vs_best"] == "best"
    for row in trained.itertuples():
        sample = seeds[(row.initializer, str(row.learning_rate))]
        low, high = stats.t.interval(0.95, len(sample) - 1, loc=sum(sample) / len(sample),
                                     scale=stats.sem(sample))
        if stats.sem(sample) > 0:
            assert (row.val_accuracy_ci_low, row.val_accuracy_ci_high) == pytest.approx(
                (low, high), abs=1e-4)
        if row.Index > 0:
            tied = stats.ttest_ind(sample, best, equal_var=False).pvalue >= 0.05
            assert row.vs_best == ("tied" if tied else "below")
    assert set(table.loc[table["outcome"] == "diverged", "vs_best"]) == {"untested"}
    shown = _table(capsys, uri, "ranked")
    assert "Welch's t-test" in shown.out and " ± " in shown.out
    assert re.search(r"\| \[-?\d\.\d{4}, \d\.\d{4}\] +\| best", shown.out), shown.out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_confirmation_trains_the_best_again_and_a_rerun_trains_nothing(capsys, tmp_path,
                                                                       cifar_dir):
    grid = tmp_path / "confirmed.yaml"
    grid.write_text(CONFIRMED)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = run_cvlib("run", str(grid), "--confirm", "2", "--tracking-uri", uri,
                      "--data-dir", str(cifar_dir))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "confirmation: the best 2 cells by val_accuracy again with seed(s) 1" in first.stdout
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("confirmed").experiment_id
    runs = client.search_runs([experiment], "tags.`cvlib.cell` != ''")
    by_seed = {seed: {r.data.params["activation"]: r.data.metrics["val_accuracy"]
                      for r in runs if r.data.params["seed"] == seed} for seed in ("0", "1")}
    assert len(runs) == 5 and len(by_seed["1"]) == 2
    # The confirmed cells are the best two of seed 0 (ties in the grid file's order).
    order = ["tanh", "relu", "elu"]
    ranked = sorted(by_seed["0"], key=lambda name: (-by_seed["0"][name], order.index(name)))
    assert set(by_seed["1"]) == set(ranked[:2])

    again = run_cvlib("run", str(grid), "--confirm", "2", "--tracking-uri", uri,
                      "--data-dir", str(cifar_dir))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "3 cells done, 0 to run, 0 to redo" in again.stdout
    assert "2 cells done, 0 to run, 0 to redo" in again.stdout
    assert len(client.search_runs([experiment], "tags.`cvlib.cell` != ''")) == 5

    # The confirmed cells lead the table, with intervals; the third is untested.
    table = pd.read_csv(io.StringIO(_table(capsys, uri, "confirmed", "--format", "csv").out))
    assert list(table["seeds"]) == [2, 2, 1]
    assert set(table["activation"][:2]) == set(ranked[:2])
    assert table.loc[0, "vs_best"] == "best" and table.loc[1, "vs_best"] in ("tied", "below")
    assert table.loc[2, "vs_best"] == "untested"
    assert table["val_accuracy_ci_low"][:2].notna().all()


def test_one_seed_says_its_differences_are_untested(capsys, tiny_store):
    uri, _, _ = tiny_store
    shown = _table(capsys, uri, "tiny")
    assert shown.out.strip().splitlines()[-1].startswith(
        "one seed per cell: the differences between cells are untested")
    assert "--confirm" in shown.out
    data = _table(capsys, uri, "tiny", "--format", "csv")
    assert "untested" not in data.out and "untested" in data.err  # stdout stays data


def test_ties_and_intervals_on_made_up_seeds():
    from cvlib.ranking import compare_to_best, confidence_interval

    labels = compare_to_best([
        [0.50, 0.52, 0.51],   # the best mean
        [0.49, 0.53, 0.50],   # within the noise
        [0.30, 0.31, 0.30],   # clearly worse
        [0.90],               # one seed: never the best, never compared
        None,                 # diverged or failed
        [0.30, 0.30, 0.30],   # no spread, another mean than the best's
    ])
    assert labels == ["best", "tied", "below", "untested", "untested", "below"]
    assert compare_to_best([[0.4, 0.4], [0.4, 0.4]]) == ["best", "tied"]
    assert compare_to_best([[0.4], None]) == ["untested", "untested"]
    low, high = confidence_interval([0.50, 0.52, 0.51])
    assert (low, high) == pytest.approx(stats.t.interval(
        0.95, 2, loc=0.51, scale=stats.sem([0.50, 0.52, 0.51])))
    assert confidence_interval([0.4, 0.4]) == (0.4, 0.4)
    assert all(map(math.isnan, confidence_interval([0.4])))
