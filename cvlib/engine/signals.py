"""SIGINT and SIGTERM during a grid: turned into an exception in the main thread, which
ends the open runs as KILLED; a signal that arrives during a store write waits for the
write's end."""
from __future__ import annotations

import contextlib
import signal
from dataclasses import dataclass
from typing import Iterator


class GridInterrupted(BaseException):
    """SIGINT or SIGTERM arrived; a BaseException so that no cell's handler eats it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class _StoreWrites:
    """The store writes in progress, and a signal that arrived during one."""

    depth: int = 0
    pending_signal: int | None = None


_STORE_WRITES = _StoreWrites()


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into GridInterrupted in the main thread, at once or,
    during a :func:`store_write`, at its end."""
    def handler(signum, frame):
        if _STORE_WRITES.depth:
            _STORE_WRITES.pending_signal = signum
        else:
            raise GridInterrupted(signum)

    previous = {signum: signal.signal(signum, handler)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def store_write() -> Iterator[None]:
    """A write to the store that SIGINT and SIGTERM wait for: raised inside an
    SQLite transaction, GridInterrupted left the store locked, and marking the
    open runs KILLED then waited out SQLite's lock timeout."""
    _STORE_WRITES.depth += 1
    try:
        yield
    finally:
        _STORE_WRITES.depth -= 1
        if not _STORE_WRITES.depth and _STORE_WRITES.pending_signal is not None:
            signum, _STORE_WRITES.pending_signal = _STORE_WRITES.pending_signal, None
            raise GridInterrupted(signum)
