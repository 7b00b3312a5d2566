"""Cells trained by Ray actors across a cluster, behind the same interface as the local
:class:`~cvlib.engine.pool.WorkerPool`: the same events reach the same recorder, in the
command's process, which alone writes to the store.

The driver loads CIFAR-10 once and puts its raw arrays in the object store, so nodes need
no copy. Each cell slot is a long-lived :class:`~cvlib.engine.ray_actor.CellTrainer` that
keeps its compiled models, handed one task at a time in the order of
:mod:`~cvlib.engine.scheduling`. A halving stage's checkpoint comes back to the driver and
goes out with the cell's next stage, which may train on another node.

A node that dies takes its actor with it: the cell it trained is retried from its first
epoch in a new run (at most ``retries`` times), and a new actor is started, which Ray
places when a node can hold it. Nothing forks here: a process forked after ``ray.init``
hangs on its first Ray call.
"""
from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from cvlib.data import DataCache
from cvlib.engine.events import ENDINGS, CellFailed, CellRetried, Event, EventSink, Task
from cvlib.engine.ray_actor import CellTrainer, StageCheckpoint, TaskTime
from cvlib.engine.ray_cluster import RayCluster, RayOptions
from cvlib.engine.scheduling import Slot, hand_out
from cvlib.engine.signals import GridInterrupted
from cvlib.grids import Stage
from cvlib.tracking.schema import RAY_DISPATCH_METRIC

POLL_SECONDS = 0.5
# At the start, actors are awaited this long before tasks go out, so that the first
# cells spread over every actor that the cluster can place.
STARTUP_WAIT_SECONDS = 120.0
# Tasks wait this long for a node that can hold a cell before they fail.
PLACEMENT_TIMEOUT_SECONDS = 600.0
# Idle actors asked to end get this long to do so before they are killed.
GRACEFUL_END_SECONDS = 5.0


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


@dataclass
class _Actor(Slot):
    """A cell slot's actor, its start-up, and the events of the task it trains."""

    handle: Any
    # Answers where the actor runs once it has started; None after.
    starting: Any
    # When it started (its order among the ready actors), and where it runs.
    ready_at: float = 0.0
    place: str = ""
    # The events of the task it trains (a Ray ObjectRefGenerator), since when, and the
    # seconds the actor says it spent on it.
    stream: Any = None
    handed_at: float = 0.0
    task_seconds: float = 0.0


class RayPool:
    """Ray actors that train cells, kept across calls of :meth:`run` (successive
    halving's rungs, a command's grids), so that each starts TensorFlow and gets the data
    once.

    Args:
        data: The command's data cache; its raw arrays go to the object store.
        options: Where and how the cells train.
    """

    def __init__(self, data: DataCache, options: RayOptions):
        self.data = data
        self.options = options
        self.cluster = RayCluster(options)
        self.workers = 1  # cell slots, known once connected
        self._raw = None
        self._actors: list[_Actor] = []
        self._trainer_class = None
        # Why the last actor died, and how many died starting since one started.
        self._last_death = ""
        self._deaths_at_start = 0
        # Per task: the driver's wait beyond the actor's own time on it.
        self.dispatch_seconds: list[float] = []

    def warm_up(self) -> None:
        """Connect to the cluster and put the raw data in its object store.

        Raises:
            CvlibError: for an unusable cluster or missing data.
        """
        self.cluster.connect()
        self.workers = self.cluster.slots
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

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def run(self, tasks: list[Task], recorder: EventSink) -> None:
        """Train these tasks; pass their events to the recorder until each has ended.

        Args:
            tasks: What to train.
            recorder: Handles every event in this process, and flushes when none waits.
        """
        with _interrupts_through_ray():
            self._run(tasks, recorder)

    def _run(self, tasks: list[Task], recorder: EventSink) -> None:
        import ray

        handle = recorder.handle
        waiting = list(tasks)
        remaining = {task.key for task in tasks}
        attempts: dict[int, int] = {}
        self._resize(len(tasks))
        self._await_start()
        stalled_since = None
        while remaining:
            for actor in self._idle_actors():
                self._hand_out(actor, waiting)
            training = [a for a in self._actors if a.stream is not None]
            starting = [a for a in self._actors if a.starting is not None]
            if training or not waiting:
                stalled_since = None
            elif self._deaths_at_start > 2 * self.workers:  # e.g. cvlib missing on the nodes
                self._fail_waiting(waiting, remaining, handle,
                                   f"Ray actors keep dying as they start ({self._last_death})")
                continue
            else:  # no node can take a cell now
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > PLACEMENT_TIMEOUT_SECONDS:
                    self._fail_waiting(waiting, remaining, handle,
                                       f"no Ray node could take it for "
                                       f"{PLACEMENT_TIMEOUT_SECONDS:g} s")
                    continue
            waitables = [a.stream for a in training] + [a.starting for a in starting]
            ready, _ = ray.wait(waitables, num_returns=1, timeout=0)
            if not ready:
                recorder.flush()
                ready, _ = ray.wait(waitables, num_returns=1, timeout=POLL_SECONDS)
            for actor in starting:
                if actor.starting in ready:
                    self._started(actor)
            for actor in training:
                if any(item is actor.stream for item in ready):
                    self._take_event(actor, waiting, remaining, attempts, handle)

    def _take_event(self, actor: _Actor, waiting: list[Task], remaining: set[int],
                    attempts: dict[int, int], handle: Callable[[Event], None]) -> None:
        """Record the next event of an actor's task, or retry the task if the actor was
        lost with it."""
        import ray

        try:
            event = ray.get(next(actor.stream))
        except (StopIteration, ray.exceptions.RayError) as error:
            self._last_death = _one_line(error) if str(error) else "its task ended early"
            self._lost(actor, waiting, remaining, attempts, handle)
            return
        if isinstance(event, StageCheckpoint):
            Path(actor.holding.stage.checkpoint).write_bytes(event.payload)
            return
        if isinstance(event, TaskTime):
            actor.task_seconds = event.seconds
            return
        if isinstance(event, ENDINGS):
            self.dispatch_seconds.append(time.monotonic() - actor.handed_at
                                         - actor.task_seconds)
        handle(event)
        if isinstance(event, ENDINGS):
            remaining.discard(event.key)
            actor.holding = actor.stream = None

    def _lost(self, actor: _Actor, waiting: list[Task], remaining: set[int],
              attempts: dict[int, int], handle: Callable[[Event], None]) -> None:
        """An actor died with its task: retry the task, or fail it after the retries, and
        start an actor in its place."""
        task = actor.holding
        self._stop([actor])
        self._start_actor()
        if task is None or task.key not in remaining:
            return
        reason = f"its Ray node or actor was lost ({self._last_death})"
        tried = attempts[task.key] = attempts.get(task.key, 0) + 1
        if tried > self.options.retries:
            remaining.discard(task.key)
            handle(CellFailed(task.key, f"{reason}, {tried} times"))
            return
        handle(CellRetried(task.key, f"{reason}; training it again from its first epoch "
                                     f"(retry {tried} of {self.options.retries})"))
        if task.stage is not None:  # the new run trains every epoch up to the stage's end
            task = dataclasses.replace(task, stage=Stage(0, task.stage.end_epoch,
                                                         task.stage.checkpoint))
        waiting.append(task)

    def _fail_waiting(self, waiting: list[Task], remaining: set[int],
                      handle: Callable[[Event], None], reason: str) -> None:
        for task in waiting:
            handle(CellFailed(task.key, f"not run: {reason}"))
            remaining.discard(task.key)
        waiting.clear()

    def _started(self, actor: _Actor) -> bool:
        """Take an actor's answer to its start-up; False when it died starting."""
        import ray

        try:
            actor.place = ray.get(actor.starting)
        except ray.exceptions.RayError as error:
            self._last_death = _one_line(error)
            self._deaths_at_start += 1
            self._stop([actor])
            self._start_actor()
            return False
        actor.starting = None
        actor.ready_at = time.monotonic()
        self._deaths_at_start = 0
        return True

    def _await_start(self) -> None:
        """Wait for the actors still starting, so that the first tasks spread over all
        of them; those that a full cluster cannot place yet join later."""
        import ray

        deadline = time.monotonic() + STARTUP_WAIT_SECONDS
        while time.monotonic() < deadline:
            starting = [a for a in self._actors if a.starting is not None]
            if not starting:
                return
            ready, _ = ray.wait([a.starting for a in starting], num_returns=len(starting),
                                timeout=POLL_SECONDS)
            for actor in starting:
                if any(ref is actor.starting for ref in ready):
                    self._started(actor)

    def _idle_actors(self) -> list[_Actor]:
        """Started actors without a task, the earliest started first."""
        return sorted((a for a in self._actors if a.starting is None and a.holding is None),
                      key=lambda a: a.ready_at)

    def _hand_out(self, actor: _Actor, waiting: list[Task]) -> None:
        task = hand_out(actor, self._actors, waiting)
        if task is None:
            return
        checkpoint = None
        if task.stage is not None and task.stage.start_epoch > 0:
            checkpoint = Path(task.stage.checkpoint).read_bytes()
        actor.handed_at, actor.task_seconds = time.monotonic(), 0.0
        actor.stream = actor.handle.train.options(num_returns="streaming").remote(
            task, checkpoint)

    def _resize(self, tasks: int) -> None:
        """Keep one actor per task, at most ``workers``: start the missing ones, stop idle
        ones beyond (the latest started first), which frees the cluster for others."""
        wanted = min(self.workers, tasks)
        while len(self._actors) < wanted:
            self._start_actor()
        idle = [a for a in self._actors if a.holding is None]
        idle.sort(key=lambda a: (a.starting is None, a.ready_at), reverse=True)
        excess = len(self._actors) - wanted
        self._stop(idle[:max(excess, 0)])

    def _start_actor(self) -> None:
        handle = self._trainer_class.remote(self._raw, self.options.cpus_per_cell,
                                            self.cluster.gpus_per_cell)
        self._actors.append(_Actor(handle=handle, starting=handle.where.remote()))

    def _stop(self, actors: list[_Actor]) -> None:
        import ray

        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor.handle, no_restart=True)
            self._actors.remove(actor)

    def close(self) -> None:
        """Stop the actors (the idle ones let end on their own, which removes their
        temporary files), and the local Ray instance if this command started it."""
        if self._actors:
            import ray

            endings = [actor.handle.__ray_terminate__.remote() for actor in self._actors
                       if actor.holding is None and actor.starting is None]
            with contextlib.suppress(Exception):
                ray.wait(endings, num_returns=len(endings), timeout=GRACEFUL_END_SECONDS)
            self._stop(list(self._actors))
        self._raw = None
        self.cluster.shutdown()


def _one_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0].strip() if lines else ''}"[:300]
