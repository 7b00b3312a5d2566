"""What a grid's confirmation stage changed: the confirmed cells' ranks by the grid's own
seeds and by all their seeds, which of them tie with the best, and the stage's wall time
as a fraction of the grid's.

    cvlib run experiments/seed_grid.yaml ...      # a grid with search: {confirm: ...}
    python scripts/confirmation_ranks.py --experiment seed_grid --tracking-uri URI

Wall times are those of the parent runs: the grid's (its cells are trained with the grid's
seeds) and the confirmation's (its cells with further seeds). A grid resumed over several
commands adds up its parent runs of each kind.
"""
from __future__ import annotations

import argparse
import ast

import pandas as pd
from mlflow.tracking import MlflowClient

from cvlib.results import results_table
from cvlib.tracking import schema
from cvlib.tracking.reads import cell_runs


def stage_wall_times(tracking_uri: str, experiment: str) -> tuple[float, float]:
    """Seconds of the grid's parent runs and of its confirmation's."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    cells = cell_runs(tracking_uri, experiment).table
    grid = confirmation = 0.0
    for parent in client.search_runs([found.experiment_id],
                                     f"tags.`{schema.CELL_TAG}` IS NULL"):
        if parent.info.end_time is None or schema.SEEDS_PARAM not in parent.data.params:
            continue
        seeds = {str(seed) for seed in ast.literal_eval(parent.data.params[schema.SEEDS_PARAM])}
        children = cells[cells["parent_run_id"] == parent.info.run_id]
        seconds = (parent.info.end_time - parent.info.start_time) / 1000
        if len(children) and not children["seed"].isin(seeds).any():
            confirmation += seconds
        else:
            grid += seconds
    return grid, confirmation


def rank_changes(tracking_uri: str, experiment: str) -> pd.DataFrame:
    """The confirmed cells (those with more seeds than the rest): their rank among all
    cells by the first seed's val_accuracy, their rank by their seeds' mean, mean ± std,
    interval and vs_best."""
    table = results_table(tracking_uri, experiment)
    settings = table.attrs["settings"]
    runs = cell_runs(tracking_uri, experiment).table
    runs = runs[runs["status"] == "FINISHED"]
    first_seed = runs["seed"].astype(int).min()
    first = runs[runs["seed"].astype(int) == first_seed].copy()
    first.columns = [c.split(".")[-1] for c in first.columns]
    first = first.loc[:, ~first.columns.duplicated()]
    first["rank_before"] = first["val_accuracy"].rank(ascending=False, method="min").astype(int)
    confirmed = table[table["seeds"] == table["seeds"].max()].copy()
    confirmed["rank_after"] = range(1, len(confirmed) + 1)
    merged = confirmed.merge(first[[*settings, "rank_before"]], on=settings, how="left")
    return merged[[*settings, "rank_before", "rank_after", "seeds", "val_accuracy",
                   "val_accuracy_std", "val_accuracy_ci_low", "val_accuracy_ci_high",
                   "vs_best"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--tracking-uri", required=True)
    args = parser.parse_args()
    changes = rank_changes(args.tracking_uri, args.experiment)
    print(changes.to_markdown(index=False, floatfmt=".4f"))
    grid, confirmation = stage_wall_times(args.tracking_uri, args.experiment)
    print(f"\ngrid {grid / 60:.1f} min, confirmation {confirmation / 60:.1f} min: "
          f"+{confirmation / grid:.1%} wall time" if grid else "no finished grid run")


if __name__ == "__main__":
    main()
