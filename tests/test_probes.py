"""The claims study's final measures on small models: gradient signs and the zig-zag,
dead units, parameter counts and the activation timing."""
import keras
import numpy as np
import pytest

from cvlib.data import Dataset
from cvlib.models import build_model
from cvlib.studies import probes

SMALL = {"widths": [4, 8], "dense_units": 16}
MLP = {"arch": "mlp", "depth": 2, "width": 32}


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    generator = np.random.default_rng(0)

    def images(count):
        return generator.standard_normal((count, 32, 32, 3)).astype("float32")

    def labels(count):
        return generator.integers(0, 10, count)

    return Dataset(images(64), labels(64), images(probes.PROBE_IMAGES), labels(probes.PROBE_IMAGES),
                   images(10), labels(10))


def test_sigmoid_gives_single_signed_gradients_and_a_zigzag_centered_does_not(dataset):
    keras.utils.set_random_seed(0)
    sigmoid = probes.gradient_signs(build_model(**MLP, activation="sigmoid",
                                                initializer="xavier"), dataset)
    keras.utils.set_random_seed(0)
    centered = probes.gradient_signs(build_model(**MLP, activation="centered_sigmoid",
                                                 initializer="xavier"), dataset)
    assert sigmoid["sign/inputs_positive_fraction"] == 1.0
    assert sigmoid["sign/single_sign_fraction"] == 1.0
    assert sigmoid["zigzag/same_direction_fraction"] == 1.0
    assert centered["sign/single_sign_fraction"] < 0.05
    assert 0.2 < centered["zigzag/same_direction_fraction"] < 0.8
    path = [(sigmoid[probes.zigzag_key(0, step)], sigmoid[probes.zigzag_key(1, step)])
            for step in range(probes.ZIGZAG_STEPS + 1)]
    assert len(set(path)) == probes.ZIGZAG_STEPS + 1  # every update moved the weights


def test_a_relu_unit_with_negative_input_everywhere_is_dead_a_leaky_one_is_not(dataset):
    figures = {}
    for activation in ("relu", "leaky_relu", "maxout"):
        model = build_model(arch="mlp", depth=2, width=10, activation=activation)
        layer = model.get_layer("dense1_dense")
        layer.bias.assign(np.full(layer.bias.shape, -1e4, "float32"))  # inputs all negative
        figures[activation] = probes.dead_units(model, dataset)
    assert figures["relu"]["dead/dense1_act"] == 1.0
    assert figures["relu"]["dead/fraction"] >= 0.5
    assert figures["leaky_relu"]["dead/fraction"] == 0.0
    assert figures["leaky_relu"]["dead/negative_fraction"] >= 0.5
    assert figures["maxout"]["dead/fraction"] == 0.0


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "maxout", "tanh"])
def test_the_dead_statistic_and_the_dead_unit_probe_agree(dataset, activation):
    from cvlib.stats import StatsRecorder

    keras.utils.set_random_seed(0)
    model = build_model(**SMALL, activation=activation)
    # Some units of every layer get a hugely negative input for every image: ReLU's die,
    # the others' pass gradient (tanh's saturate to a derivative of exactly 0 and die too).
    for name in ("block1_conv", "block2_conv", "dense1_dense"):
        bias = model.get_layer(name).bias
        shifted = np.where(np.arange(bias.shape[0]) % 3 == 0, -1e4, 0.0)
        bias.assign(shifted.astype("float32"))
    probe = dataset.x_val[:probes.PROBE_IMAGES]
    statistics = StatsRecorder(model, probe, dataset.y_val[:probes.PROBE_IMAGES],
                               activation).measure(0)
    figures = probes.dead_units(model, dataset)
    layers = [layer.name for layer in model.layers if layer.name.endswith("_act")]
    assert len(layers) == 3
    for layer in layers:
        assert statistics[f"act/{layer}/dead"] == pytest.approx(figures[f"dead/{layer}"])
    if activation in ("relu", "tanh"):
        assert min(figures[f"dead/{layer}"] for layer in layers) > 0.2
    else:
        assert figures["dead/fraction"] == 0.0


def test_maxout_doubles_the_parameters_of_the_layers_before_it(dataset):
    relu = probes.parameter_counts(build_model(**SMALL, activation="relu"), dataset)
    maxout = probes.parameter_counts(build_model(**SMALL, activation="maxout"), dataset)
    for layer in ("block1_conv", "block2_conv", "dense1_dense"):
        assert maxout[f"params/{layer}"] == 2 * relu[f"params/{layer}"]
    assert maxout["params/logits"] == relu["params/logits"]
    assert relu["params/total"] == sum(v for k, v in relu.items() if k != "params/total")


def test_activation_timing_times_each_function_on_the_model_shapes(dataset):
    figures = probes.activation_timing(build_model(**SMALL), dataset)
    assert set(figures) == {"act_time/relu_ms", "act_time/tanh_ms", "act_time/sigmoid_ms",
                            "act_time/tanh_over_relu", "act_time/sigmoid_over_relu"}
    assert all(value > 0 for value in figures.values())
