"""Goal 6 of the speed issue: the same 12-cell grid by KerasTuner's GridSearch and by
`cvlib run`, timed in one process, one after the other.

    python benchmarks/vs_kerastuner.py [--workers 1 2]

The grid: 3 activations x 2 initializers x 2 BN placements on the cnn (32/64/64,
dense 64), 2 epochs of adam, 4,000 training and 1,000 validation images of real
CIFAR-10 ($CVLIB_DATA_DIR). KerasTuner builds the same models with
cvlib.models.build_model and logs nothing beyond its trial files; cvlib logs every
run, per-epoch metrics, activation statistics and plots to MLflow. Both times are
wall times after TensorFlow is imported (workers import it again, inside cvlib's
time). Goal: cvlib at most 0.6x KerasTuner's time.
"""
import argparse
import tempfile
import time

import keras
import keras_tuner

from cvlib.config import grid_from_dict
from cvlib.data import DataCache
from cvlib.models import build_model
from cvlib.runner import run_grid

AXES = {"model.activation": ["relu", "tanh", "elu"], "model.initializer": ["he", "xavier"],
        "model.bn": ["none", "before"]}
GRID = {"name": "vs-kerastuner",
        "data": {"train_size": 4000, "val_size": 1000, "test_size": 1000},
        "model": {"widths": [32, 64, 64], "dense_units": 64},
        "train": {"epochs": 2, "batch_size": 128, "optimizer": "adam", "learning_rate": 0.001},
        "grid": AXES}


def time_kerastuner(dataset) -> float:
    """KerasTuner's GridSearch over the same 12 cells; returns wall seconds."""
    def build(hp):
        model = build_model(widths=[32, 64, 64], dense_units=64,
                            activation=hp.Choice("activation", AXES["model.activation"]),
                            initializer=hp.Choice("initializer", AXES["model.initializer"]),
                            bn=hp.Choice("bn", AXES["model.bn"]))
        model.compile(optimizer=keras.optimizers.Adam(0.001), metrics=["accuracy"],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    tuner = keras_tuner.GridSearch(build, objective="val_accuracy", max_trials=12,
                                   directory=tempfile.mkdtemp(prefix="kt-"), project_name="grid",
                                   overwrite=True)
    started = time.perf_counter()
    tuner.search(dataset.x_train, dataset.y_train, epochs=2, batch_size=128, verbose=0,
                 validation_data=(dataset.x_val, dataset.y_val))
    seconds = time.perf_counter() - started
    assert len(tuner.oracle.trials) == 12, len(tuner.oracle.trials)
    return seconds


def time_cvlib(workers: int) -> float:
    """`cvlib run` of the same grid into a temporary MLflow store; wall seconds."""
    uri = f"sqlite:///{tempfile.mkdtemp(prefix='cvlib-vs-kt-')}/mlflow.db"
    started = time.perf_counter()
    summary = run_grid(grid_from_dict(GRID), uri, workers=workers, echo=lambda line: None,
                       progress_bar=False)
    seconds = time.perf_counter() - started
    assert len(summary.finished) + len(summary.diverged) == 12, summary
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    dataset = DataCache().get(grid_from_dict(GRID).cells()[0].data)
    kerastuner = time_kerastuner(dataset)
    print(f"KerasTuner GridSearch: {kerastuner:.0f} s", flush=True)
    for workers in args.workers:
        seconds = time_cvlib(workers)
        print(f"cvlib run --workers {workers}: {seconds:.0f} s, {seconds / kerastuner:.2f}x "
              f"KerasTuner's time (goal: at most 0.6x)", flush=True)


if __name__ == "__main__":
    main()
