"""The ``cvlib`` command: thin argument parsing that wires the modules together."""
from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path

from cvlib.config import DEFAULT_TRACKING_URI, ConfigError, load_grid
from cvlib.data import DATA_DIR_ENV
from cvlib.errors import CvlibError
from cvlib.workers import WORKER_MEMORY_BYTES, auto_workers

USAGE_ERROR = 2
FORMAT_BY_SUFFIX = {".csv": "csv", ".md": "markdown", ".tex": "latex", ".html": "html"}


def _add_store_options(parser: argparse.ArgumentParser, experiment_help: str) -> None:
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI, metavar="URI",
                        help=f"MLflow store (default: {DEFAULT_TRACKING_URI}; artifacts go "
                             f"beside a SQLite file, in artifacts/)")
    parser.add_argument("--experiment", metavar="NAME", help=experiment_help)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _worker_count(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return _positive_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of workers or auto, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="cvlib",
        description="Train grids of Keras models on CIFAR-10 (activation x initializer x "
                    "batch-norm placement x ...) and compare them in MLflow.",
        epilog="Start with: cvlib run experiments/smoke.yaml && cvlib table && cvlib report")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="train every cell of a grid file into MLflow",
        description="Train every cell of a grid file (the cartesian product of its 'grid:' "
                    "axes, once per seed), one MLflow child run per cell under one parent "
                    "run. Running it again resumes: cells with a finished run (or a diverged "
                    "one: a result too) are skipped, failed and killed ones are redone. A "
                    "failing cell is recorded and the grid goes on; a cell whose loss becomes "
                    "NaN or exceeds 3x its initial value for an epoch is stopped and recorded "
                    "as diverged. Exit status: 0 done, 1 some cells failed, 2 bad input, "
                    "130/143 interrupted (open runs marked KILLED).")
    run.add_argument("grid_file", metavar="GRID.yaml", help="the grid file")
    run.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="KEY=VALUE",
                     help="override a setting, e.g. --set train.epochs=3 (repeatable; a key "
                          "that is a grid axis replaces the axis; grid.KEY=[..] sets an axis)")
    run.add_argument("--dry-run", action="store_true",
                     help="list the cells and their count; train nothing")
    run.add_argument("--workers", type=_worker_count, default="auto", metavar="N",
                     help="train N cells at once, in N worker processes that split the CPU "
                          "cores; 1 trains in this process (default: auto, one per CPU core, "
                          f"at most one per cell and per {WORKER_MEMORY_BYTES / 2**30:g} GiB of "
                          f"available memory; 1 on a machine with an NVIDIA GPU)")
    run.add_argument("--rerun", action="store_true",
                     help="train every cell again, even those with a finished run (the "
                          "replaced runs go to MLflow's trash, restorable)")
    run.add_argument("--stale-after", type=float, default=30, metavar="MINUTES",
                     help="a run left RUNNING whose heartbeat is older than this counts as "
                          "dead and is redone (default: 30; on this machine a run whose "
                          "process is gone counts as dead at once)")
    run.add_argument("--data-dir", metavar="DIR",
                     help=f"folder with cifar-10-batches-py/ or cifar-10-python.tar.gz "
                          f"(default: ${DATA_DIR_ENV}, else Keras's download)")
    _add_store_options(run, "MLflow experiment (default: the grid's name)")

    table = commands.add_parser(
        "table", help="print or export the results table of an experiment",
        description="One row per cell (mean and std across seeds), sorted by val_accuracy.")
    _add_store_options(table, "experiment (default: the newest one)")
    table.add_argument("--format", choices=sorted(set(FORMAT_BY_SUFFIX.values())),
                       help="output format (default: from --out's suffix, else markdown)")
    table.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    table.add_argument("--pivot", metavar="METRIC",
                       help="activation rows x initializer columns of METRIC, one block per "
                            "bn placement, e.g. --pivot test_accuracy")
    table.add_argument("--columns", metavar="METRIC[,METRIC]", default="",
                       help="further metrics to add as columns")

    report = commands.add_parser(
        "report", help="write an experiment's HTML report: tables, heatmaps, curves, plots",
        description="Write one self-contained HTML page (images inlined, nothing loaded from "
                    "the network) to compare an experiment's cells by eye: the results table "
                    "(click a header to sort; diverged cells orange, failed ones red), "
                    "heatmaps of test accuracy (activation x initializer, one per bn "
                    "placement), the validation-accuracy curves of the best 10 cells, one "
                    "cell's activation std by depth and its activation histograms at "
                    "initialization and at the end, the grid file and the software versions. "
                    "The page is also logged as report.html to the experiment's newest grid "
                    "(parent) run, so the MLflow UI shows it too.")
    _add_store_options(report, "experiment (default: the newest one)")
    report.add_argument("--out", default="report.html", metavar="FILE",
                        help="the HTML file to write (default: report.html)")
    report.add_argument("--cell", metavar="RUN_NAME",
                        help="the cell to look inside, by run name, e.g. relu-he-before-s0 "
                             "(default: the best by val_accuracy)")

    ui = commands.add_parser("ui", help="start the MLflow UI on the store, on 127.0.0.1",
                             description="Start the MLflow UI on this store, bound to "
                                         "127.0.0.1. Stop it with Ctrl-C.")
    ui.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    ui.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI, metavar="URI",
                    help=f"MLflow store (default: {DEFAULT_TRACKING_URI})")
    add_babysitting_parsers(commands)
    return parser


def command_run(args) -> int:
    """``cvlib run``: returns 0 when every cell finished, 1 when any failed."""
    grid = load_grid(args.grid_file, args.overrides)
    cells = grid.cells()
    if args.dry_run:
        from cvlib.progress import format_cell

        for index, cell in enumerate(cells, start=1):
            print(f"[{index}/{len(cells)}] {cell.name}  {format_cell(cell)}  "
                  f"cell={cell.cell_hash}")
        print(f"{len(cells)} cells in grid {grid.name!r}")
        return 0
    from cvlib.runner import GridInterrupted, run_grid

    workers = auto_workers(len(cells)) if args.workers == "auto" else args.workers
    print(f"grid {grid.name!r}: {len(cells)} cells -> {args.tracking_uri}, "
          f"{f'{workers} worker processes' if workers > 1 else 'in this process'}", flush=True)
    try:
        summary = run_grid(grid, args.tracking_uri, experiment=args.experiment,
                           data_dir=args.data_dir, echo=lambda line: print(line, flush=True),
                           workers=workers, rerun=args.rerun,
                           stale_after=args.stale_after * 60)
    except GridInterrupted as interruption:
        print(f"cvlib: {interruption}: the open runs were marked KILLED; run the same "
              f"command again to resume", file=sys.stderr)
        return 128 + interruption.signum
    print(f"{len(summary.finished)} cells finished, {len(summary.diverged)} diverged, "
          f"{len(summary.failed)} failed; see them with: "
          f"cvlib table --experiment {summary.experiment!r}")
    return 1 if summary.failed else 0


def _experiment(args) -> str:
    """--experiment, else the store's newest experiment (MLflow's "Default" aside)."""
    if args.experiment is not None:
        return args.experiment
    from cvlib.tracking import experiment_names

    names = [n for n in experiment_names(args.tracking_uri) if n != "Default"]
    if not names:
        raise ConfigError(f"no experiments in {args.tracking_uri}; run a grid first")
    return names[0]


def command_table(args) -> int:
    """``cvlib table``: print or write the results table."""
    from cvlib.results import pivot_table, render, results_table

    experiment = _experiment(args)
    columns = tuple(c.strip() for c in args.columns.split(",") if c.strip())
    table = results_table(args.tracking_uri, experiment, columns)
    if args.pivot:
        table = pivot_table(table, args.pivot)
    fmt = args.format or FORMAT_BY_SUFFIX.get(Path(args.out or "").suffix, "markdown")
    text = render(table, fmt)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {len(table)} rows of {experiment!r} to {args.out}")
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    return 0


def command_report(args) -> int:
    """``cvlib report``: write the HTML report and log it to the grid's parent run."""
    from cvlib.report import write_report

    report = write_report(args.tracking_uri, _experiment(args), args.out, args.cell)
    print(f"wrote the report of {report.experiment!r} ({report.runs} cell runs; inside: "
          f"{report.cell or 'none'}) to {args.out}")
    if report.grid_run is not None:
        print(f"logged it as report.html to grid run {report.grid_run.run_name} "
              f"({report.grid_run.run_id})")
    return 0


def command_ui(args) -> int:
    """``cvlib ui``: replace this process with the MLflow UI server."""
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", args.tracking_uri,
               "--host", "127.0.0.1", "--port", str(args.port)]
    print(f"MLflow UI on http://127.0.0.1:{args.port} for {args.tracking_uri}", flush=True)
    os.execv(sys.executable, command)
    return 0


def add_babysitting_parsers(commands) -> None:
    """The sanity, lr-search and claims subcommands."""
    from cvlib.lr_search import COARSE_LEARNING_RATES, SearchPlan
    from cvlib.sanity import DEFAULT_OVERFIT_EPOCHS, INITIAL_LOSS_TOLERANCE, OVERFIT_IMAGES

    sanity = commands.add_parser(
        "sanity", help="check each cell's initial loss and that it can overfit 20 images",
        description=f"Two checks per cell, from the CS231n notes on babysitting training. "
                    f"(1) Initial loss: the initialized model, without regularization, must "
                    f"score ln(10) = 2.303 within {INITIAL_LOSS_TOLERANCE} when its weights are "
                    f"small (small_gaussian); other initializers are measured and reported "
                    f"without failing (unit_gaussian is far off). (2) Overfit: trained on "
                    f"{OVERFIT_IMAGES} images without regularization, the cell must reach 100% "
                    f"training accuracy within --overfit-epochs epochs; the table says when. "
                    f"Runs go to MLflow under one parent run, which also holds the table. "
                    f"Exit status: 0 all checks that should pass passed, 1 some failed, 2 bad "
                    f"input.")
    sanity.add_argument("grid_file", metavar="GRID.yaml", nargs="?",
                        help="the cells to check (optional with --cell)")
    sanity.add_argument("--cell", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="a setting of the cell to check, e.g. --cell model.arch=mlp "
                             "(repeatable; on top of the grid file, or of the defaults without "
                             "one)")
    sanity.add_argument("--overfit-epochs", type=_positive_int, default=DEFAULT_OVERFIT_EPOCHS,
                        metavar="N", help=f"epochs allowed to reach 100%% on {OVERFIT_IMAGES} "
                                          f"images (default: {DEFAULT_OVERFIT_EPOCHS})")
    _add_data_dir(sanity)
    _add_store_options(sanity, "MLflow experiment (default: sanity)")

    plan = SearchPlan()
    search = commands.add_parser(
        "lr-search", help="coarse-to-fine random search of the learning rate",
        description=f"For each cell of the grid: a coarse stage samples the learning rate "
                    f"log-uniformly from {COARSE_LEARNING_RATES[0]:g} to "
                    f"{COARSE_LEARNING_RATES[1]:g} with short runs (a trial whose loss becomes "
                    f"NaN or exceeds 3x its initial loss is stopped as diverged); a fine stage "
                    f"samples around the best coarse values (their span, widened {plan.widen:g}x "
                    f"each way) with longer runs. Prints the best value and the best range (the "
                    f"span of the {plan.top} best fine trials), and warns when the best value "
                    f"lies at an edge of the range searched. Each trial is an MLflow run under "
                    f"one parent run per cell, which gets the plot of validation accuracy "
                    f"against learning rate (lr_search.png) and trials.csv. Run again to resume.")
    search.add_argument("grid_file", metavar="GRID.yaml", help="the grid file; an axis over "
                        "the learning rate is dropped, trials use its first seed")
    search.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a setting of the grid (repeatable)")
    for stage in ("coarse", "fine"):
        search.add_argument(f"--{stage}-trials", type=int, default=getattr(plan, f"{stage}_trials"),
                            metavar="N", help=f"trials of the {stage} stage (default: "
                                              f"{getattr(plan, f'{stage}_trials')})")
        search.add_argument(f"--{stage}-epochs", type=_positive_int,
                            default=getattr(plan, f"{stage}_epochs"), metavar="N",
                            help=f"epochs of each {stage} trial (default: "
                                 f"{getattr(plan, f'{stage}_epochs')})")
    search.add_argument("--lr-range", type=float, nargs=2, default=COARSE_LEARNING_RATES,
                        metavar=("LOW", "HIGH"), help="coarse range of the learning rate "
                        "(default: %(default)s)")
    search.add_argument("--weight-decay-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="also search the weight decay, log-uniformly in this range")
    search.add_argument("--search-seed", type=int, default=plan.seed, metavar="N",
                        help="seed of the sampling (default: %(default)s)")
    _add_data_dir(search)
    _add_store_options(search, "MLflow experiment (default: GRID-NAME-lr-search)")

    claims = commands.add_parser(
        "claims", help="test the notes' claims on real CIFAR-10 and print a verdict table",
        description="Runs one study per claim of the notes (initialization at depth, ReLU "
                    "against tanh and sigmoid, batch normalization against the initializer "
                    "and at test time, zero-centering, the learning-rate range) on real "
                    "CIFAR-10 through the same machinery as 'cvlib run', so every run lands "
                    "in MLflow. Then prints a table (claim, source, setup, measured figure, "
                    "verdict: holds / does not hold / inconclusive, the last when seeds "
                    "disagree) and logs it as claims.md and claims.csv to the study's parent "
                    "run. The full study takes under an hour on 2 CPU cores, with 3 seeds; "
                    "--quick about 5 minutes with 1 seed. Run again to resume.")
    size = claims.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="scale", const="quick",
                      default="full", help="the reduced study: 1 seed, fewer images and "
                                           "epochs (about 5 minutes)")
    size.add_argument("--smoke", action="store_const", dest="scale", const="smoke",
                      help="tiny sizes that check the wiring in a couple of minutes; its "
                           "verdicts mean nothing")
    claims.add_argument("--out", metavar="DIR",
                        help="also write claims.md and claims.csv into DIR")
    _add_data_dir(claims)
    _add_store_options(claims, "MLflow experiment (default: claims, or claims-quick)")


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", metavar="DIR",
                        help=f"folder with cifar-10-batches-py/ or cifar-10-python.tar.gz "
                             f"(default: ${DATA_DIR_ENV}, else Keras's download)")


def _until_interrupted(work) -> int:
    """Run work() with SIGINT/SIGTERM turned into an exception that ends the open runs
    as KILLED; returns its status, or 128 + the signal's number."""
    from cvlib.runner import GridInterrupted, interrupts_raise

    try:
        with interrupts_raise():
            return work()
    except GridInterrupted as interruption:
        print(f"cvlib: {interruption}: the open runs were marked KILLED; run the same "
              f"command again to resume", file=sys.stderr)
        return 128 + interruption.signum


def command_sanity(args) -> int:
    """``cvlib sanity``: returns 0 when every check that should pass passed, else 1."""
    from cvlib.config import grid_from_dict, parse_override

    if args.grid_file:
        grid = load_grid(args.grid_file, args.overrides)
    elif args.overrides:
        grid = grid_from_dict({"name": "cell"}, [parse_override(t) for t in args.overrides])
    else:
        raise ConfigError("give a grid file or the cell's settings with --cell KEY=VALUE")

    def work() -> int:
        from cvlib.sanity import run_sanity

        report = run_sanity(grid, args.tracking_uri, experiment=args.experiment or "sanity",
                            data_dir=args.data_dir, echo=lambda line: print(line, flush=True),
                            overfit_epochs=args.overfit_epochs)
        print(report.table().to_markdown(index=False))
        failed = sum(check.failed for check in report.checks)
        print(f"{failed} of {len(report.checks)} checks failed" if failed else
              f"all {len(report.checks)} checks that should pass passed")
        return 1 if report.failed else 0

    return _until_interrupted(work)


def command_lr_search(args) -> int:
    """``cvlib lr-search``: prints each cell's best learning rate and range."""
    from cvlib.lr_search import LEARNING_RATE, WEIGHT_DECAY, SearchPlan, search_grid

    grid = load_grid(args.grid_file, args.overrides)
    space = [(LEARNING_RATE, tuple(args.lr_range))]
    if args.weight_decay_range:
        space.append((WEIGHT_DECAY, tuple(args.weight_decay_range)))
    for key, (low, high) in space:
        if not 0 < low < high:
            raise ConfigError(f"the range of {key} must satisfy 0 < LOW < HIGH, got "
                              f"[{low:g}, {high:g}]")
    plan = SearchPlan(coarse_trials=max(args.coarse_trials, 1), coarse_epochs=args.coarse_epochs,
                      fine_trials=max(args.fine_trials, 0), fine_epochs=args.fine_epochs,
                      seed=args.search_seed, space=tuple(space))

    def work() -> int:
        search_grid(grid, args.tracking_uri, args.experiment, plan, args.data_dir,
                    echo=lambda line: print(line, flush=True))
        return 0

    return _until_interrupted(work)


def command_claims(args) -> int:
    """``cvlib claims``: prints the claims table."""
    def work() -> int:
        from cvlib.claims import run_claims

        table = run_claims(args.tracking_uri, args.scale, args.data_dir,
                           echo=lambda line: print(line, flush=True), experiment=args.experiment)
        text = table.to_markdown(index=False)
        print(text)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            Path(args.out, "claims.md").write_text(text + "\n")
            table.to_csv(Path(args.out, "claims.csv"), index=False)
            print(f"wrote claims.md and claims.csv to {args.out}")
        return 0

    return _until_interrupted(work)


COMMANDS = {"run": command_run, "table": command_table, "report": command_report,
            "ui": command_ui, "sanity": command_sanity, "lr-search": command_lr_search,
            "claims": command_claims}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cvlib`` console command.

    Returns:
        The exit status: 0 ok, 1 some cells failed, 2 bad input.
    """
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except CvlibError as error:
        print(f"cvlib: error: {error}", file=sys.stderr)
        return USAGE_ERROR


def console_main() -> None:
    """The ``cvlib`` console command (and ``python -m cvlib``): :func:`main`, then exit.

    Freezing the heap first skips the interpreter's final garbage collection over
    MLflow's, SQLAlchemy's and pandas's objects, which took about 1 s of every
    command here; atexit handlers and the flushing of output still run.
    """
    status = main()
    gc.freeze()
    sys.exit(status)
