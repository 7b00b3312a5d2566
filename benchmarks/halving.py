r"""Successive halving against the plain grid: what it costs, and what it keeps.

    python benchmarks/halving.py [--train-size 2000] [--val-size 1000] [--workers 2] [--record]
    python benchmarks/halving.py --report-only sqlite:////tmp/cvlib-halving-bench-XXX/mlflow.db
    python benchmarks/halving.py --store sqlite:////tmp/cvlib-halving-bench-XXX/mlflow.db ...
    python benchmarks/halving.py --replay sqlite:////tmp/cvlib-halving-bench-XXX/mlflow.db
    python benchmarks/halving.py --train-size 200 --val-size 200 --workers 1 \
        --set "grid.model.activation=[relu, tanh]" --set model.initializer=he \
        --set model.bn=none --set "model.widths=[8]" --set model.dense_units=16  # smallest

Runs experiments/seed_grid.yaml (84 cells; `--grid` names another file, `--set` overrides
it as `cvlib run --set` does) at a reduced data size twice, as a plain grid of
max_epochs=9 epochs and as successive halving (min 1, max 9, reduction 3),
both through run_grid in this process with the same workers, into a temporary store.
`--store` continues an interrupted run in its store: the plain grid skips the cells it
finished (as `cvlib run` does), and its wall time is the sum of its sittings.
`--report-only` and `--replay` on an unfinished store say what it still lacks.
Prints the cost of each (image passes counted from the runs' logged epochs, and wall
time from the parent runs) and how many of the plain grid's top 5 cells (by final
val_accuracy) halving kept to the last rung. Goal: at least 4 of 5 at no more than
40% of the cost. Also prints what explains a miss: where the plain grid's top 5
ranked after one epoch, the best cell each strategy found, and the validation
split's noise (a 95% binomial margin of one cell's accuracy).

`--replay` answers what other halving settings would have done, without training: it
replays cvlib's own rung schedule and survivor rule (`SearchConfig.rungs`,
`cvlib.engine.halving.survivors`) on the plain grid's logged histories. A halving cell
trains on the plain cell's very batches, so the replay is exact up to float noise; the
report checks it ("same as the plain grid").
"""
import argparse
import math
import tempfile

from record import Recorder, add_option

SEED_GRID = "experiments/seed_grid.yaml"
STRATEGIES = ("grid", "halving")
LAST_RUNG_EPOCHS = 9
# (min_epochs, reduction) settings that --replay tries, the default first.
REPLAYED_SETTINGS = ((1, 3), (2, 3), (3, 3), (1, 2), (2, 2))


def run_both(train_size: int, val_size: int, workers: int, uri: str | None = None,
             grid_file: str = SEED_GRID, settings: list[str] = ()) -> str:
    """Run the plain grid and halving into a store (default: a new one); returns its URI."""
    from cvlib.engine.experiment import run_grid
    from cvlib.engine.options import EngineOptions
    from cvlib.grids import load_grid

    uri = uri or f"sqlite:///{tempfile.mkdtemp(prefix='cvlib-halving-bench-')}/mlflow.db"
    overrides = [*settings, f"data.train_size={train_size}", f"data.val_size={val_size}",
                 "data.test_size=1000", f"train.epochs={LAST_RUNG_EPOCHS}"]
    for strategy in STRATEGIES:
        grid = load_grid(grid_file, overrides + [
            f"search={{strategy: {strategy}, min_epochs: 1, max_epochs: {LAST_RUNG_EPOCHS}, "
            f"reduction: 3}}"])
        run_grid(grid, uri, EngineOptions(workers=workers, progress_bar=False),
                 experiment=strategy, echo=lambda line: None)
    return uri


def load_runs(client, strategy: str):
    """A strategy's parent runs, its cells' runs (not KILLED ones), and each cell's
    val_accuracy per epoch by run name (``client``: an MlflowClient)."""
    from cvlib.tracking.schema import CELL_TAG, VAL_ACCURACY

    experiment_id = client.get_experiment_by_name(strategy).experiment_id
    every_run = client.search_runs([experiment_id], max_results=1000)
    # An interrupted and continued plain grid has one parent run per sitting.
    parents = [r for r in every_run if CELL_TAG not in r.data.tags]
    runs = [r for r in every_run if CELL_TAG in r.data.tags and r.info.status != "KILLED"]
    histories = {r.info.run_name: [m.value for m in sorted(
        client.get_metric_history(r.info.run_id, VAL_ACCURACY), key=lambda m: m.step)]
        for r in runs}
    return parents, runs, histories


def final_accuracies(histories: dict[str, list[float]]) -> dict[str, float]:
    """Each cell's last val_accuracy (0 for a cell that logged none)."""
    return {name: values[-1] if values else 0.0 for name, values in histories.items()}


def top5(histories: dict[str, list[float]]) -> list[str]:
    """The plain grid's 5 best cells by final val_accuracy."""
    final = final_accuracies(histories)
    return sorted(final, key=final.get, reverse=True)[:5]


def unfinished(client, strategies=STRATEGIES) -> str | None:
    """What the store still lacks (one of the strategies' arms not run or not ended), or
    None. A run at a large data size can take several sittings (see ``--store``)."""
    for strategy in strategies:
        if client.get_experiment_by_name(strategy) is None:
            return f"{strategy}: not started"
        parents, runs, _ = load_runs(client, strategy)
        finished = sum(r.info.status == "FINISHED" for r in runs)
        if not any(p.info.status == "FINISHED" for p in parents):
            return f"{strategy}: {finished} cells finished, the arm has not ended"
    return None


def report(uri: str, recorder: Recorder) -> None:
    """Print the costs, the top-5 check and what explains it, from the store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    missing = unfinished(client)
    if missing:
        print(f"not finished ({missing}); continue with --store {uri}")
        return
    outcomes = {}
    for strategy in STRATEGIES:
        parents, runs, histories = load_runs(client, strategy)
        train_size = int(runs[0].data.params["data.train_size"])
        val_size = int(runs[0].data.params["data.val_size"])
        seconds = sum(p.info.end_time - p.info.start_time for p in parents) / 1000
        epochs = sum(len(values) for values in histories.values())
        outcomes[strategy] = (seconds, epochs * train_size, histories)
        print(f"{strategy:8s}: {len(runs)} cells, {epochs} cell-epochs, "
              f"{epochs * train_size:,} image passes, {seconds:.0f} s"
              + (f" in {len(parents)} sittings" if len(parents) > 1 else ""))
    grid_seconds, grid_passes, grid_histories = outcomes["grid"]
    halving_seconds, halving_passes, halving_histories = outcomes["halving"]
    final = final_accuracies(grid_histories)
    best5 = top5(grid_histories)
    found = [name for name in best5 if len(halving_histories.get(name, [])) == LAST_RUNG_EPOCHS]
    kept = f"{len(found)}"
    passes = f"{halving_passes / grid_passes:.2f}"
    wall = f"{halving_seconds / grid_seconds:.2f}"
    print(f"plain grid's top {len(best5)}: "
          f"{', '.join(f'{name} {final[name]:.3f}' for name in best5)}")
    print(f"halving kept {kept} of them to the last rung (goal: at least 4)")
    print(f"cost of halving / plain grid: image passes {passes}, wall time {wall} "
          f"(goal: at most 0.40)")
    recorder.add("halving: plain grid's top 5 kept to the last rung", ">= 4", kept)
    recorder.add("halving: image passes / plain grid's", "<= 0.40", passes)
    recorder.add("halving: wall time / plain grid's", "<= 0.40", wall)
    first_epoch = {name: values[0] for name, values in halving_histories.items() if values}
    ranked = sorted(first_epoch, key=first_epoch.get, reverse=True)
    print(f"the plain top {len(best5)} after halving's first epoch (rank of {len(ranked)}, "
          f"val_accuracy): " + ", ".join(
              f"{name} #{ranked.index(name) + 1} {first_epoch[name]:.3f}" for name in best5
              if name in first_epoch))
    finalists = {name: values[-1] for name, values in halving_histories.items()
                 if len(values) == LAST_RUNG_EPOCHS}
    if finalists:
        best = max(finalists, key=finalists.get)
        print(f"best cell: plain grid {best5[0]} {final[best5[0]]:.3f}; halving {best} "
              f"{finalists[best]:.3f} (plain grid: {final[best]:.3f}, rank "
              f"{sorted(final, key=final.get, reverse=True).index(best) + 1})")
    else:
        print(f"best cell: plain grid {best5[0]} {final[best5[0]]:.3f}; halving trained no "
              f"cell to the last rung")
    p = final[best5[0]]
    ordered = sorted(final.values(), reverse=True)
    gap = (f"; the plain grid's #5 and #10 differ by {ordered[4] - ordered[9]:.3f}"
           if len(ordered) >= 10 else "")
    print(f"noise: 95% margin of one cell's val_accuracy on {val_size} images "
          f"+-{1.96 * math.sqrt(p * (1 - p) / val_size):.3f}{gap}")
    same = [name for name, values in halving_histories.items()
            if all(math.isclose(a, b, abs_tol=1e-6) for a, b in
                   zip(values, grid_histories[name], strict=False))]
    print(f"same as the plain grid: {len(same)} of {len(halving_histories)} halving cells "
          f"logged the plain cell's val_accuracy at every epoch they trained")


def replay(uri: str) -> None:
    """Print what halving with each of REPLAYED_SETTINGS would keep and cost, replayed
    on the plain grid's histories with cvlib's own rungs and survivor rule."""
    from mlflow.tracking import MlflowClient

    from cvlib.config import SearchConfig
    from cvlib.engine.events import StageResult
    from cvlib.engine.halving import survivors
    from cvlib.tracking.schema import DIVERGED, OK, OUTCOME_TAG

    client = MlflowClient(uri)
    missing = unfinished(client, ("grid",))
    if missing:
        print(f"cannot replay yet ({missing}); continue with --store {uri}")
        return
    _, runs, histories = load_runs(client, "grid")
    diverged = {r.info.run_name for r in runs if r.data.tags.get(OUTCOME_TAG) == DIVERGED}
    plain_epochs = sum(len(values) for values in histories.values())
    best5 = top5(histories)
    names = list(histories)  # survivors() takes the cells by key: their index here
    for min_epochs, reduction in REPLAYED_SETTINGS:
        search = SearchConfig(strategy="halving", min_epochs=min_epochs,
                              max_epochs=LAST_RUNG_EPOCHS, reduction=reduction)
        rungs = search.rungs()
        alive, epochs, start = list(range(len(names))), 0, 0
        for index, end in enumerate(rungs):
            results = {}
            for key in alive:
                history = histories[names[key]]
                # A diverged plain cell stopped before `end` if its history is shorter.
                outcome = DIVERGED if names[key] in diverged and len(history) < end else OK
                results[key] = StageResult(outcome=outcome, epochs=min(len(history), end),
                                           val_accuracy=(history[:end] or [None])[-1],
                                           test_accuracy=None)
            epochs += sum(max(0, min(len(histories[names[key]]), end) - start)
                          for key in alive)
            if index < len(rungs) - 1:
                alive, start = survivors(results, reduction), end
        found = [name for name in best5 if names.index(name) in alive]
        print(f"min_epochs {min_epochs}, reduction {reduction} (rungs {rungs}): keeps "
              f"{len(found)} of the top 5 to the last rung, at {epochs / plain_epochs:.2f} of "
              f"the plain grid's image passes")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--val-size", type=int, default=1000,
                        help="validation images: more of them rank the cells with less noise")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--store", metavar="URI",
                        help="continue an interrupted run in this store")
    parser.add_argument("--report-only", metavar="URI",
                        help="print the figures of an earlier run's store, train nothing")
    parser.add_argument("--replay", metavar="URI",
                        help="replay other halving settings on an earlier run's plain grid")
    parser.add_argument("--grid", default=SEED_GRID, metavar="GRID.yaml",
                        help=f"the grid file (default: {SEED_GRID})")
    parser.add_argument("--set", dest="settings", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a setting of the grid file, as `cvlib run --set` does "
                             "(repeatable; the data sizes and epochs are this script's)")
    add_option(parser)
    args = parser.parse_args()
    if args.replay:
        if args.record:
            parser.error("--record records the report's figures; --replay has none")
        replay(args.replay)
    else:
        uri = args.report_only or run_both(args.train_size, args.val_size, args.workers,
                                           args.store, args.grid, args.settings)
        print(f"store: {uri} (kept for --report-only and --replay)")
        report(uri, Recorder(args.record))


if __name__ == "__main__":
    main()
