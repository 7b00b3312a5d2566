r"""What a cell's epoch checkpoints cost: a cell of the seed grid's size
(experiments/seed_grid.yaml: the cnn of widths 32, 64, 128 on 10,000 images, SGD) trained
with a checkpoint after every other epoch (train.checkpoint_every: 2), so that epochs
with and without one alternate in one fit; the ratio of an epoch's time with its
checkpoint to its time without.

    python benchmarks/checkpoint_cost.py [--train-size 10000] [--val-size 5000]
                                         [--epochs 9] [--record]
    python benchmarks/checkpoint_cost.py --train-size 500 --val-size 500 \
        --test-size 500 --epochs 3                                     # smallest

An epoch's wall time runs from the end of the epoch before (its metrics) to its own end,
so it holds the checkpoint written after the epoch before, if any; the epoch's own
training time (epoch_time_s) does not. The time between the two is the checkpoint's
cost, less the same gap after an epoch without one. The headline is the median over the
epochs that follow a checkpoint of wall time / (wall time - that cost): on a shared
machine, two epochs' training times differ by more than a checkpoint costs, and this
compares each epoch with itself. The plain ratio of adjacent epochs' wall times (the
one after a checkpoint against the one before it) is printed too. Needs CIFAR-10
($CVLIB_DATA_DIR, see the README). Goal: at most 3% more time per epoch (ratio at most
1.03). Also prints the checkpoint's size.
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
    parser.add_argument("--epochs", type=int, default=9,
                        help="epochs of the cell (at least 3: one pair)")
    add_option(parser)
    args = parser.parse_args()
    if args.epochs < 3:
        parser.error("--epochs must be at least 3")
    recorder = Recorder(args.record)

    from cvlib.cells import Stage
    from cvlib.data import DataCache
    from cvlib.grids import grid_from_dict
    from cvlib.tracking.schema import EPOCH_TIME, LOSS
    from cvlib.training import train_cell

    (cell,) = grid_from_dict({
        "name": "bench",
        "data": {"train_size": args.train_size, "val_size": args.val_size,
                 "test_size": args.test_size, "preprocess": "per_channel_mean"},
        "model": {"arch": "cnn", "widths": [32, 64, 128], "dense_units": 128},
        "train": {"epochs": args.epochs, "batch_size": 128, "optimizer": "sgd",
                  "learning_rate": 0.01, "momentum": 0.9}}).cells()
    dataset = DataCache().get(cell.data)
    print(f"seed grid's cnn, {args.train_size} images x {args.epochs} epochs, "
          f"a checkpoint after every other epoch")
    ends: dict[int, float] = {}
    training: dict[int, float] = {}

    def epoch_ended(metrics: dict[str, float], step: int) -> None:
        if LOSS in metrics:
            ends[step], training[step] = time.perf_counter(), metrics[EPOCH_TIME]

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder, "checkpoint.zip")
        train_cell(cell, dataset, epoch_ended,
                   stage=Stage(0, args.epochs, str(checkpoint), checkpoint_every=2))
        size = checkpoint.stat().st_size
    wall = {epoch: ends[epoch] - ends[epoch - 1] for epoch in range(2, args.epochs + 1)}
    gaps = {epoch: wall[epoch] - training[epoch] for epoch in wall}
    after = [epoch for epoch in wall if epoch >= 3 and (epoch - 1) % 2 == 0]
    plain_gap = statistics.median(gaps[epoch] for epoch in wall if epoch not in after)
    for epoch in after:
        print(f"  epoch {epoch}: {wall[epoch]:.2f} s, of which the checkpoint before it "
              f"{gaps[epoch] - plain_gap:.3f} s; epoch {epoch - 1}: {wall[epoch - 1]:.2f} s")
    figure = f"{statistics.median(wall[e] / (wall[e] - gaps[e] + plain_gap) for e in after):.3f}"
    adjacent = statistics.median(wall[epoch] / wall[epoch - 1] for epoch in after)
    print(f"checkpoint every epoch / none: time per epoch, median ratio {figure} "
          f"(goal: at most 1.03; adjacent epochs' wall times: {adjacent:.3f}); "
          f"checkpoint {size / 2**20:.2f} MiB")
    recorder.add("epoch checkpoint cost", "<= 1.03", figure)


if __name__ == "__main__":
    main()
