"""Worker processes on this machine as the pool's backend: each trains the tasks it is
handed and sends their events back over a pipe of its own.

The workers are forked from a fork server (multiprocessing's "forkserver") that imports
TensorFlow once, before any of its runtime's threads exist: a worker then starts in a
fraction of a second instead of importing TensorFlow itself (about 5 CPU seconds each,
on the cores the other workers train on), and a replacement for a dead worker too.

Each worker has its own pipe, with no lock shared between processes: a worker killed in
the middle of sending breaks only its own pipe, whose end (EOF, or a message cut short)
is how this process learns of its death, after every whole message it sent before.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Sequence

from cvlib.engine.backend import Arrival, Lost, Received
from cvlib.engine.cell import HEARTBEAT_SECONDS
from cvlib.engine.child import set_up_child, start_tensorflow_quietly, without_main_module
from cvlib.engine.events import Task
from cvlib.engine.hosts import usable_cores
from cvlib.engine.scheduling import Slot
from cvlib.tracking.schema import BACKEND_PARAM, LOCAL_BACKEND

PRELOAD_MODULE = "cvlib.engine.tensorflow_preload"
# A worker whose pipe ended is given this long to be reaped, for its exit code.
EXIT_CODE_WAIT_SECONDS = 5.0


def _worker_main(connection: multiprocessing.connection.Connection, data_dir: str | None,
                 threads: int, deterministic: bool, heartbeat_seconds: float,
                 scratch: str) -> None:
    """A worker: take its share of the cores, then train each task handed to it,
    sending what happens back (cell.trained_events, as a Ray actor does), until its
    pipe closes or it is terminated."""
    set_up_child(scratch)
    start_tensorflow_quietly(threads, deterministic=deterministic)
    from cvlib.data import DataCache
    from cvlib.engine.cell import trained_events

    data = DataCache(data_dir)
    while True:
        try:
            task = connection.recv()
        except EOFError:  # the command closed its end
            return
        for message in trained_events(task, data, heartbeat_seconds=heartbeat_seconds):
            connection.send(message)


@dataclass(eq=False, kw_only=True)
class _Worker(Slot):
    """A worker process and its end of the worker's pipe."""

    process: Any  # multiprocessing's Process
    connection: multiprocessing.connection.Connection
    scratch: str  # its temporary folder, removed once it has ended


class LocalWorkers:
    """Worker processes on this machine.

    TensorFlow's threads are split between the workers (two one-thread workers
    trained 1.24x the images per second of one two-thread process on 2 cores).

    Args:
        data_dir: CIFAR-10 folder for the workers' loaders.
        workers: Number of worker processes at most.
        heartbeat_seconds: A worker whose cell sent nothing for this long (a long epoch)
            sends a Heartbeat.
        threads: Each worker's intra-op threads; None: its share of the usable cores.
        deterministic: The workers train with TensorFlow's op determinism.
    """

    trainers = "worker processes"

    def __init__(self, data_dir: str | None, workers: int,
                 heartbeat_seconds: float = HEARTBEAT_SECONDS, threads: int | None = None,
                 deterministic: bool = False):
        self.data_dir = data_dir
        self.workers = workers
        self.heartbeat_seconds = heartbeat_seconds
        self.threads = threads or max(1, usable_cores() // workers)
        self.deterministic = deterministic
        # Forking a process whose TensorFlow runtime runs is unsafe (its threads do not
        # survive a fork); the fork server only imported it.
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload([PRELOAD_MODULE])

    @property
    def capacity(self) -> int:
        """Worker processes at most."""
        return self.workers

    def warm_up(self) -> None:
        """Start the fork server, which imports TensorFlow while this process goes on."""
        multiprocessing.forkserver.ensure_running()

    def start(self) -> _Worker:
        """Fork a worker from the fork server; it takes tasks at once (queued in its pipe
        until its TensorFlow has started)."""
        ours, theirs = self._context.Pipe(duplex=True)
        scratch = tempfile.mkdtemp(prefix="cvlib-worker-")
        process = self._context.Process(target=_worker_main, daemon=True, args=(
            theirs, self.data_dir, self.threads, self.deterministic, self.heartbeat_seconds,
            scratch))
        with without_main_module():
            process.start()
        theirs.close()  # the worker's end lives in the worker alone: its death ends the pipe
        return _Worker(process=process, connection=ours, scratch=scratch)

    def send(self, slot: _Worker, task: Task) -> None:
        """Hand a worker a task; a worker already dead shows as Lost when waited on."""
        try:
            slot.connection.send(task)
        except OSError:  # its pipe is broken: the reading end reports the death
            pass

    def wait(self, slots: Sequence[_Worker], timeout: float) -> list[Arrival]:
        """One message from each worker that sent one, or its loss when its pipe ended.

        Returns:
            What arrived within ``timeout`` seconds (nothing if none did).
        """
        by_connection = {slot.connection: slot for slot in slots}
        arrivals: list[Arrival] = []
        for connection in multiprocessing.connection.wait(list(by_connection), timeout):
            slot = by_connection[connection]
            try:
                arrivals.append(Received(slot, connection.recv()))
            except (EOFError, OSError):  # OSError: a message cut short by the death
                slot.process.join(EXIT_CODE_WAIT_SECONDS)
                arrivals.append(Lost(slot, f"worker process died (exit code "
                                           f"{slot.process.exitcode})"))
        return arrivals

    def stop(self, slots: Sequence[_Worker]) -> None:
        """Terminate workers (or reap dead ones), and remove their temporary files."""
        for slot in slots:
            if slot.process.is_alive():
                slot.process.terminate()
        for slot in slots:
            slot.process.join(timeout=10)
            slot.connection.close()
            shutil.rmtree(slot.scratch, ignore_errors=True)

    def close(self, slots: Sequence[_Worker]) -> None:
        """Terminate the last workers (a grid that ends early leaves cells unrun)."""
        self.stop(slots)

    def params(self) -> dict[str, str]:
        """The parent run's params that say what trains its cells."""
        return {BACKEND_PARAM: LOCAL_BACKEND}

    def metrics(self) -> dict[str, float]:
        """The parent run's metrics about the training (none for local workers)."""
        return {}
