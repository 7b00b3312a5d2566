"""How long resuming takes to decide what is done, on a store of 1,000 cell runs,
and whether that grows with the number of epochs the runs logged.

    python benchmarks/resume_scan.py [--runs 1000] [--keys 50] [--epochs 1 20] [--record]
    python benchmarks/resume_scan.py --runs 5 --keys 5 --epochs 1 2        # smallest

Builds one SQLite store per epoch count (runs with the grid's tags, and `keys`
metrics logged at every epoch), then times Tracker.run_records + engine.resume.plan
(what `cvlib run` does before training) three times each, and prints the medians.
Goal: the time does not grow with the epochs logged (ratio last / first about 1).
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

from record import Recorder, add_option

ACTIVATIONS = ["relu", "tanh", "elu", "selu", "gelu"]


def build_store(folder: Path, runs: int, keys: int, epochs: int):
    """A store whose experiment holds `runs` FINISHED cell runs; returns (tracker, id, cells)."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from cvlib.grids import grid_from_dict
    from cvlib.tracking.schema import OK
    from cvlib.tracking.writer import Tracker

    grid = grid_from_dict({"name": "scan", "grid": {
        "model.activation": ACTIVATIONS,
        "train.learning_rate": [0.001 * (i + 1) for i in range(runs // len(ACTIVATIONS))]}})
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    tracker = Tracker(uri)
    client = MlflowClient(uri)
    experiment_id = tracker.experiment_id("scan")
    parent = tracker.start_grid(grid, experiment_id, runs)
    cells = grid.cells()
    for cell in cells:
        run = tracker.start_cell(experiment_id, parent, cell, grid.name)
        metrics = [Metric(f"act/layer{k}/std", 0.5, 0, step)
                   for step in range(epochs + 1) for k in range(keys)]
        for start in range(0, len(metrics), 1000):  # MLflow's limit per log_batch
            client.log_batch(run.run_id, metrics=metrics[start:start + 1000])
        run.finish(OK)
    tracker.end_run(parent)
    return tracker, experiment_id, cells


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000,
                        help=f"cell runs (a multiple of {len(ACTIVATIONS)})")
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 20])
    add_option(parser)
    args = parser.parse_args()
    if args.runs < len(ACTIVATIONS):
        parser.error(f"--runs must be at least {len(ACTIVATIONS)}")
    recorder = Recorder(args.record)

    from cvlib.engine.resume import plan

    medians = {}
    for epochs in args.epochs:
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            tracker, experiment_id, cells = build_store(Path(folder), args.runs, args.keys, epochs)
            print(f"built {len(cells)} runs x {args.keys} metrics x {epochs + 1} steps "
                  f"in {time.perf_counter() - started:.0f} s", flush=True)
            times = []
            for _ in range(3):
                started = time.perf_counter()
                result = plan(cells, tracker.run_records(experiment_id))
                times.append(time.perf_counter() - started)
            assert len(result.done) == len(cells), result.summary()
            medians[epochs] = statistics.median(times)
            print(f"  {epochs:>3} epochs logged: decide what is done in {medians[epochs]:.2f} s "
                  f"(median of {', '.join(f'{t:.2f}' for t in times)})", flush=True)
    first, last = args.epochs[0], args.epochs[-1]
    figure = f"{medians[last] / medians[first]:.2f}"
    print(f"ratio {last} epochs / {first} epoch(s): {figure} (goal: about 1, no growth)")
    recorder.add("resume scan growth with epochs logged", "about 1.0", figure)


if __name__ == "__main__":
    main()
