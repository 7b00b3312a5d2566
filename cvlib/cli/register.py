"""``cvlib register``: put the best cell's model of an experiment into MLflow's model
registry."""
from __future__ import annotations

import math

from cvlib.cli.options import add_store_options, open_store, store_named
from cvlib.fields import ConfigError
from cvlib.tracking import schema


def add_register_parser(commands) -> None:
    """The register subcommand."""
    register = commands.add_parser(
        "register", help="register the best cell's model in MLflow's model registry",
        description="Register the model of the experiment's best finished cell run (the "
                    "highest --metric among the runs that logged a model) as a new version "
                    "of the registered model --name, in the store's own registry (SQLite, "
                    "PostgreSQL or a tracking server); registering again adds a version. "
                    "Prints the version and the cell.")
    add_store_options(register, "experiment whose best cell is registered (required)")
    register.add_argument("--metric", default=schema.VAL_ACCURACY, metavar="METRIC",
                          help="what 'best' means: the highest value of this metric "
                               "(default: val_accuracy)")
    register.add_argument("--name", required=True, metavar="MODEL",
                          help="the registered model's name, e.g. cifar10-cnn")


def command_register(args) -> int:
    """``cvlib register``: register the best cell's model; 0, or 2 for bad input."""
    if args.experiment is None:
        raise ConfigError("cvlib register needs --experiment NAME")
    if not args.name.strip():
        raise ConfigError("--name must not be empty")
    open_store(args)
    from cvlib.tracking.models import register_model
    from cvlib.tracking.reads import cell_runs

    found = cell_runs(args.tracking_uri, args.experiment)
    if found is None:
        raise ConfigError(f"no experiment named {args.experiment!r} in {store_named(args)}")
    runs = found.table
    if args.metric not in runs:
        raise ConfigError(f"no metric {args.metric!r} in {args.experiment!r}")
    candidates = runs[(runs["status"] == "FINISHED") & runs[schema.MODEL_URI_COLUMN].notna()
                      & runs[args.metric].map(lambda value: math.isfinite(float(value)))]
    if candidates.empty:
        raise ConfigError(f"no finished cell of {args.experiment!r} has a model and a "
                          f"{args.metric}; cells log one with train.save_model: final")
    best = candidates.loc[candidates[args.metric].astype(float).idxmax()]
    version = register_model(args.tracking_uri, best["run_id"], args.name)
    print(f"registered {args.name!r} version {version}: cell {best['run_name']} "
          f"(run {best['run_id']}, {args.metric}={float(best[args.metric]):.4f}) "
          f"from {best[schema.MODEL_URI_COLUMN]}")
    return 0
