"""The per-batch record: each step's own loss and accuracy, recovered from the running
epoch means that Keras reports, and checked against what fit itself reported."""
import numpy as np
import pytest

from cvlib.data import Dataset
from cvlib.grids import grid_from_dict
from cvlib.training import per_batch_figures, train_cell


def _running_means(values, sizes):
    """What Keras reports after each batch: the sample-weighted mean so far."""
    totals = np.cumsum(np.asarray(values) * sizes)
    return totals / np.cumsum(sizes)


def test_per_batch_figures_undo_the_running_means_across_epochs_and_a_short_last_batch():
    rng = np.random.default_rng(0)
    # 10 images in batches of 4: sizes 4, 4, 2, for two epochs.
    sizes = np.array([4, 4, 2])
    truth = {epoch: (rng.random(3) * 3, rng.integers(0, 5, size=3) / sizes)
             for epoch in range(2)}
    rows = []
    for epoch, (losses, accuracies) in truth.items():
        rows += [(epoch, loss, accuracy) for loss, accuracy in
                 zip(_running_means(losses, sizes), _running_means(accuracies, sizes))]
    table = per_batch_figures(rows, train_images=10, batch_size=4)
    assert table["step"].tolist() == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(table["loss"], np.concatenate([truth[0][0], truth[1][0]]))
    np.testing.assert_allclose(table["accuracy"], np.concatenate([truth[0][1], truth[1][1]]))


def test_per_batch_figures_of_no_batches_is_an_empty_table():
    table = per_batch_figures([], train_images=10, batch_size=4)
    assert list(table.columns) == ["step", "loss", "accuracy"] and table.empty


def test_train_cell_records_every_step_consistent_with_the_epoch_figures():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(90, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 10, size=90)
    dataset = Dataset(images[:70], labels[:70], images[70:80], labels[70:80],
                      images[80:], labels[80:])
    (cell,) = grid_from_dict({"name": "b", "model": {"arch": "mlp", "depth": 1, "width": 16},
                              "train": {"epochs": 2, "batch_size": 32, "optimizer": "adam",
                                        "learning_rate": 0.01, "stats_every": 0}}).cells()
    result = train_cell(cell, dataset, lambda metrics, step: None)
    batches = result.batches
    assert batches["step"].tolist() == list(range(1, 7))  # 3 batches (32, 32, 6) x 2 epochs
    sizes = np.array([32, 32, 6])
    for epoch in range(2):
        steps = batches.iloc[3 * epoch:3 * epoch + 3]
        for column in ("loss", "accuracy"):
            weighted = float(np.sum(steps[column] * sizes) / sizes.sum())
            assert weighted == pytest.approx(result.history[column][epoch], rel=1e-4)
    correct = batches["accuracy"].to_numpy() * np.tile(sizes, 2)
    np.testing.assert_allclose(correct, np.round(correct), atol=1e-3)  # whole images
