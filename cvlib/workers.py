"""Cells trained in worker processes, each importing TensorFlow once and taking
cells from a queue; their events come back to this process, which alone writes to
MLflow (so a SQLite store never sees two writers)."""
from __future__ import annotations

import multiprocessing
import os
import queue
import signal
from typing import Callable

from cvlib.config import Cell
from cvlib.planning import Stage

POLL_SECONDS = 0.5


def _worker_main(tasks, events, data_dir: str | None, threads: int) -> None:
    """A worker: split the machine's cores, then train cells until the sentinel."""
    # Ctrl-C reaches the whole process group; the parent decides what happens.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from cvlib.data import DataCache
    from cvlib.runner import execute_cell

    data = DataCache(data_dir)
    pid = os.getpid()
    while (item := tasks.get()) is not None:
        key, cell, stage = item
        execute_cell(key, cell, data, lambda *event: events.put((pid, event)), stage)


def run_in_workers(tasks: list[tuple[int, Cell, Stage | None]], data_dir: str | None,
                   workers: int, handle: Callable[..., None]) -> None:
    """Train cells in ``workers`` processes; pass their events to ``handle``.

    TensorFlow's threads are split between the workers (two one-thread workers
    trained 1.24x the images per second of one two-thread process on 2 cores).
    A worker that dies (killed, out of memory) fails the cell it held; the others
    go on. On any exception here (SIGTERM included) the workers are terminated.

    Args:
        tasks: (key, cell, stage) triples, as execute_cell takes them.
        data_dir: CIFAR-10 folder for the workers' loaders.
        workers: Number of worker processes.
        handle: handle(event, key, *payload), called in this process.
    """
    context = multiprocessing.get_context("spawn")  # fork after TF's import is unsafe
    queue_of_tasks, events = context.Queue(), context.Queue()
    for task in tasks:
        queue_of_tasks.put(task)
    workers = min(workers, len(tasks))
    for _ in range(workers):
        queue_of_tasks.put(None)
    threads = max(1, (os.cpu_count() or 1) // workers)

    def start_worker():
        process = context.Process(target=_worker_main, daemon=True,
                                  args=(queue_of_tasks, events, data_dir, threads))
        process.start()
        return process

    processes = [start_worker() for _ in range(workers)]
    holder: dict[int, int] = {}  # cell key -> pid of the worker training it
    remaining = {key for key, _, _ in tasks}
    try:
        while remaining:
            try:
                pid, (event, key, *payload) = events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                processes = _replace_dead_workers(processes, holder, handle, remaining,
                                                  start_worker)
                if not any(process.is_alive() for process in processes):
                    for key in sorted(remaining):  # taken by a worker that died at once
                        handle("failed", key, "not run: its worker process died")
                    remaining.clear()
                continue
            if event == "started":
                holder[key] = pid
            handle(event, key, *payload)
            if event in ("finished", "failed"):
                holder.pop(key, None)
                remaining.discard(key)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=10)


def _replace_dead_workers(processes, holder: dict[int, int], handle, remaining: set[int],
                          start_worker) -> list:
    """Fail the cell each dead worker held, and start a worker in its place.

    A worker that died (a crash in TensorFlow, the kernel's OOM killer) leaves its
    sentinel in the queue, so its replacement ends like it would have.
    """
    alive = []
    for process in processes:
        if process.is_alive() or process.exitcode == 0:
            alive.append(process)
            continue
        for key in [k for k, pid in holder.items() if pid == process.pid]:
            del holder[key]
            remaining.discard(key)
            handle("failed", key, f"worker process died (exit code {process.exitcode})")
        alive.append(start_worker())
    return alive
