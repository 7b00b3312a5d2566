r"""cvlib against KerasTuner: the same 12-cell grid by KerasTuner's GridSearch and by
`cvlib run`, timed in one benchmark run, one after the other.

    python benchmarks/vs_kerastuner.py [--workers 1 2] [--rounds 2] [--record]
    python benchmarks/vs_kerastuner.py --rounds 1 --workers 1 --train-size 500 \
        --activations relu --bn none --hypermodels "Keras layers" \
        --modes in-process                                              # smallest

Needs `pip install -r requirements-bench.txt` (KerasTuner). The grid: 3 activations
(--activations) x 2 initializers x 2 BN placements (--bn) on the cnn (32/64/64, dense 64),
2 epochs of adam, 4,000 training (--train-size) and 1,000 validation images of real
CIFAR-10 ($CVLIB_DATA_DIR). KerasTuner runs two hypermodels of the same networks (--hypermodels picks them):
- "Keras layers": what a KerasTuner user writes, Conv2D, Dense, Keras's own
  BatchNormalization and Activation layers;
- "cvlib's models": cvlib.models.build_model, so that it gets cvlib's fused BN too
  and the two sides train the very same models.
KerasTuner logs nothing beyond its trial files; cvlib logs every run, per-epoch
metrics, activation statistics and plots to MLflow.

Each side is timed twice:
- in this process, TensorFlow already imported: KerasTuner's `search()` against
  `run_grid()` (which, with 1 worker, trains in this process and starts from an empty
  model cache; with 2, its worker processes import TensorFlow inside cvlib's time);
- end to end, as a user runs it: `python this-script --kerastuner-only` against
  `cvlib run grid.yaml --workers N`, each a fresh process that imports what it needs
  and loads the data.
Rounds alternate the two (`--modes` picks one of the timings). Goal: cvlib at most 0.6x
KerasTuner's time.

For each end-to-end cvlib run it also prints the floor that its own epochs set: the sum
of the cells' logged `epoch_time_s` (training and validation passes), divided by the
workers. No saving on imports, tracing, statistics or logging can take cvlib below it.
Each end-to-end run's CPU seconds (of its whole process tree) give a second floor:
CPU seconds over the machine's cores, the wall time at full use of every core.
`--without-stats` adds end-to-end cvlib runs with `train.stats_every: 0`, to show what
the statistics cost; `--bfloat16` adds end-to-end runs of both in Keras's mixed_bfloat16
(`model.precision: mixed_bfloat16` for cvlib): every cvlib variant is then also compared
with KerasTuner in bfloat16, the same arithmetic.
"""
import argparse
import multiprocessing.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from record import Recorder, add_option

from cvlib.config import PRECISIONS

ACTIVATIONS = ["relu", "tanh", "elu"]
INITIALIZERS = ["he", "xavier"]
BN_PLACEMENTS = ["none", "before"]
HYPERMODELS = ("Keras layers", "cvlib's models")
MODES = ("in-process", "end-to-end")


def grid_settings(train_size: int = 4000, activations: list[str] = ACTIVATIONS,
                  bn_placements: list[str] = BN_PLACEMENTS) -> dict:
    """The grid, as a grid file's sections."""
    return {"name": "vs-kerastuner",
            "data": {"train_size": train_size, "val_size": 1000, "test_size": 1000},
            "model": {"widths": [32, 64, 64], "dense_units": 64},
            "train": {"epochs": 2, "batch_size": 128, "optimizer": "adam",
                      "learning_rate": 0.001},
            "grid": {"model.activation": list(activations),
                     "model.initializer": INITIALIZERS, "model.bn": list(bn_placements)}}


def cell_count(grid: dict) -> int:
    """Cells of a grid without seeds: the product of its axes' lengths."""
    count = 1
    for values in grid["grid"].values():
        count *= len(values)
    return count


def keras_layers_model(activation: str, initializer: str, bn: str,
                       precision: str = "float32"):
    """The grid's network as a KerasTuner user writes it, with Keras's layers (in the
    dtype policy ``precision``, float32 logits), BN ``none``, ``before`` or ``after`` the
    activation as in cvlib.models; a keras.Model."""
    import keras

    from cvlib.models import BN_MOMENTUM, make_initializer

    def block(x, layer):
        x = layer(x)
        if bn == "before":
            x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, dtype=precision)(x)
        x = keras.layers.Activation(activation, dtype=precision)(x)
        if bn == "after":
            x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, dtype=precision)(x)
        return x

    def settings():  # a fresh initializer for each layer, as cvlib.models does
        return dict(use_bias=bn != "before", kernel_initializer=make_initializer(initializer),
                    dtype=precision)

    inputs = keras.Input((32, 32, 3))
    x = inputs
    for filters in (32, 64, 64):
        x = block(x, keras.layers.Conv2D(filters, 3, padding="same", **settings()))
        x = keras.layers.MaxPooling2D(2, dtype=precision)(x)
    x = block(keras.layers.Flatten(dtype=precision)(x), keras.layers.Dense(64, **settings()))
    outputs = keras.layers.Dense(10, kernel_initializer=make_initializer(initializer),
                                 dtype="float32")(x)
    return keras.Model(inputs, outputs)


def cvlib_model(**settings):
    """The grid's network from cvlib.models.build_model."""
    from cvlib.models import build_model

    return build_model(widths=[32, 64, 64], dense_units=64, **settings)


def time_kerastuner(dataset, grid: dict, hypermodel: str, precision: str = "float32") -> float:
    """KerasTuner's GridSearch over the same cells; returns wall seconds."""
    import keras
    import keras_tuner

    make_model = {"Keras layers": keras_layers_model, "cvlib's models": cvlib_model}[hypermodel]
    axes, trials = grid["grid"], cell_count(grid)

    def build(hp):
        model = make_model(
            activation=hp.Choice("activation", axes["model.activation"]),
            initializer=hp.Choice("initializer", axes["model.initializer"]),
            bn=hp.Choice("bn", axes["model.bn"]), precision=precision)
        model.compile(optimizer=keras.optimizers.Adam(0.001), metrics=["accuracy"],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    tuner = keras_tuner.GridSearch(build, objective="val_accuracy", max_trials=trials,
                                   directory=tempfile.mkdtemp(prefix="kt-"), project_name="grid",
                                   overwrite=True)
    started = time.perf_counter()
    tuner.search(dataset.x_train, dataset.y_train, epochs=2, batch_size=128, verbose=0,
                 validation_data=(dataset.x_val, dataset.y_val))
    seconds = time.perf_counter() - started
    assert len(tuner.oracle.trials) == trials, len(tuner.oracle.trials)
    return seconds


def time_cvlib(grid: dict, workers: int) -> float:
    """`cvlib run` of the same grid into a temporary MLflow store; wall seconds."""
    # Imported here, as in epoch_seconds: the end-to-end KerasTuner process, which runs
    # this script, must import only what a KerasTuner user's script would, not MLflow.
    from cvlib.engine.experiment import run_grid
    from cvlib.engine.options import EngineOptions
    from cvlib.grids import grid_from_dict
    from cvlib.training import MODEL_CACHE

    uri = f"sqlite:///{tempfile.mkdtemp(prefix='cvlib-vs-kt-')}/mlflow.db"
    MODEL_CACHE.clear()  # no traces left from the previous round
    started = time.perf_counter()
    summary = run_grid(grid_from_dict(grid), uri,
                       EngineOptions(workers=workers, progress_bar=False), echo=lambda line: None)
    seconds = time.perf_counter() - started
    assert len(summary.finished) + len(summary.diverged) == cell_count(grid), summary
    return seconds


def epoch_seconds(uri: str) -> float:
    """The sum of every cell's logged epoch times (training and validation) in a store."""
    from mlflow.tracking import MlflowClient

    from cvlib.tracking.schema import CELL_TAG, EPOCH_TIME

    client = MlflowClient(uri)
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    return sum(m.value for run in client.search_runs(experiment_ids, f"tags.`{CELL_TAG}` != ''")
               for m in client.get_metric_history(run.info.run_id, EPOCH_TIME))


def grid_file(grid: dict) -> Path:
    """The grid written to a temporary YAML file, for `cvlib run`."""
    path = Path(tempfile.mkdtemp(prefix="cvlib-vs-kt-grid-")) / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def tree_cpu_seconds(root: int, seen: dict[int, float]) -> None:
    """Record the CPU seconds so far of ``root`` and each of its descendants in ``seen``."""
    pending = [root]
    while pending:
        pid = pending.pop()
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            seen[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            with open(f"/proc/{pid}/task/{pid}/children") as children:
                pending += [int(child) for child in children.read().split()]
        except (OSError, ValueError, IndexError):  # it ended meanwhile
            continue


def time_command(command: list[str], cwd: str | Path | None = None) -> tuple[float, float]:
    """Wall and CPU seconds of a command in a fresh process (which must succeed), run in
    the folder ``cwd`` (default: this process's).

    The CPU seconds are user and system time of the command and all its descendants,
    polled from /proc every 0.1 s (cvlib's workers are its fork server's children,
    which the command never waits for, so its own rusage would miss them); each
    process's last 0.1 s or less goes uncounted.
    """
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               cwd=cwd)
    seen: dict[int, float] = {}
    while process.poll() is None:
        tree_cpu_seconds(process.pid, seen)
        time.sleep(0.1)
    wall = time.perf_counter() - started
    assert process.returncode == 0, (command, process.returncode)
    return wall, sum(seen.values())


def report(times: dict[str, list[float]], cpu: dict[str, list[float]],
           worker_counts: list[int], variants: list[str], modes: list[str],
           recorder: Recorder) -> None:
    """Print the medians, each cvlib figure as a ratio of KerasTuner's time."""
    from cvlib.engine.hosts import usable_cores

    cores = usable_cores()  # the cores this process may use, as cvlib's workers count them
    for mode in modes:
        for kerastuner_name in [name for name in times if name.startswith(f"{mode} KerasTuner")]:
            kerastuner = statistics.median(times[kerastuner_name])
            used = (f", {statistics.median(cpu[kerastuner_name]):.0f} CPU s"
                    if kerastuner_name in cpu else "")
            print(f"{kerastuner_name}: {kerastuner:.0f} s (median){used}")

            def ratio(label: str, seconds: float, goal: str = "",
                      kerastuner: float = kerastuner) -> str:
                figure = f"{seconds / kerastuner:.2f}"
                print(f"{label}: {seconds:.0f} s, {figure}x KerasTuner's time{goal}",
                      flush=True)
                return figure

            for workers in worker_counts:
                for variant in variants if mode == "end-to-end" else [""]:
                    name = f"{mode} cvlib{variant}, {workers} worker(s)"
                    figure = ratio(f"  cvlib{variant} --workers {workers}",
                                   statistics.median(times[name]), " (goal: at most 0.6x)")
                    recorder.add(f"grid time: {name} / {kerastuner_name}", "<= 0.6", figure)
                    if mode == "end-to-end":
                        ratio("    of which its epochs alone", statistics.median(
                            times[f"epochs' floor{variant}, {workers} worker(s)"]))
                        ratio(f"    its CPU seconds over {cores} cores",
                              statistics.median(cpu[name]) / cores)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--without-stats", action="store_true",
                        help="also time end-to-end cvlib runs with the statistics off")
    parser.add_argument("--bfloat16", action="store_true",
                        help="also time end-to-end cvlib runs with model.precision: "
                             "mixed_bfloat16, and KerasTuner's in the same precision")
    parser.add_argument("--precision", default="float32", choices=PRECISIONS,
                        help="KerasTuner's models' precision (with --kerastuner-only)")
    parser.add_argument("--kerastuner-only", choices=HYPERMODELS,
                        help="only run KerasTuner's search with this hypermodel (the "
                             "end-to-end timing's command)")
    parser.add_argument("--train-size", type=int, default=4000, help="training images")
    parser.add_argument("--activations", nargs="+", default=ACTIVATIONS,
                        help=f"the grid's activations (default: {' '.join(ACTIVATIONS)})")
    parser.add_argument("--bn", nargs="+", choices=BN_PLACEMENTS, default=BN_PLACEMENTS,
                        help=f"the grid's BN placements (default: {' '.join(BN_PLACEMENTS)})")
    parser.add_argument("--hypermodels", nargs="+", choices=HYPERMODELS,
                        default=list(HYPERMODELS), help="KerasTuner's hypermodels to time "
                                                        "(default: both)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="time both sides in this process, end to end, or both")
    add_option(parser)
    args = parser.parse_args()
    grid = grid_settings(args.train_size, args.activations, args.bn)

    from cvlib.data import DataCache
    from cvlib.grids import grid_from_dict

    dataset = DataCache().get(grid_from_dict(grid).cells()[0].data)
    grid_options = ["--train-size", str(args.train_size), "--activations", *args.activations,
                    "--bn", *args.bn]
    if args.kerastuner_only:
        time_kerastuner(dataset, grid, args.kerastuner_only, args.precision)
        return
    recorder = Recorder(args.record)
    # Every round leaves about 20 MB (KerasTuner's trials, cvlib's stores), children's
    # included: all of it goes here, removed at exit.
    scratch = tempfile.TemporaryDirectory(prefix="cvlib-vs-kt-")
    # Not in it: multiprocessing's own folder (the in-process runs' fork server's socket),
    # which multiprocessing removes at exit, after the scratch folder is gone.
    multiprocessing.util.get_temp_dir()
    os.environ["TMPDIR"] = tempfile.tempdir = scratch.name
    grid_files = {"": grid_file(grid)}  # by variant
    if args.without_stats:
        grid_files[" without statistics"] = grid_file(
            {**grid, "train": {**grid["train"], "stats_every": 0}})
    if args.bfloat16:
        grid_files[" in mixed_bfloat16"] = grid_file(
            {**grid, "model": {**grid["model"], "precision": "mixed_bfloat16"}})
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}  # end-to-end runs' CPU seconds

    def add_timing(name: str, wall: float, cpu_seconds: float) -> None:
        times.setdefault(name, []).append(wall)
        cpu.setdefault(name, []).append(cpu_seconds)

    for _ in range(args.rounds):
        if "in-process" in args.modes:
            for hypermodel in args.hypermodels:
                times.setdefault(f"in-process KerasTuner ({hypermodel})", []).append(
                    time_kerastuner(dataset, grid, hypermodel))
            for workers in args.workers:
                times.setdefault(f"in-process cvlib, {workers} worker(s)", []).append(
                    time_cvlib(grid, workers))
        if "end-to-end" not in args.modes:
            print("  " + "; ".join(f"{name} {values[-1]:.0f} s"
                                   for name, values in times.items()), flush=True)
            continue
        for hypermodel in args.hypermodels:
            for precision in ["float32"] + ["mixed_bfloat16"] * args.bfloat16:
                suffix = "" if precision == "float32" else f" in {precision}"
                add_timing(f"end-to-end KerasTuner ({hypermodel}){suffix}", *time_command(
                    [sys.executable, __file__, "--kerastuner-only", hypermodel,
                     "--precision", precision, *grid_options]))
        for workers in args.workers:
            for variant, path in grid_files.items():
                uri = f"sqlite:///{tempfile.mkdtemp(prefix='cvlib-vs-kt-')}/mlflow.db"
                name = f"end-to-end cvlib{variant}, {workers} worker(s)"
                add_timing(name, *time_command(
                    [sys.executable, "-m", "cvlib", "run", str(path), "--workers",
                     str(workers), "--tracking-uri", uri]))
                times.setdefault(f"epochs' floor{variant}, {workers} worker(s)", []).append(
                    epoch_seconds(uri) / workers)
        print("  " + "; ".join(f"{name} {values[-1]:.0f} s" for name, values in times.items()),
              flush=True)
    report(times, cpu, args.workers, list(grid_files), args.modes, recorder)


if __name__ == "__main__":
    main()
