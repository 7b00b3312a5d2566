"""How long `cvlib ui`'s server takes to answer, against MLflow's default `mlflow ui`.

usage: ui_startup.py [--rounds N] [--record]

Starts each server on the same SQLite store, in interleaved rounds, and times it from
launch to its first answer on /health; then counts its processes and their memory (RSS)
once it answers. `cvlib ui` runs one uvicorn worker without MLflow's job runner
(`cvlib.cli.ui.server_command` and `SERVER_ENVIRONMENT`); MLflow's default is 4 workers
and the job runner. Target: cvlib's start-up at most half the default's. Trains nothing;
needs no data.

    python benchmarks/ui_startup.py --rounds 1     # smallest
    python benchmarks/ui_startup.py --record       # the figure of benchmarks/README.md
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import Recorder, add_option
from team_services import HOST, free_port, process_tree

TIMEOUT_S = 180


def rss_mib(pids: list[int]) -> float:
    total_kib = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except OSError:
            pass
    return total_kib / 1024


def start_and_time(command: list[str], env: dict[str, str], port: int) -> tuple[float, int, float]:
    """Seconds to the first answer, processes, MiB of RSS; the server is stopped after."""
    from cvlib.cli.ui import answers

    started = time.monotonic()
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while not answers(f"http://{HOST}:{port}/health"):
            if server.poll() is not None:
                sys.exit(f"the server exited with status {server.returncode}: {command}")
            if time.monotonic() - started > TIMEOUT_S:
                sys.exit(f"no answer within {TIMEOUT_S} s: {command}")
            time.sleep(0.1)
        seconds = time.monotonic() - started
        time.sleep(3)  # workers and helpers that start after the first answer
        pids = process_tree(server.pid)
        return seconds, len(pids), rss_mib(pids)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    add_option(parser)
    args = parser.parse_args()

    from cvlib.cli.ui import SERVER_ENVIRONMENT, server_command

    recorder = Recorder(args.record)
    with tempfile.TemporaryDirectory(prefix="cvlib-ui-bench-") as folder:
        uri = f"sqlite:///{folder}/mlflow.db"
        cvlib_env = {**os.environ, **SERVER_ENVIRONMENT}
        setups = {
            "mlflow ui (default)": lambda port: (
                [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                 "--host", HOST, "--port", str(port)], dict(os.environ)),
            "cvlib ui": lambda port: (server_command(uri, port), cvlib_env),
        }
        # The first start builds the store's tables; not timed.
        command, env = setups["cvlib ui"](port := free_port())
        start_and_time(command, env, port)
        times: dict[str, list[float]] = {name: [] for name in setups}
        for round_number in range(1, args.rounds + 1):
            for name, setup in setups.items():
                command, env = setup(port := free_port())
                seconds, processes, memory = start_and_time(command, env, port)
                times[name].append(seconds)
                print(f"  round {round_number}: {name:20s} {seconds:5.1f} s to answer, "
                      f"{processes} processes, {memory:,.0f} MiB", flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = f"{medians['cvlib ui'] / medians['mlflow ui (default)']:.2f}"
    print(f"medians: mlflow ui (default) {medians['mlflow ui (default)']:.1f} s, "
          f"cvlib ui {medians['cvlib ui']:.1f} s; cvlib / default {ratio} (goal: at most 0.5)")
    recorder.add("UI start-up: cvlib ui / mlflow ui defaults (s to answer)", "<= 0.5", ratio)


if __name__ == "__main__":
    main()
