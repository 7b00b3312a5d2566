"""Successive halving: rungs, who survives, and a real tiny run that continues one
MLflow run per cell from its checkpoint."""
import textwrap
import types

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import run_cvlib
from test_saved_models import _store, _test_split

from cvlib.callbacks import DivergenceStop
from cvlib.config import SearchConfig
from cvlib.engine.events import StageResult
from cvlib.engine.halving import SuccessiveHalving, survivors
from cvlib.fields import ConfigError
from cvlib.grids import grid_from_dict


def test_rungs_multiply_by_the_reduction_and_end_at_max_epochs():
    assert SearchConfig(min_epochs=1, max_epochs=9, reduction=3).rungs() == [1, 3, 9]
    assert SearchConfig(min_epochs=2, max_epochs=10, reduction=3).rungs() == [2, 6, 10]
    assert SearchConfig(min_epochs=1, max_epochs=8, reduction=2).rungs() == [1, 2, 4, 8]
    assert SearchConfig(min_epochs=3, max_epochs=3).rungs() == [3]
    with pytest.raises(ConfigError, match="search.min_epochs"):
        SearchConfig(min_epochs=5, max_epochs=3)


def test_halving_cells_carry_max_epochs_like_the_plain_grid():
    grid = grid_from_dict({"name": "h", "search": {"strategy": "halving", "max_epochs": 9}})
    plain = grid_from_dict({"name": "h", "train": {"epochs": 9}})
    assert grid.cells()[0].cell_hash == plain.cells()[0].cell_hash


def _result(accuracy, outcome="ok", initial_loss=None):
    return StageResult(outcome=outcome, epochs=1, val_accuracy=accuracy, test_accuracy=None,
                       initial_loss=initial_loss)


def test_survivors_are_the_best_third_and_diverged_cells_go_first():
    results = {0: _result(0.5), 1: _result(0.9), 2: _result(0.1), 3: _result(0.7),
               4: _result(0.95, "diverged"), 5: _result(0.3)}
    assert survivors(results, 3) == [1, 3]
    assert survivors({0: _result(0.2), 1: _result(None, "diverged")}, 3) == [0]
    assert survivors({0: _result(0.2, "diverged")}, 3) == []


def test_the_oracle_asks_for_each_rung_and_says_which_runs_end_where(tmp_path):
    """Results in, next tasks out: stages continue from their checkpoints, a failed cell
    (no result) simply leaves, and every other cell ends at the rung it reached."""
    cells = grid_from_dict({"name": "o", "grid": {"model.activation": [
        "relu", "tanh", "elu", "selu", "gelu", "swish"]}}).cells()
    oracle = SuccessiveHalving(cells, SearchConfig(min_epochs=1, max_epochs=4, reduction=2),
                               tmp_path)
    first = oracle.next_tasks()
    assert [(t.key, t.stage.start_epoch, t.stage.end_epoch) for t in first] == \
        [(key, 0, 1) for key in range(6)]
    assert first[2].stage.checkpoint == str(tmp_path / "2.keras")
    assert {t.stage.initial_loss for t in first} == {None}  # each measures its own
    accuracies = {0: 0.5, 1: 0.9, 2: 0.1, 3: 0.7, 5: 0.3}  # cell 4 failed: no result
    decision = oracle.tell({key: _result(value, initial_loss=2.0 + key)
                            for key, value in accuracies.items()})
    assert decision.ended == {2: 0, 5: 0} and decision.going_on == 3  # ceil(5 / 2)
    assert str(decision) == "rung 1/3: 5 cells trained to epoch 1; the best 3 go on"
    second = oracle.next_tasks()
    assert [(t.key, t.stage.start_epoch, t.stage.end_epoch) for t in second] == \
        [(1, 1, 2), (3, 1, 2), (0, 1, 2)]
    # A continued cell's divergence baseline is its own first rung's initial loss.
    assert [t.stage.initial_loss for t in second] == [3.0, 5.0, 2.0]
    assert oracle.tell({key: _result(value, initial_loss=2.0 + key) for key, value in
                        {0: 0.55, 1: 0.6, 3: 0.8}.items()}).ended == {0: 1}
    third = oracle.next_tasks()
    assert [(t.key, t.stage.start_epoch, t.stage.end_epoch, t.stage.initial_loss)
            for t in third] == [(3, 2, 4, 5.0), (1, 2, 4, 3.0)]
    last = oracle.tell({1: _result(0.7), 3: _result(0.85)})
    assert last.ended == {1: 2, 3: 2} and str(last) == "rung 3/3: 2 cells trained to epoch 4"
    assert oracle.next_tasks() == []


def _divergence(epochs: list[list[float]], start_epoch: int = 0,
                initial_loss: float | None = None) -> DivergenceStop:
    """DivergenceStop fed each batch's loss as fit reports it (the epoch's running mean),
    from ``start_epoch``, until it stops training."""
    stop = DivergenceStop(initial_loss=initial_loss)
    stop.set_model(types.SimpleNamespace(stop_training=False))
    for epoch, losses in enumerate(epochs, start_epoch):
        stop.on_epoch_begin(epoch)
        for batch in range(len(losses)):
            stop.on_train_batch_end(batch, {"loss": float(np.mean(losses[:batch + 1]))})
        stop.on_epoch_end(epoch, {"loss": float(np.mean(losses))})
        if stop.model.stop_training:
            break
    return stop


@pytest.mark.parametrize("third_epoch", [[2.5, 3.0, 3.5], [8.0, 8.0, 8.0], [1.0, np.nan, 1.0]])
def test_a_continued_cell_diverges_where_the_plain_cell_does(third_epoch):
    """A halving cell continued after its first epoch starts from a trained loss (0.5
    here); its divergence test still compares with the cell's own initial loss (2.3),
    so it stops exactly where the same cell trained in one go stops."""
    epochs = [[2.3, 1.0, 0.6], [0.5, 1.5, 2.0], third_epoch]
    plain = _divergence(epochs)
    first = _divergence(epochs[:1])
    continued = _divergence(epochs[1:], start_epoch=1, initial_loss=first.initial_loss)
    assert first.initial_loss == plain.initial_loss == continued.initial_loss == 2.3
    assert (continued.diverged_at, continued.reason) == (plain.diverged_at, plain.reason)
    # Against the continued stage's own first batch, its third epoch would diverge.
    assert _divergence(epochs[1:], start_epoch=1).diverged_at == 3


def test_a_continued_stage_carries_the_cells_initial_loss(tmp_path):
    """Trained for real, in two stages through a checkpoint: the second stage tests
    divergence against the loss the plain cell started from, not its own first batch."""
    from test_stats import _tiny_cell, _tiny_dataset

    from cvlib.cells import Stage
    from cvlib.training import train_cell

    cell, dataset, checkpoint = _tiny_cell(epochs=2), _tiny_dataset(), str(tmp_path / "c.keras")
    ignore = lambda metrics, step: None  # noqa: E731
    plain = train_cell(cell, dataset, ignore)
    first = train_cell(cell, dataset, ignore, stage=Stage(0, 1, checkpoint))
    second = train_cell(cell, dataset, ignore,
                        stage=Stage(1, 2, checkpoint, initial_loss=first.initial_loss))
    alone = train_cell(cell, dataset, ignore, stage=Stage(1, 2, checkpoint))
    assert first.initial_loss == pytest.approx(plain.initial_loss, rel=1e-6)
    assert second.initial_loss == first.initial_loss
    assert alone.initial_loss != pytest.approx(plain.initial_loss, rel=1e-3)
    assert (second.diverged_at, second.divergence) == (plain.diverged_at, plain.divergence)


def test_a_tiny_halving_grid_continues_each_cell_in_one_run(cifar_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    grid = tmp_path / "h.yaml"
    grid.write_text(textwrap.dedent("""\
        # Halving test grid.
        name: h
        data: {train_size: 150, val_size: 100, test_size: 50}
        model: {widths: [4], dense_units: 8}
        train: {batch_size: 50, optimizer: adam, learning_rate: 0.001}
        grid: {model.activation: [relu, tanh, elu, selu]}
        search: {strategy: halving, min_epochs: 1, max_epochs: 2, reduction: 2}
        """))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cvlib("run", str(grid), "--tracking-uri", uri, "--data-dir", str(cifar_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rung 1/2: 4 cells trained to epoch 1; the best 2 go on" in result.stdout
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("h-halving").experiment_id],
                              "tags.`cvlib.cell` != ''")
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    steps = {r.info.run_name: [m.step for m in client.get_metric_history(r.info.run_id, "loss")]
             for r in runs}
    rungs = {r.info.run_name: r.data.tags["cvlib.rung"] for r in runs}
    assert sorted(rungs.values()) == ["0", "0", "1", "1"]
    for name, rung in rungs.items():
        assert steps[name] == ([1] if rung == "0" else [1, 2])
    finalists = [r for r in runs if r.data.tags["cvlib.rung"] == "1"]
    eliminated = [r for r in runs if r.data.tags["cvlib.rung"] == "0"]
    assert min(r.data.metrics["val_accuracy"] for r in finalists) >= 0  # trained on
    # the finalists were the better half after rung 1
    first_rung = {r.info.run_name: client.get_metric_history(r.info.run_id, "val_accuracy")[0].value
                  for r in runs}
    assert min(first_rung[r.info.run_name] for r in finalists) >= \
        max(first_rung[r.info.run_name] for r in eliminated)
    # A finalist's artifacts cover both rungs: the statistics' table from step 0 to the
    # last epoch, and the plots drawn once, from the whole history.
    (finalist, *_) = finalists
    table = pd.read_parquet(client.download_artifacts(finalist.info.run_id,
                                                      "stats/activations.parquet", str(tmp_path)))
    assert sorted(set(table["step"])) == [0, 1, 2]
    plots = {a.path for a in client.list_artifacts(finalist.info.run_id, "plots")}
    assert plots == {"plots/activations_epoch_000.png", "plots/activations_epoch_002.png",
                     "plots/curves.png", "plots/layer_std.png"}
    # Each run keeps one model, of the rung it ended at: it scores the run's last
    # test_accuracy, which a finalist measured after its second rung.
    images, labels = _test_split(cifar_dir, grid)
    with _store(uri):
        for run in runs:
            model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
            accuracy = float(np.mean(model.predict(images).argmax(axis=1) == labels))
            assert accuracy == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-6)


def test_fused_batch_normalization_matches_keras():
    import keras

    from cvlib.layers import FusedBatchNormalization

    for shape in [(16, 8, 8, 5), (32, 7)]:
        x = np.random.default_rng(0).normal(2, 3, size=shape).astype("float32")
        reference, fused = keras.layers.BatchNormalization(momentum=0.9), \
            FusedBatchNormalization(momentum=0.9)
        for layer in (reference, fused):
            layer.build(shape)
            layer.gamma.assign(np.linspace(0.5, 2, shape[-1]))
        np.testing.assert_allclose(fused(x, training=True), reference(x, training=True),
                                   atol=1e-5)
        np.testing.assert_allclose(fused.moving_mean, reference.moving_mean, atol=1e-6)
        np.testing.assert_allclose(fused.moving_variance, reference.moving_variance, atol=1e-5)
        np.testing.assert_allclose(fused(x, training=False), reference(x, training=False),
                                   atol=1e-5)


def test_a_continued_stage_compiles_like_a_fresh_one(tmp_path):
    """Keras resolves compile_mode auto to no XLA on this CPU; a stage continued from its
    checkpoint must keep that (it once ran under XLA, at half the speed)."""
    from test_stats import _tiny_cell, _tiny_dataset

    from cvlib.cells import Stage
    from cvlib.training import train_cell

    seen = []
    cell, dataset, checkpoint = _tiny_cell(epochs=2), _tiny_dataset(), str(tmp_path / "c.keras")
    for stage in (Stage(0, 1, checkpoint), Stage(1, 2, checkpoint)):
        train_cell(cell, dataset, lambda metrics, step: None, stage=stage,
                   final_measure=lambda model, dataset: seen.append(model.jit_compile) or {})
    assert seen == [False, False]
