"""What the pool's loop (:mod:`~cvlib.engine.pool`) needs of a backend, as Ray Tune's
controller needs its actor manager: start and stop trainers, hand one a task, and wait
for what they send. The loop decides everything else (what to hand out, when to retry,
how many trainers to keep); a backend only reaches its trainers:
:mod:`~cvlib.engine.local_backend`'s worker processes, or
:mod:`~cvlib.engine.ray_backend`'s Ray actors."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, Union

from cvlib.engine.events import Event, Task, TaskTaken
from cvlib.engine.scheduling import Slot


@dataclass(frozen=True, eq=False)
class Received:
    """A trainer sent something about the task it holds."""

    slot: Slot
    message: Event | TaskTaken


@dataclass(frozen=True, eq=False)
class Started:
    """A trainer that was starting can take tasks now."""

    slot: Slot


@dataclass(frozen=True, eq=False)
class Lost:
    """A trainer is gone (its process or node died, or it died starting); nothing more
    comes from it."""

    slot: Slot
    # Why, in words, for the cell's run.
    reason: str


Arrival = Union[Received, Started, Lost]


class Backend(Protocol):
    """Trainers of one kind, each a :class:`~cvlib.engine.scheduling.Slot`."""

    # What its trainers are, in words ("worker processes").
    trainers: str

    @property
    def capacity(self) -> int:
        """How many trainers it may run at once (known after :meth:`warm_up`)."""

    def warm_up(self) -> None:
        """Prepare what every trainer needs, before the store is opened."""

    def start(self) -> Slot:
        """Start a trainer; it reports Started unless it starts ready."""

    def send(self, slot: Slot, task: Task) -> None:
        """Hand a trainer a task (a trainer gone by then shows as Lost)."""

    def wait(self, slots: Sequence[Slot], timeout: float) -> list[Arrival]:
        """What the given trainers sent, waiting at most ``timeout`` seconds for the
        first (0: only what has arrived)."""

    def stop(self, slots: Sequence[Slot]) -> None:
        """Stop trainers (or forget lost ones), and free what they held."""

    def close(self, slots: Sequence[Slot]) -> None:
        """Stop the last trainers and whatever the backend started for them."""

    def params(self) -> dict[str, str]:
        """The parent run's params that say what trains its cells."""

    def metrics(self) -> dict[str, float]:
        """The parent run's metrics about the training."""
