"""Successive halving: rungs, who survives, and a real tiny run that continues one
MLflow run per cell from its checkpoint."""
import textwrap

import numpy as np
import pandas as pd
import pytest

from conftest import run_cvlib
from cvlib.config import ConfigError, SearchConfig, grid_from_dict
from cvlib.halving import survivors


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


def _result(accuracy, outcome="ok"):
    return {"outcome": outcome, "val_accuracy": accuracy}


def test_survivors_are_the_best_third_and_diverged_cells_go_first():
    results = {0: _result(0.5), 1: _result(0.9), 2: _result(0.1), 3: _result(0.7),
               4: _result(0.95, "diverged"), 5: _result(0.3)}
    assert survivors(results, 3) == [1, 3]
    assert survivors({0: _result(0.2), 1: _result(None, "diverged")}, 3) == [0]
    assert survivors({0: _result(0.2, "diverged")}, 3) == []


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
    import keras

    from cvlib.planning import Stage
    from cvlib.training import train_cell
    from test_stats import _tiny_cell, _tiny_dataset

    class RecordJit(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append(self.model.jit_compile)

    seen = []
    cell, dataset, checkpoint = _tiny_cell(epochs=2), _tiny_dataset(), str(tmp_path / "c.keras")
    for stage in (Stage(0, 1, checkpoint), Stage(1, 2, checkpoint)):
        train_cell(cell, dataset, lambda metrics, step: None, [RecordJit()], stage=stage)
    assert seen == [False, False]
