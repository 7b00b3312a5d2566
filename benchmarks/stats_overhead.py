r"""What the activation/gradient/update statistics cost: the same cell trained with
and without them, interleaved in one process, median ratio of the wall times.

    python benchmarks/stats_overhead.py [--train-size 10000] [--epochs 3] [--repeats 3]
                                        [--val-size 5000] [--test-size N] [--record]
    python benchmarks/stats_overhead.py --train-size 500 --epochs 1 --repeats 1 \
        --val-size 500 --test-size 500                                 # smallest

Needs CIFAR-10 ($CVLIB_DATA_DIR, see the README). The cell is the default cnn
(cvlib.config.ModelConfig's defaults). Goal: overhead of 5% or less (ratio at most 1.05).
Also prints what a cell's artifacts cost afterwards: its plots
(cvlib.plots.write_cell_plots, drawn by the plot helper process in `cvlib run`) and the
statistics' parquet table, written into a temporary folder.
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

from record import Recorder, add_option


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--test-size", type=int, default=None,
                        help="test images (default: all 10,000)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    add_option(parser)
    args = parser.parse_args()
    recorder = Recorder(args.record)

    import keras

    from cvlib.data import DataCache
    from cvlib.grids import grid_from_dict
    from cvlib.plots import write_cell_plots
    from cvlib.tracking.schema import PLOTS_FOLDER, STATS_TABLE
    from cvlib.training import train_cell

    cells = {}
    for every in (0, 1):
        grid = grid_from_dict({"name": "bench", "data": {
            "train_size": args.train_size, "val_size": args.val_size,
            "test_size": args.test_size}, "train": {"epochs": args.epochs, "stats_every": every}})
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
                    write_cell_plots(result.history, result.stats, Path(folder, PLOTS_FOLDER))
                    table = Path(folder, STATS_TABLE)
                    table.parent.mkdir(parents=True)
                    result.stats.to_parquet(table, index=False)
                artifacts.append(time.perf_counter() - started)
            print(f"  repeat {repeat + 1} stats={'on ' if every else 'off'} "
                  f"{seconds[every][-1]:.1f} s", flush=True)
    ratios = [on / off for on, off in zip(seconds[1], seconds[0])]
    figure = f"{statistics.median(ratios):.3f}"
    print(f"training with statistics / without: median ratio {figure} "
          f"(each pair: {', '.join(f'{r:.3f}' for r in ratios)}; goal: at most 1.05)")
    print(f"writing the plots and the parquet table afterwards: median "
          f"{statistics.median(artifacts):.2f} s per cell")
    recorder.add("statistics overhead", "<= 1.05", figure)


if __name__ == "__main__":
    main()
