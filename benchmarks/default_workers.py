r"""Is a `cvlib` command's default worker count (auto: one per usable core) faster here
than training in one process? Times `cvlib COMMAND ... --workers 1` against
`cvlib COMMAND ...` end to end, each a fresh process into a fresh store, in interleaved
rounds.

    python benchmarks/default_workers.py [--rounds 3]          # cvlib run experiments/smoke.yaml
    python benchmarks/default_workers.py --rounds 2 -- claims --quick
    python benchmarks/default_workers.py -- lr-search experiments/smoke.yaml
    python benchmarks/default_workers.py -- run experiments/seed_grid.yaml --set data.train_size=2000
    python benchmarks/default_workers.py --rounds 1 -- run experiments/smoke.yaml \
        --set model.bn=none --set data.train_size=256 --set data.val_size=256 \
        --set data.test_size=256 --set train.epochs=1 --set "model.widths=[8]" \
        --set model.dense_units=16                                     # smallest

Prints each round's wall times and the medians' ratio (default / one process): below 1
means the default is the faster choice on this machine (the goal). `--record` appends
that ratio to benchmarks/results.csv.
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time

from record import Recorder, add_option

DEFAULT_COMMAND = ["run", "experiments/smoke.yaml"]


def time_command(command: list[str], workers: list[str]) -> float:
    """Wall seconds of one `cvlib` command into a temporary store (which must succeed)."""
    with tempfile.TemporaryDirectory(prefix="cvlib-default-workers-") as folder:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cvlib", *command, *workers,
                        "--tracking-uri", f"sqlite:///{folder}/mlflow.db"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s [--rounds N] [--record] [-- COMMAND ARGS...]")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("command", nargs="*", metavar="COMMAND ARGS",
                        help=f"the cvlib command to time, after -- (default: "
                             f"{' '.join(DEFAULT_COMMAND)})")
    add_option(parser)
    args = parser.parse_args()
    recorder = Recorder(args.record)
    command = args.command or DEFAULT_COMMAND

    from cvlib.engine.hosts import auto_workers

    print(f"cvlib {' '.join(command)}: --workers 1 against the default, which is at most "
          f"{auto_workers(None)} workers here")
    arms = {"--workers 1": ["--workers", "1"], "default": []}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for round_number in range(1, args.rounds + 1):
        for name, workers in arms.items():
            times[name].append(time_command(command, workers))
        print(f"  round {round_number}: " + ", ".join(
            f"{name} {values[-1]:.1f} s" for name, values in times.items()), flush=True)
    one, default = (statistics.median(times[name]) for name in arms)
    figure = f"{default / one:.2f}"
    print(f"medians: --workers 1 {one:.1f} s, default {default:.1f} s; "
          f"default / one process {figure} (goal: below 1)")
    recorder.add(f"default workers / one process: cvlib {command[0]}", "< 1", figure)


if __name__ == "__main__":
    main()
