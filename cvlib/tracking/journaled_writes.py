"""Writes to a tracking server that outlive its outages: each is appended to the command's
journal (tracking.journal), then sent in order by a thread of its own, which retries
with backoff while the server is away. Training never waits on the server; a run's
metrics of several runs go out together (tracking.metric_writer's log_batch per run).

A server that answers 401 or 403 is retried too (a login changed mid-grid can be fixed
without losing anything); a write that the server refuses for good (another 4xx) is
dropped with a notice, so that one bad write cannot hold back the rest.
"""
from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cvlib.tracking.journal import Journal
from cvlib.tracking.metric_writer import client_group_writer
from cvlib.tracking.store_writes import (
    LOG_METRICS,
    RUN_ENDINGS,
    StoreWrites,
    apply,
    metric_record,
)

# Retries of a write that failed: the first after this many seconds, doubling up to the
# longest (a server back from an outage is noticed within it).
FIRST_RETRY_SECONDS = 0.5
LONGEST_RETRY_SECONDS = 8.0
# MLflow's client settings while a journal sends. Its client would retry each call for
# minutes (7 retries, doubling from 2 s) before this thread could say the server is away;
# here it gives up after about 7 s (retries after 1, 2 and 4 s, which a server busy for a
# moment still answers), and this thread retries on. And it would print a link for each
# ended run, from this thread, between the progress lines.
CLIENT_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
                   "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
                   "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
# HTTP statuses that say the server is away or busy, or the login is refused: retried.
RETRIED_STATUSES = (401, 403, 408, 429)


def configure_client() -> None:
    """Apply CLIENT_SETTINGS in this process, where the user has not set them."""
    for name, value in CLIENT_SETTINGS.items():
        os.environ.setdefault(name, value)


@dataclass(frozen=True)
class StoreHealth:
    """How the sending goes.

    Attributes:
        unreachable_since: Unix time of the first failure of the write now retried, or
            None while writes go through.
        reason: Why the last attempt failed.
        waiting: Writes journaled and not yet taken by the store.
        outages: Outages so far that the store has recovered from and caught up on.
        last_outage: The last of them: seconds unreachable, seconds from its return
            until every write journaled meanwhile was sent, and how many those were.
    """

    unreachable_since: float | None
    reason: str
    waiting: int
    outages: int = 0
    last_outage: tuple[float, float, int] | None = None


def _permanent(error: Exception) -> bool:
    """Whether the server refused a write for good (a 4xx other than RETRIED_STATUSES)."""
    if not isinstance(error, MlflowException):
        return False
    status = error.get_http_status_code()
    return 400 <= status < 500 and status not in RETRIED_STATUSES


def _reason(error: Exception) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, MlflowException) and error.get_http_status_code() in (401, 403):
        return "the server refused the login"
    for known in ("Connection refused", "timed out", "Max retries exceeded"):
        if known in text:
            return known.lower()
    return text[:120]


def _in_groups(writes: list[tuple[int, dict]]) -> list[list[tuple[int, dict]]]:
    """Consecutive metric writes as one group (sent together), every other write alone."""
    groups = []
    for is_metrics, run in itertools.groupby(writes, lambda w: w[1]["op"] == LOG_METRICS):
        together = list(run)
        groups.extend([together] if is_metrics else [[write] for write in together])
    return groups


class JournaledWrites(StoreWrites):
    """Writes journaled, then sent to a tracking server by a thread.

    Args:
        client: The server's client.
        journal: This command's journal (new), or an earlier command's to replay.
        notify: Receives a line when the server goes away, when it is back, and when a
            write is dropped (called from the sending thread).
    """

    def __init__(self, client: MlflowClient, journal: Journal,
                 notify: Callable[[str], None] = print):
        configure_client()
        self._client = client
        self._journal = journal
        self._notify = notify
        self._run_ids = dict(journal.run_ids)
        self._queue: deque[tuple[int, dict]] = deque(journal.pending)
        # Writes of an earlier command may have reached the store before it stopped.
        self._replayed = {seq for seq, _ in journal.pending}
        self._in_flight = 0
        self._changed = threading.Condition()
        self._closing = False
        self._give_up = threading.Event()
        self._unreachable_since: float | None = None
        self._reason = ""
        # Since the store came back: when, after how long away, and the writes waiting.
        self._back: tuple[float, float, int] | None = None
        self._outages: list[tuple[float, float, int]] = []
        self._send_metrics = client_group_writer(client)
        self._sender = threading.Thread(target=self._send_all, name="cvlib-journal",
                                        daemon=True)
        self._sender.start()

    @property
    def journal_path(self) -> Path:
        """The journal's file."""
        return self._journal.path

    def health(self) -> StoreHealth:
        """How the sending goes now."""
        with self._changed:
            return StoreHealth(self._unreachable_since, self._reason,
                               len(self._queue) + self._in_flight, len(self._outages),
                               self._outages[-1] if self._outages else None)

    def wait(self, patience: float, on_wait: Callable[[StoreHealth], None] | None = None
             ) -> bool:
        """Wait until the store has taken every write, or has been unreachable for
        ``patience`` seconds.

        Args:
            patience: Seconds the store may stay unreachable.
            on_wait: Called about once a second while writes wait, with the health.

        Returns:
            Whether every write was taken.
        """
        while True:
            with self._changed:
                if not self._queue and not self._in_flight:
                    return True
                self._changed.wait(timeout=1.0)
            health = self.health()
            if not health.waiting:
                return True
            if on_wait is not None:
                on_wait(health)
            if (health.unreachable_since is not None
                    and time.time() - health.unreachable_since > patience):
                return False

    def close(self) -> bool:
        """Stop sending (call :meth:`wait` first to send everything); the journal is
        removed when the store took every write, else kept for a later command.

        Returns:
            Whether the journal was removed.
        """
        with self._changed:
            self._closing = True
            done = not self._queue and not self._in_flight
            self._changed.notify_all()
        self._give_up.set()
        self._sender.join(timeout=5)
        self._journal.close(remove=done)
        return done

    def _submit(self, op: dict, folder: str | None = None) -> None:
        seq, op = self._journal.append(op, folder)
        if op["op"] in RUN_ENDINGS:
            self._journal.sync()
        with self._changed:
            self._queue.append((seq, op))
            self._changed.notify_all()

    def _send_all(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._closing:
                    self._changed.wait()
                if self._closing:
                    return
                writes = list(self._queue)
                self._queue.clear()
                self._in_flight = len(writes)
            for group in _in_groups(writes):
                created = set(self._run_ids)
                if not self._until_sent(group):
                    return
                self._journal.ack([seq for seq, _ in group], {
                    key: run_id for key, run_id in self._run_ids.items() if key not in created})
                with self._changed:
                    self._in_flight -= len(group)
                    if self._back is not None and not self._queue and not self._in_flight:
                        back_at, away, backlog = self._back
                        self._outages.append((away, time.time() - back_at, backlog))
                        self._back = None
                    self._changed.notify_all()

    def _until_sent(self, group: list[tuple[int, dict]]) -> bool:
        """Send a group, retrying with backoff; False when the command gave up first."""
        attempt = 0
        while True:
            started = time.time()
            try:
                self._send(group, maybe_done=attempt > 0
                           or any(seq in self._replayed for seq, _ in group))
            except Exception as error:  # MLflow raises many kinds for a server away
                if _permanent(error):
                    return self._refused(group, error)
                with self._changed:
                    if self._unreachable_since is None:
                        self._unreachable_since = started
                    self._reason = _reason(error)
                if self._give_up.wait(min(FIRST_RETRY_SECONDS * 2 ** attempt,
                                          LONGEST_RETRY_SECONDS)):
                    return False
                attempt += 1
                continue
            with self._changed:
                if self._unreachable_since is not None:
                    self._back = (time.time(), time.time() - self._unreachable_since,
                                  len(self._queue) + self._in_flight)
                self._unreachable_since, self._reason = None, ""
            return True

    def _refused(self, group: list[tuple[int, dict]], error: Exception) -> bool:
        """A write refused for good: dropped with a notice (each of a group sent alone,
        so that only the refused one is dropped)."""
        if len(group) > 1:
            return all(self._until_sent([write]) for write in group)
        self._notify(f"the tracking server refused a write ({group[0][1]['op']}) for good, "
                     f"dropped: {_reason(error)}")
        return True

    def _send(self, group: list[tuple[int, dict]], maybe_done: bool) -> None:
        if group[0][1]["op"] == LOG_METRICS:
            self._send_metrics([metric_record(op, self._run_ids) for _, op in group])
        else:
            apply(self._client, group[0][1], self._run_ids, maybe_done=maybe_done)


def replay_journals(client: MlflowClient, tracking_uri: str, folder: Path, patience: float,
                    echo: Callable[[str], None]) -> bool:
    """Send the writes that earlier commands journaled for this store and could not send.

    Args:
        client: The store's client.
        tracking_uri: The store.
        folder: Where journals are kept.
        patience: Seconds the store may stay unreachable.
        echo: Receives one line per journal replayed.

    Returns:
        Whether every journal was sent (and removed).
    """
    for journal in Journal.unfinished(folder, tracking_uri):
        count, started = len(journal.pending), time.monotonic()
        writes = JournaledWrites(client, journal, notify=echo)
        sent = writes.wait(patience)
        writes.close()
        if not sent:
            return False
        echo(f"sent {count} writes that an earlier command journaled in {journal.path} "
             f"({time.monotonic() - started:.1f} s)")
    return True
