"""build_model: every combination trains, initializers match their definitions,
BN sits where asked, names follow the block_role scheme."""
import itertools

import keras
import numpy as np
import pytest

from cvlib.layers import CenteredSigmoid, Maxout
from cvlib.models import ACTIVATION_LAYERS, build_model, make_initializer
from cvlib.vocabulary import ACTIVATIONS, BN_PLACEMENTS, INITIALIZERS

TINY = {"widths": [4], "dense_units": 8}


def test_every_activation_resolves_to_a_keras_layer():
    for activation in ACTIVATIONS:
        assert (activation.name in ACTIVATION_LAYERS) != (activation.keras_function is not None)
    assert set(ACTIVATION_LAYERS) <= set(ACTIVATIONS.names())


@pytest.mark.parametrize("activation", ACTIVATIONS.names())
def test_every_combination_builds_and_takes_a_training_step(activation):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 32, 32, 3)).astype("float32")
    labels = np.arange(4)
    for initializer, bn in itertools.product(INITIALIZERS.names(), BN_PLACEMENTS.names()):
        model = build_model(**TINY, activation=activation, initializer=initializer, bn=bn)
        model.compile(optimizer=keras.optimizers.SGD(0.01), run_eagerly=True,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        before = [w.copy() for w in model.get_weights()]
        loss = model.train_on_batch(images, labels)
        assert np.isfinite(loss), (initializer, bn)
        assert model.output_shape == (None, 10)
        changed = [not np.array_equal(a, b) for a, b in zip(before, model.get_weights())]
        assert any(changed), (activation, initializer, bn)


def test_mlp_has_depth_hidden_layers_of_width():
    model = build_model(arch="mlp", depth=10, width=500, activation="tanh")
    dense = [layer for layer in model.layers if layer.name.endswith("_dense")]
    assert [layer.name for layer in dense] == [f"dense{i}_dense" for i in range(1, 11)]
    assert all(layer.units == 500 for layer in dense)


@pytest.mark.parametrize("name, expected_std", [
    ("small_gaussian", lambda fan_in, fan_out: 0.01),
    ("unit_gaussian", lambda fan_in, fan_out: 1.0),
    ("xavier", lambda fan_in, fan_out: np.sqrt(1 / fan_in)),
    ("glorot", lambda fan_in, fan_out: np.sqrt(2 / (fan_in + fan_out))),
    ("he", lambda fan_in, fan_out: np.sqrt(2 / fan_in)),
])
def test_initializer_std_matches_its_definition(name, expected_std):
    model = build_model(arch="cnn", widths=[64, 128], dense_units=256, initializer=name)
    for layer_name, fan_in, fan_out in [("block2_conv", 9 * 64, 9 * 128),
                                        ("dense1_dense", 8 * 8 * 128, 256)]:
        kernel = model.get_layer(layer_name).kernel.numpy()
        assert kernel.std() == pytest.approx(expected_std(fan_in, fan_out), rel=0.10), layer_name
        assert abs(kernel.mean()) < 0.1 * kernel.std()


def test_layers_get_different_weights():
    model = build_model(arch="mlp", depth=3, width=50, initializer="he")
    second = model.get_layer("dense2_dense").kernel.numpy()
    third = model.get_layer("dense3_dense").kernel.numpy()
    assert not np.allclose(second, third)


def test_unit_gaussian_is_not_truncated():
    kernel = build_model(arch="mlp", depth=1, width=500, initializer="unit_gaussian") \
        .get_layer("dense1_dense").kernel.numpy()
    assert np.abs(kernel).max() > 3.5  # a truncated normal stops at 2 std


def _input_of(model, name):
    return model.get_layer(name).input._keras_history.operation.name


@pytest.mark.parametrize("arch, block, linear", [("cnn", "block1", "block1_conv"),
                                                 ("cnn", "dense1", "dense1_dense"),
                                                 ("mlp", "dense2", "dense2_dense")])
def test_bn_order_in_the_graph(arch, block, linear):
    settings = {"arch": arch, "widths": [8], "dense_units": 8, "depth": 2, "width": 8}
    none = build_model(**settings, bn="none")
    assert _input_of(none, f"{block}_act") == linear
    assert not [layer for layer in none.layers if layer.name.endswith("_bn")]

    before = build_model(**settings, bn="before")
    assert _input_of(before, f"{block}_bn") == linear
    assert _input_of(before, f"{block}_act") == f"{block}_bn"
    assert before.get_layer(linear).bias is None  # BN's shift replaces the bias

    after = build_model(**settings, bn="after")
    assert _input_of(after, f"{block}_act") == linear
    assert _input_of(after, f"{block}_bn") == f"{block}_act"
    assert after.get_layer(linear).bias is not None


def test_cnn_layer_names_follow_block_and_role():
    names = [layer.name for layer in build_model(widths=[8, 8], bn="before").layers]
    assert names == ["images",
                     "block1_conv", "block1_bn", "block1_act", "block1_pool",
                     "block2_conv", "block2_bn", "block2_act", "block2_pool",
                     "flatten", "dense1_dense", "dense1_bn", "dense1_act", "logits"]


def test_maxout_takes_the_max_of_pairs_and_doubles_the_parameters():
    values = np.array([[1.0, 5.0, -2.0, -3.0, 0.5, 0.25]], dtype="float32")
    np.testing.assert_array_equal(np.asarray(Maxout(pieces=2)(values)), [[5.0, -2.0, 0.5]])
    relu = build_model(arch="mlp", depth=1, width=20, activation="relu")
    maxout = build_model(arch="mlp", depth=1, width=20, activation="maxout")
    assert maxout.get_layer("dense1_dense").count_params() == \
        2 * relu.get_layer("dense1_dense").count_params()
    assert maxout.get_layer("dense1_act").output.shape == (None, 20)


def test_centered_sigmoid_is_sigmoid_moved_down_by_a_half():
    values = np.array([[-30.0, -1.0, 0.0, 2.0, 30.0]], dtype="float32")
    centered = np.asarray(CenteredSigmoid()(values))
    np.testing.assert_allclose(centered, 1 / (1 + np.exp(-values)) - 0.5, atol=1e-6)
    np.testing.assert_allclose(centered, np.tanh(values / 2) / 2, atol=1e-6)


def test_logits_initializer_sets_the_logits_layer_alone():
    keras.utils.set_random_seed(0)
    model = build_model(arch="mlp", depth=2, width=200, initializer="unit_gaussian",
                        logits_initializer="xavier")
    hidden = np.asarray(model.get_layer("dense2_dense").kernel).std()
    logits = np.asarray(model.get_layer("logits").kernel).std()
    assert hidden == pytest.approx(1.0, rel=0.05)
    assert logits == pytest.approx(1 / np.sqrt(200), rel=0.1)


def test_prelu_learns_one_slope_per_channel_in_conv_layers():
    model = build_model(widths=[8], dense_units=16, activation="prelu")
    assert model.get_layer("block1_act").count_params() == 8
    assert model.get_layer("dense1_act").count_params() == 16


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid: relu, leaky_relu"):
        build_model(activation="swishy")
    with pytest.raises(ValueError, match="valid keys of 'model'"):
        build_model(dropout=0.5)
    with pytest.raises(ValueError, match="valid: small_gaussian"):
        make_initializer("orthogonal")


def test_mixed_bfloat16_computes_in_bfloat16_keeps_float32_weights_and_logits():
    model = build_model(**TINY, bn="before", precision="mixed_bfloat16")
    assert keras.config.dtype_policy().name == "float32"  # the process's policy is untouched
    for name in ("block1_conv", "block1_bn", "block1_act", "dense1_dense"):
        assert model.get_layer(name).compute_dtype == "bfloat16", name
    assert {variable.dtype for variable in model.weights} == {"float32"}
    assert model.get_layer("logits").compute_dtype == "float32"
    assert build_model(**TINY).get_layer("block1_conv").compute_dtype == "float32"
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype("float32")
    before = model.get_layer("block1_conv").kernel.numpy().copy()
    assert np.isfinite(model.train_on_batch(images, np.arange(8)))
    assert model.predict(images, verbose=0).dtype == np.float32
    assert not np.array_equal(before, model.get_layer("block1_conv").kernel.numpy())


def test_fused_batch_normalization_in_bfloat16_matches_float32_to_its_precision():
    from cvlib.layers import FusedBatchNormalization

    x = np.random.default_rng(0).normal(2, 3, size=(16, 8, 8, 5)).astype("float32")
    float32, bfloat16 = (FusedBatchNormalization(momentum=0.9, dtype=policy)
                         for policy in ("float32", "mixed_bfloat16"))
    outputs = {}
    for layer in (float32, bfloat16):
        layer.build(x.shape)
        layer.gamma.assign(np.linspace(0.5, 2, 5))
        outputs[layer.compute_dtype] = layer(x, training=True)
    assert outputs["bfloat16"].dtype == "bfloat16"
    # bfloat16 keeps 8 significant bits: about 1% of values near 1.
    np.testing.assert_allclose(np.asarray(outputs["bfloat16"], "float32"), outputs["float32"],
                               rtol=0.02, atol=0.02)
    np.testing.assert_allclose(bfloat16.moving_mean, float32.moving_mean, rtol=0.02)
    np.testing.assert_allclose(bfloat16.moving_variance, float32.moving_variance, rtol=0.02)
