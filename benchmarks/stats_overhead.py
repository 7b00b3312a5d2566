"""What the activation/gradient/update statistics cost: the same cell trained with
and without them, interleaved in one process, median ratio of the wall times.

    python benchmarks/stats_overhead.py [--train-size 10000] [--epochs 3] [--repeats 3]

Needs CIFAR-10 ($CVLIB_DATA_DIR, see the README). The cell is the default cnn
(cvlib.config.ModelConfig's defaults). Goal: overhead of 5% or less.
"""
import argparse
import statistics
import tempfile
import time

from cvlib.config import grid_from_dict
from cvlib.data import DataCache
from cvlib.plots import write_cell_artifacts
from cvlib.training import train_cell


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import keras

    cells = {}
    for every in (0, 1):
        grid = grid_from_dict({"name": "bench", "data": {"train_size": args.train_size},
                               "train": {"epochs": args.epochs, "stats_every": every}})
        cells[every] = grid.cells()[0]
    dataset = DataCache().get(cells[0].data)
    print(f"default cnn {cells[0].model}, {args.train_size} images x {args.epochs} epochs")
    seconds = {0: [], 1: []}
    artifacts = []
    for repeat in range(args.repeats):
        # Alternate the order so that drifts in the machine's load hit both sides.
        for every in ((0, 1) if repeat % 2 == 0 else (1, 0)):
            keras.backend.clear_session()
            started = time.perf_counter()
            result = train_cell(cells[every], dataset, lambda metrics, step: None)
            seconds[every].append(time.perf_counter() - started)
            if every:
                started = time.perf_counter()
                with tempfile.TemporaryDirectory() as folder:
                    write_cell_artifacts(result.history, result.stats, folder)
                artifacts.append(time.perf_counter() - started)
            print(f"  repeat {repeat + 1} stats={'on ' if every else 'off'} "
                  f"{seconds[every][-1]:.1f} s", flush=True)
    ratios = [on / off for on, off in zip(seconds[1], seconds[0])]
    print(f"training with statistics / without: median ratio {statistics.median(ratios):.3f} "
          f"(each pair: {', '.join(f'{r:.3f}' for r in ratios)})")
    print(f"writing the plots and the parquet table afterwards: median "
          f"{statistics.median(artifacts):.2f} s per cell")


if __name__ == "__main__":
    main()
