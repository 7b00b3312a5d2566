"""The pool's loop over real local worker processes (forked from the fork server, training
real CIFAR-10 cells), with the events it hands on collected in order where the recorder
would take them: workers killed right after a cell, in the middle of sending, and long
epochs kept alive by heartbeats."""
import os
import signal
import time
from collections import Counter

import pytest

from cvlib.engine.events import (
    CellFailed,
    CellFinished,
    CellRetried,
    CellStarted,
    Heartbeat,
    MetricsLogged,
    Task,
)
from cvlib.engine.local_backend import LocalWorkers
from cvlib.engine.pool import CellPool
from cvlib.engine.retries import RetryPolicy
from cvlib.engine.trials import trials_of
from cvlib.grids import grid_from_dict

# Write, in /proc/PID/syscall: the call a process is blocked in.
WRITE_SYSCALL = "1"


class Events:
    """The recorder's place: keeps every event in order, and lets a test act on one as
    the loop hands it on (the loop waits meanwhile, as it waits for the recorder)."""

    def __init__(self, on_event=None):
        self.events = []
        self.on_event = on_event

    def handle(self, event) -> None:
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    def flush(self) -> None:
        pass

    def of(self, kind) -> list:
        return [event for event in self.events if isinstance(event, kind)]


def _trials(epochs: int, cells: int, **data):
    grid = grid_from_dict({
        "name": "pool", "seeds": list(range(cells)),
        "data": {"train_size": 100, "val_size": 100, "test_size": 100, **data},
        "model": {"widths": [4], "dense_units": 8},
        "train": {"epochs": epochs, "batch_size": 100}})
    trials = trials_of(grid.cells())
    for trial in trials:
        trial.assign(Task(trial.key, trial.cell))
    return trials


def _gone(pid: int, timeout: float = 30) -> None:
    """Wait until a killed process has been reaped by its parent (the fork server)."""
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < deadline, f"process {pid} still there"
        time.sleep(0.01)


def _blocked_in_write(pid: int) -> bool:
    """Whether a process's main thread waits in write(2): here, on its full pipe."""
    try:
        with open(f"/proc/{pid}/syscall") as status:
            return status.read().split()[0] == WRITE_SYSCALL
    except (FileNotFoundError, IndexError):
        return False


def test_a_worker_dead_right_after_its_cell_costs_the_next_cell_nothing(cifar_dir):
    """Killed as its cell's end reaches the recorder, before the loop hands it the next
    cell: that cell goes to a new worker untried, even with no retries allowed."""
    killed = []

    def kill_the_first_finisher(event) -> None:
        if isinstance(event, CellFinished) and not killed:
            pid = int(event.result.trained_on.rpartition(" pid ")[2])
            os.kill(pid, signal.SIGKILL)
            _gone(pid)
            killed.append(pid)

    trials = _trials(epochs=1, cells=3)
    events = Events(kill_the_first_finisher)
    with CellPool(LocalWorkers(str(cifar_dir), workers=2), RetryPolicy(retries=0)) as pool:
        pool.run(trials, events)
    assert killed
    assert not events.of(CellFailed) and not events.of(CellRetried)
    assert Counter(event.key for event in events.of(CellFinished)) == {0: 1, 1: 1, 2: 1}
    assert Counter(event.key for event in events.of(CellStarted)) == {0: 1, 1: 1, 2: 1}


@pytest.mark.timeout(300)
def test_a_worker_killed_while_sending_breaks_only_its_own_pipe(cifar_dir):
    """The loop stops reading (as while the recorder writes) until a worker blocks in the
    middle of sending on its full pipe, and that worker is killed there: the other
    worker's events still arrive, the killed cell is retried, and the grid ends. (With
    one queue shared by the workers, the killed writer kept the queue's lock and the
    other worker blocked on it for ever.)"""
    killed = []

    def kill_a_blocked_sender(event) -> None:
        if killed or not isinstance(event, MetricsLogged):
            return
        deadline = time.monotonic() + 120
        while not killed:
            for slot in pool.slots:
                if _blocked_in_write(slot.process.pid):
                    os.kill(slot.process.pid, signal.SIGKILL)
                    _gone(slot.process.pid)
                    killed.append(slot.holding.key)
                    return
            assert time.monotonic() < deadline, "no worker blocked in a send"
            time.sleep(0.01)

    # A cell's events fill a pipe's buffer (about 200 kB) before the cell ends: each
    # epoch's statistics, about 0.7 kB, then its statistics' table, about 6.6 kB an epoch.
    trials = _trials(epochs=50, cells=3, train_size=50)
    events = Events(kill_a_blocked_sender)
    with CellPool(LocalWorkers(str(cifar_dir), workers=2), RetryPolicy(retries=1)) as pool:
        pool.run(trials, events)
    assert len(killed) == 1
    (retried,) = events.of(CellRetried)
    assert retried.key == killed[0] and "worker process died (exit code -9)" in retried.message
    assert not events.of(CellFailed)
    assert Counter(event.key for event in events.of(CellFinished)) == {0: 1, 1: 1, 2: 1}


def test_a_local_worker_sends_heartbeats_while_an_epoch_is_silent(cifar_dir):
    """As a Ray actor does: while the first epoch traces and trains, with nothing else to
    send, the worker's heartbeats keep the cell's run alive for other hosts."""
    trials = _trials(epochs=1, cells=1)
    events = Events()
    with CellPool(LocalWorkers(str(cifar_dir), workers=2, heartbeat_seconds=0.1)) as pool:
        pool.run(trials, events)
    order = [type(event) for event in events.events]
    first_epoch = order.index(MetricsLogged)
    assert Heartbeat in order[order.index(CellStarted):first_epoch], order
    assert all(event.key == 0 for event in events.of(Heartbeat))
    assert order[-1] is CellFinished


def test_tasks_added_as_tasks_end_go_to_an_idle_trainer_while_others_train(cifar_dir):
    """What ``then`` returns trains at once: the next task of a trial that ended, and a
    new trial, on the trainer that freed up while the other still trains its long cell."""
    def trial(key: int, epochs: int, train_size: int):
        (made,) = trials_of(grid_from_dict({
            "name": "pool", "seeds": [key],
            "data": {"train_size": train_size, "val_size": 100, "test_size": 100},
            "model": {"widths": [4], "dense_units": 8},
            "train": {"epochs": epochs, "batch_size": 100}}).cells())
        made.key = key
        made.assign(Task(key, made.cell))
        return made

    long, short, added = trial(0, 40, 1000), trial(1, 1, 100), trial(2, 1, 100)
    ended = []

    def then(done) -> list:
        ended.append(done.key)
        if done is short and ended.count(short.key) == 1:  # its next task, and a new trial
            short.assign(Task(short.key, short.cell))
            return [short, added]
        return []

    events = Events()
    with CellPool(LocalWorkers(str(cifar_dir), workers=2)) as pool:
        pool.run([long, short], events, then)
    assert Counter(event.key for event in events.of(CellFinished)) == {0: 1, 1: 2, 2: 1}
    assert sorted(ended) == [0, 1, 1, 2]
    order = [(type(event), event.key) for event in events.events]
    assert order.index((CellFinished, 2)) < order.index((CellFinished, 0))
