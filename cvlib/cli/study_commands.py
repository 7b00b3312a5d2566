"""The ``cvlib`` subcommands of the lecture's procedures (cvlib.studies): ``sanity``,
``lr-search`` and ``claims``."""
from __future__ import annotations

import shutil

from cvlib.cli.options import (
    add_data_dir,
    add_store_options,
    add_workers,
    echo,
    engine_options,
    non_negative_int,
    positive_int,
    store_named,
    until_interrupted,
)
from cvlib.fields import ConfigError
from cvlib.grids import grid_from_dict, load_grid, parse_override
from cvlib.studies.lr_search import COARSE_LEARNING_RATES, SearchPlan
from cvlib.studies.sanity import DEFAULT_OVERFIT_EPOCHS, INITIAL_LOSS_TOLERANCE, OVERFIT_IMAGES


def add_study_parsers(commands) -> None:
    """The sanity, lr-search and claims subcommands."""

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
    sanity.add_argument("--overfit-epochs", type=positive_int, default=DEFAULT_OVERFIT_EPOCHS,
                        metavar="N", help=f"epochs allowed to reach 100%% on {OVERFIT_IMAGES} "
                                          f"images (default: {DEFAULT_OVERFIT_EPOCHS})")
    add_workers(sanity, "check cells")
    add_data_dir(sanity)
    add_store_options(sanity, "MLflow experiment (default: sanity)")

    plan = SearchPlan()
    search = commands.add_parser(
        "lr-search", help="coarse-to-fine random search of the learning rate",
        description=f"For each cell of the grid: a coarse stage samples the learning rate "
                    f"log-uniformly from {COARSE_LEARNING_RATES[0]:g} to "
                    f"{COARSE_LEARNING_RATES[1]:g} with short runs (a trial whose loss becomes "
                    f"NaN or exceeds 3x its initial loss is stopped as diverged); a fine stage "
                    f"samples around the best coarse values (their span, widened {plan.widen:g}x "
                    f"each way) with longer runs. Each stage is a sampling search of 'cvlib "
                    f"run' (search.strategy random over loguniform ranges: Optuna's "
                    f"RandomSampler, seeded by --search-seed). Prints the best value and the "
                    f"best range (the span of the {plan.top} best fine trials), and warns when "
                    f"the best value lies at an edge of the range searched. Each trial is an "
                    f"MLflow run under one parent run per cell, which gets the plot of "
                    f"validation accuracy against learning rate (lr_search.png) and trials.csv. "
                    f"Run again to resume: finished trials are not trained again.")
    search.add_argument("grid_file", metavar="GRID.yaml", help="the grid file; an axis over "
                        "the learning rate is dropped, trials use its first seed")
    search.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a setting of the grid (repeatable)")
    for stage in ("coarse", "fine"):
        search.add_argument(f"--{stage}-trials", type=int, default=getattr(plan, f"{stage}_trials"),
                            metavar="N", help=f"trials of the {stage} stage (default: "
                                              f"{getattr(plan, f'{stage}_trials')})")
        search.add_argument(f"--{stage}-epochs", type=positive_int,
                            default=getattr(plan, f"{stage}_epochs"), metavar="N",
                            help=f"epochs of each {stage} trial (default: "
                                 f"{getattr(plan, f'{stage}_epochs')})")
    search.add_argument("--lr-range", type=float, nargs=2, default=COARSE_LEARNING_RATES,
                        metavar=("LOW", "HIGH"), help="coarse range of the learning rate "
                        "(default: %(default)s)")
    search.add_argument("--weight-decay-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="also search the weight decay, log-uniformly in this range")
    search.add_argument("--search-seed", type=non_negative_int, default=plan.seed,
                        metavar="N", help="seed of the sampling; the same seed draws the same "
                                          "trials (default: %(default)s)")
    add_workers(search, "trials of a stage")
    add_data_dir(search)
    add_store_options(search, "MLflow experiment (default: GRID-NAME-lr-search)")

    claims = commands.add_parser(
        "claims", help="test the notes' claims on real CIFAR-10 and print a verdict table",
        description="Runs one study per claim of the notes (initialization at depth, ReLU "
                    "against tanh and sigmoid, batch normalization against the initializer "
                    "and at test time, zero-centering, the learning-rate range) on real "
                    "CIFAR-10 through the same machinery as 'cvlib run', so every run lands "
                    "in MLflow. Then prints a table (claim, source, setup, measured figure, "
                    "verdict: holds / does not hold / inconclusive, the last with its reason: "
                    "seeds that disagree or cannot tell, or a run it rests on that failed "
                    "or diverged) and logs it as claims.md and claims.csv to the study's parent "
                    "run, with claims.html: one page with each claim's setup, figures per "
                    "seed, verdict and the figure that shows the evidence. The full study takes under an hour on 2 CPU cores, with 3 seeds; "
                    "--quick a fraction of that, with 1 seed. Run again to resume.")
    size = claims.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="scale", const="quick",
                      default="full", help="the reduced study: 1 seed, fewer images and "
                                           "epochs, a fraction of the full study's time")
    size.add_argument("--smoke", action="store_const", dest="scale", const="smoke",
                      help="tiny sizes that check the wiring in a couple of minutes; its "
                           "verdicts mean nothing")
    claims.add_argument("--out", metavar="DIR",
                        help="also write claims.html, claims.md, claims.csv, about.json and "
                             "each claim's figure (figures/KEY.png) into DIR")
    add_workers(claims, "cells of a study")
    add_data_dir(claims)
    add_store_options(claims, "MLflow experiment (default: claims, or claims-quick)")


def command_sanity(args) -> int:
    """``cvlib sanity``: returns 0 when every check that should pass passed, else 1."""
    if args.grid_file:
        grid = load_grid(args.grid_file, args.overrides)
    elif args.overrides:
        grid = grid_from_dict({"name": "cell"}, [parse_override(t) for t in args.overrides])
    else:
        raise ConfigError("give a grid file or the cell's settings with --cell KEY=VALUE")

    echo(f"sanity checks of {len(grid.cells())} cells -> {store_named(args)}")

    def work() -> int:
        from cvlib.studies.sanity import run_sanity

        report = run_sanity(grid, args.tracking_uri, experiment=args.experiment or "sanity",
                            engine=engine_options(args, 2 * len(grid.cells())), echo=echo,
                            overfit_epochs=args.overfit_epochs)
        print(report.table().to_markdown(index=False))
        print(report.summary())
        print(f"logged to experiment {args.experiment or 'sanity'!r} in {store_named(args)}")
        return 1 if report.failed else 0

    return until_interrupted(work)


def command_lr_search(args) -> int:
    """``cvlib lr-search``: prints each cell's best learning rate and range."""
    from cvlib.studies.lr_search import LEARNING_RATE, WEIGHT_DECAY, search_grid

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

    echo(f"learning-rate search of grid {grid.name!r} -> {store_named(args)}")

    def work() -> int:
        search_grid(grid, args.tracking_uri, args.experiment, plan,
                    engine_options(args, plan.coarse_trials), echo=echo)
        return 0

    return until_interrupted(work)


def command_claims(args) -> int:
    """``cvlib claims``: prints the claims table."""
    echo(f"claims study ({args.scale}) -> {store_named(args)}")

    def work() -> int:
        from cvlib.studies.claims import claims_lines, run_claims

        scale = {"full": "", "quick": " --quick", "smoke": " --smoke"}[args.scale]
        workers = f" --workers {args.workers}" if args.workers != "auto" else ""
        result = run_claims(args.tracking_uri, args.scale, engine_options(args, None),
                            echo=echo, experiment=args.experiment,
                            command=f"cvlib claims{scale}{workers}")
        print("\n".join(claims_lines(result.table, shutil.get_terminal_size().columns)))
        if args.out:
            result.write(args.out)
            print(f"wrote claims.html (the evidence page), claims.md, claims.csv (with each "
                  f"claim's setup) and figures/ to {args.out}")
        return 0

    return until_interrupted(work)


STUDY_COMMANDS = {"sanity": command_sanity, "lr-search": command_lr_search,
                        "claims": command_claims}
