"""Pieces shared by the ``cvlib`` command's subcommands: options, the experiment to read,
and interrupts."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from cvlib.cifar10 import DATA_DIR_ENV
from cvlib.engine.hosts import WORKER_MEMORY_BYTES, auto_workers
from cvlib.engine.options import EngineOptions
from cvlib.engine.ray_cluster import RayOptions
from cvlib.engine.retries import DEFAULT_CELL_RETRIES
from cvlib.extras import require
from cvlib.fields import ConfigError
from cvlib.store_choice import ChosenStore
from cvlib.tracking.uris import (
    DEFAULT_STORE_TIMEOUT_MINUTES,
    DEFAULT_TRACKING_URI,
    JOURNAL_FOLDER,
    TRACKING_URI_ENV,
)


def add_store_options(parser: argparse.ArgumentParser, experiment_help: str) -> None:
    """Add --tracking-uri and --experiment (whose help differs by subcommand)."""
    parser.add_argument("--tracking-uri", metavar="URI",
                        help=f"MLflow store: a tracking server (http[s]://HOST:PORT, a login "
                             f"as user:password@ or in $MLFLOW_TRACKING_USERNAME and "
                             f"$MLFLOW_TRACKING_PASSWORD) or a database (sqlite:///PATH, "
                             f"postgresql://USER@HOST/DATABASE; default: "
                             f"${TRACKING_URI_ENV}, else {DEFAULT_TRACKING_URI}; artifacts "
                             f"go beside a SQLite file, in artifacts/)")
    parser.add_argument("--experiment", metavar="NAME", help=experiment_help)


def use_store(args) -> None:
    """Settle the store a command uses (store_choice.ChosenStore): ``args.tracking_uri``
    becomes its URI without the login, and ``args.store_origin`` says where it came from."""
    store = ChosenStore.choose(args.tracking_uri)
    args.tracking_uri, args.store_origin = store.uri, store.origin


def chosen_store(args) -> ChosenStore:
    """The store a command settled on (:func:`use_store`)."""
    return ChosenStore(args.tracking_uri, args.store_origin)


def store_named(args) -> str:
    """The store a command uses, and where it came from unless --tracking-uri named it:
    ``http://lab:5000 (from $MLFLOW_TRACKING_URI)``."""
    return chosen_store(args).named


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def worker_count(text: str) -> int | str:
    """An argparse type: a number of workers, or "auto"."""
    if text == "auto":
        return text
    try:
        return positive_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a number of workers or auto, got {text!r}") from None


def add_workers(parser: argparse.ArgumentParser, what: str = "cells") -> None:
    """Add --workers (how many of the command's cells train at once), --cell-retries, and
    the options that train them on a Ray cluster instead."""
    parser.add_argument("--workers", type=worker_count, default="auto", metavar="N",
                        help=f"train N {what} at once, in N worker processes that split the "
                             f"CPU cores; 1 trains in this process (default: auto, one per "
                             f"CPU core, at most one per cell and per "
                             f"{WORKER_MEMORY_BYTES / 2**30:g} GiB of available memory; 1 on "
                             f"a machine with an NVIDIA GPU). With --ray: at most N at once "
                             f"(default: as many as the cluster holds)")
    parser.add_argument("--cell-retries", type=non_negative_int, metavar="N",
                        default=DEFAULT_CELL_RETRIES,
                        help=f"when the worker process or Ray node that trains a cell dies "
                             f"(killed, out of memory), train the cell again, at most N times: "
                             f"from its last epoch checkpoint in the same run, or without one "
                             f"from its first epoch in a new run (default: "
                             f"{DEFAULT_CELL_RETRIES})")
    ray = parser.add_argument_group("Ray", "train the cells on a Ray cluster, one actor per "
                                           "cell slot; the store stays with this command")
    ray.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                     help="train on Ray: ADDRESS as ray.init takes it (auto, HOST:PORT, "
                          "ray://HOST:10001); without it, $RAY_ADDRESS if set, else a local "
                          "Ray instance started for this command")
    ray.add_argument("--cpus-per-cell", type=positive_int, metavar="N",
                     help=f"CPU cores per cell, each cell's TensorFlow threads; with --ray "
                          f"or --deterministic (default: {RayOptions.cpus_per_cell})")
    ray.add_argument("--gpus-per-cell", type=non_negative_float, metavar="F",
                     help="GPUs per cell; 0.25 puts 4 cells on one GPU (default: 1 on a "
                          "cluster with GPUs, else 0)")
    parser.add_argument("--deterministic", action="store_true",
                        help=f"the same figures to the last bit whatever --workers is and "
                             f"wherever the cells train (this process, worker processes, Ray "
                             f"actors): every cell trains with TensorFlow's op determinism "
                             f"and --cpus-per-cell threads (default: "
                             f"{RayOptions.cpus_per_cell}); for results that must be "
                             f"reproduced exactly. Not across CPUs with other vector "
                             f"instructions, or oneDNN on and off")
    parser.add_argument("--store-timeout", type=positive_float, metavar="MINUTES",
                        default=DEFAULT_STORE_TIMEOUT_MINUTES,
                        help=f"with a tracking server (http://): how long it may stay "
                             f"unreachable while training goes on, its writes kept in "
                             f"{JOURNAL_FOLDER}/; then the command stops with exit status 3, "
                             f"and the next one sends them (default: "
                             f"{DEFAULT_STORE_TIMEOUT_MINUTES:g})")


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse type: a number of at least 0."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number above 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def resolve_workers(workers: int | str, cells: int | None) -> int:
    """The number of workers --workers asks for, for this many cells (None: unknown)."""
    return auto_workers(cells) if workers == "auto" else workers


# RayOptions' fields, by the option that sets each.
RAY_FLAGS = {"cpus_per_cell": "--cpus-per-cell", "gpus_per_cell": "--gpus-per-cell"}


def ray_options(args) -> RayOptions | None:
    """What --ray and its options ask for; None without --ray.

    Raises:
        ConfigError: for a Ray option given without --ray.
        MissingExtra: for --ray without Ray installed.
    """
    # Left unset (None) when not given, so that RayOptions alone holds the defaults.
    given = {option: value for option, value in (
        ("cpus_per_cell", args.cpus_per_cell), ("gpus_per_cell", args.gpus_per_cell))
        if value is not None}
    if args.ray is None:
        if args.deterministic:  # --cpus-per-cell is then each local cell's threads
            given.pop("cpus_per_cell", None)
        if given:
            flags = [RAY_FLAGS[option] for option in given]
            raise ConfigError(f"{' and '.join(flags)} "
                              f"{'applies' if len(flags) == 1 else 'apply'} only with --ray"
                              f"{' or --deterministic' if list(given) == ['cpus_per_cell'] else ''}")
        return None
    require("ray", "--ray")
    return RayOptions(address=args.ray or None, **given,
                      max_cells=None if args.workers == "auto" else args.workers,
                      show_output=args.verbose)


def engine_options(args, cells: int | None) -> EngineOptions:
    """What trains a command's cells, from what data, and how long it waits for its
    tracking server (--data-dir, --workers, --ray and its options, --cell-retries,
    --deterministic, --store-timeout), and the grid file's git commit for its cell runs.

    Args:
        args: The parsed command line.
        cells: How many cells the command trains at once at most (None: unknown).

    Raises:
        ConfigError: for a Ray option given without --ray.
        MissingExtra: for --ray without Ray installed.
    """
    from cvlib.engine.provenance import grid_file_commit

    ray = ray_options(args)
    grid_file = getattr(args, "grid_file", None)  # `cvlib claims` has none
    return EngineOptions(data_dir=args.data_dir,
                         workers=1 if ray is not None else resolve_workers(args.workers, cells),
                         ray=ray, cell_retries=args.cell_retries,
                         store_timeout=args.store_timeout * 60,
                         deterministic=args.deterministic,
                         threads_per_cell=args.cpus_per_cell or RayOptions.cpus_per_cell,
                         run_tags=grid_file_commit(grid_file) if grid_file else {})


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    """Add --data-dir, the CIFAR-10 folder."""
    parser.add_argument("--data-dir", metavar="DIR",
                        help=f"folder with cifar-10-batches-py/ or cifar-10-python.tar.gz "
                             f"(default: ${DATA_DIR_ENV}, else Keras's download)")


def open_store(args) -> None:
    """Check that a reading command's store is there and can be used, before reading it
    (store_choice.ChosenStore.open)."""
    chosen_store(args).open()


def chosen_experiment(args) -> str:
    """--experiment, else the store's newest experiment (store_choice.ChosenStore.experiment)."""
    return chosen_store(args).experiment(args.experiment)


def echo(line: str) -> None:
    """Print a progress line at once (the output may be a pipe)."""
    print(line, flush=True)


def until_interrupted(work: Callable[[], int]) -> int:
    """Run work() with SIGINT/SIGTERM turned into an exception that ends the open runs
    as KILLED; returns its status, or 128 + the signal's number."""
    from cvlib.engine.signals import GridInterrupted, interrupts_raise

    try:
        with interrupts_raise():
            return work()
    except GridInterrupted as interruption:
        print(f"cvlib: {interruption}: the open runs were marked KILLED; run the same "
              f"command again to resume", file=sys.stderr)
        return 128 + interruption.signum
