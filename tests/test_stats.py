"""Activation, gradient and update statistics: checked against numpy on models
with known weights, on inputs built to hit dead units and saturation, and end to
end into MLflow."""
import keras
import numpy as np
import pytest
from PIL import Image

from cvlib.data import Dataset
from cvlib.grids import grid_from_dict
from cvlib.plots import write_cell_plots
from cvlib.stats import StatsRecorder
from cvlib.training import train_cell


def _dense_model(kernel, activation_layer, bias=None):
    """images (4 features) -> d1_dense (given kernel) -> d1_act -> logits."""
    inputs = keras.Input((kernel.shape[0],), name="images")
    dense = keras.layers.Dense(kernel.shape[1], name="d1_dense")
    x = dense(inputs)
    dense.set_weights([kernel, np.zeros(kernel.shape[1]) if bias is None else bias])
    x = activation_layer(x)
    logits = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, logits)


def test_statistics_match_numpy_on_a_dense_layer_of_ones_and_a_sigmoid():
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    model = _dense_model(np.ones((4, 3), "float32"),
                         keras.layers.Activation("sigmoid", name="d1_act"))
    recorder = StatsRecorder(model, x, np.arange(64) % 10, "sigmoid")
    metrics = recorder.measure(0)
    expected = 1 / (1 + np.exp(-np.repeat(x.sum(axis=1, keepdims=True), 3, axis=1)))
    assert metrics["act/d1_act/mean"] == pytest.approx(expected.mean(), rel=1e-5)
    assert metrics["act/d1_act/std"] == pytest.approx(expected.std(), rel=1e-4)
    assert metrics["act/d1_act/saturated"] == pytest.approx(
        ((expected < 0.01) | (expected > 0.99)).mean())
    assert metrics["act/d1_act/dead"] == 0  # sigmoid units cannot die
    histogram = recorder.table().query("statistic == 'hist_count'")
    assert histogram["value"].sum() == expected.size
    counts, _ = np.histogram(expected, bins=40, range=(expected.min(), expected.max()))
    np.testing.assert_array_equal(histogram["value"].to_numpy(), counts)


def test_overflowing_outputs_do_not_crash_the_histogram():
    import tensorflow as tf

    from cvlib.stats import _activation_summary

    # TensorFlow's histogram kernel kills the process on a non-finite range (this
    # crashed leaky_relu + unit_gaussian cells, whose activations overflow).
    for values in ([1.0, np.inf, -np.inf, np.nan, 2.0, 3.0], [np.inf, np.nan]):
        outputs = tf.constant(np.array(values, "float32").reshape(1, -1, 1))
        summary = tf.function(_activation_summary)(outputs, "leaky_relu", None)
        finite = [v for v in values if np.isfinite(v)]
        assert int(summary["hist"].numpy().sum()) == len(finite)
        assert not np.isfinite(summary["std"].numpy())


def test_gradient_norms_match_a_gradient_tape():
    import tensorflow as tf

    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = rng.integers(0, 10, size=32)
    model = _dense_model(rng.normal(size=(4, 5)).astype("float32"),
                         keras.layers.Activation("tanh", name="d1_act"))
    metrics = StatsRecorder(model, x, y, "tanh").measure(0)
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, model(x))
    kernel = model.get_layer("d1_dense").kernel
    expected = np.linalg.norm(tape.gradient(loss, kernel.value).numpy())
    assert metrics["grad/d1_dense/norm"] == pytest.approx(expected, rel=1e-4)
    assert set(k for k in metrics if k.startswith("grad/")) == {"grad/d1_dense/norm",
                                                                "grad/logits/norm"}


def test_dead_relu_units_are_counted():
    x = np.abs(np.random.default_rng(2).normal(size=(50, 4))).astype("float32") + 0.1
    # Positive inputs: units with negative weights never fire, the others always do.
    kernel = np.array([[1, -1, 1, -1]] * 4, dtype="float32")
    model = _dense_model(kernel, keras.layers.ReLU(name="d1_act"))
    metrics = StatsRecorder(model, x, np.zeros(50, int), "relu").measure(0)
    assert metrics["act/d1_act/dead"] == 0.5
    assert metrics["act/d1_act/saturated"] == 0


@pytest.mark.parametrize("activation", ["leaky_relu", "prelu", "elu", "selu", "gelu", "swish"])
def test_rectifiers_that_pass_gradient_below_zero_have_no_dead_units(activation):
    from cvlib.models import activation_layer
    from cvlib.vocabulary import ACTIVATIONS

    x = np.abs(np.random.default_rng(2).normal(size=(50, 4))).astype("float32") + 0.1
    # Half the units get a negative input for every image, as a dead ReLU's do; these
    # functions still pass gradient there.
    kernel = np.array([[1, -1, 1, -1]] * 4, dtype="float32")
    model = _dense_model(kernel, activation_layer(ACTIVATIONS[activation], "d1_act", None))
    if activation == "prelu":
        # Keras starts PReLU's learned slope at 0, where it is ReLU (and its units as dead
        # as ReLU's): give it the 0.25 of He et al. 2015.
        model.get_layer("d1_act").alpha.assign(np.full((4,), 0.25, "float32"))
    metrics = StatsRecorder(model, x, np.zeros(50, int), activation).measure(0)
    assert metrics["act/d1_act/dead"] == 0


def test_a_unit_whose_derivative_underflows_passes_no_gradient():
    # tanh at 40 and beyond is 1.0 in float32: its derivative is exactly 0 there.
    x = np.array([[40.0], [50.0], [60.0]], dtype="float32")
    model = _dense_model(np.array([[1.0, 0.01]], "float32"),
                         keras.layers.Activation("tanh", name="d1_act"))
    metrics = StatsRecorder(model, x, np.zeros(3, int), "tanh").measure(0)
    assert metrics["act/d1_act/dead"] == 0.5


def test_dead_is_per_channel_for_conv_maps():
    inputs = keras.Input((4, 4, 1), name="images")
    conv = keras.layers.Conv2D(2, 1, name="b1_conv")
    x = conv(inputs)
    conv.set_weights([np.array([[[[1.0, -1.0]]]], "float32"), np.zeros(2, "float32")])
    x = keras.layers.ReLU(name="b1_act")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(
        keras.layers.Flatten()(x)))
    images = np.zeros((3, 4, 4, 1), "float32")
    images[0, 1, 2, 0] = 1.0  # one positive pixel in one image: channel 0 lives
    metrics = StatsRecorder(model, images, np.zeros(3, int), "relu").measure(0)
    assert metrics["act/b1_act/dead"] == 0.5


def test_saturation_of_tanh_counts_outputs_beyond_0_99():
    x = np.array([[0.0], [0.5], [3.0], [-3.0], [10.0]], dtype="float32")
    model = _dense_model(np.ones((1, 1), "float32"),
                         keras.layers.Activation("tanh", name="d1_act"))
    metrics = StatsRecorder(model, x, np.zeros(5, int), "tanh").measure(0)
    assert metrics["act/d1_act/saturated"] == pytest.approx(3 / 5)  # tanh(3) = 0.995


def test_bn_outputs_are_measured_in_training_mode_without_side_effects():
    x = np.random.default_rng(3).normal(5.0, 3.0, size=(200, 4)).astype("float32")
    inputs = keras.Input((4,), name="images")
    h = keras.layers.BatchNormalization(name="d1_bn")(inputs)
    h = keras.layers.ReLU(name="d1_act")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
    moving_mean = model.get_layer("d1_bn").moving_mean.numpy().copy()
    metrics = StatsRecorder(model, x, np.zeros(200, int), "relu").measure(0)
    assert metrics["act/d1_bn/mean"] == pytest.approx(0, abs=1e-3)
    assert metrics["act/d1_bn/std"] == pytest.approx(1, abs=1e-2)
    np.testing.assert_array_equal(model.get_layer("d1_bn").moving_mean.numpy(), moving_mean)


def _tiny_dataset(n_train=64, n_val=40, seed=0):
    rng = np.random.default_rng(seed)
    images = lambda n: rng.normal(size=(n, 32, 32, 3)).astype("float32")  # noqa: E731
    labels = lambda n: rng.integers(0, 10, size=n)  # noqa: E731
    return Dataset(images(n_train), labels(n_train), images(n_val), labels(n_val),
                   images(20), labels(20))


def _tiny_cell(activation="tanh", **train):
    # tanh: on noise images a tiny relu net dies within two epochs (try it: act_dead_max
    # reaches 1 and every gradient norm 0), which these tests do not want.
    grid = grid_from_dict({"name": "t", "model": {"widths": [4], "dense_units": 8,
                                                  "activation": activation},
                           "train": {"epochs": 3, "batch_size": 16, **train}})
    return grid.cells()[0]


def test_probe_batch_is_the_same_every_epoch_and_update_ratios_are_logged(monkeypatch):
    seen = []
    original = StatsRecorder.measure

    def spying_measure(self, step):
        seen.append(self.probe_images.copy())
        return original(self, step)

    monkeypatch.setattr(StatsRecorder, "measure", spying_measure)
    logged = []
    dataset = _tiny_dataset()
    train_cell(_tiny_cell(stats_probe=30), dataset,
               lambda metrics, step: logged.append((step, metrics)))
    assert len(seen) == 4  # step 0 and three epochs
    for images in seen:
        np.testing.assert_array_equal(images, dataset.x_val[:30])
    by_step = dict(logged[:-1])
    assert sorted(by_step) == [0, 1, 2, 3]
    assert "update_ratio/block1_conv" not in by_step[0]
    for step in (1, 2, 3):
        assert 0 < by_step[step]["update_ratio/block1_conv"] < 1
        assert by_step[step]["grad/logits/norm"] > 0
        assert "loss" in by_step[step]  # one call per step: stats ride with the epoch


def test_stats_every_thins_the_steps_but_keeps_init_and_the_last_epoch():
    logged = []
    train_cell(_tiny_cell(epochs=5, stats_every=2), _tiny_dataset(),
               lambda metrics, step: logged.append((step, metrics)))
    measured = [step for step, metrics in logged if "act/block1_act/std" in metrics]
    assert measured == [0, 2, 4, 5]


def test_epochs_zero_logs_step_zero_only():
    logged = []
    result = train_cell(_tiny_cell(epochs=0), _tiny_dataset(),
                        lambda metrics, step: logged.append((step, metrics)))
    assert {step for step, _ in logged} == {0}
    assert "act/block1_act/mean" in logged[0][1] and "val_loss" in logged[0][1]
    assert set(result.stats["step"]) == {0}
    assert {"act_std_first", "act_std_last", "act_dead_max"} <= set(logged[-1][1])


def test_plots_are_valid_png_images(tmp_path):
    result = train_cell(_tiny_cell(epochs=2), _tiny_dataset(), lambda metrics, step: None)
    write_cell_plots(result.history, result.stats, tmp_path / "plots")
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["activations_epoch_000.png", "activations_epoch_002.png", "curves.png",
                     "layer_std.png"]
    for path in (tmp_path / "plots").iterdir():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            image.verify()
            assert image.size[0] > 200 and image.size[1] > 150
    table = result.stats
    assert set(table.columns) == {"layer", "step", "statistic", "value", "bin_low", "bin_high"}
    assert {"mean", "std", "saturated", "dead", "hist_count", "grad_norm",
            "update_ratio"} <= set(table["statistic"])


def test_the_whole_set_reaches_mlflow_in_a_bounded_number_of_calls(tmp_path, cifar_dir,
                                                                   monkeypatch):
    from mlflow.tracking import MlflowClient

    from cvlib.engine.experiment import run_grid
    from cvlib.engine.options import EngineOptions

    calls = {}
    for method in ("log_batch", "log_metric", "log_param", "set_tag", "log_artifacts",
                   "log_artifact", "create_run", "set_terminated"):
        original = getattr(MlflowClient, method)

        def counting(self, *args, _original=original, _name=method, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(MlflowClient, method, counting)
    epochs = 4
    grid = grid_from_dict({"name": "calls",
                           "data": {"train_size": 100, "val_size": 50, "test_size": 20},
                           "model": {"widths": [4, 4], "dense_units": 8, "bn": "before"},
                           "train": {"epochs": epochs, "batch_size": 50}})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_grid(grid, uri, EngineOptions(data_dir=str(cifar_dir)), echo=lambda line: None)
    # The grid's params; per cell: its params, the outcome tags (with the plots' pending
    # mark) and the mark's end once the plots are attached. Each step's metrics
    # (0..epochs, then the final figures), the per-gradient-step batch series and the
    # heartbeats reach a SQLite store through the metric writer's group commits instead.
    assert calls["log_batch"] == 1 + (1 + 1 + 1)
    assert calls.get("log_metric", 0) == 0 and calls.get("log_param", 0) == 0
    # The parent's resolved grid, the cell's model (with its run's ending), its statistics
    # table, then its plots.
    assert calls["log_artifacts"] == 4
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("calls").experiment_id],
                                "tags.`cvlib.cell` != ''")
    history = client.get_metric_history(run.info.run_id, "act/block2_act/std")
    assert [m.step for m in history] == list(range(epochs + 1))
    assert [m.step for m in client.get_metric_history(
        run.info.run_id, "update_ratio/block1_conv")] == list(range(1, epochs + 1))
    assert len(client.get_metric_history(run.info.run_id, "grad/logits/norm")) == epochs + 1
    for key in ("act_std_first", "act_std_last", "act_saturated_max", "act_dead_max",
                "act/block1_bn/mean", "act/dense1_act/dead"):
        assert key in run.data.metrics, key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/activations_epoch_000.png", f"plots/activations_epoch_00{epochs}.png",
                         "plots/curves.png", "plots/layer_std.png"}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "stats")] == \
        ["stats/activations.parquet"]
    assert len([k for k in run.data.metrics if k.startswith("act/")]) == 6 * 4



def test_a_mixed_bfloat16_cell_logs_float_statistics_like_its_float32_twin():
    logged = {}
    for precision in ("float32", "mixed_bfloat16"):
        cell = grid_from_dict({"name": "t", "model": {"widths": [4], "dense_units": 8,
                                                      "activation": "tanh", "bn": "after",
                                                      "precision": precision},
                               "train": {"epochs": 1, "batch_size": 16}}).cells()[0]
        steps = []
        result = train_cell(cell, _tiny_dataset(),
                            lambda metrics, step, steps=steps: steps.append(metrics))
        logged[precision] = steps[0]  # step 0: the same initial weights in both
        assert result.stats["value"].dtype == np.float64
        assert np.isfinite(result.stats["value"]).all()
    for key, value in logged["float32"].items():
        if key.startswith("act/") and key.endswith(("/mean", "/std")):
            assert logged["mixed_bfloat16"][key] == pytest.approx(value, rel=0.05, abs=0.01), key
