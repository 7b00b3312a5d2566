"""Cells trained in worker processes, each taking cells from a queue; their events come
back to this process, which alone writes to MLflow (so a SQLite store never sees two
writers).

The workers are forked from a fork server (multiprocessing's "forkserver") that imports
TensorFlow once, before any of its runtime's threads exist: a worker then starts in a
fraction of a second instead of importing TensorFlow itself (about 5 CPU seconds each,
on the cores the other workers train on), and a replacement for a dead worker too."""
from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import multiprocessing.queues
import os
import queue
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable

from cvlib.engine.child import set_up_child, start_tensorflow_quietly, without_main_module
from cvlib.engine.events import ENDINGS, CellFailed, Event, EventSink, Task
from cvlib.engine.hosts import usable_cores
from cvlib.engine.scheduling import Slot, hand_out
from cvlib.tracking.schema import BACKEND_PARAM, LOCAL_BACKEND

POLL_SECONDS = 0.5
PRELOAD_MODULE = "cvlib.engine.tensorflow_preload"


def _worker_main(tasks, events, data_dir: str | None, threads: int, scratch: str) -> None:
    """A worker: split the machine's cores, then train the tasks it is given until
    terminated."""
    set_up_child(scratch)
    start_tensorflow_quietly(threads)
    from cvlib.data import DataCache
    from cvlib.engine.cell import execute_cell

    data = DataCache(data_dir)
    pid = os.getpid()
    while True:
        execute_cell(tasks.get(), data, lambda event: events.put((pid, event)))


@dataclass
class _Worker(Slot):
    """A worker process, the queue that hands it its tasks, and what it trained."""

    process: multiprocessing.process.BaseProcess
    tasks: multiprocessing.queues.Queue
    scratch: str  # its temporary folder, removed once it has ended


class WorkerPool:
    """Worker processes that train cells, kept across calls of :meth:`run` (successive
    halving's rungs, a command's grids), so that each starts TensorFlow's runtime and
    loads the data once.

    TensorFlow's threads are split between the workers (two one-thread workers
    trained 1.24x the images per second of one two-thread process on 2 cores).
    Each worker is handed one task at a time, preferably of a graph whose compiled
    model it holds (``scheduling.pick_task``): a shared queue would have two workers
    take the two cells of a graph side by side and both trace it. A worker that dies
    (killed, out of memory) fails the task it held and is replaced; the others go on.

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
        self._context.set_forkserver_preload([PRELOAD_MODULE])
        self._events = self._context.Queue()
        self._workers: dict[int, _Worker] = {}  # by pid

    def run(self, tasks: list[Task], recorder: EventSink) -> None:
        """Train these tasks; pass their events to the recorder until each has ended.

        Args:
            tasks: What to train.
            recorder: Handles every event in this process, and flushes when none waits.
        """
        handle = recorder.handle
        waiting = list(tasks)
        self.resize(len(tasks))
        for worker in list(self._workers.values()):
            self._hand_out(worker, waiting)
        remaining = {task.key for task in tasks}
        deaths_in_a_row = 0  # workers that died with no event in between
        while remaining:
            if self._events.empty():
                recorder.flush()
            try:
                pid, event = self._events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                deaths_in_a_row += self._replace_dead_workers(handle, remaining, waiting)
                if deaths_in_a_row > 2 * self.workers:  # they die before any cell: give up
                    for key in sorted(remaining):
                        handle(CellFailed(key, "not run: worker processes keep dying"))
                    remaining.clear()
                continue
            deaths_in_a_row = 0
            handle(event)
            if isinstance(event, ENDINGS):
                remaining.discard(event.key)
                worker = self._workers.get(pid)
                if worker is not None:
                    worker.holding = None
                    self._hand_out(worker, waiting)

    def warm_up(self) -> None:
        """Start the fork server, which imports TensorFlow while this process goes on."""
        multiprocessing.forkserver.ensure_running()

    def params(self) -> dict[str, str]:
        """The parent run's params that say what trains its cells."""
        return {BACKEND_PARAM: LOCAL_BACKEND}

    def metrics(self) -> dict[str, float]:
        """The parent run's metrics about the training (none for local workers)."""
        return {}

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def resize(self, tasks: int) -> None:
        """Keep one worker per task, at most ``workers``: start the missing ones now
        (once the fork server has imported TensorFlow), stop idle ones beyond.

        Args:
            tasks: How many tasks are left to train.
        """
        wanted = min(self.workers, tasks)
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

    def _hand_out(self, worker: _Worker, waiting: list[Task]) -> None:
        """Give an idle worker the waiting task that best reuses its compiled models."""
        task = hand_out(worker, self._workers.values(), waiting)
        if task is not None:
            worker.tasks.put(task)

    def _replace_dead_workers(self, handle: Callable[[Event], None], remaining: set[int],
                              waiting: list[Task]) -> int:
        """Fail the task each dead worker held, and start a worker in its place.

        Returns:
            How many workers had died.
        """
        dead = [worker for worker in self._workers.values() if not worker.process.is_alive()]
        for worker in dead:
            self._forget(worker)
            if worker.holding is not None and worker.holding.key in remaining:
                remaining.discard(worker.holding.key)
                handle(CellFailed(worker.holding.key,
                                  f"worker process died (exit code {worker.process.exitcode})"))
            if remaining or waiting:
                self._hand_out(self._start_worker(), waiting)
        return len(dead)
