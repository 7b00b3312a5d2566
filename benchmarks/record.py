"""``--record``: a benchmark's headline figures appended to benchmarks/results.csv, one
row each, saying when, on which commit and machine, and by which command they were
measured.

Not a benchmark: the benchmark scripts import it (standard library only, so that their
``--help`` stays instant). Each script adds the option with :func:`add_option`, makes a
:class:`Recorder` from it, and hands it every headline figure as printed::

    recorder = Recorder(args.record)
    figure = f"{ratio:.3f}"
    print(f"... median ratio {figure}")
    recorder.add("statistics overhead", "<= 1.05", figure)

Without ``--record`` nothing is written. ``$CVLIB_BENCHMARK_RESULTS`` names another file
(the tests use it, so that nothing lands in the repository).

``python benchmarks/record.py`` prints the table of benchmarks/README.md: the newest row of
each measurement.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results.csv"
RESULTS_ENV = "CVLIB_BENCHMARK_RESULTS"
COLUMNS = ("date", "commit", "machine", "measurement", "target", "figure", "command")


def add_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--record`` to a benchmark's parser."""
    parser.add_argument("--record", action="store_true",
                        help="append each headline figure as a row to benchmarks/results.csv "
                             "(date, commit, machine, measurement, target, figure, command)")


def results_file() -> Path:
    """Where rows go: $CVLIB_BENCHMARK_RESULTS, else benchmarks/results.csv."""
    return Path(os.environ.get(RESULTS_ENV) or RESULTS)


def commit() -> str:
    """The repository's HEAD, short (``unknown`` outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout.strip() or "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    """The CPU model (/proc/cpuinfo's "model name") and the cores this process may use,
    e.g. ``AMD EPYC, 2 cores``."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    total = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = total
    if usable == total:
        return f"{model}, {usable} cores"
    return f"{model}, {usable} of {total} cores"


def command_line() -> str:
    """This process's command, as ``python benchmarks/SCRIPT.py ARGS``."""
    return shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


class Recorder:
    """Appends headline figures to the results file, when enabled.

    Args:
        enabled: ``args.record``; when False, :meth:`add` writes nothing.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._context: dict[str, str] | None = None

    def add(self, measurement: str, target: str, figure: str) -> None:
        """Append one row (with ``--record`` only).

        Args:
            measurement: A short, stable name, e.g. ``statistics overhead``.
            target: The goal, e.g. ``<= 1.05``.
            figure: The number as the script printed it.
        """
        if not self.enabled:
            return
        if self._context is None:  # the same for every row of this run
            self._context = {"commit": commit(), "machine": machine(),
                             "command": command_line()}
        path = results_file()
        new = not path.exists() or path.stat().st_size == 0
        with path.open("a", newline="") as results:
            writer = csv.DictWriter(results, fieldnames=COLUMNS, lineterminator="\n")
            if new:
                writer.writeheader()
            writer.writerow({
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"),
                "measurement": measurement, "target": target, "figure": figure,
                **self._context})
        print(f"recorded {measurement}: {figure} (target {target}) in {path}", flush=True)


def current_table(path: Path | None = None) -> str:
    """The newest row of each measurement, in the order measurements first appear, as the
    markdown table of benchmarks/README.md.

    Args:
        path: The results file (default: :func:`results_file`).

    Returns:
        The table's text.
    """
    with (path or results_file()).open(newline="") as results:
        newest = {row["measurement"]: row for row in csv.DictReader(results)}
    lines = ["| measurement | target | figure | date | commit | machine | command |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {row['measurement']} | {row['target']} | {row['figure']} | "
              f"{row['date'][:10]} | {row['commit']} | {row['machine']} | "
              f"`{row['command']}` |" for row in newest.values()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(current_table())
