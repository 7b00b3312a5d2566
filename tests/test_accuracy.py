"""How good the models are on real CIFAR-10 (slow: run with `pytest -m slow`)."""
import pytest

from cvlib.data import DataCache
from cvlib.grids import load_grid
from cvlib.training import train_cell


@pytest.mark.slow
def test_baseline_cell_reaches_45_percent_test_accuracy(cifar_dir):
    # relu / he / bn-before cnn, 5 epochs of adam 1e-3 on 10,000 images.
    (cell,) = load_grid("experiments/baseline.yaml").cells()
    logged = []
    result = train_cell(cell, DataCache(cifar_dir).get(cell.data),
                        lambda metrics, step: logged.append((step, metrics)))
    assert result.epochs == 5
    # The statistics at initialization (step 0), each epoch, then the test figures.
    assert [step for step, _ in logged] == [0, 1, 2, 3, 4, 5, 5]
    assert "test_accuracy" in logged[-1][1] and "act/block1_act/std" in logged[0][1]
    assert result.test_accuracy >= 0.45
