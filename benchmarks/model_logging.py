r"""What keeping a cell's trained model (train.save_model: final) costs a cell: the
seconds it adds and the megabytes it stores, for the default cnn.

    python benchmarks/model_logging.py [--cells 6] [--record]
    python benchmarks/model_logging.py --cells 2                      # smallest

Needs CIFAR-10 ($CVLIB_DATA_DIR, see the README). Trains one default cnn (one epoch on
500 images: the model's size, not its accuracy, sets the cost), then for each of --cells
cells does what `cvlib run` adds for a kept model, timed: the trainer wraps the model with
its preprocessing (training.servable_model) and saves it in MLflow's Keras flavour
(tracking.models.model_files), and the recorder logs it into a cell run of a SQLite store
(CellRun.log_model). Each cell wraps the model anew, as each cell of a grid does. The
first cell also pays, once per process, for importing MLflow's Keras flavour (MLflow
itself is imported already here, as the store is opened; a worker process imports it
with its first model): printed apart, not counted per cell. Goal: at most 0.3 s and 3 MB
a cell (medians).
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

from record import Recorder, add_option


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=6,
                        help="cells whose model is kept and timed (at least 2: the first "
                             "pays the once-per-process imports)")
    add_option(parser)
    args = parser.parse_args()
    if args.cells < 2:
        parser.error("--cells must be at least 2")
    recorder = Recorder(args.record)

    from cvlib.data import DataCache
    from cvlib.grids import grid_from_dict
    from cvlib.tracking.models import model_files
    from cvlib.tracking.writer import Tracker
    from cvlib.training import MODEL_CACHE, servable_model, train_cell

    grid = grid_from_dict({"name": "bench", "data": {
        "train_size": 500, "val_size": 500, "test_size": 500},
        "train": {"epochs": 1, "stats_every": 0}})
    cell = grid.cells()[0]
    dataset = DataCache().get(cell.data)
    train_cell(cell, dataset, lambda metrics, step: None)
    [model] = MODEL_CACHE._models.values()  # the trained default cnn
    print(f"default cnn {cell.model}: {model.count_params():,} parameters")
    with tempfile.TemporaryDirectory() as folder:
        tracker = Tracker(f"sqlite:///{Path(folder, 'mlflow.db')}")
        experiment = tracker.experiment_id("bench")
        seconds, megabytes = [], []
        with tracker.parent_run(experiment, "bench") as parent:
            for index in range(args.cells):
                run = tracker.start_cell(experiment, parent, cell, grid.name)
                started = time.perf_counter()
                files = model_files(servable_model(cell, model, dataset.statistics),
                                    dataset.examples)
                run.log_model(files)
                seconds.append(time.perf_counter() - started)
                megabytes.append(sum(map(len, files.values())) / 1e6)
                run.finish("ok")
                print(f"cell {index + 1}: {seconds[-1]:.3f} s, {megabytes[-1]:.2f} MB",
                      flush=True)
    per_cell = statistics.median(seconds[1:])
    size = statistics.median(megabytes)
    print(f"first cell (with importing mlflow.keras): {seconds[0]:.2f} s")
    print(f"median per cell after it: {per_cell:.3f} s, {size:.2f} MB")
    recorder.add("kept model: seconds added a cell", "<= 0.3", f"{per_cell:.3f}")
    recorder.add("kept model: MB stored a cell", "<= 3", f"{size:.2f}")
    recorder.add("kept model: first cell, with importing mlflow.keras (s, once)", "-",
                 f"{seconds[0]:.2f}")


if __name__ == "__main__":
    main()
