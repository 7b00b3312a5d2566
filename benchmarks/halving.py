"""Goal 5 of the speed issue: successive halving against the plain grid.

    python benchmarks/halving.py [--train-size 2000] [--workers 2]

Runs experiments/seed_grid.yaml (84 cells) at a reduced data size twice, as a plain
grid of max_epochs=9 epochs and as successive halving (min 1, max 9, reduction 3),
both through run_grid in this process with the same workers, into a temporary store.
Prints the cost of each (image passes counted from the runs' logged epochs, and wall
time) and how many of the plain grid's top 5 cells (by final val_accuracy) halving
kept to the last rung. Goal: at least 4 of 5 at no more than 40% of the cost.
"""
import argparse
import tempfile
import time

from mlflow.tracking import MlflowClient

from cvlib.config import load_grid
from cvlib.runner import run_grid


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    uri = f"sqlite:///{tempfile.mkdtemp(prefix='cvlib-halving-bench-')}/mlflow.db"
    overrides = [f"data.train_size={args.train_size}", "data.val_size=1000",
                 "data.test_size=1000", "train.epochs=9"]
    outcomes = {}
    for strategy in ("grid", "halving"):
        grid = load_grid("experiments/seed_grid.yaml", overrides + [
            f"search={{strategy: {strategy}, min_epochs: 1, max_epochs: 9, reduction: 3}}"])
        started = time.perf_counter()
        summary = run_grid(grid, uri, experiment=strategy, workers=args.workers,
                           echo=lambda line: None, progress_bar=False)
        seconds = time.perf_counter() - started
        client = MlflowClient(uri)
        runs = client.search_runs([summary.experiment_id], "tags.`cvlib.cell` != ''")
        epochs = {r.info.run_name: len(client.get_metric_history(r.info.run_id, "loss"))
                  for r in runs}
        accuracy = {r.info.run_name: r.data.metrics.get("val_accuracy", 0.0) for r in runs}
        outcomes[strategy] = (seconds, sum(epochs.values()) * args.train_size, epochs, accuracy)
        print(f"{strategy:8s}: {len(runs)} cells, {sum(epochs.values())} cell-epochs, "
              f"{outcomes[strategy][1]:,} image passes, {seconds:.0f} s", flush=True)
    grid_seconds, grid_passes, _, grid_accuracy = outcomes["grid"]
    halving_seconds, halving_passes, halving_epochs, _ = outcomes["halving"]
    top5 = sorted(grid_accuracy, key=grid_accuracy.get, reverse=True)[:5]
    found = [name for name in top5 if halving_epochs.get(name) == 9]
    print(f"plain grid's top 5: {', '.join(top5)}")
    print(f"halving kept {len(found)} of them to the last rung (goal: at least 4)")
    print(f"cost of halving / plain grid: image passes {halving_passes / grid_passes:.2f}, "
          f"wall time {halving_seconds / grid_seconds:.2f} (goal: at most 0.40)")


if __name__ == "__main__":
    main()
