"""Compiled models reused across cells (training.ModelCache): a cell trained on a
cached model must give exactly what a freshly built one gives; and a compiled model's
train step is traced once."""
import dataclasses

import numpy as np
from test_stats import _tiny_cell, _tiny_dataset

from cvlib.cells import Stage
from cvlib.models import build_model
from cvlib.training import ModelCache, compile_model, train_cell

TIMINGS = ("epoch_time_s", "images_per_s")


def _train(cell, dataset, models, stage=None):
    """The cell's result, and what it logged but its timings."""
    logged = []

    def log_metrics(metrics, step):
        logged.append((step, {key: value for key, value in metrics.items()
                              if key not in TIMINGS}))

    return train_cell(cell, dataset, log_metrics, stage=stage, models=models), logged


def _with(cell, **changes):
    """The cell with other model or train settings (and a seed of its own)."""
    model = dataclasses.replace(cell.model, **{key: value for key, value in changes.items()
                                               if hasattr(cell.model, key)})
    train = dataclasses.replace(cell.train, **{key: value for key, value in changes.items()
                                               if hasattr(cell.train, key)})
    return dataclasses.replace(cell, model=model, train=train, seed=changes.get("seed", 7))


def test_a_cell_on_a_cached_model_trains_exactly_like_a_fresh_one():
    dataset = _tiny_dataset()
    cell = _tiny_cell(epochs=2, optimizer="adam", learning_rate=0.01)
    # Same graph, other weights, learning rate and seed: it leaves the model and its
    # optimizer far from the next cell's initial state.
    other = _with(cell, initializer="unit_gaussian", learning_rate=0.1, seed=3)
    models = ModelCache()
    _train(other, dataset, models)
    cached_model = next(iter(models._models.values()))
    reused, reused_logs = _train(cell, dataset, models)
    fresh, fresh_logs = _train(cell, dataset, ModelCache(capacity=0))

    assert len(models._models) == 1 and next(iter(models._models.values())) is cached_model
    assert reused.history == fresh.history
    assert reused.test_accuracy == fresh.test_accuracy
    assert reused_logs == fresh_logs  # statistics included, from step 0 on
    assert reused.stats.equals(fresh.stats)


def test_a_compiled_model_creates_no_variables_in_its_first_fit():
    # A tf.function that creates variables is traced twice; none created, once.
    dataset, cell = _tiny_dataset(), _tiny_cell(optimizer="adam")
    model = compile_model(build_model(**dataclasses.asdict(cell.model)), cell.train)
    optimizer_variables = [v.path for v in model.optimizer.variables]
    metric_variables = [v.path for v in model.metrics_variables]

    model.fit(dataset.x_train, dataset.y_train, batch_size=16, epochs=1, verbose=0)

    assert len(optimizer_variables) > 2  # its moments, beside step count and learning rate
    assert [v.path for v in model.optimizer.variables] == optimizer_variables
    assert [v.path for v in model.metrics_variables] == metric_variables


def test_cells_of_other_graphs_get_models_of_their_own():
    dataset, models = _tiny_dataset(), ModelCache(capacity=2)
    for activation in ("tanh", "relu", "elu"):
        _train(_tiny_cell(activation, epochs=1), dataset, models)
    # The least recently used graph (tanh) was dropped.
    assert [dict(key[0])["activation"] for key in models._models] == ["relu", "elu"]


def test_a_continued_stage_on_a_cached_model_resumes_its_checkpoint(tmp_path):
    dataset = _tiny_dataset()
    cell = _tiny_cell(epochs=3, optimizer="adam", learning_rate=0.01)
    histories = []
    for name, models in (("fresh", ModelCache(capacity=0)), ("cached", ModelCache())):
        checkpoint = str(tmp_path / f"{name}.keras")
        first, _ = _train(cell, dataset, models, Stage(0, 1, checkpoint))
        if name == "cached":  # another cell moves the cached model elsewhere
            _train(_with(cell, initializer="unit_gaussian", learning_rate=0.1), dataset, models)
        continued, _ = _train(cell, dataset, models, Stage(1, 3, checkpoint))
        histories.append((first.history, continued.history))
    assert histories[0] == histories[1]
    assert np.isfinite(histories[1][1]["loss"]).all()


def test_a_model_whose_cell_failed_is_not_reused():
    import pytest

    def failing(metrics, step):
        raise RuntimeError("out of memory, say")

    dataset, models = _tiny_dataset(), ModelCache()
    cell = _tiny_cell(epochs=1)
    with pytest.raises(RuntimeError):
        train_cell(cell, dataset, failing, models=models)
    assert not models._models
    _train(cell, dataset, models)
    assert len(models._models) == 1


def test_a_cell_trained_in_stages_logs_what_an_uninterrupted_one_logs(tmp_path):
    dataset, cell = _tiny_dataset(), _tiny_cell(epochs=3)
    models = ModelCache(capacity=0)
    whole, whole_logged = _train(cell, dataset, models)
    checkpoint = str(tmp_path / "cell.keras")
    staged = [_train(cell, dataset, models, Stage(start, end, checkpoint))
              for start, end in ((0, 1), (1, 3))]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(staged[0][0].history[key] + staged[1][0].history[key],
                                   whole.history[key], rtol=1e-5, err_msg=key)
    assert whole_logged[-1][1]["test_accuracy"] == staged[1][1][-1][1]["test_accuracy"]
