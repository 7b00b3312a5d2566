"""Ray actors across a cluster as the pool's backend: the same loop
(:mod:`~cvlib.engine.pool`) hands them tasks, and the same events reach the same
recorder, in the command's process, which alone writes to the store.

The driver loads CIFAR-10 once and puts its raw arrays in the object store, so nodes need
no copy. Each cell slot is a long-lived :class:`~cvlib.engine.ray_actor.CellTrainer` that
keeps its compiled models. A cell's checkpoints (after its epochs, or a halving stage's
end) come back to the driver, into the command's folder as a local worker's do, and go
out with the task that continues the cell, which may train on another node.

A node that dies takes its actor with it: the loop's retry policy decides about the cell
it trained (continued from the last checkpoint that reached the driver, one epoch behind
at most), and a new actor is started, which Ray places when a node can hold it.
Nothing forks here: a process forked after ``ray.init`` hangs on its first Ray call.
"""
from __future__ import annotations

import contextlib
import functools
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from cvlib.checkpoints import replace_file
from cvlib.data import DataCache
from cvlib.engine.backend import Arrival, Lost, Received, Started
from cvlib.engine.events import ENDINGS, Task
from cvlib.engine.ray_actor import CellTrainer, StageCheckpoint, TaskTime
from cvlib.engine.ray_cluster import RayCluster, RayOptions
from cvlib.engine.scheduling import Slot
from cvlib.engine.signals import GridInterrupted
from cvlib.tracking.schema import RAY_DISPATCH_METRIC

# Idle actors asked to end get this long to do so before they are killed.
GRACEFUL_END_SECONDS = 5.0

Method = TypeVar("Method", bound=Callable[..., Any])


@contextlib.contextmanager
def _interrupts_through_ray() -> Iterator[None]:
    """Let Ctrl-C and SIGTERM out of a Ray call as GridInterrupted: Ray runs the signal
    handler inside its calls and raises its own exception from the handler's."""
    try:
        yield
    except GridInterrupted:
        raise
    except BaseException as error:
        cause = error.__cause__ or error.__context__
        if isinstance(cause, GridInterrupted):
            raise cause from None
        raise


def _ray_call(method: Method) -> Method:
    """A method that calls Ray, with interrupts let out as GridInterrupted."""
    @functools.wraps(method)
    def wrapped(*args, **kwargs):
        with _interrupts_through_ray():
            return method(*args, **kwargs)
    return wrapped  # type: ignore[return-value]


@dataclass(eq=False, kw_only=True)
class _Actor(Slot):
    """A cell slot's actor, its start-up, and the events of the task it trains."""

    handle: Any
    # Answers where the actor runs once it has started; None after.
    starting: Any
    place: str = ""
    # The task it trains, its events (a Ray ObjectRefGenerator), since when, and the
    # seconds the actor says it spent on it.
    task: Task | None = None
    stream: Any = None
    handed_at: float = 0.0
    task_seconds: float = 0.0


class RayActors:
    """Ray actors that train cells, one per cell slot of the cluster.

    Args:
        data: The command's data cache; its raw arrays go to the object store.
        options: Where and how the cells train.
        deterministic: The actors train with TensorFlow's op determinism.
    """

    trainers = "Ray actors"

    def __init__(self, data: DataCache, options: RayOptions, deterministic: bool = False):
        self.data = data
        self.options = options
        self.deterministic = deterministic
        self.cluster = RayCluster(options)
        self._raw = None
        self._trainer_class = None
        # Per task: the driver's wait beyond the actor's own time on it.
        self.dispatch_seconds: list[float] = []

    @property
    def capacity(self) -> int:
        """The cluster's cell slots (1 until connected)."""
        return self.cluster.slots or 1

    def warm_up(self) -> None:
        """Connect to the cluster and put the raw data in its object store.

        Raises:
            CvlibError: for an unusable cluster or missing data.
        """
        self.cluster.connect()
        import ray

        self._raw = ray.put(self.data.raw())
        self._trainer_class = ray.remote(CellTrainer).options(**self.cluster.actor_options())

    def params(self) -> dict[str, str]:
        """The parent run's params that say what trains its cells."""
        return self.cluster.params()

    def metrics(self) -> dict[str, float]:
        """The parent run's metrics about the training: Ray's median dispatch time per
        task (hand-out to start, and end to arrival)."""
        if not self.dispatch_seconds:
            return {}
        return {RAY_DISPATCH_METRIC: statistics.median(self.dispatch_seconds)}

    @_ray_call
    def start(self) -> _Actor:
        """Start an actor; it reports Started once Ray has placed it and it has started
        TensorFlow."""
        handle = self._trainer_class.remote(self._raw, self.options.cpus_per_cell,
                                            self.cluster.gpus_per_cell, self.deterministic)
        return _Actor(handle=handle, starting=handle.where.remote(), ready=False)

    @_ray_call
    def send(self, slot: _Actor, task: Task) -> None:
        """Hand an actor a task, with the checkpoint of the stage it continues."""
        checkpoint = None
        if task.stage is not None and task.stage.start_epoch > 0:
            checkpoint = Path(task.stage.checkpoint).read_bytes()
        slot.task, slot.handed_at, slot.task_seconds = task, time.monotonic(), 0.0
        slot.stream = slot.handle.train.options(num_returns="streaming").remote(task,
                                                                                checkpoint)

    @_ray_call
    def wait(self, slots: Sequence[_Actor], timeout: float) -> list[Arrival]:
        """The next message of an actor's task, or an actor's start, or its loss.

        Returns:
            What arrived within ``timeout`` seconds (nothing if none did).
        """
        import ray

        waitables = {}
        for slot in slots:
            if slot.starting is not None:
                waitables[slot.starting] = slot
            elif slot.stream is not None:
                waitables[slot.stream] = slot
        if not waitables:
            time.sleep(timeout)
            return []
        ready, _ = ray.wait(list(waitables), num_returns=1, timeout=timeout)
        arrivals = []
        for slot in slots:
            if any(item is slot.starting for item in ready):
                arrivals.append(self._started(slot))
            elif slot.stream is not None and any(item is slot.stream for item in ready):
                arrival = self._next_message(slot)
                if arrival is not None:
                    arrivals.append(arrival)
        return arrivals

    def _started(self, slot: _Actor) -> Arrival:
        import ray

        try:
            slot.place = ray.get(slot.starting)
        except ray.exceptions.RayError as error:
            return Lost(slot, f"its Ray actor died starting ({_one_line(error)})")
        slot.starting = None
        return Started(slot)

    def _next_message(self, slot: _Actor) -> Arrival | None:
        """The actor's next message for the loop; the messages for this backend alone (a
        stage's checkpoint, the actor's time) are taken here (None)."""
        import ray

        try:
            message = ray.get(next(slot.stream))
        except (StopIteration, ray.exceptions.RayError) as error:
            death = _one_line(error) if str(error) else "its task ended early"
            return Lost(slot, f"its Ray node or actor was lost ({death})")
        if isinstance(message, StageCheckpoint):
            replace_file(slot.task.stage.checkpoint, message.payload)
            return None
        if isinstance(message, TaskTime):
            slot.task_seconds = message.seconds
            return None
        if isinstance(message, ENDINGS):
            self.dispatch_seconds.append(time.monotonic() - slot.handed_at
                                         - slot.task_seconds)
            slot.stream = slot.task = None
        return Received(slot, message)

    @_ray_call
    def stop(self, slots: Sequence[_Actor]) -> None:
        """Kill actors (idle ones beyond the work left, or lost ones)."""
        import ray

        for slot in slots:
            with contextlib.suppress(Exception):
                ray.kill(slot.handle, no_restart=True)

    @_ray_call
    def close(self, slots: Sequence[_Actor]) -> None:
        """Stop the actors (the idle ones let end on their own, which removes their
        temporary files), and the local Ray instance if this command started it."""
        if slots:
            import ray

            endings = [slot.handle.__ray_terminate__.remote() for slot in slots
                       if slot.stream is None and slot.starting is None]
            with contextlib.suppress(Exception):
                ray.wait(endings, num_returns=len(endings), timeout=GRACEFUL_END_SECONDS)
            self.stop(slots)
        self._raw = None
        self.cluster.shutdown()


def _one_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0].strip() if lines else ''}"[:300]
