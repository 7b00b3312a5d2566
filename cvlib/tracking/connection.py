"""The connection of a command to one MLflow store: the checked client, and how writes
reach the store. A SQLite store is written at once; a tracking server, for a command
that trains, through the command's journal (tracking.journal) and a sending thread, so
that training goes on while the server is away, after the journals that earlier commands
left. The runs written through it are tracking.writer's.
"""
from __future__ import annotations

import time
from typing import Callable

from cvlib.errors import StoreUnavailable
from cvlib.tracking.journal import Journal
from cvlib.tracking.journaled_writes import JournaledWrites, StoreHealth, replay_journals
from cvlib.tracking.store import check_reachable
from cvlib.tracking.store_writes import DirectWrites, StoreWrites
from cvlib.tracking.uris import (
    DEFAULT_STORE_TIMEOUT_MINUTES,
    JOURNAL_FOLDER,
    is_server,
    without_credentials,
)


class StoreConnection:
    """One store, opened and checked, and the way its writes go.

    Args:
        tracking_uri: The store; checked on creation.
        journal: Journal the writes to a tracking server (a command that trains).
        store_timeout: Seconds a tracking server may stay unreachable before the
            command gives up (StoreUnavailable), its writes kept in the journal.
        echo: Receives a line for each earlier journal sent.

    Raises:
        TrackingError: when the store cannot be used (see store.check_reachable).
        StoreUnavailable: when an earlier command's journal could not be sent.
    """

    def __init__(self, tracking_uri: str, journal: bool = False,
                 store_timeout: float = DEFAULT_STORE_TIMEOUT_MINUTES * 60,
                 echo: Callable[[str], None] = print):
        self.tracking_uri = tracking_uri
        self.store_timeout = store_timeout
        self.client = check_reachable(tracking_uri)
        self.writes: StoreWrites
        if journal and is_server(tracking_uri):
            if not replay_journals(self.client, tracking_uri, JOURNAL_FOLDER, store_timeout,
                                   echo):
                raise StoreUnavailable(
                    f"the tracking server {without_credentials(tracking_uri)} went away "
                    f"while the journals of earlier commands in {JOURNAL_FOLDER} were sent; "
                    f"they are kept: run the command again when it is back")
            self.writes = JournaledWrites(self.client,
                                          Journal.create(JOURNAL_FOLDER, tracking_uri), echo)
        else:
            self.writes = DirectWrites(tracking_uri, self.client)

    def flush_metrics(self) -> None:
        """Write the metrics held back (tracking.metric_writer)."""
        self.writes.flush()

    def health(self) -> StoreHealth | None:
        """How the journal's sending goes; None without a journal."""
        return self.writes.health() if isinstance(self.writes, JournaledWrites) else None

    def check(self) -> StoreHealth | None:
        """The store's health (:meth:`health`).

        Raises:
            StoreUnavailable: when the server has been unreachable for longer than
                ``store_timeout``.
        """
        health = self.health()
        if (health is not None and health.unreachable_since is not None
                and time.time() - health.unreachable_since > self.store_timeout):
            raise self._gave_up(health)
        return health

    def sync(self, on_wait: Callable[[StoreHealth], None] | None = None) -> None:
        """Wait until the store has every write made so far (before reading it back).

        Raises:
            StoreUnavailable: when the server stays unreachable for ``store_timeout``.
        """
        if isinstance(self.writes, JournaledWrites):
            if not self.writes.wait(self.store_timeout, on_wait):
                raise self._gave_up(self.writes.health())

    def close(self, wait: bool, on_wait: Callable[[StoreHealth], None] | None = None) -> str:
        """Stop writing; a journal is removed once the store has all its writes, else kept.

        Args:
            wait: Wait for the store to take every write, while it is unreachable for
                at most ``store_timeout``; False: only while it answers.
            on_wait: Called about once a second while writes wait, with the health.

        Returns:
            What happened to the writes not sent ("" when none are left).

        Raises:
            StoreUnavailable: with ``wait``, when writes are left.
        """
        if not isinstance(self.writes, JournaledWrites):
            self.writes.flush()
            return ""
        try:
            self.writes.wait(self.store_timeout if wait else 0.0, on_wait)
        finally:  # also on Ctrl-C while waiting: the journal is kept, on disk
            health = self.writes.health()
            removed = self.writes.close()
        if removed:
            return ""
        if wait:
            raise self._gave_up(health)
        return (f"{health.waiting} writes for {without_credentials(self.tracking_uri)} are "
                f"kept in {self.writes.journal_path}; the next cvlib command on that server "
                f"sends them first")

    def _gave_up(self, health: StoreHealth) -> StoreUnavailable:
        since = time.strftime("%H:%M:%S", time.localtime(health.unreachable_since))
        return StoreUnavailable(
            f"the tracking server {without_credentials(self.tracking_uri)} has been "
            f"unreachable since {since} ({health.reason}), longer than --store-timeout "
            f"({self.store_timeout / 60:g} min); {health.waiting} writes are kept in "
            f"{self.writes.journal_path}: run the same command again when the server is "
            f"back, and it sends them, then resumes")
