"""The ``cvlib`` subcommands that train and read grids: ``run``, ``table`` and
``report``."""
from __future__ import annotations

import sys
from pathlib import Path

from cvlib.cli.options import (
    add_data_dir,
    add_store_options,
    add_workers,
    chosen_experiment,
    chosen_store,
    echo,
    engine_options,
    open_store,
    positive_int,
    resolve_workers,
    store_named,
    until_interrupted,
)
from cvlib.errors import did_you_mean
from cvlib.fields import ConfigError
from cvlib.grids import load_grid
from cvlib.tracking.schema import REPORT_FILE
from cvlib.tracking.uris import command_line

FORMAT_BY_SUFFIX = {".csv": "csv", ".md": "markdown", ".tex": "latex", ".html": "html"}


def add_grid_parsers(commands) -> None:
    """The run, table and report subcommands."""
    run = commands.add_parser(
        "run", help="train every cell of a grid file into MLflow",
        description="Train every cell of a grid file (the cartesian product of its 'grid:' "
                    "axes, once per seed), one MLflow child run per cell under one parent "
                    "run; or, with search: {strategy: random|tpe, trials: N}, N cells "
                    "sampled by Optuna from the grid file's 'space:' (README, Search). "
                    "Running it again resumes: cells with a finished run (or a diverged "
                    "one: a result too) are skipped (a search goes on until it has N "
                    "trials), failed and killed ones are redone. A "
                    "failing cell is recorded and the grid goes on; a cell whose loss becomes "
                    "NaN or exceeds 3x its initial value for an epoch is stopped and recorded "
                    "as diverged. Exit status: 0 done, 1 some cells failed, 2 bad input, "
                    "130/143 interrupted (open runs marked KILLED).")
    run.add_argument("grid_file", metavar="GRID.yaml", help="the grid file")
    run.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="KEY=VALUE",
                     help="override a setting, e.g. --set train.epochs=3 (repeatable; a key "
                          "that is a grid axis replaces the axis; grid.KEY=[..] sets an axis)")
    run.add_argument("--confirm", type=positive_int, metavar="K",
                     help="once every cell has a result, train the best K (by mean "
                          "val_accuracy) again with more seeds, in the same experiment, "
                          "so that `cvlib table` can test their ranking: the same as "
                          "search: {confirm: {top: K}} (seeds in total: search.confirm.seeds, "
                          "default 3)")
    run.add_argument("--dry-run", action="store_true",
                     help="list the cells, what is left to run, and how long that would "
                          "take here; train nothing")
    add_workers(run)
    run.add_argument("--rerun", action="store_true",
                     help="train every cell again, even those with a finished run (the "
                          "replaced runs go to MLflow's trash, restorable)")
    run.add_argument("--stale-after", type=float, default=30, metavar="MINUTES",
                     help="a run left RUNNING whose heartbeat is older than this counts as "
                          "dead and is redone (default: 30; a run whose process can be "
                          "checked here, on this boot and in this pid namespace, counts as "
                          "dead as soon as that process is gone)")
    add_data_dir(run)
    add_store_options(run, "MLflow experiment (default: the grid's name)")

    table = commands.add_parser(
        "table", help="print or export the results table of an experiment",
        description="One row per cell, the grid's settings first: ok cells before the "
                    "others, cells with more seeds (a confirmation's: cvlib run --confirm K) "
                    "first, then by val_accuracy. With several seeds: each metric's mean ± "
                    "std over seeds, the 95% confidence interval of val_accuracy's mean (t "
                    "distribution), and vs_best: 'tied' marks the cells that cannot be told "
                    "apart from the best (Welch's t-test on their seeds' val_accuracy, "
                    "p >= 0.05; scipy), 'below' those that are worse. With one seed, a line "
                    "says that the differences are untested. csv keeps each figure in its "
                    "own column; a cell without a value says why (diverged, failed, not run).")
    add_store_options(table, "experiment (default: the newest one)")
    table.add_argument("--format", choices=sorted(set(FORMAT_BY_SUFFIX.values())),
                       help="output format (default: from --out's suffix, else markdown)")
    table.add_argument("--out", metavar="FILE",
                       help=f"write to FILE instead of stdout, in the format its suffix names "
                            f"({', '.join(FORMAT_BY_SUFFIX)}) unless --format names one")
    table.add_argument("--pivot", metavar="METRIC",
                       help="one row per bn placement and activation (and any other varied "
                            "setting), one column per initializer, in the grid file's order, "
                            "each value METRIC's mean ± std over seeds, or what the cell is "
                            "instead (diverged, failed, running, not run), e.g. "
                            "--pivot test_accuracy")
    table.add_argument("--columns", metavar="METRIC[,METRIC]", default="",
                       help="further metrics to add as columns")
    table.add_argument("--every-run", action="store_true",
                       help="count every cell's latest run, failed and unfinished ones too, "
                            "with the columns runs (their names), env_differs (what the "
                            "runs of a row recorded differently of what their figures "
                            "depend on: CPU, its vector extensions, threads, oneDNN, op "
                            "determinism, data checksum, git commit) and error")

    report = commands.add_parser(
        "report", help="write an experiment's HTML report: tables, heatmaps, curves, plots",
        description="Write one self-contained HTML page (images inlined, nothing loaded from "
                    "the network) to compare an experiment's cells by eye: the results table "
                    "(click a header to sort; diverged cells orange, failed ones red), "
                    "heatmaps of test accuracy (activation x initializer, one per bn "
                    "placement), the validation-accuracy curves of the best 10 cells, one "
                    "cell's activation std by depth and its activation histograms at "
                    "initialization and at the end, the grid as it ran (its --set overrides "
                    "listed) and the software versions. "
                    "The page is also logged as report.html to the experiment's newest grid "
                    "(parent) run, so the MLflow UI shows it too.")
    add_store_options(report, "experiment (default: the newest one)")
    report.add_argument("--out", metavar="FILE",
                        help="the HTML file to write (default: reports/EXPERIMENT.html beside "
                             "a SQLite store, e.g. mlruns/reports/smoke.html)")
    report.add_argument("--cell", metavar="RUN_NAME",
                        help="the cell to look inside, by run name, e.g. relu-he-before-s0 "
                             "(default: the best by val_accuracy)")


def command_run(args) -> int:
    """``cvlib run``: returns 0 when every cell finished, 1 when any failed."""
    confirm = [f"search.confirm.top={args.confirm}"] if args.confirm else []
    grid = load_grid(args.grid_file, args.overrides + confirm)
    cells = grid.cells()
    if grid.is_sampled and args.rerun:
        raise ConfigError("--rerun does not apply to a search, whose trials are new cells: "
                          "raise search.trials (--set search.trials=N) to train more, or "
                          "give another --experiment to start anew")
    if args.dry_run:
        return _dry_run_search(grid, args) if grid.is_sampled else _dry_run(grid, cells, args)
    from cvlib.engine.experiment import run_grid
    from cvlib.engine.options import GridOptions

    engine = engine_options(args, grid.search.trials if grid.is_sampled else len(cells))
    if engine.ray is not None:
        where = f"on Ray ({args.ray or 'RAY_ADDRESS, else a local instance'})"
    elif engine.workers > 1:
        where = f"{engine.workers} worker processes"
    else:
        where = "in this process"
    what = (f"a {grid.search.strategy} search of {grid.search.trials} trials" if grid.is_sampled
            else f"{len(cells)} cells")
    print(f"grid {grid.name!r}: {what} -> {store_named(args)}, {where}", flush=True)

    def work() -> int:
        summary = run_grid(grid, args.tracking_uri, engine,
                           GridOptions(rerun=args.rerun, stale_after=args.stale_after * 60),
                           experiment=args.experiment, echo=echo)
        see = command_line("table", "--experiment", summary.experiment,
                           tracking_uri=args.tracking_uri)
        print(f"{len(summary.finished)} cells finished, {len(summary.diverged)} diverged, "
              f"{len(summary.failed)} failed; see them with: {see}")
        return 1 if summary.failed else 0

    return until_interrupted(work)


def _dry_run(grid, cells, args) -> int:
    """``cvlib run --dry-run``: list the cells, what a run would do with them given the
    store (read, never created), and how long it would take here."""
    for index, cell in enumerate(cells, start=1):
        print(f"[{index}/{len(cells)}] {cell.name}  cell={cell.cell_hash}")
    print(f"{len(cells)} cells in grid {grid.name!r}")
    if grid.search.confirm is not None:
        from cvlib.engine.confirmation import extra_seeds

        confirm = grid.search.confirm
        settings = len(cells) // len(set(grid.seeds))
        extra = min(confirm.top, settings) * len(extra_seeds(grid.seeds, confirm.seeds))
        print(f"then a confirmation: the best {confirm.top} again until each has "
              f"{confirm.seeds} seeds, {extra} more runs")
    to_run = cells
    if chosen_store(args).exists():
        from cvlib.engine.grid_run import default_experiment, is_halving
        from cvlib.engine.resume import plan
        from cvlib.tracking.reads import run_records

        open_store(args)
        experiment = args.experiment or default_experiment(grid)
        records = run_records(args.tracking_uri, experiment)
        the_plan = plan(cells, records, rerun=args.rerun or is_halving(grid))
        to_run = the_plan.pending
        print(f"in experiment {experiment!r} of {store_named(args)}: {the_plan.summary()}")
    else:
        print(f"no store at {store_named(args)} yet: all {len(cells)} cells to run")
    print(_estimate_line(grid, to_run, args))
    return 0


def _dry_run_search(grid, args) -> int:
    """``cvlib run --dry-run`` of a sampling search: its space, strategy, trial budget, and
    the trials its experiment holds already."""
    search = grid.search
    print(f"{search.strategy} search of grid {grid.name!r}: {search.trials} trials, seed "
          f"{search.seed}, pruner {search.pruner}, each trial one cell of "
          f"{grid.train.epochs} epochs")
    for dimension in grid.space:
        print(f"  {dimension.describe()}")
    if not chosen_store(args).exists():
        print(f"no store at {store_named(args)} yet: all {search.trials} trials to run")
        return 0
    from cvlib.engine.grid_run import default_experiment
    from cvlib.engine.search_run import ended_trials
    from cvlib.tracking.reads import trial_runs

    open_store(args)
    experiment = args.experiment or default_experiment(grid)
    runs = trial_runs(args.tracking_uri, experiment, grid.name)
    done, foreign = ended_trials(runs, grid)
    outcomes = {run.number: run.outcome for run in runs}
    for trial in done:
        print(f"  trial {trial.number}: {outcomes[trial.number]} "
              f"val_accuracy={trial.value:.3f}  {trial.values}")
    left_out = f" ({foreign} of another space or other settings left out)" if foreign else ""
    print(f"in experiment {experiment!r} of {store_named(args)}: {len(done)} of "
          f"{search.trials} trials done{left_out}, {max(search.trials - len(done), 0)} to run")
    return 0


def _estimate_line(grid, cells, args) -> str:
    """How long training ``cells`` would take on this machine with the chosen workers."""
    from cvlib.engine.estimate import grid_estimate
    from cvlib.engine.grid_run import is_halving
    from cvlib.engine.hosts import usable_cores
    from cvlib.engine.progress import clock, counted

    if args.ray is not None:
        return "time estimate: none for --ray (it depends on the cluster's nodes)"
    workers, cores = resolve_workers(args.workers, len(cells) or 1), usable_cores()
    bound = "at most " if is_halving(grid) else ""  # halving trains most cells less
    return (f"time estimate on this machine ({counted(cores, 'CPU core')}, "
            f"{counted(workers, 'worker')}): {bound}~{clock(grid_estimate(cells, workers, cores))} "
            f"for {counted(len(cells), 'cell')}, from the cost model (the progress lines "
            f"correct it as the cells train)")


def command_table(args) -> int:
    """``cvlib table``: print or write the results table."""
    from cvlib.pivot import experiment_table
    from cvlib.table_text import ranking_note, render

    fmt = table_format(args.format, args.out)
    experiment = chosen_experiment(args)
    columns = tuple(c.strip() for c in args.columns.split(",") if c.strip())
    table, results = experiment_table(args.tracking_uri, experiment, columns,
                                      every_run=args.every_run, pivot=args.pivot)
    text = render(table, fmt)
    newest = " (the newest; --experiment NAME picks another)" if args.experiment is None else ""
    # Which results these are; on stderr when stdout carries data for a program.
    aside = sys.stderr if fmt != "markdown" and not args.out else sys.stdout
    print(f"experiment {experiment!r}{newest} of {store_named(args)}", file=aside)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {len(table)} rows of {experiment!r} to {args.out}")
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    print(ranking_note(results, pivot=bool(args.pivot)), file=aside)
    return 0


def table_format(fmt: str | None, out: str | None) -> str:
    """The table's format: --format, else --out's suffix, else markdown.

    Raises:
        ConfigError: --out's suffix names no format, and --format says none.
    """
    if fmt or not out:
        return fmt or "markdown"
    suffix = Path(out).suffix
    if suffix not in FORMAT_BY_SUFFIX:
        formats = "|".join(sorted(set(FORMAT_BY_SUFFIX.values())))
        raise ConfigError(f"unknown table format {repr(suffix) if suffix else '(no suffix)'} "
                          f"of --out {out!r}: the table is written as "
                          f"{', '.join(FORMAT_BY_SUFFIX)}, or in --format {formats}"
                          f"{did_you_mean(suffix, FORMAT_BY_SUFFIX)}")
    return FORMAT_BY_SUFFIX[suffix]


def command_report(args) -> int:
    """``cvlib report``: write the HTML report and log it to the grid's parent run."""
    from cvlib.report_page import default_report_path, write_report

    experiment = chosen_experiment(args)
    out = args.out or default_report_path(args.tracking_uri, experiment)
    report = write_report(args.tracking_uri, experiment, out, args.cell)
    print(f"wrote the report of {report.experiment!r} of {store_named(args)} ({report.runs} "
          f"cell runs; inside: {report.cell or 'none'}) to {out}")
    if report.grid_run is not None:
        print(f"logged it as {REPORT_FILE} to grid run {report.grid_run.run_name} "
              f"({report.grid_run.run_id})")
    return 0


GRID_COMMANDS = {"run": command_run, "table": command_table, "report": command_report}
