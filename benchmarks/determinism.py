r"""What does `--deterministic` cost? Times `cvlib run GRID` against
`cvlib run GRID --deterministic` end to end, each a fresh process into a fresh store, in
interleaved rounds, with the same --workers on both sides (the default, and 1).

    python benchmarks/determinism.py [--rounds 2] [--workers auto 1]    # experiments/smoke.yaml
    python benchmarks/determinism.py --rounds 1 --workers 1 -- experiments/smoke.yaml \
        --set model.bn=none --set data.train_size=256 --set data.val_size=256 \
        --set data.test_size=256 --set train.epochs=1 --set "model.widths=[8]" \
        --set model.dense_units=16                                     # smallest

Prints each round's wall times and, per --workers, the medians' ratios deterministic /
default: of the wall time, and of the training time (the sum of the cells' epoch_time_s,
read back from the store), which leaves out the command's start and its tracking. With
two or more --workers, also how far apart their figures are: the largest difference of a
cell's final loss between the first --workers and each other, without and with
--deterministic (0 is bit-identical). `--record` appends the wall-time ratios to
benchmarks/results.csv.
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time

from record import Recorder, add_option

DEFAULT_GRID = ["experiments/smoke.yaml"]


def timed_run(grid: list[str], options: list[str]) -> tuple[float, float, dict[str, float]]:
    """Wall seconds of one `cvlib run` into a temporary store (which must succeed), the
    sum of its cells' epoch times, and each cell's final loss by cell hash."""
    with tempfile.TemporaryDirectory(prefix="cvlib-determinism-") as folder:
        uri = f"sqlite:///{folder}/mlflow.db"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cvlib", "run", *grid, *options,
                        "--tracking-uri", uri],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        return (wall, *read_back(uri))


def read_back(uri: str) -> tuple[float, dict[str, float]]:
    """The sum over a store's cell runs of every epoch's epoch_time_s, and each cell's
    final loss by cell hash."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    total, losses = 0.0, {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            if "cvlib.cell" in run.data.tags:
                total += sum(m.value for m in
                             client.get_metric_history(run.info.run_id, "epoch_time_s"))
                losses[run.data.tags["cvlib.cell"]] = run.data.metrics["loss"]
    return total, losses


def largest_difference(losses: dict[str, float], others: dict[str, float]) -> float:
    """The largest difference between two runs' final loss of one cell."""
    return max(abs(losses[cell] - others[cell]) for cell in losses)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s [--rounds N] [--workers W ...] [--record] [-- GRID ARGS...]")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", nargs="+", default=["auto", "1"],
                        help="the --workers of each pair of arms (default: auto 1)")
    parser.add_argument("grid", nargs="*", metavar="GRID ARGS",
                        help=f"the grid file and `cvlib run` options, after -- (default: "
                             f"{' '.join(DEFAULT_GRID)})")
    add_option(parser)
    args = parser.parse_args()
    recorder = Recorder(args.record)
    grid = args.grid or DEFAULT_GRID

    arms = {f"--workers {w}{' --deterministic' if det else ''}":
            ["--workers", w, *(["--deterministic"] if det else [])]
            for w in args.workers for det in (False, True)}
    walls: dict[str, list[float]] = {name: [] for name in arms}
    trainings: dict[str, list[float]] = {name: [] for name in arms}
    losses: dict[str, dict[str, float]] = {}
    print(f"cvlib run {' '.join(grid)}: default against --deterministic")
    for round_number in range(1, args.rounds + 1):
        for name, options in arms.items():
            wall, training, losses[name] = timed_run(grid, options)
            walls[name].append(wall)
            trainings[name].append(training)
        print(f"  round {round_number}: " + ", ".join(
            f"{name} {walls[name][-1]:.1f} s (training {trainings[name][-1]:.1f} s)"
            for name in arms), flush=True)
        first, *others = args.workers
        for other in others:
            for mode in ("", " --deterministic"):
                difference = largest_difference(losses[f"--workers {first}{mode}"],
                                                losses[f"--workers {other}{mode}"])
                print(f"    largest difference of a cell's final loss, --workers {first} "
                      f"against --workers {other}{mode or ' (default)'}: {difference:.2e}")
    for workers in args.workers:
        default, deterministic = f"--workers {workers}", f"--workers {workers} --deterministic"
        wall = statistics.median(walls[deterministic]) / statistics.median(walls[default])
        training = (statistics.median(trainings[deterministic])
                    / statistics.median(trainings[default]))
        print(f"--workers {workers}: deterministic / default (medians): wall time "
              f"{wall:.2f}, training time {training:.2f}")
        recorder.add(f"--deterministic / default, wall time: cvlib run --workers {workers}",
                     "informational", f"{wall:.2f}")


if __name__ == "__main__":
    main()
