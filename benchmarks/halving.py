"""Goal 5 of the speed issue: successive halving against the plain grid.

    python benchmarks/halving.py [--train-size 2000] [--workers 2]
    python benchmarks/halving.py --report-only sqlite:////tmp/cvlib-halving-bench-XXX/mlflow.db
    python benchmarks/halving.py --store sqlite:////tmp/cvlib-halving-bench-XXX/mlflow.db ...

Runs experiments/seed_grid.yaml (84 cells) at a reduced data size twice, as a plain
grid of max_epochs=9 epochs and as successive halving (min 1, max 9, reduction 3),
both through run_grid in this process with the same workers, into a temporary store.
`--store` continues an interrupted run in its store: the plain grid skips the cells it
finished (as `cvlib run` does), and its wall time is the sum of its sittings.
Prints the cost of each (image passes counted from the runs' logged epochs, and wall
time from the parent runs) and how many of the plain grid's top 5 cells (by final
val_accuracy) halving kept to the last rung. Goal: at least 4 of 5 at no more than
40% of the cost. Also prints what explains a miss: where the plain grid's top 5
ranked after one epoch, the best cell each strategy found, and the validation
split's noise (a 95% binomial margin of one cell's accuracy).
"""
import argparse
import math
import tempfile

from mlflow.tracking import MlflowClient

from cvlib.config import load_grid

STRATEGIES = ("grid", "halving")
LAST_RUNG_EPOCHS = 9


def run_both(train_size: int, workers: int, uri: str | None = None) -> str:
    """Run the plain grid and halving into a store (default: a new one); returns its URI."""
    from cvlib.runner import run_grid

    uri = uri or f"sqlite:///{tempfile.mkdtemp(prefix='cvlib-halving-bench-')}/mlflow.db"
    overrides = [f"data.train_size={train_size}", "data.val_size=1000",
                 "data.test_size=1000", f"train.epochs={LAST_RUNG_EPOCHS}"]
    for strategy in STRATEGIES:
        grid = load_grid("experiments/seed_grid.yaml", overrides + [
            f"search={{strategy: {strategy}, min_epochs: 1, max_epochs: {LAST_RUNG_EPOCHS}, "
            f"reduction: 3}}"])
        run_grid(grid, uri, experiment=strategy, workers=workers, echo=lambda line: None,
                 progress_bar=False)
    return uri


def report(uri: str) -> None:
    """Print the costs, the top-5 check and what explains it, from the store."""
    client = MlflowClient(uri)
    outcomes = {}
    for strategy in STRATEGIES:
        experiment_id = client.get_experiment_by_name(strategy).experiment_id
        every_run = client.search_runs([experiment_id], max_results=1000)
        # An interrupted and continued plain grid has one parent run per sitting.
        parents = [r for r in every_run if "cvlib.cell" not in r.data.tags]
        runs = [r for r in every_run if "cvlib.cell" in r.data.tags
                and r.info.status != "KILLED"]
        histories = {r.info.run_name: [m.value for m in sorted(
            client.get_metric_history(r.info.run_id, "val_accuracy"), key=lambda m: m.step)]
            for r in runs}
        train_size = int(runs[0].data.params["data.train_size"])
        val_size = int(runs[0].data.params["data.val_size"])
        seconds = sum(p.info.end_time - p.info.start_time for p in parents) / 1000
        epochs = sum(len(values) for values in histories.values())
        outcomes[strategy] = (seconds, epochs * train_size, histories)
        print(f"{strategy:8s}: {len(runs)} cells, {epochs} cell-epochs, "
              f"{epochs * train_size:,} image passes, {seconds:.0f} s"
              + (f" in {len(parents)} sittings" if len(parents) > 1 else ""))
    grid_seconds, grid_passes, grid_histories = outcomes["grid"]
    halving_seconds, halving_passes, halving_histories = outcomes["halving"]
    final = {name: values[-1] if values else 0.0 for name, values in grid_histories.items()}
    top5 = sorted(final, key=final.get, reverse=True)[:5]
    found = [name for name in top5 if len(halving_histories.get(name, [])) == LAST_RUNG_EPOCHS]
    print(f"plain grid's top 5: {', '.join(f'{name} {final[name]:.3f}' for name in top5)}")
    print(f"halving kept {len(found)} of them to the last rung (goal: at least 4)")
    print(f"cost of halving / plain grid: image passes {halving_passes / grid_passes:.2f}, "
          f"wall time {halving_seconds / grid_seconds:.2f} (goal: at most 0.40)")
    first_epoch = {name: values[0] for name, values in halving_histories.items() if values}
    ranked = sorted(first_epoch, key=first_epoch.get, reverse=True)
    print("the plain top 5 after halving's first epoch (rank of 84, val_accuracy): " + ", ".join(
        f"{name} #{ranked.index(name) + 1} {first_epoch[name]:.3f}" for name in top5))
    finalists = {name: values[-1] for name, values in halving_histories.items()
                 if len(values) == LAST_RUNG_EPOCHS}
    best = max(finalists, key=finalists.get)
    print(f"best cell: plain grid {top5[0]} {final[top5[0]]:.3f}; halving {best} "
          f"{finalists[best]:.3f} (plain grid: {final[best]:.3f}, rank "
          f"{sorted(final, key=final.get, reverse=True).index(best) + 1})")
    p = final[top5[0]]
    print(f"noise: 95% margin of one cell's val_accuracy on {val_size} images "
          f"+-{1.96 * math.sqrt(p * (1 - p) / val_size):.3f}; the plain grid's #5 and #10 "
          f"differ by {final[top5[4]] - sorted(final.values(), reverse=True)[9]:.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--store", metavar="URI",
                        help="continue an interrupted run in this store")
    parser.add_argument("--report-only", metavar="URI",
                        help="print the figures of an earlier run's store, train nothing")
    args = parser.parse_args()
    report(args.report_only or run_both(args.train_size, args.workers, args.store))


if __name__ == "__main__":
    main()
