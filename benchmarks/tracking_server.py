r"""What a team server costs a grid, and what the journal's fsyncs cost it: the 12-cell grid
of vs_kerastuner.py by `cvlib run` into a SQLite store, into `cvlib server` on a
throwaway PostgreSQL database (benchmarks/team_services.py), and into that server with
the journal's fsyncs made no-ops, end to end, each a fresh process in a fresh folder,
rounds interleaved; about 12 minutes at the defaults on 2 cores.

    python benchmarks/tracking_server.py [--rounds 3] [--workers 1] [--record]
    python benchmarks/tracking_server.py --rounds 1 --train-size 500 --activations relu \
        --bn none                                                        # smallest

Each round starts a server on a fresh database for each server side (so that every
round trains every cell), runs the three commands with the same --workers, in an order
that turns each round, and checks through MLflow's API that each store holds every
cell's run, FINISHED. Every command runs through one launcher that wraps os.fsync: on the
"no fsync" side it does nothing, elsewhere it counts the calls and their seconds (the
journal's are the only fsyncs made from Python). Prints each round's wall times, the
server's extra seconds per cell over SQLite, the fsyncs per cell and their time, and the
wall time with the fsync policy over without; then the medians. Goals: the server path
at most 0.5 s a cell slower than SQLite; the fsync policy at most 0.1 s a cell. The
server runs on the same cores as the training, so its own CPU time counts against it.
Needs real CIFAR-10 ($CVLIB_DATA_DIR) and PostgreSQL's initdb and pg_ctl (apt-get
install postgresql).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from record import Recorder, add_option
from team_services import start_server, stop_server, throwaway_postgres
from vs_kerastuner import (
    ACTIVATIONS,
    BN_PLACEMENTS,
    cell_count,
    grid_file,
    grid_settings,
    time_command,
)

GOAL_S = 0.5  # the server's extra seconds per cell, at most
FSYNC_GOAL_S = 0.1  # the fsync policy's seconds per cell, at most
# The sides, and whether their fsyncs are made (counted) or skipped.
SIDES = {"sqlite": True, "server": True, "server, no fsync": False}
# Runs `python -m cvlib ARGS` with os.fsync wrapped: MODE "count" times each call, "skip"
# makes none; the count and seconds go to REPORT (JSON) at exit.
LAUNCHER = """
import atexit, json, os, runpy, sys, time
mode, report = sys.argv[1:3]
real_fsync, made = os.fsync, [0, 0.0]
def fsync(descriptor):
    if mode == "count":
        started = time.perf_counter()
        real_fsync(descriptor)
        made[0] += 1
        made[1] += time.perf_counter() - started
os.fsync = fsync
atexit.register(lambda: open(report, "w").write(json.dumps(made)))
sys.argv = ["cvlib", *sys.argv[3:]]
runpy.run_module("cvlib", run_name="__main__", alter_sys=True)
"""


def check_cells(uri: str, experiment: str, cells: int) -> None:
    """Fail unless the store at ``uri`` holds ``cells`` cell runs of ``experiment``, each
    FINISHED."""
    from mlflow.tracking import MlflowClient

    from cvlib.tracking.schema import CELL_TAG

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = [] if found is None else [run for run in client.search_runs([found.experiment_id])
                                     if CELL_TAG in run.data.tags]
    statuses = sorted(run.info.status for run in runs)
    if statuses != ["FINISHED"] * cells:
        raise RuntimeError(f"{uri} holds {len(runs)} cell runs of {experiment!r}, not "
                           f"{cells} FINISHED: {statuses}")


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def run_side(grid: Path, uri: str, workers: int, fsync: bool) -> tuple[float, int, float]:
    """``cvlib run`` of the grid into a store, in a fresh folder, through the launcher.

    Returns:
        Its wall seconds, its fsyncs and their seconds (0 and 0.0 when skipped).
    """
    folder = tempfile.mkdtemp(prefix="command-")  # the command's cwd
    report = Path(folder, "fsyncs.json")
    wall = time_command([sys.executable, "-c", LAUNCHER, "count" if fsync else "skip",
                         str(report), "run", str(grid), "--workers", str(workers),
                         "--tracking-uri", uri], cwd=folder)[0]
    calls, seconds = json.loads(report.read_text())
    return wall, calls, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of all sides")
    parser.add_argument("--workers", type=int, default=1,
                        help="cvlib run --workers, the same on every side (default: 1)")
    parser.add_argument("--train-size", type=int, default=4000, help="training images")
    parser.add_argument("--activations", nargs="+", default=ACTIVATIONS,
                        help=f"the grid's activations (default: {' '.join(ACTIVATIONS)})")
    parser.add_argument("--bn", nargs="+", choices=BN_PLACEMENTS, default=BN_PLACEMENTS,
                        help=f"the grid's BN placements (default: {' '.join(BN_PLACEMENTS)})")
    add_option(parser)
    args = parser.parse_args()
    recorder = Recorder(args.record)
    grid = grid_settings(args.train_size, args.activations, args.bn)
    cells = cell_count(grid)
    # The grid file, the stores, the commands' and the servers' folders: all of it here,
    # removed at exit (PostgreSQL's own folder is throwaway_postgres's).
    scratch = tempfile.TemporaryDirectory(prefix="cvlib-tracking-server-")
    os.environ["TMPDIR"] = tempfile.tempdir = scratch.name
    path = grid_file(grid)
    sides = list(SIDES)
    walls: dict[str, list[float]] = {side: [] for side in sides}
    per_cell: list[float] = []  # server - sqlite, s a cell
    fsync_per_cell: list[tuple[float, float]] = []  # the server's fsyncs and seconds a cell
    with_over_without: list[float] = []  # server wall time / server without fsync
    with throwaway_postgres() as database:
        for round_index in range(args.rounds):
            order = sides[round_index % len(sides):] + sides[:round_index % len(sides)]
            made: dict[str, tuple[int, float]] = {}
            for side in order:
                uri, server, server_folder = None, None, None
                if side == "sqlite":
                    uri = f"sqlite:///{tempfile.mkdtemp(prefix='sqlite-')}/mlflow.db"
                else:
                    server_folder = Path(tempfile.mkdtemp(prefix="server-"))
                    name = f"round{round_index + 1}_{len(made)}"
                    server, uri = start_server(database(name), server_folder)
                try:
                    wall, calls, seconds = run_side(path, uri, args.workers, SIDES[side])
                    walls[side].append(wall)
                    made[side] = (calls, seconds)
                    check_cells(uri, grid["name"], cells)
                except BaseException:
                    if server_folder is not None:
                        log = (server_folder / "server.log").read_text()
                        print(f"the server's last lines:\n{log[-5000:]}", file=sys.stderr)
                    raise
                finally:
                    if server is not None:
                        stop_server(server)
            per_cell.append((walls["server"][-1] - walls["sqlite"][-1]) / cells)
            calls, seconds = made["server"]
            fsync_per_cell.append((calls / cells, seconds / cells))
            with_over_without.append(walls["server"][-1] / walls["server, no fsync"][-1])
            print(f"round {round_index + 1} ({', '.join(order)}): "
                  + ", ".join(f"{side} {walls[side][-1]:.1f} s" for side in sides)
                  + f"; server - sqlite {per_cell[-1]:+.3f} s per cell; the journal's "
                  f"fsyncs {calls / cells:.1f} a cell, {seconds / cells * 1000:.1f} ms a "
                  f"cell; server / server without fsync {with_over_without[-1]:.3f}",
                  flush=True)
    if not per_cell:
        return
    rounds = plural(len(per_cell), "round")
    print(f"{cells}-cell grid, --workers {args.workers}, medians of {rounds}: "
          + ", ".join(f"{side} {statistics.median(walls[side]):.1f} s" for side in sides))
    figure = f"{statistics.median(per_cell):+.3f}"
    print(f"server - sqlite, seconds per cell (median of {rounds}): {figure} "
          f"(goal <= +{GOAL_S})")
    recorder.add("tracking server: cvlib run into cvlib server on PostgreSQL - into SQLite "
                 "(s per cell)", f"<= +{GOAL_S} s per cell", figure)
    fsync_seconds = f"{statistics.median(s for _, s in fsync_per_cell):.4f}"
    fsync_calls = statistics.median(c for c, _ in fsync_per_cell)
    ratio = f"{statistics.median(with_over_without):.3f}"
    print(f"journal fsync policy, seconds per cell (median of {rounds}): {fsync_seconds} "
          f"in {fsync_calls:.1f} fsyncs (goal <= {FSYNC_GOAL_S}); wall time with / without "
          f"the fsyncs: {ratio}")
    recorder.add("journal fsync policy: fsync seconds per cell into cvlib server",
                 f"<= {FSYNC_GOAL_S} s per cell", fsync_seconds)
    recorder.add("journal fsync policy: cvlib run into cvlib server, wall time with / "
                 "without fsync", "about 1", ratio)


if __name__ == "__main__":
    main()
