"""Writes to a tracking server that outlive its outages: each is appended to the command's
journal (tracking.journal), then sent in order by a thread of its own, which retries
with backoff while the server is away. Training never waits on the server; a run's
metrics of several runs go out together (tracking.metric_writer's log_batch per run).

A write that fails for good is set aside in the rejected-writes file beside the journal
(tracking.rejected_writes), with a one-line notice, and the others go on: one the server
refuses (a 4xx other than RETRIED_STATUSES), or one that fails STRIKES times in a row
with the same error while the server answers other requests (a 5xx that always recurs,
a local error such as its files gone, a 403 for this write alone: the login may not
change that run). A server that refuses the login for every request (401 or 403 to the
probe as well) is retried, as one away or busy: a login changed mid-grid can be fixed
without losing anything.
"""
from __future__ import annotations

import itertools
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mlflow.entities import LifecycleStage
from mlflow.exceptions import MlflowException
from mlflow.server.security_utils import INVALID_HOST_MSG
from mlflow.tracking import MlflowClient

from cvlib.tracking.journal import Journal
from cvlib.tracking.metric_writer import client_group_writer
from cvlib.tracking.rejected_writes import rejected_count, rejected_file, set_aside
from cvlib.tracking.rest_once import store_answers
from cvlib.tracking.store_writes import (
    CREATE_RUN,
    DELETE_RUN,
    LOG_METRICS,
    RUN_ENDINGS,
    StoreWrites,
    apply,
    metric_record,
)
from cvlib.tracking.uris import without_credentials

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
# Of those, the statuses of a busy server, which may answer the probe and still refuse a
# write for a while: waited for, never counted against the write.
BUSY_STATUSES = (408, 429)
# A write that fails this many times in a row with the same error, while the server
# answers other requests, fails for good.
STRIKES = 3


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


def _status(error: Exception) -> int | None:
    return error.get_http_status_code() if isinstance(error, MlflowException) else None


def _refused(error: Exception) -> bool:
    """Whether the server refused a write for good (a 4xx other than RETRIED_STATUSES)."""
    status = _status(error)
    return status is not None and 400 <= status < 500 and status not in RETRIED_STATUSES


def _signature(error: Exception) -> tuple[str, int | None, str]:
    """What makes two failures the same error."""
    return type(error).__name__, _status(error), _reason(error)


def _reason(error: Exception) -> str:
    """Why a request failed, in a few words."""
    text = " ".join(str(error).split())
    if INVALID_HOST_MSG in text:
        return "the server refused its host name (cvlib server --allowed-hosts)"
    if isinstance(error, MlflowException) and error.get_http_status_code() in (401, 403):
        return "the server refused the login"
    server_error = re.search(r"too many (\d{3}) error responses", text)
    if server_error:
        return f"the server answered HTTP {server_error[1]}"
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
            write is set aside (called from the sending thread).
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
        # Runs this journal moves to the trash: a replayed write to one that is gone
        # already has nothing left to do.
        self._deleted = {op["run"] for _, op in journal.pending if op["op"] == DELETE_RUN}
        # Keys of runs whose creation was set aside: their writes go with it.
        self._uncreated: set[str] = set()
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
        if op["op"] == DELETE_RUN:
            self._deleted.add(op["run"])
        seq, op = self._journal.append(op, folder, durable=op["op"] in RUN_ENDINGS)
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
                if not self._until_sent(self._without_uncreated(group)):
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
        """Send a group, retrying with backoff while the store is away; False when the
        command gave up first. A group that fails while the store answers is sent write
        by write, and a write that fails for good is set aside."""
        attempt, strikes, last = 0, 0, None
        while group:
            started = time.time()
            try:
                self._send(group, maybe_done=attempt > 0
                           or any(seq in self._replayed for seq, _ in group))
            except Exception as error:  # MLflow raises many kinds for a server away
                refused = _refused(error)
                if refused or (_status(error) not in BUSY_STATUSES
                               and store_answers(self._client)):
                    self._answered()
                    if len(group) > 1:  # which one fails?
                        return all(self._until_sent([write]) for write in group)
                    strikes = strikes + 1 if _signature(error) == last else 1
                    last = _signature(error)
                    if refused or strikes >= STRIKES:
                        self._failed_for_good(group[0], error)
                        return True
                else:  # away, busy or refusing the login: wait for it
                    strikes, last = 0, None
                    with self._changed:
                        if self._unreachable_since is None:
                            self._unreachable_since = started
                        self._reason = _reason(error)
                if self._give_up.wait(min(FIRST_RETRY_SECONDS * 2 ** attempt,
                                          LONGEST_RETRY_SECONDS)):
                    return False
                attempt += 1
                continue
            self._answered()
            return True
        return True

    def _answered(self) -> None:
        """The store answers: an outage, if any, is over."""
        with self._changed:
            if self._unreachable_since is not None:
                self._back = (time.time(), time.time() - self._unreachable_since,
                              len(self._queue) + self._in_flight)
            self._unreachable_since, self._reason = None, ""

    def _send(self, group: list[tuple[int, dict]], maybe_done: bool) -> None:
        if group[0][1]["op"] == LOG_METRICS:
            self._send_metrics([metric_record(op, self._run_ids) for _, op in group])
            return
        op = group[0][1]
        if "folder" in op:
            op = {**op, "folder": str(self._journal.folder_of(op))}
        apply(self._client, op, self._run_ids, maybe_done=maybe_done, notify=self._notify)

    def _failed_for_good(self, write: tuple[int, dict], error: Exception) -> None:
        """Set a write aside with a notice, unless there is nothing left for it to do (a
        replayed write to a run that this journal moved to the trash)."""
        seq, op = write
        if self._run_gone(op):
            return
        run = self._run_ids.get(op["run"], op["run"])
        path = set_aside(self._journal, seq, op, run, " ".join(str(error).split())[:1000])
        followers = ""
        if op["op"] == CREATE_RUN:
            self._uncreated.add(op["run"])
            followers = ", with the later writes of its run"
        self._notify(f"a write ({op['op']} of run {run}) failed for good: {_reason(error)}; "
                     f"set aside in {path}{followers}, never sent again; the others go on")

    def _run_gone(self, op: dict) -> bool:
        """Whether a write's run is one this journal moved to MLflow's trash, and is."""
        if op["run"] not in self._deleted:
            return False
        try:
            run = self._client.get_run(self._run_ids.get(op["run"], op["run"]))
        except Exception:  # not found, or the store away: not known to be gone
            return False
        return run.info.lifecycle_stage == LifecycleStage.DELETED

    def _without_uncreated(self, group: list[tuple[int, dict]]) -> list[tuple[int, dict]]:
        """A group without the writes to runs whose creation was set aside: each is set
        aside too, since its run does not exist."""
        kept = []
        for seq, op in group:
            if op["run"] in self._uncreated:
                set_aside(self._journal, seq, op, op["run"], "its run was never created")
            else:
                kept.append((seq, op))
        return kept


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
    journals = Journal.unfinished(folder, tracking_uri)
    set_aside_before = rejected_count(folder, without_credentials(tracking_uri))
    if set_aside_before:
        echo(f"{set_aside_before} writes to this tracking server failed for good earlier and "
             f"are set aside in {rejected_file(folder)}, never sent again (see "
             f"docs/team-server.md); remove the file once dealt with")
    for journal in journals:
        for notice in journal.notices:
            echo(notice)
        count, started = len(journal.pending), time.monotonic()
        writes = JournaledWrites(client, journal, notify=echo)
        sent = writes.wait(patience)
        writes.close()
        if not sent:
            return False
        echo(f"sent {count} writes that an earlier command journaled in {journal.path} "
             f"({time.monotonic() - started:.1f} s)")
    return True
