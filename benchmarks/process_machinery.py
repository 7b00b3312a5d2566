r"""Does each piece of cvlib's process machinery pay for itself? Each piece against the
plain way, side by side in one run, in interleaved rounds; medians over the rounds.

    python benchmarks/process_machinery.py [--rounds 3] [--cells 8] [--pieces NAME ...]
                                           [--all-logging] [--record]
    python benchmarks/process_machinery.py --rounds 1 --cells 1            # smallest

The pieces (--pieces picks some; default: all):

- plot-helper: the plot helper process (cvlib/engine/plot_writer.py) against drawing each
  cell's plots in the main process: wall time of `run_grid` on a grid of --cells tiny
  cells with 1 worker, with the real PlotWriter and with a synchronous stand-in of the
  same interface (it draws with cvlib.plots.write_cell_plots into a temporary folder
  and logs them to the run at once), swapped in as cvlib.engine.experiment.PlotWriter
  in this process only. matplotlib is imported here before the first timing, so the
  stand-in never pays that import, which a fresh command would: the comparison leans
  towards the stand-in.
- hidden-imports: hiding matplotlib, sklearn and IPython while TensorFlow imports
  (cvlib.engine.child.import_tensorflow, hidden_modules): CPU seconds of a fresh
  `python -c` by the end of its TensorFlow import, through import_tensorflow() against a
  plain `import tensorflow` (the same processes as held-notices'; interpreter start and
  cvlib's import, alike on both sides, included). Nothing is saved where those packages
  are not installed; the line says which are.
- gc-freeze: gc.freeze() before exit in cvlib.cli.console_main: wall time of a fresh
  `python -m cvlib table --experiment X --tracking-uri URI` on a small store (16 cell
  runs) against the same command through
  `python -c "import sys; from cvlib.cli import main; sys.exit(main([...]))"`, which
  does not freeze.
- clear-session: keras.backend.clear_session(free_memory=False) after each cell, as
  cvlib.engine.cell does, against free_memory=True (a forced gc.collect): seconds per
  cell over --cells tiny cells trained in this process with cvlib.training.train_cell,
  the clear included.
- held-notices: holding back TensorFlow's C++ start-up notices in workers: the stderr
  lines that a fresh process prints when it starts TensorFlow's runtime plainly against
  through cvlib.engine.child.start_tensorflow_quietly(1), both with cvlib's environment
  defaults (cvlib.environment.configure_process, as workers have); with --all-logging
  also once with TF_CPP_MIN_LOG_LEVEL=0 (all of TensorFlow's logging).
- training-thread: one thread that trains every task of a process
  (cvlib.engine.cell.trained_events, as workers and Ray actors train) against a new
  thread per task: seconds per cell over --cells tiny cells trained in this process,
  their graphs traced beforehand (both sides reuse compiled models, as a worker does
  mid-grid).

The subprocess pieces alternate their two sides in every round. One line per piece gives
both figures, their ratio and what the piece saves. Goal: every piece pays for itself:
a ratio (cvlib's way / the plain way) at most 1, and for held-notices some lines held
back. Needs CIFAR-10 ($CVLIB_DATA_DIR) for plot-helper, clear-session and training-thread.
"""
import argparse
import contextlib
import importlib.metadata
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import Recorder, add_option

PIECES = ("plot-helper", "hidden-imports", "gc-freeze", "clear-session", "held-notices",
          "training-thread")
ACTIVATIONS = ["relu", "tanh", "elu", "selu", "gelu", "leaky_relu", "sigmoid", "swish"]
# The packages import_tensorflow hides, by the distribution that installs them.
DISTRIBUTIONS = {"matplotlib": "matplotlib", "sklearn": "scikit-learn", "IPython": "ipython"}
CONFIGURE = "from cvlib.environment import configure_process; configure_process(); "


def tiny_grid(cells: int, name: str):
    """A grid of tiny cells: `cells` activations, or all 8 x as many seeds as it takes
    (then a multiple of 8)."""
    from cvlib.grids import grid_from_dict

    activations = ACTIVATIONS[:min(cells, len(ACTIVATIONS))]
    return grid_from_dict({
        "name": name, "data": {"train_size": 512, "val_size": 256, "test_size": 256},
        "model": {"widths": [8, 16], "dense_units": 16},
        "train": {"epochs": 2, "batch_size": 64, "optimizer": "adam", "learning_rate": 0.001},
        "grid": {"model.activation": activations},
        "seeds": list(range(math.ceil(cells / len(activations))))})


_WARM: list[bool] = []


def warm_up_training() -> None:
    """TensorFlow's import and a first cell's traces out of the way, once per process
    (for plot-helper and clear-session)."""
    if _WARM:
        return
    import keras

    from cvlib.data import DataCache
    from cvlib.training import train_cell

    (cell,) = tiny_grid(1, "warm").cells()
    train_cell(cell, DataCache().get(cell.data), lambda metrics, step: None)
    keras.backend.clear_session(free_memory=False)
    _WARM.append(True)


def interleaved(rounds: int, arms: dict, measure) -> dict[str, list]:
    """measure(arm's value) for each arm in every round, the order alternating."""
    results: dict[str, list] = {name: [] for name in arms}
    for round_index in range(rounds):
        names = list(arms) if round_index % 2 == 0 else list(arms)[::-1]
        for name in names:
            results[name].append(measure(arms[name]))
    return results


def medians(results: dict[str, list]) -> list[float]:
    """The median of each arm, in the arms' order."""
    return [statistics.median(values) for values in results.values()]


def run_child(code: str, env: dict[str, str] | None = None) -> tuple[str, str]:
    """Run `python -c code`, which must succeed; returns its stdout and stderr."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env)
    if done.returncode:
        sys.exit(f"this child failed (exit code {done.returncode}):\n{code}\n"
                 f"{done.stderr[-3000:]}")
    return done.stdout, done.stderr


# --- plot-helper ---

class InlinePlotWriter:
    """The stand-in: PlotWriter's interface, drawing each cell's plots in this process
    as soon as they are submitted."""

    def __init__(self, warn=print):
        self.warn = warn

    def start(self) -> None:
        pass

    def submit(self, run, history, stats, marked: bool = False) -> None:
        from cvlib.plots import write_cell_plots
        from cvlib.tracking.schema import (
            PLOTS_DRAWN,
            PLOTS_ERROR_TAG,
            PLOTS_FAILED,
            PLOTS_FOLDER,
            PLOTS_TAG,
            TAG_VALUE_LIMIT,
        )

        with tempfile.TemporaryDirectory(prefix="cvlib-inline-plots-") as folder:
            try:
                write_cell_plots(history, stats, Path(folder, PLOTS_FOLDER))
                run.log_artifacts(folder)
                if marked:
                    run.set_tags({PLOTS_TAG: PLOTS_DRAWN})
            except Exception as error:  # as PlotWriter: lost figures do not stop the grid
                message = f"{type(error).__name__}: {error}"
                run.set_tags({PLOTS_ERROR_TAG: message[:TAG_VALUE_LIMIT],
                              **({PLOTS_TAG: PLOTS_FAILED} if marked else {})})
                self.warn(f"plots of run {run.run_id} not drawn: {message}")

    def pending_mark(self, run) -> dict[str, str]:
        return {}  # drawn and attached when submitted, before the run ends

    def attach_done(self, wait: bool = False, warn=None) -> None:
        pass

    def close(self, wait: bool = True) -> None:
        pass


@contextlib.contextmanager
def plot_writer(writer_class):
    """Experiments opened inside the block draw their plots with writer_class."""
    import cvlib.engine.experiment as experiment

    saved = experiment.PlotWriter
    experiment.PlotWriter = writer_class
    try:
        yield
    finally:
        experiment.PlotWriter = saved


def time_grid(grid, uri: str, writer_class) -> float:
    """Wall seconds of run_grid (1 worker) with this plot writer, from an empty model cache."""
    from cvlib.engine.experiment import run_grid
    from cvlib.engine.options import EngineOptions
    from cvlib.training import MODEL_CACHE

    MODEL_CACHE.clear()
    with plot_writer(writer_class):
        started = time.perf_counter()
        summary = run_grid(grid, uri, EngineOptions(progress_bar=False),
                           experiment=f"{grid.name}-{time.time_ns()}", echo=lambda line: None)
        seconds = time.perf_counter() - started
    assert not summary.failed, summary.failed
    return seconds


def plot_helper(args, folder: str, recorder: Recorder) -> None:
    import cvlib.plots  # noqa: F401  (matplotlib here before any timing: see the docstring)
    from cvlib.engine.plot_writer import PlotWriter
    from cvlib.tracking.writer import Tracker

    uri = f"sqlite:///{folder}/plots.db"
    # TensorFlow's and MLflow's imports, the first traces and the store out of the way.
    warm_up_training()
    Tracker(uri)
    grid = tiny_grid(args.cells, "plots")
    cells = len(grid.cells())
    helper, inline = medians(interleaved(args.rounds, {"helper": PlotWriter,
                                                       "inline": InlinePlotWriter},
                                         lambda writer: time_grid(grid, uri, writer)))
    ratio = f"{helper / inline:.3f}"
    print(f"plot-helper: run_grid of {cells} tiny cells, 1 worker: plot helper process "
          f"{helper:.1f} s, plots drawn in the main process {inline:.1f} s: ratio {ratio} "
          f"(saves {inline - helper:.2f} s, {(inline - helper) / cells:.2f} s a cell)",
          flush=True)
    recorder.add("plot helper process / plots in the main process (run_grid wall time)",
                 "<= 1", ratio)


# --- hidden-imports and held-notices: fresh processes that start TensorFlow ---

# A worker's start (start_tensorflow_quietly: TensorFlow imported with the unused packages
# hidden, its runtime started with the notices held back), and the same done plainly.
# Each prints its CPU seconds at the end of TensorFlow's import, and which of the hidden
# packages are loaded then.
QUIET_START = CONFIGURE + """
import sys, time
from cvlib.engine import child

def timed_import():
    module = untimed_import()
    print('cpu', time.process_time())
    print('loaded', *[name for name in child.UNUSED_BY_WORKERS if name in sys.modules])
    return module

untimed_import, child.import_tensorflow = child.import_tensorflow, timed_import
child.start_tensorflow_quietly(1)
"""
PLAIN_START = CONFIGURE + """
import sys, time
from cvlib.engine import child
import tensorflow as tf
print('cpu', time.process_time())
print('loaded', *[name for name in child.UNUSED_BY_WORKERS if name in sys.modules])
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
tf.config.list_logical_devices()
"""
_STARTS: dict = {}


def tensorflow_starts(rounds: int, log_level: str | None = None) -> dict[str, list[dict]]:
    """Each round, a fresh process that starts TensorFlow as a worker does ("quiet") and
    one that does it plainly, in alternating order; what each reported: its CPU seconds
    at the end of the import ("cpu"), the hidden packages loaded then ("loaded") and
    its stderr lines ("lines"). With ``log_level``, TF_CPP_MIN_LOG_LEVEL is set to it.
    Shared by hidden-imports and held-notices (the same processes serve both)."""
    key = (rounds, log_level)
    if key not in _STARTS:
        env = None if log_level is None else {**os.environ, "TF_CPP_MIN_LOG_LEVEL": log_level}

        def start(code: str) -> dict:
            stdout, stderr = run_child(code, env)
            report = {line.split()[0]: line.split()[1:] for line in stdout.splitlines()
                      if line.strip()}
            return {"cpu": float(report["cpu"][0]), "loaded": report.get("loaded", []),
                    "lines": len([line for line in stderr.splitlines() if line.strip()])}

        _STARTS[key] = interleaved(rounds, {"quiet": QUIET_START, "plain": PLAIN_START}, start)
    return _STARTS[key]


def installed(names) -> str:
    """Which of the named packages are installed (as `pip show` would say), and their
    versions."""
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(DISTRIBUTIONS.get(name, name))}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)


def hidden_imports(args, folder: str, recorder: Recorder) -> None:
    from cvlib.engine.child import UNUSED_BY_WORKERS

    starts = tensorflow_starts(args.rounds)
    hidden, plain = (statistics.median(start["cpu"] for start in starts[name])
                     for name in ("quiet", "plain"))
    ratio = f"{hidden / plain:.3f}"
    plainly_loaded = ", ".join(starts["plain"][-1]["loaded"]) or "none of them"
    print(f"hidden-imports: CPU seconds of a fresh process by the end of TensorFlow's "
          f"import: {hidden:.2f} with {', '.join(UNUSED_BY_WORKERS)} hidden "
          f"(import_tensorflow), {plain:.2f} plainly: ratio {ratio} (saves "
          f"{plain - hidden:.2f} CPU s an import; installed: {installed(UNUSED_BY_WORKERS)}; "
          f"the plain import loaded {plainly_loaded})", flush=True)
    recorder.add("TensorFlow import with unused packages hidden / plain (CPU s)", "<= 1",
                 ratio)


# --- gc-freeze ---

def small_store(uri: str, runs: int = 16) -> tuple[str, int]:
    """A store holding one grid's finished cell runs, with per-epoch and final metrics
    and a few dozen statistics each; returns the experiment's name and its runs."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from cvlib.grids import grid_from_dict
    from cvlib.tracking import schema
    from cvlib.tracking.writer import Tracker

    name = "table"
    grid = grid_from_dict({"name": name, "grid": {
        "model.activation": ACTIVATIONS[:4], "model.initializer": ["he", "xavier"],
        "model.bn": ["none", "before"]}})
    tracker, client = Tracker(uri), MlflowClient(uri)
    experiment_id = tracker.experiment_id(name)
    cells = grid.cells()[:runs]
    parent = tracker.start_grid(grid, experiment_id, len(cells))
    per_epoch = [schema.LOSS, schema.ACCURACY, schema.VAL_LOSS, schema.VAL_ACCURACY,
                 schema.EPOCH_TIME] + [f"{schema.ACTIVATION_PREFIX}block{layer}_act/{figure}"
                                       for layer in range(1, 5)
                                       for figure in ("mean", "std", "saturated", "dead")]
    for index, cell in enumerate(cells):
        run = tracker.start_cell(experiment_id, parent, cell, grid.name)
        metrics = [Metric(key, 0.1 + 0.01 * index + 0.1 * step, 0, step)
                   for step in range(1, 4) for key in per_epoch]
        metrics += [Metric(key, 0.5, 0, 3) for key in (schema.TEST_LOSS, schema.TEST_ACCURACY)]
        client.log_batch(run.run_id, metrics=metrics)
        run.finish(schema.OK)
    tracker.end_run(parent)
    return name, len(cells)


def gc_freeze(args, folder: str, recorder: Recorder) -> None:
    uri = f"sqlite:///{folder}/table.db"
    experiment, runs = small_store(uri)
    argv = ["table", "--experiment", experiment, "--tracking-uri", uri]
    arms = {"console_main": [sys.executable, "-m", "cvlib", *argv],
            "main": [sys.executable, "-c",
                     f"import sys; from cvlib.cli import main; sys.exit(main({argv!r}))"]}

    def wall_seconds(command: list[str]) -> float:
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        return time.perf_counter() - started

    frozen, plain = medians(interleaved(args.rounds, arms, wall_seconds))
    ratio = f"{frozen / plain:.3f}"
    print(f"gc-freeze: a fresh `cvlib table` on {runs} cell runs: {frozen:.2f} s "
          f"with gc.freeze() before exit (python -m cvlib), {plain:.2f} s without "
          f"(main() through python -c): ratio {ratio} (saves {plain - frozen:.2f} s a command)",
          flush=True)
    recorder.add("cvlib table with gc.freeze() / without (wall time)", "<= 1", ratio)


# --- clear-session ---

def clear_session(args, folder: str, recorder: Recorder) -> None:
    import keras

    from cvlib.data import DataCache
    from cvlib.training import MODEL_CACHE, train_cell

    cells = tiny_grid(args.cells, "session").cells()
    dataset = DataCache().get(cells[0].data)
    warm_up_training()
    calls: dict[bool, list[float]] = {False: [], True: []}

    def per_cell(free_memory: bool) -> float:
        MODEL_CACHE.clear()  # both sides start without traced models
        started = time.perf_counter()
        for cell in cells:
            train_cell(cell, dataset, lambda metrics, step: None)
            called = time.perf_counter()
            keras.backend.clear_session(free_memory=free_memory)
            calls[free_memory].append(time.perf_counter() - called)
        return (time.perf_counter() - started) / len(cells)

    kept, freed = medians(interleaved(args.rounds, {"False": False, "True": True}, per_cell))
    ratio = f"{kept / freed:.3f}"
    print(f"clear-session: {len(cells)} tiny cells trained in this process: {kept:.2f} s a "
          f"cell with clear_session(free_memory=False) (cvlib), {freed:.2f} s with "
          f"free_memory=True: ratio {ratio} (saves {freed - kept:.2f} s a cell; the call "
          f"alone {statistics.median(calls[False]):.3f} against "
          f"{statistics.median(calls[True]):.3f} s)", flush=True)
    recorder.add("clear_session(free_memory=False) / free_memory=True (s a cell)", "<= 1",
                 ratio)


# --- held-notices ---

def held_notices(args, folder: str, recorder: Recorder) -> None:
    starts = tensorflow_starts(args.rounds)
    quiet, plain = (statistics.median(start["lines"] for start in starts[name])
                    for name in ("quiet", "plain"))
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "unset")
    held = f"{plain - quiet:g}"
    line = (f"held-notices: starting TensorFlow in a fresh process prints {plain:g} stderr "
            f"lines plainly, {quiet:g} through start_tensorflow_quietly(1), with "
            f"TF_CPP_MIN_LOG_LEVEL={level} (cvlib's default): {held} lines held back a worker")
    if args.all_logging:
        every = tensorflow_starts(1, "0")
        line += (f"; with TF_CPP_MIN_LOG_LEVEL=0: {every['plain'][0]['lines']} against "
                 f"{every['quiet'][0]['lines']}")
    print(line, flush=True)
    recorder.add("TensorFlow start-up stderr lines held back a worker", "> 0", held)


# --- training-thread ---

def training_thread(args, folder: str, recorder: Recorder) -> None:
    import threading

    from cvlib.data import DataCache
    from cvlib.engine.cell import execute_cell, trained_events
    from cvlib.engine.events import Task

    tasks = [Task(key, cell) for key, cell in enumerate(tiny_grid(args.cells, "thread").cells())]
    data = DataCache()
    warm_up_training()
    for task in tasks:  # every graph traced: both sides reuse compiled models
        list(trained_events(task, data))

    def in_the_training_thread(task: Task) -> None:
        list(trained_events(task, data))

    def in_a_new_thread(task: Task) -> None:
        thread = threading.Thread(target=execute_cell, args=(task, data, lambda event: None))
        thread.start()
        thread.join()

    def per_cell(train) -> float:
        started = time.perf_counter()
        for task in tasks:
            train(task)
        return (time.perf_counter() - started) / len(tasks)

    one, new = medians(interleaved(args.rounds, {"one": in_the_training_thread,
                                                 "new": in_a_new_thread}, per_cell))
    ratio = f"{one / new:.3f}"
    print(f"training-thread: {len(tasks)} tiny cells, their graphs traced: {one:.2f} s a cell "
          f"in the process's one training thread (cvlib.engine.cell.trained_events), "
          f"{new:.2f} s in a new thread each: ratio {ratio} (saves {new - one:.2f} s a cell)",
          flush=True)
    recorder.add("one training thread / a new thread per cell (s a cell)", "<= 1", ratio)


MEASURES = {"plot-helper": plot_helper, "hidden-imports": hidden_imports,
            "gc-freeze": gc_freeze, "clear-session": clear_session,
            "held-notices": held_notices, "training-thread": training_thread}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cells", type=int, default=8,
                        help="tiny cells of plot-helper's grid and of clear-session (above "
                             "8: a multiple of 8)")
    parser.add_argument("--pieces", nargs="+", choices=PIECES, default=list(PIECES),
                        metavar="NAME", help=f"the pieces to measure: {', '.join(PIECES)} "
                                             f"(default: all)")
    parser.add_argument("--all-logging", action="store_true",
                        help="held-notices: also count the lines once with "
                             "TF_CPP_MIN_LOG_LEVEL=0 (two more TensorFlow starts)")
    add_option(parser)
    args = parser.parse_args()
    if args.rounds < 1 or args.cells < 1:
        parser.error("--rounds and --cells must be at least 1")
    recorder = Recorder(args.record)

    from cvlib.environment import configure_process

    configure_process()  # as the cvlib command does; its children inherit it
    print(f"{args.rounds} round(s); medians", flush=True)
    with tempfile.TemporaryDirectory(prefix="cvlib-process-machinery-") as folder:
        for piece in PIECES:
            if piece in args.pieces:
                MEASURES[piece](args, folder, recorder)


if __name__ == "__main__":
    main()
