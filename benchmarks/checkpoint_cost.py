r"""What a cell's epoch checkpoints cost: a cell of the seed grid's size
(experiments/seed_grid.yaml: the cnn of widths 32, 64, 128 on 10,000 images, SGD) trained
with a checkpoint after every other epoch (train.checkpoint_every: 2), so that epochs
with and without one's cost alternate in one fit, side by side under the same load;
median ratio of their wall times.

    python benchmarks/checkpoint_cost.py [--train-size 10000] [--val-size 5000]
                                         [--epochs 9] [--record]
    python benchmarks/checkpoint_cost.py --train-size 500 --val-size 500 \
        --test-size 500 --epochs 3                                     # smallest

An epoch's wall time runs from the end of the epoch before to its own end, so that it
holds the checkpoint written after the epoch before, if any. Epoch k (from 3) follows a
checkpoint when k - 1 is even, and is paired with epoch k - 1, which follows none.
Needs CIFAR-10 ($CVLIB_DATA_DIR, see the README). Goal: at most 3% more time per epoch
(ratio at most 1.03). Also prints the checkpoint's size.
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

    from cvlib.data import DataCache
    from cvlib.grids import Stage, grid_from_dict
    from cvlib.tracking.schema import LOSS
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

    def epoch_ended(metrics: dict[str, float], step: int) -> None:
        if LOSS in metrics:
            ends[step] = time.perf_counter()

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder, "checkpoint.zip")
        train_cell(cell, dataset, epoch_ended,
                   stage=Stage(0, args.epochs, str(checkpoint), checkpoint_every=2))
        size = checkpoint.stat().st_size
    seconds = {epoch: ends[epoch] - ends[epoch - 1] for epoch in range(2, args.epochs + 1)}
    pairs = [(seconds[epoch], seconds[epoch - 1])
             for epoch in range(3, args.epochs + 1) if (epoch - 1) % 2 == 0]
    for after, before in pairs:
        print(f"  epoch after a checkpoint {after:.2f} s, the one before it {before:.2f} s")
    figure = f"{statistics.median(after / before for after, before in pairs):.3f}"
    print(f"checkpoint every epoch / none: time per epoch, median ratio {figure} "
          f"(goal: at most 1.03); checkpoint {size / 2**20:.2f} MiB")
    recorder.add("epoch checkpoint cost", "<= 1.03", figure)


if __name__ == "__main__":
    main()
