"""Sampling searches (search.strategy random or tpe over a grid file's space:): the space's
validation, Optuna's proposals and their resumption, and real tiny searches through the
``cvlib`` command, read back through MLflow's API."""
import json
import math
import re
import signal
import textwrap

import mlflow
import pytest
import yaml
from conftest import read_until, run_cvlib, start_cvlib

from cvlib.config import SearchConfig
from cvlib.engine.search import EndedTrial, Search
from cvlib.fields import ConfigError
from cvlib.grids import grid_from_dict, load_grid
from cvlib.tracking.reads import trial_runs
from cvlib.tracking.schema import (
    CELL_TAG,
    ERROR,
    OUTCOME_TAG,
    PRUNED,
    TRIAL_TAG,
    TRIAL_VALUES_TAG,
)

TINY = """\
    data: {train_size: 200, val_size: 100, test_size: 100}
    model: {arch: cnn, widths: [8], dense_units: 16}
    train: {epochs: 2, batch_size: 50, optimizer: adam, save_model: none, stats_every: 0}
    seeds: [0]
    """


def _search(**search) -> dict:
    return {"name": "s", "search": {"strategy": "random", **search},
            "space": {"train.learning_rate": {"loguniform": [1e-4, 0.1]},
                      "model.activation": ["relu", "tanh", "elu"],
                      "model.dense_units": {"int": [8, 32]}}}


def _grid_file(tmp_path, name: str, body: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\n" + textwrap.dedent(TINY) + textwrap.dedent(body))
    return str(path)


# --- The space. ---

def test_a_space_reads_choices_and_ranges_and_a_grid_axis_becomes_a_choice():
    raw = _search(strategy="tpe")
    raw["grid"] = {"model.bn": ["none", "before"]}
    raw["space"]["train.weight_decay"] = {"uniform": [0, 0.01]}
    raw["space"]["model.depth"] = {"logint": ["1", 8]}
    grid = grid_from_dict(raw)
    kinds = {d.key: (d.kind, d.values) for d in grid.space}
    assert kinds == {"model.bn": ("choice", ("none", "before")),
                     "train.learning_rate": ("loguniform", (1e-4, 0.1)),
                     "model.activation": ("choice", ("relu", "tanh", "elu")),
                     "model.dense_units": ("int", (8, 32)),
                     "train.weight_decay": ("uniform", (0.0, 0.01)),
                     "model.depth": ("logint", (1, 8))}
    assert grid.axes == () and grid.cells() == []
    cell = grid.cell_of({"train.learning_rate": 0.0123, "model.bn": "before"})
    assert (cell.train.learning_rate, cell.model.bn, cell.seed) == (0.0123, "before", 0)
    # The grid as it runs is a grid file again, with the same space.
    again = grid_from_dict(yaml.safe_load(grid.resolved_text()))
    assert again.space == grid.space


@pytest.mark.parametrize("space, message", [
    ({"train.learning_rate": {"uniform": [0, 0.1]}},
     "space.train.learning_rate: train.learning_rate must be above 0, got 0.0"),
    ({"train.weight_decay": {"loguniform": [0, 0.1]}},
     "space.train.weight_decay: loguniform needs low > 0, got 0.0"),
    ({"train.learning_rate": {"loguniform": [0.1, 0.01]}},
     "loguniform needs low < high, got [0.1, 0.01]"),
    ({"train.batch_size": {"int": [0, 64]}}, "train.batch_size must be at least 1, got 0"),
    ({"train.batch_size": {"int": [8.5, 64]}}, "int bounds must be integers, got 8.5"),
    ({"train.learning_rate": {"logunifrom": [0.1, 1]}},
     "unknown range 'logunifrom' of space.train.learning_rate; valid: uniform, loguniform, "
     "int, logint; did you mean 'loguniform'?"),
    ({"train.learning_rate": {"loguniform": [0.1]}}, "loguniform takes [low, high]"),
    ({"train.learning_rate": []}, "must be a non-empty list of values or a range"),
    ({"model.activation": ["relu", "relux"]}, "unknown model.activation 'relux'"),
    ({"train.lr": [0.1]}, "unknown key train.lr; valid keys of 'train': epochs, batch_size"),
    ({"trian.lr": [0.1]}, "unknown key 'trian.lr'; valid: data.<key>, model.<key>"),
])
def test_a_bad_space_is_one_clear_error(space, message):
    with pytest.raises(ConfigError) as error:
        grid_from_dict({"search": {"strategy": "tpe"}, "space": space})
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_a_space_needs_a_sampling_strategy_and_one_seed_and_pruners_need_a_search():
    with pytest.raises(ConfigError, match="'space' needs search.strategy random or tpe, "
                                          "not grid"):
        grid_from_dict({"space": {"train.learning_rate": [0.1]}})
    with pytest.raises(ConfigError, match="samples from 'space:', which is empty"):
        grid_from_dict({"search": {"strategy": "random"}})
    with pytest.raises(ConfigError, match="one seed per trial; give one seed"):
        grid_from_dict({**_search(), "seeds": [0, 1]})
    with pytest.raises(ConfigError, match="both a grid axis and in the space"):
        grid_from_dict({**_search(), "grid": {"model.activation": ["relu"]}})
    with pytest.raises(ConfigError, match="search.pruner halving needs search.strategy"):
        SearchConfig(strategy="halving", pruner="halving")
    with pytest.raises(ConfigError, match="not tpe: a search trains one seed per trial"):
        grid_from_dict({**_search(strategy="tpe"), "search": {"strategy": "tpe",
                                                              "confirm": {"top": 2}}})


def test_bad_bounds_exit_2_with_one_line_from_the_real_command(tmp_path):
    grid = _grid_file(tmp_path, "bad", """\
        search: {strategy: tpe, trials: 3}
        space:
          train.learning_rate: {loguniform: [-1, 0.1]}
        """)
    result = run_cvlib("run", grid, "--dry-run")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "cvlib: error: space.train.learning_rate: loguniform needs low > 0, got -1.0"]
    rerun = run_cvlib("run", grid, "--rerun", "--set", "space.train.learning_rate=[0.01]")
    assert rerun.returncode == 2
    assert rerun.stderr.strip().splitlines() == [
        "cvlib: error: --rerun does not apply to a search, whose trials are new cells: raise "
        "search.trials (--set search.trials=N) to train more, or give another --experiment "
        "to start anew"]


# --- Proposals. ---

def _proposals(grid, ended=(), count=4) -> list[dict]:
    search = Search(grid.space, grid.search, grid.train.epochs)
    study = search.study(list(ended))
    return [search.values(search.ask(study)) for _ in range(count)]


@pytest.mark.parametrize("strategy", ["random", "tpe"])
def test_the_same_seed_gives_the_same_proposals_and_another_seed_others(strategy):
    grid = grid_from_dict(_search(strategy=strategy, seed=3))
    first = _proposals(grid)
    assert first == _proposals(grid)
    assert first != _proposals(grid_from_dict(_search(strategy=strategy, seed=4)))
    assert len({json.dumps(p, sort_keys=True) for p in first}) == 4  # kept apart
    for values in first:  # each a valid cell, floats with 3 significant digits
        grid.cell_of(values)
        rate = values["train.learning_rate"]
        assert 1e-4 <= rate <= 0.1 and float(f"{rate:.3g}") == rate
        assert values["model.activation"] in ("relu", "tanh", "elu")
        assert isinstance(values["model.dense_units"], int)


def test_the_same_ended_trials_give_the_same_next_proposals_and_tpe_learns_from_them():
    """A resumed search's study is told the ended trials again: what it proposes next
    depends on them, and only on them and the seed."""
    grid = grid_from_dict({"name": "s", "search": {"strategy": "tpe", "seed": 0},
                           "space": {"train.learning_rate": {"loguniform": [1e-4, 1.0]}}})
    # Accuracy peaks at a learning rate of 0.01: TPE's proposals move towards it.
    ended = [EndedTrial(n, {"train.learning_rate": rate}, 1 - abs(math.log10(rate) + 2) / 4)
             for n, rate in enumerate(
        [1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.012, 0.009, 0.03, 0.1, 0.3, 1.0, 0.5])]
    after = _proposals(grid, ended, count=6)
    assert after == _proposals(grid, ended, count=6)
    assert after != _proposals(grid, ended[:-1], count=6)
    rates = [values["train.learning_rate"] for values in after]
    assert sum(1e-3 <= rate <= 0.1 for rate in rates) >= 4, rates


def test_restored_trials_compete_at_the_pruners_rungs():
    """The pruner's records of the ended trials are rebuilt by replaying them: a new
    trial that does worse than they did at the first rung is pruned, a better one not."""
    grid = grid_from_dict({**_search(pruner="halving", min_epochs=1, reduction=2),
                           "train": {"epochs": 4}})
    search = Search(grid.space, grid.search, grid.train.epochs)
    assert search.rungs() == [1, 2, 4]
    values = {"train.learning_rate": 0.01, "model.activation": "relu",
              "model.dense_units": 16}
    ended = [EndedTrial(n, values, 0.5 + n / 10, epochs={1: 0.4 + n / 10, 2: 0.5 + n / 10})
             for n in range(4)]
    for first_epoch, pruned in ((0.1, True), (0.9, False)):
        study = search.study(ended)
        trial = search.ask(study)
        search.report(trial, {1: first_epoch}, 0, 1)
        assert trial.should_prune() is pruned


def test_hyperband_and_list_choices_replay_and_propose():
    grid = grid_from_dict({"name": "s", "train": {"epochs": 9},
                           "search": {"strategy": "tpe", "pruner": "hyperband", "reduction": 3},
                           "space": {"model.widths": [[8], [8, 16]],
                                     "train.learning_rate": {"loguniform": [1e-4, 0.1]}}})
    search = Search(grid.space, grid.search, grid.train.epochs)
    assert search.rungs() == [1, 3, 9]
    ended = [EndedTrial(n, {"model.widths": [[8], [8, 16]][n % 2],
                            "train.learning_rate": 0.001 * (n + 1)}, 0.3 + n / 100,
                        pruned=n % 3 == 0, epochs={e: 0.1 * e for e in range(1, 4)})
             for n in range(6)]
    assert all(search.holds(trial.values) for trial in ended)
    assert not search.holds({"model.widths": [16], "train.learning_rate": 0.001})
    study = search.study(ended)
    assert [t.state.name for t in study.trials].count("PRUNED") == 2
    values = search.values(search.ask(study))
    assert values["model.widths"] in ([8], [8, 16])
    assert grid.cell_of(values).model.widths in ((8,), (8, 16))


# --- Real searches. ---

def _trial_runs(uri: str, experiment: str) -> list:
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return [run for run in client.search_runs([found.experiment_id],
                                              run_view_type=mlflow.entities.ViewType.ALL)
            if CELL_TAG in run.data.tags]


def _store_and_grid(tmp_path, name: str, body: str) -> tuple[str, str]:
    """A fresh SQLite store's URI, and a tiny search's grid file."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}", _grid_file(tmp_path, name, body)


def _finished(runs) -> list:
    return [run for run in runs if run.info.status == "FINISHED"]


@pytest.mark.slow
def test_a_random_search_trains_its_trials_as_cells_and_a_rerun_adds_none(tmp_path,
                                                                         cifar_dir):
    uri, grid = _store_and_grid(tmp_path, "rand", """\
        search: {strategy: random, trials: 3, seed: 7}
        space:
          train.learning_rate: {loguniform: [0.0001, 0.01]}
          model.activation: [relu, tanh]
        """)
    args = ("run", grid, "--tracking-uri", uri, "--data-dir", str(cifar_dir), "--workers", "2")
    result = run_cvlib(*args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "random search: 0 of 3 trials done" in result.stdout
    runs = _finished(_trial_runs(uri, "rand-search"))
    assert sorted(int(run.data.tags[TRIAL_TAG]) for run in runs) == [0, 1, 2]
    loaded = load_grid(grid)
    for run in runs:  # each an ordinary cell run: its cell hash, settings and epochs
        cell = loaded.cell_of(json.loads(run.data.tags[TRIAL_VALUES_TAG]))
        assert run.data.tags[CELL_TAG] == cell.cell_hash
        assert float(run.data.params["train.learning_rate"]) == cell.train.learning_rate
        steps = [m.step for m in mlflow.MlflowClient(uri).get_metric_history(
            run.info.run_id, "val_accuracy")]
        assert steps[-1] == 2 and run.data.tags[OUTCOME_TAG] == "ok"
    # The first proposals are the seed's: the same as the search module's.
    assert [json.loads(run.data.tags[TRIAL_VALUES_TAG]) for run in
            sorted(runs, key=lambda r: int(r.data.tags[TRIAL_TAG]))][:2] == \
        _proposals(loaded, count=2)
    table = run_cvlib("table", "--tracking-uri", uri)
    assert table.returncode == 0 and table.stdout.count("| ok ") == 3, table.stdout
    again = run_cvlib(*args)
    assert again.returncode == 0 and "3 of 3 trials done" in again.stdout
    assert len(_trial_runs(uri, "rand-search")) == 3
    dry = run_cvlib("run", grid, "--dry-run", "--tracking-uri", uri)
    assert "3 of 3 trials done, 0 to run" in dry.stdout and "trial 2: ok" in dry.stdout
    # Other base settings make other cells: those trials are not this search's.
    other = run_cvlib("run", grid, "--dry-run", "--tracking-uri", uri,
                      "--set", "train.epochs=1")
    assert "0 of 3 trials done (3 of another space or other settings left out), 3 to run" \
        in other.stdout


@pytest.mark.slow
def test_pruned_trials_are_marked_keep_their_epochs_and_are_not_retrained(tmp_path,
                                                                          cifar_dir):
    uri, grid = _store_and_grid(tmp_path, "pruned", """\
        search: {strategy: tpe, trials: 5, seed: 0, pruner: halving, min_epochs: 1,
                 reduction: 2}
        space:
          train.learning_rate: {loguniform: [0.000001, 0.01]}
        """)
    args = ("run", grid, "--tracking-uri", uri, "--data-dir", str(cifar_dir),
            "--set", "train.epochs=2")
    result = run_cvlib(*args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    runs = _finished(_trial_runs(uri, "pruned-search"))
    assert len(runs) == 5
    pruned = [run for run in runs if run.data.tags[OUTCOME_TAG] == PRUNED]
    assert pruned, "a learning rate of 1e-6 learns nothing: some trial is pruned"
    client = mlflow.MlflowClient(uri)
    for run in pruned:  # stopped at the first rung, its epoch kept
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        assert steps[-1] == 1
    assert "PRUNED after 1 epoch" in result.stdout
    page = tmp_path / "report.html"
    report = run_cvlib("report", "--tracking-uri", uri, "--out", str(page))
    assert report.returncode == 0, report.stderr[-2000:]
    search_section = page.read_text().split('<section id="search">')[1].split("</section>")[0]
    assert "Search: 5 trials" in search_section
    assert search_section.count("<img") == 2  # objective by key, best so far by trial
    more = run_cvlib(*args, "--set", "search.trials=6")
    assert more.returncode == 0 and "5 of 6 trials done" in more.stdout
    after = _finished(_trial_runs(uri, "pruned-search"))
    assert len(after) == 6
    assert {run.info.run_id for run in runs} < {run.info.run_id for run in after}


@pytest.mark.slow
def test_kill_9_mid_search_then_rerun_reaches_exactly_n_trials(tmp_path, cifar_dir):
    uri, grid = _store_and_grid(tmp_path, "killed", """\
        search: {strategy: tpe, trials: 4, seed: 2}
        space:
          train.learning_rate: {loguniform: [0.0001, 0.01]}
          model.activation: [relu, tanh, elu]
        """)
    args = ("run", grid, "--tracking-uri", uri, "--data-dir", str(cifar_dir))
    process = start_cvlib(*args)
    read_until(process, "[1/4]")  # one trial ended, the next trains
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = _finished(_trial_runs(uri, "killed-search"))
    assert 1 <= len(done_before) < 4
    result = run_cvlib(*args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert re.search(rf"tpe search: {len(done_before)} of 4 trials done", result.stdout)
    runs = _trial_runs(uri, "killed-search")
    finished = _finished(runs)
    assert len(finished) == 4
    # Trials end out of order with two trainers: a trial killed before one numbered after
    # it ended keeps its number with its KILLED run, and the rerun numbers on from there.
    numbers = [int(run.data.tags[TRIAL_TAG]) for run in finished]
    assert len(set(numbers)) == 4 and min(numbers) <= 1 and max(numbers) <= 5, numbers
    killed = {int(run.data.tags[TRIAL_TAG]) for run in runs if run.info.status == "KILLED"}
    assert set(range(max(numbers) + 1)) == set(numbers) | killed, (numbers, killed)
    assert len({run.data.tags[CELL_TAG] for run in finished}) == 4
    assert all(run.info.status in ("FINISHED", "KILLED") for run in runs)
    assert {run.info.run_id for run in done_before} <= {run.info.run_id for run in finished}


@pytest.mark.slow
def test_with_one_trainer_a_resumed_search_trains_the_trials_an_uninterrupted_one_did(
        tmp_path, cifar_dir):
    """With one trainer nothing trains beside a proposal or a pruning decision: a search
    killed mid-way and rerun proposes, prunes and ends with the very trials of one that
    ran through (trainers that free up at once must not make this depend on timing)."""
    body = """\
        search: {strategy: tpe, trials: 4, seed: 1, pruner: halving, min_epochs: 1,
                 reduction: 2}
        space:
          train.learning_rate: {loguniform: [0.000001, 0.01]}
          model.activation: [relu, tanh, elu]
        """
    trials = {}
    for name in ("through", "resumed"):
        folder = tmp_path / name
        folder.mkdir()
        uri, grid = _store_and_grid(folder, "one", body)
        args = ("run", grid, "--tracking-uri", uri, "--data-dir", str(cifar_dir),
                "--workers", "1", "--deterministic")
        if name == "resumed":
            process = start_cvlib(*args)
            read_until(process, "[1/4]")  # one trial ended, the next trains
            process.send_signal(signal.SIGKILL)
            process.wait()
        result = run_cvlib(*args)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        trials[name] = sorted((int(run.data.tags[TRIAL_TAG]), run.data.tags[TRIAL_VALUES_TAG],
                               run.data.tags[OUTCOME_TAG])
                              for run in _finished(_trial_runs(uri, "one-search")))
    assert len(trials["through"]) == 4
    assert trials["resumed"] == trials["through"]


@pytest.mark.slow
def test_a_failed_trial_is_recorded_the_search_goes_on_and_a_rerun_tries_again(tmp_path,
                                                                             cifar_dir):
    """Seven 2x2 poolings leave nothing of a 32x32 image: that trial's cell fails."""
    uri, grid = _store_and_grid(tmp_path, "failing", """\
        search: {strategy: random, trials: 3, seed: 0}
        space:
          model.widths: [[8], [8, 8, 8, 8, 8, 8, 8]]
          train.learning_rate: {loguniform: [0.0001, 0.01]}
        """)
    args = ("run", grid, "--tracking-uri", uri, "--data-dir", str(cifar_dir),
            "--set", "train.epochs=1")
    first = run_cvlib(*args)
    assert first.returncode == 1, first.stdout[-2000:] + first.stderr[-3000:]
    runs = _trial_runs(uri, "failing-search")
    failed = [run for run in runs if run.info.status == "FAILED"]
    # A failed run says which trial it was, under a number of its own.
    assert failed and all(json.loads(run.data.tags[TRIAL_VALUES_TAG])["model.widths"] == [8] * 7
                          for run in failed)
    done = _finished(runs)
    assert len(done) == 3 - len(failed)
    assert sorted(int(run.data.tags[TRIAL_TAG]) for run in runs) == [0, 1, 2]
    # What lr-search's trials table reads: the failed trials too, when asked.
    assert len(trial_runs(uri, "failing-search", "failing")) == len(done)
    with_failed = trial_runs(uri, "failing-search", "failing", with_failed=True)
    assert sorted(run.outcome for run in with_failed) == sorted(
        [ERROR] * len(failed) + [run.data.tags[OUTCOME_TAG] for run in done])
    assert all(json.loads(run.data.tags[TRIAL_VALUES_TAG])["model.widths"] == [8]
               for run in done)
    second = run_cvlib(*args)
    assert f"{len(done)} of 3 trials done" in second.stdout
    assert len(_finished(_trial_runs(uri, "failing-search"))) >= len(done)
