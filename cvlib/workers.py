"""Cells trained in worker processes, each importing TensorFlow once and taking
cells from a queue; their events come back to this process, which alone writes to
MLflow (so a SQLite store never sees two writers)."""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import types
from typing import Callable, Iterator

from cvlib.config import Cell
from cvlib.planning import Stage

POLL_SECONDS = 0.5


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


def exit_with_parent() -> None:
    """End this child process when its parent dies: a runner killed with SIGKILL
    cannot stop its children, which would otherwise wait on their queues forever."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:  # an orphan is adopted by another process
            time.sleep(POLL_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _worker_main(tasks, events, data_dir: str | None, threads: int) -> None:
    """A worker: split the machine's cores, then train cells until terminated."""
    # Ctrl-C reaches the whole process group; the parent decides what happens.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from cvlib.data import DataCache
    from cvlib.runner import execute_cell

    data = DataCache(data_dir)
    pid = os.getpid()
    while True:
        key, cell, stage = tasks.get()
        events.put((pid, ("taken", key)))
        execute_cell(key, cell, data, lambda *event: events.put((pid, event)), stage)


class WorkerPool:
    """Worker processes that train cells, kept across calls of :meth:`run` (successive
    halving's rungs), so that each imports TensorFlow and loads the data once.

    TensorFlow's threads are split between the workers (two one-thread workers
    trained 1.24x the images per second of one two-thread process on 2 cores).
    A worker that dies (killed, out of memory) fails the cell it held and is
    replaced; the others go on.

    Args:
        data_dir: CIFAR-10 folder for the workers' loaders.
        workers: Number of worker processes (started by the first run).
    """

    def __init__(self, data_dir: str | None, workers: int):
        self.data_dir = data_dir
        self.workers = workers
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        self._context = multiprocessing.get_context("spawn")  # fork after TF's import is unsafe
        self._tasks = self._context.Queue()
        self._events = self._context.Queue()
        self._processes: list = []

    def run(self, tasks: list[tuple[int, Cell, Stage | None]],
            handle: Callable[..., None]) -> None:
        """Train these cells; pass their events to ``handle`` until each has ended.

        Args:
            tasks: (key, cell, stage) triples, as execute_cell takes them.
            handle: handle(event, key, *payload), called in this process.
        """
        for task in tasks:
            self._tasks.put(task)
        while len(self._processes) < min(self.workers, len(tasks)):
            self._processes.append(self._start_worker())
        holder: dict[int, int] = {}  # cell key -> pid of the worker training it
        remaining = {key for key, _, _ in tasks}
        deaths_in_a_row = 0  # workers that died with no event in between
        while remaining:
            try:
                pid, (event, key, *payload) = self._events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                deaths_in_a_row += self._replace_dead_workers(holder, handle, remaining)
                if deaths_in_a_row > 2 * self.workers:  # they die before any cell: give up
                    for key in sorted(remaining):
                        handle("failed", key, "not run: worker processes keep dying")
                    remaining.clear()
                    self._drop_queued_tasks()
                continue
            deaths_in_a_row = 0
            if event == "taken":
                holder[key] = pid
                continue
            handle(event, key, *payload)
            if event in ("finished", "failed"):
                holder.pop(key, None)
                remaining.discard(key)

    def close(self) -> None:
        """Stop the workers (terminated: a grid that ends early leaves cells queued)."""
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        for process in self._processes:
            process.join(timeout=10)
        self._processes = []

    def _start_worker(self):
        process = self._context.Process(target=_worker_main, daemon=True, args=(
            self._tasks, self._events, self.data_dir, self.threads))
        with without_main_module():
            process.start()
        return process

    def _drop_queued_tasks(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self._tasks.get_nowait()

    def _replace_dead_workers(self, holder: dict[int, int], handle,
                              remaining: set[int]) -> int:
        """Fail the cell each dead worker held, and start a worker in its place.

        Returns:
            How many workers had died.
        """
        alive, dead = [], 0
        for process in self._processes:
            if process.is_alive():
                alive.append(process)
                continue
            dead += 1
            for key in [k for k, pid in holder.items() if pid == process.pid]:
                del holder[key]
                remaining.discard(key)
                handle("failed", key, f"worker process died (exit code {process.exitcode})")
            alive.append(self._start_worker())
        self._processes = alive
        return dead
