"""The pool's loop, one for every backend: hand each idle trainer the waiting cell that
best reuses its compiled models, pass what the trainers send to the recorder, and decide
what a lost trainer costs its cell (the retry policy of :mod:`~cvlib.engine.retries`).
A :class:`~cvlib.engine.backend.Backend` only starts, reaches and stops the trainers,
as Ray Tune's actor manager does for its controller.

The recorder runs in this process, the only writer of the store (so a SQLite store
never sees two writers)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from cvlib.engine.backend import Arrival, Backend, Lost, Received, Started
from cvlib.engine.events import ENDINGS, CellFailed, CellRetried, EventSink, TaskTaken
from cvlib.engine.retries import RetryPolicy
from cvlib.engine.scheduling import Slot, hand_out
from cvlib.engine.trials import CellTrial, Status

# Whenever no message waits, the loop writes what the recorder held back, then waits at
# most this long for one (and looks again at stalls and starts).
POLL_SECONDS = 0.5
# At the start, trainers still starting (Ray actors being placed) are awaited this long
# before tasks go out, so that the first cells spread over every trainer.
STARTUP_WAIT_SECONDS = 120.0
# Cells wait this long for a trainer that can take them (no Ray node can hold one)
# before they fail.
STALL_TIMEOUT_SECONDS = 600.0


@dataclass
class _Round:
    """One call of :meth:`CellPool.run`: how many of its cells have not ended yet, those
    waiting for a trainer, and the trainers lost since the last sign of life from any."""

    recorder: EventSink
    waiting: list[CellTrial]
    open: int
    # Called with each trial whose task ended; returns the trials to train next.
    then: Callable[[CellTrial], list[CellTrial]] | None = None
    losses_in_a_row: int = 0
    last_loss: str = ""
    # Since when cells wait with no trainer training (None: they do not).
    stalled_since: float | None = None


class CellPool:
    """Trainers that train cells, kept across calls of :meth:`run` (successive halving's
    rungs, a command's grids), so that each starts TensorFlow's runtime and loads the
    data once.

    One trainer per cell at most, up to the backend's capacity. A trainer lost with a
    cell (a worker process killed or out of memory, a Ray node gone) costs the cell a
    retry only once the trainer has taken it: the cell then trains again from its first
    epoch in a new run, up to the policy's retries, and fails after; a task handed to a
    trainer that died before taking it goes back to the queue. A new trainer replaces a
    lost one while cells wait. Trainers that keep dying with no sign of life in between
    (more than twice the capacity) fail the waiting cells, unrun.

    Args:
        backend: Starts, reaches and stops the trainers.
        retries: What a lost cell may cost (default: RetryPolicy()).
    """

    def __init__(self, backend: Backend, retries: RetryPolicy | None = None):
        self.backend = backend
        self.retries = retries or RetryPolicy()
        self.slots: list[Slot] = []

    @property
    def workers(self) -> int:
        """Cells trained at once at most (the backend's capacity)."""
        return self.backend.capacity

    def warm_up(self) -> None:
        """Prepare the backend (the fork server, the Ray cluster)."""
        self.backend.warm_up()

    def params(self) -> dict[str, str]:
        """The parent run's params that say what trains its cells."""
        return self.backend.params()

    def metrics(self) -> dict[str, float]:
        """The parent run's metrics about the training."""
        return self.backend.metrics()

    def __enter__(self) -> CellPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stop the trainers (a grid that ends early leaves cells unrun)."""
        slots, self.slots = self.slots, []
        self.backend.close(slots)

    def resize(self, tasks: int) -> None:
        """Keep one trainer per task, at most ``workers``: start the missing ones, stop
        idle ones beyond (those not started yet first, then the latest started), which
        frees their cores or their cluster for others.

        Args:
            tasks: How many tasks are left to train.
        """
        wanted = min(self.workers, tasks)
        while len(self.slots) < wanted:
            self.slots.append(self.backend.start())
        idle = sorted((slot for slot in self.slots if slot.holding is None),
                      key=lambda slot: (slot.ready, -slot.ready_at))
        self._stop(idle[:max(len(self.slots) - wanted, 0)])

    def run(self, trials: list[CellTrial], recorder: EventSink,
            then: Callable[[CellTrial], list[CellTrial]] | None = None) -> None:
        """Train the trials' tasks; pass their events to the recorder until each has
        ended (finished, or failed), and each task that ``then`` added too.

        Args:
            trials: The cells, each with its task assigned.
            recorder: Handles every event in this process, and flushes when none waits.
            then: Called with each trial whose task ended (after the recorder handled its
                ending), returns trials with new tasks assigned, which wait for the next
                idle trainer: a sampling search's next stage or next proposal, handed
                out at once rather than after every task of a wave has ended.
        """
        round_ = _Round(recorder, list(trials), len(trials), then=then)
        self.resize(len(trials))
        self._await_start(round_)
        while round_.open:
            for slot in sorted((s for s in self.slots if s.ready and s.holding is None),
                               key=lambda s: s.ready_at):
                self._hand_out(slot, round_)
            self._watch_stall(round_)
            if not round_.open:
                break
            arrivals = self.backend.wait(self.slots, 0)
            if not arrivals:
                recorder.flush()
                arrivals = self.backend.wait(self.slots, POLL_SECONDS)
            for arrival in arrivals:
                self._take(arrival, round_)

    def _await_start(self, round_: _Round) -> None:
        """Wait for the trainers still starting, so that the first tasks spread over all
        of them; those that a full cluster cannot place yet join later."""
        deadline = time.monotonic() + STARTUP_WAIT_SECONDS
        while time.monotonic() < deadline:
            starting = [slot for slot in self.slots if not slot.ready]
            if not starting:
                return
            for arrival in self.backend.wait(starting, POLL_SECONDS):
                self._take(arrival, round_)
            if self._gave_up(round_):
                return

    def _hand_out(self, slot: Slot, round_: _Round) -> None:
        trial = hand_out(slot, self.slots, round_.waiting)
        if trial is not None:
            trial.status = Status.TRAINING
            self.backend.send(slot, trial.task)

    def _take(self, arrival: Arrival, round_: _Round) -> None:
        """Act on one thing a trainer sent, or on its loss."""
        slot = arrival.slot
        if isinstance(arrival, Lost):
            self._lost(slot, arrival.reason, round_)
            return
        round_.losses_in_a_row = 0
        if isinstance(arrival, Started):
            slot.ready, slot.ready_at = True, time.monotonic()
            return
        assert isinstance(arrival, Received)
        trial, message = slot.holding, arrival.message
        if trial is None:  # a trainer given up on
            return
        if isinstance(message, TaskTaken):
            trial.taken = True
            return
        round_.recorder.handle(message)
        if isinstance(message, ENDINGS):
            self._ended(trial, round_)
            slot.holding = None

    def _lost(self, slot: Slot, reason: str, round_: _Round) -> None:
        """A trainer is gone: its cell goes back to the queue if it had not taken it,
        else the retry policy decides; a new trainer takes its place while cells wait."""
        self._stop([slot])
        round_.losses_in_a_row += 1
        round_.last_loss = reason
        trial = slot.holding
        if trial is not None and trial.status is Status.TRAINING:
            if not trial.taken:
                trial.status = Status.WAITING
                round_.waiting.append(trial)
            else:
                decision = self.retries.after_loss(trial, reason)
                round_.recorder.handle(decision)
                if isinstance(decision, CellRetried):
                    round_.waiting.append(trial)
                else:
                    self._ended(trial, round_)
        if not self._gave_up(round_) and len(self.slots) < min(self.workers, round_.open):
            self.slots.append(self.backend.start())

    def _gave_up(self, round_: _Round) -> bool:
        """Fail the waiting cells when trainers keep dying with no sign of life in
        between (cvlib missing on a Ray node, a worker killed at every start)."""
        if round_.losses_in_a_row <= 2 * self.workers:
            return False
        self._fail_waiting(round_, f"{self.backend.trainers} keep dying ({round_.last_loss})")
        return True

    def _watch_stall(self, round_: _Round) -> None:
        """Fail the waiting cells when no trainer could take them for a long time."""
        if not round_.waiting or any(slot.holding is not None for slot in self.slots):
            round_.stalled_since = None
            return
        round_.stalled_since = round_.stalled_since or time.monotonic()
        if time.monotonic() - round_.stalled_since > STALL_TIMEOUT_SECONDS:
            self._fail_waiting(round_, f"no {self.backend.trainers} could take it for "
                                       f"{STALL_TIMEOUT_SECONDS:g} s")

    def _fail_waiting(self, round_: _Round, reason: str) -> None:
        waiting, round_.waiting = round_.waiting, []
        for trial in waiting:
            round_.recorder.handle(CellFailed(trial.key, f"not run: {reason}"))
            self._ended(trial, round_)

    @staticmethod
    def _ended(trial: CellTrial, round_: _Round) -> None:
        trial.status = Status.ENDED
        round_.open -= 1
        if round_.then is not None:
            more = round_.then(trial)
            round_.waiting += more
            round_.open += len(more)

    def _stop(self, slots: list[Slot]) -> None:
        for slot in slots:
            self.slots.remove(slot)
        self.backend.stop(slots)
