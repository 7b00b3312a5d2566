r"""What a team server costs a grid: the 12-cell grid of vs_kerastuner.py by `cvlib run` into
a SQLite store and by `cvlib run` into `cvlib server` on a throwaway PostgreSQL database
(benchmarks/team_services.py), end to end, each a fresh process in a fresh folder, rounds
interleaved; about 8 minutes at the defaults on 2 cores.

    python benchmarks/tracking_server.py [--rounds 3] [--workers 1] [--record]
    python benchmarks/tracking_server.py --rounds 1 --train-size 500 --activations relu \
        --bn none                                                        # smallest

Each round starts a server on a fresh database (so that every round trains every cell),
runs both commands with the same --workers, alternating which goes first, and checks
through MLflow's API that each store holds every cell's run, FINISHED. Prints each round's
wall times and the server's extra seconds per cell, then the medians. Goal: the server
path at most 0.5 s a cell slower than SQLite. The server runs on the same cores as the
training, so its own CPU time counts against it. Needs real CIFAR-10 ($CVLIB_DATA_DIR)
and PostgreSQL's initdb and pg_ctl (apt-get install postgresql).
"""
import argparse
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
SIDES = ("sqlite", "server")


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of both")
    parser.add_argument("--workers", type=int, default=1,
                        help="cvlib run --workers, the same on both sides (default: 1)")
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
    walls: dict[str, list[float]] = {side: [] for side in SIDES}
    per_cell: list[float] = []
    with throwaway_postgres() as database:
        for round_index in range(args.rounds):
            order = SIDES if round_index % 2 == 0 else SIDES[::-1]
            server_folder = Path(tempfile.mkdtemp(prefix="server-"))
            server, url = start_server(database(f"round{round_index + 1}"), server_folder)
            try:
                for side in order:
                    folder = tempfile.mkdtemp(prefix=f"{side}-")  # the command's cwd
                    uri = url if side == "server" else f"sqlite:///{folder}/mlflow.db"
                    walls[side].append(time_command(
                        [sys.executable, "-m", "cvlib", "run", str(path), "--workers",
                         str(args.workers), "--tracking-uri", uri], cwd=folder)[0])
                    check_cells(uri, grid["name"], cells)
            except BaseException:
                log = (server_folder / "server.log").read_text()
                print(f"the server's last lines:\n{log[-5000:]}", file=sys.stderr)
                raise
            finally:
                stop_server(server)
            per_cell.append((walls["server"][-1] - walls["sqlite"][-1]) / cells)
            print(f"round {round_index + 1} ({order[0]} first): sqlite "
                  f"{walls['sqlite'][-1]:.1f} s, server {walls['server'][-1]:.1f} s; "
                  f"server - sqlite {per_cell[-1]:+.3f} s per cell", flush=True)
    if not per_cell:
        return
    rounds = plural(len(per_cell), "round")
    print(f"{cells}-cell grid, --workers {args.workers}, medians of {rounds}: sqlite "
          f"{statistics.median(walls['sqlite']):.1f} s, server "
          f"{statistics.median(walls['server']):.1f} s")
    figure = f"{statistics.median(per_cell):+.3f}"
    print(f"server - sqlite, seconds per cell (median of {rounds}): {figure} "
          f"(goal <= +{GOAL_S})")
    recorder.add("tracking server: cvlib run into cvlib server on PostgreSQL - into SQLite "
                 "(s per cell)", f"<= +{GOAL_S} s per cell", figure)


if __name__ == "__main__":
    main()
