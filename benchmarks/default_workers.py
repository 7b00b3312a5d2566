"""Is `cvlib run`'s default worker count (auto: one per usable core) faster here than
training in one process? Times `cvlib run GRID --workers 1` against `cvlib run GRID`
end to end, each a fresh process into a fresh store, in interleaved rounds.

    python benchmarks/default_workers.py [--grid experiments/smoke.yaml] [--rounds 3]
        [--set KEY=VALUE ...]

Prints each round's wall times and the medians' ratio (default / one process): below 1
means the default is the faster choice on this machine.
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time

from cvlib.config import load_grid
from cvlib.workers import auto_workers


def time_run(grid: str, overrides: list[str], workers: list[str]) -> float:
    """Wall seconds of one `cvlib run` into a temporary store (which must succeed)."""
    with tempfile.TemporaryDirectory(prefix="cvlib-default-workers-") as folder:
        command = [sys.executable, "-m", "cvlib", "run", grid, *workers,
                   "--tracking-uri", f"sqlite:///{folder}/mlflow.db"]
        for override in overrides:
            command += ["--set", override]
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", default="experiments/smoke.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="passed on to cvlib run")
    args = parser.parse_args()
    cells = len(load_grid(args.grid, args.overrides).cells())
    print(f"{args.grid}: {cells} cells; the default here is {auto_workers(cells)} workers")
    arms = {"--workers 1": ["--workers", "1"], "default": []}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for round_number in range(1, args.rounds + 1):
        for name, workers in arms.items():
            times[name].append(time_run(args.grid, args.overrides, workers))
        print(f"  round {round_number}: " + ", ".join(
            f"{name} {values[-1]:.1f} s" for name, values in times.items()), flush=True)
    one, default = (statistics.median(times[name]) for name in arms)
    print(f"medians: --workers 1 {one:.1f} s, default {default:.1f} s; "
          f"default / one process {default / one:.2f}")


if __name__ == "__main__":
    main()
