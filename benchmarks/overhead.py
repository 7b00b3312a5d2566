"""cvlib's cost per cell beyond plain Keras, and
memory that does not grow from cell to cell.

    python benchmarks/overhead.py [--cells 16] [--memory-cells 30] [--rounds 2] [--record]
    python benchmarks/overhead.py --cells 2 --memory-cells 2 --rounds 1    # smallest

Per-cell overhead: a 16-cell grid against a 1-cell grid of tiny fits, in `cvlib run`
(run_grid: building, or reusing a compiled model of the same graph, MLflow runs,
statistics, plots, clearing the session; the 16 cells are 8 activations x 2 seeds, so
8 graphs) and in a
plain Keras loop doing the same fits (build, compile, fit with validation, test
evaluation, clear_session): with Keras's defaults, and "lean" as cvlib runs them
(evaluation in batches of 1,000 images; clear_session(free_memory=False), which
skips a forced gc.collect), to isolate what tracking, statistics and plots cost. The
two sizes alternate, `--rounds` times each; per-cell cost = (fastest time of 16 -
fastest time of 1) / 15; the overhead is cvlib's per-cell cost minus plain Keras's.
Goal: at most 1 s.

Memory: peak RSS (ru_maxrss) after each cell of a 30-cell grid (6 activations x 5
initializers, 1 epoch each); goal: at the end at most 1.2x its value after cell 5 (after
the last cell but one when the grid is smaller).
"""
import argparse
import math
import resource
import tempfile
import time

from record import Recorder, add_option

ACTIVATIONS = ["relu", "tanh", "elu", "selu", "gelu", "leaky_relu", "sigmoid", "swish"]


def tiny_grid(cells: int, name: str):
    """A grid of `cells` tiny cells (activation x seed)."""
    from cvlib.grids import grid_from_dict

    seeds = list(range(max(1, cells // len(ACTIVATIONS))))
    activations = ACTIVATIONS[:cells // len(seeds)]
    return grid_from_dict({
        "name": name, "data": {"train_size": 512, "val_size": 256, "test_size": 256},
        "model": {"widths": [8, 16], "dense_units": 16},
        "train": {"epochs": 2, "batch_size": 64, "optimizer": "adam", "learning_rate": 0.001},
        "grid": {"model.activation": activations}, "seeds": seeds})


def time_cvlib(grid, folder) -> float:
    from cvlib.engine.experiment import run_grid
    from cvlib.engine.options import EngineOptions
    from cvlib.training import MODEL_CACHE

    MODEL_CACHE.clear()  # each timing starts without the previous one's traced models
    started = time.perf_counter()
    run_grid(grid, f"sqlite:///{folder}/mlflow.db", EngineOptions(progress_bar=False),
             experiment=f"{grid.name}-{time.time_ns()}", echo=lambda line: None)
    return time.perf_counter() - started


def time_plain_keras(grid, lean: bool = False) -> float:
    """The same fits in a plain Keras loop (cvlib's model builder, no tracking): with
    Keras's defaults, or ``lean`` as cvlib runs them (evaluation in batches of 1,000,
    clear_session without its forced garbage collection)."""
    import dataclasses

    import keras

    from cvlib.data import DataCache
    from cvlib.models import build_model
    from cvlib.training import EVALUATION_BATCH

    evaluation_batch = EVALUATION_BATCH if lean else None
    cells = grid.cells()
    dataset = DataCache().get(cells[0].data)
    started = time.perf_counter()
    for cell in cells:
        keras.utils.set_random_seed(cell.seed)
        model = build_model(**dataclasses.asdict(cell.model))
        model.compile(optimizer=keras.optimizers.Adam(0.001), metrics=["accuracy"],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(dataset.x_train, dataset.y_train, validation_data=(dataset.x_val, dataset.y_val),
                  epochs=cell.train.epochs, batch_size=cell.train.batch_size, verbose=0,
                  validation_batch_size=evaluation_batch)
        model.evaluate(dataset.x_test, dataset.y_test, batch_size=evaluation_batch, verbose=0)
        keras.backend.clear_session(free_memory=not lean)
    return time.perf_counter() - started


def memory_peaks(cells: int, folder: str) -> list[float]:
    """Peak RSS in MiB after each cell of a grid of `cells` tiny one-epoch cells (the
    first `cells` of 6 activations x 5 initializers x as many seeds as it takes)."""
    from cvlib.engine.experiment import Experiment
    from cvlib.engine.options import EngineOptions, GridOptions
    from cvlib.grids import grid_from_dict

    initializers = ["he", "xavier", "glorot", "small_gaussian", "unit_gaussian"]
    grid = grid_from_dict({"name": "memory", "data": {"train_size": 512, "val_size": 256,
                                                      "test_size": 256},
                           "model": {"widths": [8, 16], "dense_units": 16},
                           "train": {"epochs": 1, "batch_size": 64},
                           "grid": {"model.activation": ACTIVATIONS[:6],
                                    "model.initializer": initializers},
                           "seeds": list(range(math.ceil(cells / 30)))})
    peaks = []
    with Experiment(f"sqlite:///{folder}/mlflow.db", "memory", EngineOptions(progress_bar=False),
                    echo=lambda line: peaks.append(
                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)) as experiment:
        experiment.train(grid, GridOptions(cells=grid.cells()[:cells]))
    return peaks[1:]  # the first line is the plan, before any cell


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=16,
                        help="cells of the larger grid of the overhead measurement (at least 2)")
    parser.add_argument("--memory-cells", type=int, default=30,
                        help="cells of the memory measurement's grid")
    parser.add_argument("--rounds", type=int, default=2,
                        help="times each grid size of the overhead measurement is timed, interleaved")
    add_option(parser)
    args = parser.parse_args()
    if args.cells < 2:
        parser.error("--cells must be at least 2")
    if args.memory_cells < 1:
        parser.error("--memory-cells must be at least 1")
    recorder = Recorder(args.record)
    scratch = tempfile.TemporaryDirectory(prefix="cvlib-overhead-")  # removed at exit
    folder = scratch.name
    # Imports (TensorFlow, MLflow), first traces and the store's creation out of the way.
    time_plain_keras(tiny_grid(1, "warm"))
    from cvlib.tracking.writer import Tracker

    Tracker(f"sqlite:///{folder}/mlflow.db")
    times = {}
    for cells in (1, args.cells) * args.rounds:  # interleaved
        for name, run in (("cvlib", lambda g: time_cvlib(g, folder)), ("keras", time_plain_keras),
                          ("keras-lean", lambda g: time_plain_keras(g, lean=True))):
            times.setdefault((name, cells), []).append(run(tiny_grid(cells, f"o{cells}")))
    names = ("cvlib", "keras", "keras-lean")
    per_cell = {name: (min(times[(name, args.cells)]) - min(times[(name, 1)])) / (args.cells - 1)
                for name in names}
    for key, values in sorted(times.items()):
        print(f"  {key[0]:14s} {key[1]:2d} cells: {', '.join(f'{v:.1f}' for v in values)} s")
    overhead = f"{per_cell['cvlib'] - per_cell['keras']:.2f}"
    print(f"overhead: per-cell time: cvlib {per_cell['cvlib']:.2f} s, plain Keras "
          f"{per_cell['keras']:.2f} s (lean, as cvlib runs it: {per_cell['keras-lean']:.2f} s); "
          f"overhead {overhead} s per cell "
          f"({per_cell['cvlib'] - per_cell['keras-lean']:.2f} s against the lean loop; "
          f"at most 1 s)", flush=True)
    recorder.add("per-cell overhead over plain Keras (s)", "<= 1", overhead)

    peaks = memory_peaks(args.memory_cells, folder)
    early = min(5, max(1, len(peaks) - 1))
    ratio = f"{peaks[-1] / peaks[early - 1]:.3f}"
    print(f"memory: peak RSS after cell {early} {peaks[early - 1]:.0f} MiB, after cell "
          f"{len(peaks)} {peaks[-1]:.0f} MiB: ratio {ratio} (at most 1.2)")
    recorder.add("peak RSS: last cell / cell 5", "<= 1.2", ratio)


if __name__ == "__main__":
    main()
