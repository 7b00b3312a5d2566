r"""cvlib's sampling search against KerasTuner's: the same space and the same budget of
trials, each search timed end to end as a user runs it, with the best val_accuracy it
found.

    python benchmarks/search_vs_kerastuner.py [--seeds 0 1 2] [--trials 24] [--record]
    python benchmarks/search_vs_kerastuner.py --seeds 0 --trials 2 --train-size 256 \
        --workers 1                                                     # smallest
    python benchmarks/search_vs_kerastuner.py --vs-grid [--trials 40]   # TPE against the grid
    python benchmarks/search_vs_kerastuner.py --cvlib-only --seeds 0 --trials 16  # cvlib alone

Needs `pip install -r requirements-bench.txt` (KerasTuner). The space: the learning rate
of adam (log-uniform, 1e-4 to 1e-2), 4 activations, 3 initializers, 3 BN placements and
the weight decay (log-uniform, 1e-5 to 1e-1), on vs_kerastuner.py's cnn (32/64/64, dense
64) and data (4,000 training (--train-size) and 1,000 validation images of real CIFAR-10
from $CVLIB_DATA_DIR), 3 epochs a trial. For each search seed (--seeds), one after the
other, each a fresh process:
- `cvlib run` of a grid file with `search: {strategy: tpe, pruner: halving}` (rungs after
  epochs 1 and 3) against KerasTuner's BayesianOptimization, both seeded by the seed;
- `cvlib run` with `strategy: random` against KerasTuner's RandomSearch.
KerasTuner trains vs_kerastuner.py's "Keras layers" hypermodel: the same networks, with
Keras's own layers, and Adam's weight decay as cvlib's training sets it. Both sides get
--trials trials; cvlib trains --workers at once, KerasTuner one at a time (it has no
parallel trials without its distributed mode's processes).

Printed for each pair, medians over the seeds: cvlib's wall time over KerasTuner's (goal:
at most 0.6x) and the best val_accuracy each found, the last epoch's of a trial that
trained every epoch (goal: cvlib's no worse than KerasTuner's minus 0.01).

--vs-grid asks instead whether TPE with pruning is worth it against a grid: the grid of
experiments/seed_grid.yaml (7 activations x 4 initializers x 3 BN placements, its model
and training) at this benchmark's data size and epochs (--epochs), trained in full, then
searched as its space of choices by TPE with halving, --trials trials per seed. Printed:
the grid's best val_accuracy and cell-epochs, and for each seed the cell-epochs the
search used and the best it reached (goal: within 0.01 of the grid's best in at most a
third of its cell-epochs).

--cvlib-only times cvlib's TPE with halving alone, for each seed: its wall seconds per
cell-epoch, and the share of its trainers' time (--workers x wall time) that went into
epochs (each run's epoch_time_s), the rest being the command's start, building and tracing
models, testing and saving them, continuing from checkpoints, and trainers left waiting.
Run it with PYTHONPATH pointing at another checkout to compare two versions side by side.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import yaml
from record import Recorder, add_option
from vs_kerastuner import grid_file, grid_settings, keras_layers_model, time_command

REPO = Path(__file__).resolve().parents[1]
SEED_GRID = REPO / "experiments" / "seed_grid.yaml"
EPOCHS = 3
LEARNING_RATES = (1e-4, 1e-2)
WEIGHT_DECAYS = (1e-5, 1e-1)
ACTIVATIONS = ["relu", "elu", "tanh", "sigmoid"]
INITIALIZERS = ["he", "xavier", "small_gaussian"]
BN_PLACEMENTS = ["none", "before", "after"]
# cvlib's strategy and pruner, and the KerasTuner tuner it is compared with.
PAIRS = {"tpe with halving": ("tpe", "halving", "BayesianOptimization"),
         "random": ("random", "none", "RandomSearch")}
TUNERS = [tuner for _, _, tuner in PAIRS.values()]
# Goals: cvlib's wall time over KerasTuner's at most this; its best val_accuracy at
# least KerasTuner's minus ACCURACY_SLACK.
TIME_GOAL = 0.6
ACCURACY_SLACK = 0.01


def space() -> dict:
    """The searched space, as a grid file's ``space:`` section."""
    return {"train.learning_rate": {"loguniform": list(LEARNING_RATES)},
            "model.activation": ACTIVATIONS, "model.initializer": INITIALIZERS,
            "model.bn": BN_PLACEMENTS,
            "train.weight_decay": {"loguniform": list(WEIGHT_DECAYS)}}


def search_settings(base: dict, strategy: str, pruner: str, trials: int, seed: int) -> dict:
    """``base`` (a grid file's sections) as a search of ``trials`` trials by ``strategy``
    and ``pruner`` seeded by ``seed``, over ``space:`` or, without one, over its grid's
    axes as choices."""
    sections = {key: value for key, value in base.items() if key not in ("grid", "search")}
    sections["space"] = base.get("space") or dict(base["grid"])
    sections["search"] = {"strategy": strategy, "trials": trials, "seed": seed,
                          "pruner": pruner, "min_epochs": 1, "reduction": 3}
    sections["seeds"] = [0]
    return sections


def benchmark_grid(train_size: int) -> dict:
    """vs_kerastuner.py's grid at ``train_size`` images, EPOCHS epochs, over space()."""
    base = grid_settings(train_size)
    return {**base, "name": "search-vs-kerastuner",
            "train": {**base["train"], "epochs": EPOCHS}, "space": space()}


def run_kerastuner(tuner_name: str, trials: int, seed: int, train_size: int) -> dict:
    """KerasTuner's ``tuner_name`` over space(); the best last-epoch val_accuracy of its
    trials and the count of trials that trained every epoch."""
    import keras
    import keras_tuner

    from cvlib.data import DataCache
    from cvlib.grids import grid_from_dict

    dataset = DataCache().get(grid_from_dict(grid_settings(train_size)).cells()[0].data)

    def build(hp):
        model = keras_layers_model(activation=hp.Choice("activation", ACTIVATIONS),
                                   initializer=hp.Choice("initializer", INITIALIZERS),
                                   bn=hp.Choice("bn", BN_PLACEMENTS))
        optimizer = keras.optimizers.Adam(
            hp.Float("learning_rate", *LEARNING_RATES, sampling="log"),
            weight_decay=hp.Float("weight_decay", *WEIGHT_DECAYS, sampling="log"))
        model.compile(optimizer=optimizer, metrics=["accuracy"],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    finals = []  # each trial's last val_accuracy: KerasTuner keeps only its best epoch's

    class FinalEpoch(keras.callbacks.Callback):
        # KerasTuner gives each trial a deep copy of the callback; the list is shared
        # through the closure, which a copy keeps.
        def on_epoch_end(self, epoch, logs=None):
            if epoch == EPOCHS - 1:
                finals.append(float(logs["val_accuracy"]))

    tuner = getattr(keras_tuner, tuner_name)(
        build, objective="val_accuracy", max_trials=trials, seed=seed, overwrite=True,
        directory=tempfile.mkdtemp(prefix="kt-"), project_name="search")
    tuner.search(dataset.x_train, dataset.y_train, epochs=EPOCHS, batch_size=128, verbose=0,
                 validation_data=(dataset.x_val, dataset.y_val), callbacks=[FinalEpoch()])
    return {"best": max(finals), "trials": len(finals)}


def trial_epochs(uri: str) -> list[tuple[str, list[float]]]:
    """Each cell run's outcome and val_accuracy after each epoch, from a store."""
    from mlflow.tracking import MlflowClient

    from cvlib.tracking.schema import CELL_TAG, OUTCOME_TAG, VAL_ACCURACY

    client = MlflowClient(uri)
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    return [(run.data.tags.get(OUTCOME_TAG, ""),
             [m.value for m in sorted(client.get_metric_history(run.info.run_id, VAL_ACCURACY),
                                      key=lambda m: m.step)])
            for run in client.search_runs(experiment_ids, f"tags.`{CELL_TAG}` != ''")]


def trainer_seconds(uri: str) -> tuple[float, float]:
    """The seconds the cell runs of a store spent in their epochs (their epoch_time_s),
    and the seconds they were open (their first stage's start to their end)."""
    from mlflow.tracking import MlflowClient

    from cvlib.tracking.schema import CELL_TAG, EPOCH_TIME

    client = MlflowClient(uri)
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiment_ids, f"tags.`{CELL_TAG}` != ''")
    return (sum(m.value for run in runs
                for m in client.get_metric_history(run.info.run_id, EPOCH_TIME)),
            sum(((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000
                for run in runs))


def run_cvlib(grid: dict, workers: int, uri: str = ""
              ) -> tuple[float, list[tuple[str, list[float]]]]:
    """`cvlib run` of ``grid`` in a fresh process into the store ``uri`` (default: a fresh
    one): its wall seconds and trial_epochs() of the store."""
    uri = uri or f"sqlite:///{tempfile.mkdtemp(prefix='cvlib-search-vs-kt-')}/mlflow.db"
    wall, _ = time_command([sys.executable, "-m", "cvlib", "run", str(grid_file(grid)),
                            "--workers", str(workers), "--tracking-uri", uri])
    return wall, trial_epochs(uri)


def time_cvlib_alone(args) -> None:
    """cvlib's TPE with halving alone, for each seed: its wall time per cell-epoch, and how
    much of its trainers' time went into epochs (the rest: starting, building and tracing
    models, testing and saving them, continuing from checkpoints, and waiting)."""
    grid = benchmark_grid(args.train_size)
    for seed in args.seeds:
        uri = f"sqlite:///{tempfile.mkdtemp(prefix='cvlib-search-alone-')}/mlflow.db"
        wall, runs = run_cvlib(search_settings(grid, "tpe", "halving", args.trials, seed),
                               args.workers, uri)
        epochs = sum(len(history) for _, history in runs)
        in_epochs, in_runs = trainer_seconds(uri)
        print(f"seed {seed}, tpe with halving, {args.trials} trials, --workers "
              f"{args.workers}: {wall:.1f} s for {epochs} cell-epochs, "
              f"{wall / epochs:.2f} s per cell-epoch; of {args.workers * wall:.0f} "
              f"trainer-seconds, {in_epochs:.0f} in epochs "
              f"({in_epochs / (args.workers * wall):.0%}), {in_runs - in_epochs:.0f} in "
              f"trial runs outside epochs, {args.workers * wall - in_runs:.0f} outside "
              f"any trial run", flush=True)


def best_accuracy(runs: list[tuple[str, list[float]]], epochs: int) -> float:
    """The best last-epoch val_accuracy of the runs that trained all ``epochs``."""
    from cvlib.tracking.schema import OK

    return max((history[-1] for outcome, history in runs
                if outcome == OK and len(history) == epochs), default=float("nan"))


def compare_with_kerastuner(args, recorder: Recorder) -> None:
    """Both pairs of searches for each seed, then the medians against the goals."""
    grid = benchmark_grid(args.train_size)
    ratios = {name: [] for name in PAIRS}
    bests = {name: {"cvlib": [], "KerasTuner": []} for name in PAIRS}
    for seed in args.seeds:
        for name, (strategy, pruner, tuner_name) in PAIRS.items():
            result = Path(tempfile.mkdtemp(prefix="kt-result-")) / "result.json"
            kerastuner, _ = time_command(
                [sys.executable, __file__, "--kerastuner-only", tuner_name, "--seeds",
                 str(seed), "--trials", str(args.trials), "--train-size",
                 str(args.train_size), "--result", str(result)])
            found = json.loads(result.read_text())
            cvlib, runs = run_cvlib(
                search_settings(grid, strategy, pruner, args.trials, seed), args.workers)
            ratios[name].append(cvlib / kerastuner)
            bests[name]["cvlib"].append(best_accuracy(runs, EPOCHS))
            bests[name]["KerasTuner"].append(found["best"])
            print(f"  seed {seed}, {name} / {tuner_name}: {cvlib:.0f} s / {kerastuner:.0f} s;"
                  f" best val_accuracy {bests[name]['cvlib'][-1]:.4f} / {found['best']:.4f}"
                  f" ({len(runs)} cvlib trials, {found['trials']} KerasTuner trials, "
                  f"{sum(len(history) for _, history in runs)} cvlib cell-epochs)",
                  flush=True)
    print(f"{args.trials} trials of {EPOCHS} epochs, {args.train_size} training images, "
          f"cvlib --workers {args.workers}, medians over {len(args.seeds)} seed(s):")
    for name, (_, _, tuner_name) in PAIRS.items():
        ratio = f"{statistics.median(ratios[name]):.2f}"
        ours = statistics.median(bests[name]["cvlib"])
        theirs = statistics.median(bests[name]["KerasTuner"])
        difference = f"{ours - theirs:+.4f}"
        print(f"cvlib {name} / KerasTuner {tuner_name}: wall time {ratio}x "
              f"(goal: at most {TIME_GOAL}x); best val_accuracy {ours:.4f} against "
              f"{theirs:.4f}, {difference} (goal: at least -{ACCURACY_SLACK})", flush=True)
        recorder.add(f"search wall time: cvlib {name} / KerasTuner {tuner_name}",
                     f"<= {TIME_GOAL}", ratio)
        recorder.add(f"search best val_accuracy: cvlib {name} - KerasTuner {tuner_name}",
                     f">= -{ACCURACY_SLACK}", difference)


def seed_grid(train_size: int, epochs: int) -> dict:
    """experiments/seed_grid.yaml at this benchmark's data size and ``epochs``, without
    its confirmation."""
    grid = yaml.safe_load(SEED_GRID.read_text())
    data = grid_settings(train_size)["data"]
    return {**grid, "name": "search-vs-seed-grid", "data": {**grid["data"], **data},
            "train": {**grid["train"], "epochs": epochs}, "search": {}}


def compare_with_grid(args, recorder: Recorder) -> None:
    """The seed grid in full, then TPE with halving over its axes for each seed."""
    grid = seed_grid(args.train_size, args.epochs)
    wall, runs = run_cvlib(grid, args.workers)
    grid_best = best_accuracy(runs, args.epochs)
    grid_epochs = sum(len(history) for _, history in runs)
    print(f"grid: {len(runs)} cells, {grid_epochs} cell-epochs, {wall:.0f} s, best "
          f"val_accuracy {grid_best:.4f}", flush=True)
    used, reached = [], []
    for seed in args.seeds:
        wall, runs = run_cvlib(search_settings(grid, "tpe", "halving", args.trials, seed),
                               args.workers)
        used.append(sum(len(history) for _, history in runs) / grid_epochs)
        reached.append(best_accuracy(runs, args.epochs) - grid_best)
        print(f"  seed {seed}: {len(runs)} trials, "
              f"{sum(len(history) for _, history in runs)} cell-epochs "
              f"({used[-1]:.2f} of the grid's), {wall:.0f} s, best val_accuracy "
              f"{grid_best + reached[-1]:.4f} ({reached[-1]:+.4f})", flush=True)
    share, gap = f"{statistics.median(used):.2f}", f"{statistics.median(reached):+.4f}"
    print(f"tpe with halving / the seed grid, {args.trials} trials, median over "
          f"{len(args.seeds)} seed(s): cell-epochs {share} (goal: at most 0.33), best "
          f"val_accuracy {gap} (goal: at least -{ACCURACY_SLACK})", flush=True)
    recorder.add("tpe with halving / seed grid: cell-epochs", "<= 0.33", share)
    recorder.add("tpe with halving - seed grid: best val_accuracy", f">= -{ACCURACY_SLACK}",
                 gap)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="the searches' seeds (default: 0 1 2)")
    parser.add_argument("--trials", type=int, default=24,
                        help="trials of each search (default: 24)")
    parser.add_argument("--train-size", type=int, default=4000,
                        help="training images (default: 4000)")
    parser.add_argument("--workers", type=int, default=2,
                        help="cvlib's trials trained at once (default: 2)")
    parser.add_argument("--vs-grid", action="store_true",
                        help="compare TPE with halving against experiments/seed_grid.yaml's "
                             "full grid instead of against KerasTuner")
    parser.add_argument("--epochs", type=int, default=EPOCHS,
                        help=f"epochs of a cell with --vs-grid (default: {EPOCHS})")
    parser.add_argument("--cvlib-only", action="store_true",
                        help="time only cvlib's tpe with halving: wall seconds per "
                             "cell-epoch and its trainers' share of time in epochs")
    parser.add_argument("--kerastuner-only", choices=TUNERS,
                        help="only run this KerasTuner search with the first seed (the "
                             "timed KerasTuner process)")
    parser.add_argument("--result", type=Path,
                        help="with --kerastuner-only: the JSON file it writes its best "
                             "val_accuracy to")
    add_option(parser)
    args = parser.parse_args()
    for name in ("trials", "train_size", "workers", "epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.kerastuner_only:
        found = run_kerastuner(args.kerastuner_only, args.trials, args.seeds[0],
                               args.train_size)
        if args.result:
            args.result.write_text(json.dumps(found))
        return
    recorder = Recorder(args.record)
    scratch = tempfile.TemporaryDirectory(prefix="cvlib-search-vs-kt-")
    # The stores, grid files and KerasTuner's trials, the children's included.
    os.environ["TMPDIR"] = tempfile.tempdir = scratch.name
    if args.cvlib_only:
        time_cvlib_alone(args)
    elif args.vs_grid:
        compare_with_grid(args, recorder)
    else:
        compare_with_kerastuner(args, recorder)


if __name__ == "__main__":
    main()
