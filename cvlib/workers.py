"""Cells trained in worker processes, each taking cells from a queue; their events come
back to this process, which alone writes to MLflow (so a SQLite store never sees two
writers).

The workers are forked from a fork server (multiprocessing's "forkserver") that imports
TensorFlow once, before any of its runtime's threads exist: a worker then starts in a
fraction of a second instead of importing TensorFlow itself (about 5 CPU seconds each,
on the cores the other workers train on), and a replacement for a dead worker too."""
from __future__ import annotations

import contextlib
import glob
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.queues
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
import types
from dataclasses import dataclass, field
from typing import Callable, Iterator

from cvlib.config import Cell
from cvlib.planning import Stage, graph_key, pick_task

POLL_SECONDS = 0.5
# Optional packages that Keras imports at its start when they are installed, for what a
# worker never does (image-gallery plots, scikit-learn wrappers, notebook detection):
# hidden during the import, they no longer cost each worker about 1.5 CPU seconds.
UNUSED_BY_WORKERS = ("matplotlib", "sklearn", "IPython")
# Memory one worker may take: TensorFlow, a model, CIFAR-10 and its preprocessed splits
# (1.8 GB resident measured at 15,000 training images; all 50,000 add about 0.5 GB).
WORKER_MEMORY_BYTES = 3 * 2**30


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity: a container's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes of memory available to new processes (Linux's MemAvailable); None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def nvidia_gpu_visible() -> bool:
    """Whether TensorFlow would see an NVIDIA GPU (checked without importing it)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def auto_workers(cells: int | None, cores: int | None = None, memory: int | None = None,
                 gpu: bool | None = None) -> int:
    """How many worker processes ``cvlib run`` uses by default: one per usable CPU core
    (two one-thread workers trained 1.24x the images per second of one two-thread
    process on 2 cores), at most one per cell and one per WORKER_MEMORY_BYTES of
    available memory. One, in the calling process, with an NVIDIA GPU: TensorFlow takes
    nearly all of a GPU's memory in the first process that uses it.

    Args:
        cells: Cells to train (None: not known in advance, no bound).
        cores: Usable CPU cores (default: probed).
        memory: Available memory in bytes (default: probed; unknown sets no limit).
        gpu: Whether an NVIDIA GPU is visible (default: probed).

    Returns:
        The number of workers, at least 1.
    """
    gpu = nvidia_gpu_visible() if gpu is None else gpu
    cores = usable_cores() if cores is None else cores
    memory = available_memory() if memory is None else memory
    if gpu:
        return 1
    by_memory = cores if memory is None else memory // WORKER_MEMORY_BYTES
    return max(1, min(cores, cores if cells is None else cells, by_memory))


@contextlib.contextmanager
def without_main_module() -> Iterator[None]:
    """Start spawned processes without re-importing this process's ``__main__``.

    A spawned child imports the parent's main script again, which for a script that
    imports TensorFlow costs seconds of CPU beside the training; cvlib's children
    need nothing from it (their targets live in cvlib). A stand-in with neither
    ``__file__`` nor ``__spec__`` tells multiprocessing there is nothing to import.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


@contextlib.contextmanager
def hidden_modules(names: tuple[str, ...]) -> Iterator[None]:
    """Make ``import name`` raise ImportError inside the block, for each named package
    not imported yet (as if it were not installed); importable again afterwards."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # Python's own marker for "import of this fails"
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


def set_up_child(scratch: str) -> None:
    """Set up a child process of the grid (a worker, the plot helper).

    - Ctrl-C reaches the whole process group; the parent decides what happens.
    - Temporary files go to the child's own folder, which its parent removes when the
      child has ended: a child ended by a signal runs no atexit handlers, and those
      are what delete TensorFlow's autograph sources (one file per traced function,
      dozens a grid) and the like.
    - The child ends when the process that started it dies, removing that folder
      first: a runner killed with SIGKILL cannot stop its children, which would
      otherwise wait on their queues forever (and a worker's fork server, which lives
      as long as any worker does, with them).

    Args:
        scratch: The child's temporary folder, made by its parent.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["TMPDIR"] = scratch  # for native code and any child process
    tempfile.tempdir = scratch
    # Not os.getppid(): a worker's parent is the fork server.
    starter = multiprocessing.parent_process()

    def watch() -> None:
        starter.join()  # returns when its end of a pipe closes, however it ended
        shutil.rmtree(scratch, ignore_errors=True)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


@contextlib.contextmanager
def _notices_held_back(shown_on_failure: bool = True) -> Iterator[None]:
    """Hold back what native code writes to stderr (TensorFlow's C++ start-up notices:
    oneDNN, CPU instructions, no CUDA driver); show it if the block raises and
    ``shown_on_failure``."""
    saved_stderr = os.dup(2)
    with tempfile.TemporaryFile() as notices:
        os.dup2(notices.fileno(), 2)  # TensorFlow's C++ logging writes to fd 2
        try:
            yield
        except BaseException:
            os.dup2(saved_stderr, 2)
            if shown_on_failure:
                notices.seek(0)
                os.write(2, notices.read())
            raise
        finally:
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)


def import_tensorflow() -> types.ModuleType:
    """Import TensorFlow (and all of Keras with it) without the packages workers never use.

    Returns:
        The tensorflow module.
    """
    with hidden_modules(UNUSED_BY_WORKERS):
        import tensorflow
    return tensorflow


def preload_tensorflow() -> None:
    """Import TensorFlow quietly in the workers' fork server. If that fails, each worker
    imports it again and shows why."""
    with contextlib.suppress(Exception), _notices_held_back(shown_on_failure=False):
        import_tensorflow()


def _start_tensorflow_quietly(threads: int) -> None:
    """Import TensorFlow (unless the fork server did), give it this worker's threads and
    start its runtime, with its start-up notices held back and shown only if that fails.

    Every worker would print the same notices, which only clutter a grid's output.
    """
    with _notices_held_back():
        tf = import_tensorflow()
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.list_logical_devices()  # starts the runtime, which looks for GPUs


def _worker_main(tasks, events, data_dir: str | None, threads: int, scratch: str) -> None:
    """A worker: split the machine's cores, then train the cells it is given until
    terminated."""
    set_up_child(scratch)
    _start_tensorflow_quietly(threads)
    from cvlib.data import DataCache
    from cvlib.runner import execute_cell

    data = DataCache(data_dir)
    pid = os.getpid()
    while True:
        key, cell, stage = tasks.get()
        execute_cell(key, cell, data, lambda *event: events.put((pid, event)), stage)


@dataclass
class _Worker:
    """A worker process, the queue that hands it its cells, and what it trained."""

    process: multiprocessing.process.BaseProcess
    tasks: multiprocessing.queues.Queue
    scratch: str  # its temporary folder, removed once it has ended
    graphs: list[tuple] = field(default_factory=list)  # its models' graphs, latest last
    holding: int | None = None  # the key of the cell it trains


class WorkerPool:
    """Worker processes that train cells, kept across calls of :meth:`run` (successive
    halving's rungs), so that each starts TensorFlow's runtime and loads the data once.

    TensorFlow's threads are split between the workers (two one-thread workers
    trained 1.24x the images per second of one two-thread process on 2 cores).
    Each worker is handed one cell at a time, preferably of a graph whose compiled
    model it holds (``planning.pick_task``): a shared queue would have two workers
    take the two cells of a graph side by side and both trace it. A worker that dies
    (killed, out of memory) fails the cell it held and is replaced; the others go on.

    Args:
        data_dir: CIFAR-10 folder for the workers' loaders.
        workers: Number of worker processes (started by the first run).
    """

    def __init__(self, data_dir: str | None, workers: int):
        self.data_dir = data_dir
        self.workers = workers
        self.threads = max(1, usable_cores() // workers)
        # Forking a process whose TensorFlow runtime runs is unsafe (its threads do not
        # survive a fork); the fork server only imported it.
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["cvlib.tensorflow_preload"])
        self._events = self._context.Queue()
        self._workers: dict[int, _Worker] = {}  # by pid

    def run(self, tasks: list[tuple[int, Cell, Stage | None]],
            handle: Callable[..., None]) -> None:
        """Train these cells; pass their events to ``handle`` until each has ended.

        Args:
            tasks: (key, cell, stage) triples, as execute_cell takes them.
            handle: handle(event, key, *payload), called in this process.
        """
        waiting = list(tasks)
        self.resize(len(tasks))
        for worker in list(self._workers.values()):
            self._hand_out(worker, waiting)
        remaining = {key for key, _, _ in tasks}
        deaths_in_a_row = 0  # workers that died with no event in between
        while remaining:
            try:
                pid, (event, key, *payload) = self._events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                deaths_in_a_row += self._replace_dead_workers(handle, remaining, waiting)
                if deaths_in_a_row > 2 * self.workers:  # they die before any cell: give up
                    for key in sorted(remaining):
                        handle("failed", key, "not run: worker processes keep dying")
                    remaining.clear()
                continue
            deaths_in_a_row = 0
            handle(event, key, *payload)
            if event in ("finished", "failed"):
                remaining.discard(key)
                worker = self._workers.get(pid)
                if worker is not None:
                    worker.holding = None
                    self._hand_out(worker, waiting)

    def warm_up(self) -> None:
        """Start the fork server, which imports TensorFlow while this process goes on."""
        multiprocessing.forkserver.ensure_running()

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def resize(self, cells: int) -> None:
        """Keep one worker per cell, at most ``workers``: start the missing ones now
        (once the fork server has imported TensorFlow), stop idle ones beyond.

        Args:
            cells: How many cells are left to train.
        """
        wanted = min(self.workers, cells)
        while len(self._workers) < wanted:
            self._start_worker()
        idle = [worker for worker in self._workers.values() if worker.holding is None]
        self._stop(idle[:len(self._workers) - wanted])

    def close(self) -> None:
        """Stop the workers (terminated: a grid that ends early leaves cells unrun)."""
        self._stop(list(self._workers.values()))

    def _stop(self, workers: list[_Worker]) -> None:
        for worker in workers:
            if worker.process.is_alive():
                worker.process.terminate()
        for worker in workers:
            worker.process.join(timeout=10)
            self._forget(worker)

    def _forget(self, worker: _Worker) -> None:
        """Drop an ended worker, and its temporary files."""
        del self._workers[worker.process.pid]
        shutil.rmtree(worker.scratch, ignore_errors=True)

    def _start_worker(self) -> _Worker:
        tasks = self._context.Queue()
        scratch = tempfile.mkdtemp(prefix="cvlib-worker-")
        process = self._context.Process(target=_worker_main, daemon=True, args=(
            tasks, self._events, self.data_dir, self.threads, scratch))
        with without_main_module():
            process.start()
        worker = self._workers[process.pid] = _Worker(process, tasks, scratch)
        return worker

    def _hand_out(self, worker: _Worker, waiting: list[tuple[int, Cell, Stage | None]]) -> None:
        """Give an idle worker the waiting cell that best reuses its compiled models."""
        if not waiting:
            return
        elsewhere = {graph for other in self._workers.values() if other is not worker
                     for graph in other.graphs}
        key, cell, stage = waiting.pop(pick_task([cell for _, cell, _ in waiting],
                                                 worker.graphs, elsewhere))
        graph = graph_key(cell)
        worker.graphs = [g for g in worker.graphs if g != graph] + [graph]
        worker.holding = key
        worker.tasks.put((key, cell, stage))

    def _replace_dead_workers(self, handle, remaining: set[int],
                              waiting: list[tuple[int, Cell, Stage | None]]) -> int:
        """Fail the cell each dead worker held, and start a worker in its place.

        Returns:
            How many workers had died.
        """
        dead = [worker for worker in self._workers.values() if not worker.process.is_alive()]
        for worker in dead:
            self._forget(worker)
            if worker.holding is not None and worker.holding in remaining:
                remaining.discard(worker.holding)
                handle("failed", worker.holding,
                       f"worker process died (exit code {worker.process.exitcode})")
            if remaining or waiting:
                self._hand_out(self._start_worker(), waiting)
        return len(dead)
