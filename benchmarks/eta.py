r"""How true is the time left that `cvlib run` prints? Runs a 12-cell grid (3 activations x
2 BN placements x 2 seeds, small cnn) with its output piped, notes when each line with a
time left (`left ~H:MM:SS`) arrives, and compares each estimate with the time the grid
really took from that moment on.

    python benchmarks/eta.py                                   # the 12-cell grid, 2 workers
    python benchmarks/eta.py --cvlib-path /path/to/other/checkout   # another version's estimates
    python benchmarks/eta.py --train-size 500 --epochs 1       # smallest

Prints every estimate with its ratio to the actual time left, then the headline: the ratio
of the first estimate after the first finished cell (goal: between 1/1.5 and 1.5), and the
worst ratio from there on. It also prints the speed the cost model should assume
(cvlib/engine/estimate.py's constants), measured from the cells' runs. `--record` appends
the headline ratio to benchmarks/results.csv.
"""
import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import Recorder, add_option

REPO = Path(__file__).resolve().parents[1]
LEFT = re.compile(r"left ~(\d+):(\d\d):(\d\d)")
CELL_LINE = re.compile(r"^\[(\d+)/(\d+)\] ")


def grid_text(name: str, train_size: int, epochs: int) -> str:
    """The benchmark's 12-cell grid file."""
    return (f"name: {name}\n"
            f"data: {{train_size: {train_size}, val_size: 500, test_size: 500}}\n"
            f"model: {{arch: cnn, widths: [16, 32], dense_units: 32, initializer: he}}\n"
            f"train: {{epochs: {epochs}, batch_size: 128, optimizer: adam}}\n"
            f"grid:\n  model.activation: [relu, tanh, elu]\n  model.bn: [none, before]\n"
            f"seeds: [0, 1]\n")


def run_piped(command: list[str], env: dict) -> tuple[float, list[tuple[float, str]]]:
    """Run a command with its output piped; its start and each line with its arrival."""
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, env=env, cwd=REPO)
    lines = [(time.monotonic(), line.rstrip("\n")) for line in process.stdout]
    if process.wait() != 0:
        sys.exit("the grid failed:\n" + "\n".join(line for _, line in lines[-20:]))
    return started, lines


def seconds_left(line: str) -> float | None:
    """The time left a line gives, in seconds (None: it gives none)."""
    found = LEFT.search(line)
    if found is None:
        return None
    hours, minutes, seconds = map(int, found.groups())
    return hours * 3600 + minutes * 60 + seconds


def calibration(uri: str, grid_file: str, workers: int, started_unix: float) -> None:
    """Print the cost model's constants as this grid's runs measured them."""
    sys.path.insert(0, str(REPO))
    from mlflow.tracking import MlflowClient

    from cvlib.engine.estimate import cell_work
    from cvlib.engine.hosts import usable_cores
    from cvlib.grids import load_grid

    client = MlflowClient(uri)
    found = client.get_experiment_by_name("eta")
    runs = {run.info.run_name: run for run in client.search_runs([found.experiment_id])}
    cells = {cell.name: cell for cell in load_grid(grid_file).cells()}
    per_unit, overheads, starts = [], [], []
    for name, cell in cells.items():
        run = runs[name]
        times = [m.value for m in client.get_metric_history(run.info.run_id, "epoch_time_s")]
        work_per_epoch = cell_work(cell) / cell.train.epochs
        per_unit.append(sum(times) / (work_per_epoch * len(times)))
        overheads.append((run.info.end_time - run.info.start_time) / 1000 - sum(times))
        starts.append(run.info.start_time / 1000)
    share = usable_cores() / workers
    print(f"calibration measured: CORE_SECONDS_PER_UNIT {statistics.median(per_unit) * share:.3g}, "
          f"CELL_OVERHEAD_SECONDS {statistics.median(overheads):.2f}, "
          f"start-up (command start to first cell) {min(starts) - started_unix:.1f} s")


def one_round(args, folder: str) -> tuple[float, float, str]:
    """Train the grid once into a new store; print its estimates against the actual
    times left.

    Returns:
        The first ratio after the first finished cell, the worst ratio from there on
        while at least a tenth of the grid's time was left, and the store's URI.
    """
    grid_file = f"{folder}/eta.yaml"
    Path(grid_file).write_text(grid_text("eta", args.train_size, args.epochs))
    uri = f"sqlite:///{folder}/mlflow.db"
    env = {**os.environ, "PYTHONPATH": args.cvlib_path}
    started, lines = run_piped([sys.executable, "-m", "cvlib", "run", grid_file, "--workers",
                                str(args.workers), "--tracking-uri", uri], env)
    end = [at for at, line in lines if CELL_LINE.match(line)][-1]
    print(f"cvlib run of 12 cells ({args.workers} workers) from {args.cvlib_path}: "
          f"{end - started:.0f} s to the last cell, {len(lines)} lines of output")
    estimates = []  # (the ratio, the actual time left, whether a cell's line gave it)
    for at, line in lines:
        left = seconds_left(line)
        if left is None or at >= end:
            continue
        cell = CELL_LINE.match(line)
        estimates.append((left / (end - at), end - at, cell is not None))
        print(f"  at {at - started:6.1f} s ({'cell ' + cell.group(1) if cell else 'epochs'}):"
              f" left ~{left:5.0f} s, actual {end - at:5.0f} s, ratio {left / (end - at):.2f}")
    after_first = [index for index, (_, _, of_cell) in enumerate(estimates) if of_cell]
    if not after_first:
        sys.exit("no cell line gave a time left")
    first = estimates[after_first[0]][0]
    worst = max((ratio for ratio, actual, _ in estimates[after_first[0]:]
                 if actual >= (end - started) / 10),
                key=lambda ratio: abs(math.log(max(ratio, 1e-9))), default=first)
    if not estimates[0][2]:
        print(f"  first estimate of all (at the first epoch) / actual: {estimates[0][0]:.2f}")
    calibration(uri, grid_file, args.workers, started_unix=started_at_unix(started))
    return first, worst, uri


def started_at_unix(started_monotonic: float) -> float:
    """A time.monotonic() moment as Unix time."""
    return time.time() - (time.monotonic() - started_monotonic)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cvlib-path", metavar="DIR", default=str(REPO),
                        help="the cvlib checkout whose `cvlib run` is measured (default: "
                             "this one)")
    add_option(parser)
    args = parser.parse_args()
    recorder = Recorder(args.record)
    firsts, worsts = [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="cvlib-eta-") as folder:
            first, worst, _ = one_round(args, folder)
        firsts.append(first)
        worsts.append(worst)
    figure = f"{statistics.median(firsts):.2f}"
    print(f"first estimate after the first finished cell / actual time left: {figure} "
          f"(median of {args.rounds}; goal: 0.67 to 1.5); worst while a tenth of the grid "
          f"was left: {statistics.median(worsts):.2f}")
    recorder.add("ETA after the first cell / actual time left, 12-cell grid",
                 "0.67 to 1.5", figure)


if __name__ == "__main__":
    main()
