"""The trainer side of the Ray backend: one long-lived actor per cell slot, on any node.

An actor starts TensorFlow once, with as many intra-op threads as its CPUs (Ray sets only
``OMP_NUM_THREADS``, which TensorFlow ignores: a 1-CPU actor with TensorFlow's own
choice used both cores of a 2-core node), and keeps its compiled models from cell to cell
as a local worker does. Its data comes from the object store, never from the node's disk.
It trains one task at a time in a thread and streams the task's events back as they
happen (a Ray streaming generator), with a heartbeat while nothing else happens, as a
local worker does (``cell.trained_events``), and draws its cells' plots itself, so that
the driver only stores them.

Nothing here writes to the store: the driver records the events, and drops those of an
actor it has given up on.
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cvlib.data import DataCache
from cvlib.engine.child import start_tensorflow_quietly
from cvlib.engine.events import ENDINGS, Event, FiguresReady, Task, TaskTaken
from cvlib.engine.plot_writer import drawn_plots
from cvlib.environment import configure_process

# How often an actor checks that its node's raylet still runs.
RAYLET_CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class StageCheckpoint:
    """A cell's checkpoint (cvlib.checkpoints), sent back before the next event once the
    trainer has written it (after an epoch, or a stage's end), so that the cell can
    continue from it on any node."""

    key: int
    payload: bytes


@dataclass(frozen=True)
class TaskTime:
    """The seconds the actor spent on a task, sent before its ending event: the rest of
    the time the driver waited for it is Ray's dispatch."""

    key: int
    seconds: float


def _version(path: Path | None) -> tuple[int, int] | None:
    """Which file a path holds now (a checkpoint is renamed over the last one): its inode
    and modification time; None when there is none."""
    try:
        status = path.stat()
    except (AttributeError, FileNotFoundError):  # no path, or no file yet
        return None
    return status.st_ino, status.st_mtime_ns


def _exit_with_raylet() -> None:
    """End this process when the raylet that started it dies: an actor of a node killed
    with SIGKILL otherwise kept training, orphaned, for 90 s and more."""
    raylet = os.getppid()

    def watch() -> None:
        while os.getppid() == raylet:
            time.sleep(RAYLET_CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-raylet", daemon=True).start()


class CellTrainer:
    """A cell slot's actor (wrapped by ``ray.remote`` in :mod:`~cvlib.engine.ray_backend`).

    Args:
        raw: CIFAR-10's raw arrays, from the object store (see cifar10.load_cifar10).
        threads: TensorFlow's intra-op threads: the actor's CPUs.
        gpus: The actor's share of a GPU; above 0, TensorFlow's GPU memory grows as
            needed, so that actors sharing a GPU fit.
        deterministic: Train with TensorFlow's op determinism.
    """

    def __init__(self, raw, threads: int, gpus: float, deterministic: bool = False):
        import ray

        _exit_with_raylet()
        configure_process()
        self.scratch = tempfile.mkdtemp(prefix="cvlib-actor-")
        atexit.register(shutil.rmtree, self.scratch, True)
        os.environ["TMPDIR"] = self.scratch  # TensorFlow's autograph files go there too
        tempfile.tempdir = self.scratch
        start_tensorflow_quietly(threads, gpu_memory_growth=gpus > 0,
                                 deterministic=deterministic)
        self.data = DataCache(raw=raw)
        node = ray.get_runtime_context().get_node_id()
        self.place = f"{socket.gethostname()} node {node[:8]}"

    def where(self) -> str:
        """Where the actor runs (its host and Ray node); answered once it has started."""
        return self.place

    def train(self, task: Task, checkpoint: bytes | None
              ) -> Iterator[TaskTaken | Event | StageCheckpoint | TaskTime]:
        """Train a task, yielding its events as they happen.

        Args:
            task: What to train.
            checkpoint: The model saved by the cell's previous stage, when the task
                continues one.

        Yields:
            What ``cell.trained_events`` yields (TaskTaken, the task's events,
            heartbeats), the plain cell's FiguresReady with its plots drawn here, a
            StageCheckpoint before the ending event of a stage that saves one, and the
            TaskTime just before the ending event.
        """
        from cvlib.engine.cell import trained_events

        started = time.perf_counter()
        task = self._local_checkpoint(task, checkpoint)
        saved = Path(task.stage.checkpoint) if task.stage is not None else None
        shipped = _version(saved)
        for message in trained_events(task, self.data, self.place):
            if isinstance(message, FiguresReady) and (task.stage is None
                                                      or task.stage.checkpoint_every):
                message = self._with_plots(message)
            # A checkpoint written since the last message goes to the driver before it.
            if saved is not None and _version(saved) != shipped:
                shipped = _version(saved)
                with contextlib.suppress(FileNotFoundError):
                    yield StageCheckpoint(task.key, saved.read_bytes())
            if isinstance(message, ENDINGS):
                yield TaskTime(task.key, time.perf_counter() - started)
            yield message

    @staticmethod
    def _with_plots(event: FiguresReady) -> FiguresReady:
        """The event with the cell's plots drawn here (a halving stage's are drawn by the
        driver from all its stages); left to the driver if drawing fails."""
        try:
            return dataclasses.replace(event, plots=drawn_plots(event.history, event.stats))
        except Exception:  # the driver's plot helper tries again and records why
            return event

    def _local_checkpoint(self, task: Task, checkpoint: bytes | None) -> Task:
        """The task with its stage's checkpoint in this actor's folder (and the one it
        continues written there)."""
        if task.stage is None or task.stage.checkpoint is None:
            return task
        path = Path(self.scratch, f"{task.key}.checkpoint")
        if checkpoint is not None:
            path.write_bytes(checkpoint)
        else:
            path.unlink(missing_ok=True)
        return dataclasses.replace(task, stage=dataclasses.replace(task.stage,
                                                                   checkpoint=str(path)))
