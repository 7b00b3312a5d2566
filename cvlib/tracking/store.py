"""Opening an MLflow store and checking that it can be used, safely when several processes
open a new SQLite store at once.

MLflow builds a new SQLite store in place: it creates the tables, then runs its
migrations one by one. Two processes that open the same new store together (two
``cvlib`` commands, or ``cvlib run`` and ``mlflow ui``) both build it: one fails with
"table experiments already exists" or "duplicate column name", and sometimes both do
and the store is left half-migrated for good. Here cvlib builds a new store under a
private name and links it into place whole, and waits while another program is still
building one in place.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from alembic.util.exc import CommandError
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import OperationalError

from cvlib.errors import CvlibError
from cvlib.extras import require
from cvlib.tracking.uris import DEFAULT_TRACKING_URI, is_server, sqlite_path


class TrackingError(CvlibError):
    """The MLflow store cannot be used; the message says why."""


# How long to wait for another process to finish building a store; building one takes
# about 2 CPU seconds on 2 CPU cores.
BUILD_WAIT_SECONDS = 30
# What MLflow and alembic log, line by line, while they build a new store: progress that
# says nothing to a cvlib user.
BUILD_LOGGERS = ("mlflow.store.db.utils", "alembic")
# A store written within this many seconds may still be being built by another process.
BUILDING_RECENTLY_SECONDS = 10


def open_client(tracking_uri: str) -> MlflowClient:
    """An MlflowClient for a store; a new SQLite store appears whole or not at all.

    Args:
        tracking_uri: The store's URI.

    Returns:
        The client.

    Raises:
        Whatever MLflow raises for a store it cannot use; for a SQLite store written
        in the last ``BUILDING_RECENTLY_SECONDS`` (perhaps being built by another
        process), only after trying for ``BUILD_WAIT_SECONDS``.
        MissingExtra: for a PostgreSQL store without psycopg.
    """
    if tracking_uri.startswith("postgresql"):
        require("server", "a PostgreSQL store", ("psycopg",))
    database = sqlite_path(tracking_uri)
    if database is None:
        return MlflowClient(tracking_uri)
    if not database.exists():
        _build_sqlite_store(database)
    # Judged before the first try, which writes to a half-built store itself.
    another_may_be_building = _written_recently(database)
    deadline = time.monotonic() + BUILD_WAIT_SECONDS
    while True:
        try:
            return MlflowClient(tracking_uri)
        # Migrating beside another builder fails in many ways: a table that already
        # exists, a column that does not yet (sqlalchemy's AttributeError), a lock.
        except (OperationalError, CommandError, MlflowException, AttributeError):
            if not another_may_be_building or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _build_sqlite_store(database: Path) -> None:
    """Create a SQLite store's tables in a private file, then link it to ``database``
    unless another process got there first (a link never replaces a file)."""
    database.parent.mkdir(parents=True, exist_ok=True)
    private = database.with_name(f".{database.name}.{os.getpid()}.building")
    try:
        with _quiet_loggers(BUILD_LOGGERS):
            MlflowClient(f"sqlite:///{private}")
        os.link(private, database)
    except FileExistsError:
        pass  # another process's store, whole or still being built: open_client waits
    except (OSError, OperationalError):
        pass  # no hard links, or no room for the private file: MLflow builds it in place
    finally:
        private.unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet_loggers(names: tuple[str, ...]) -> Iterator[None]:
    """Only warnings and errors from these loggers inside the block."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _written_recently(database: Path) -> bool:
    try:
        return time.time() - database.stat().st_mtime < BUILDING_RECENTLY_SECONDS
    except FileNotFoundError:
        return False


def check_reachable(tracking_uri: str) -> MlflowClient:
    """Open a store, failing fast with a one-line reason when it cannot be used.

    Returns:
        The store's client.

    Raises:
        TrackingError: for an unreachable server, an unusable SQLite path, or a store
            MLflow refuses (such as a plain folder: MLflow 3 wants a database).
    """
    if is_server(tracking_uri):
        try:  # MLflow's own client retries for minutes; a user wants to know now
            urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=5)
        except urllib.error.HTTPError:
            pass  # something answers: let MLflow judge it
        except (urllib.error.URLError, OSError) as error:
            raise TrackingError(f"cannot reach the tracking server {tracking_uri}: "
                                f"{getattr(error, 'reason', error)}") from None
    database = sqlite_path(tracking_uri)
    try:
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        client = open_client(tracking_uri)
        client.search_experiments(max_results=1)
    except CvlibError:
        raise
    except MlflowException as error:
        if _refused_login(error):
            raise TrackingError(
                f"the tracking server {tracking_uri} refused the login: set "
                f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user of it "
                f"(docs/team-server.md)") from None
        raise _unusable(tracking_uri, error) from None
    except Exception as error:  # MLflow raises many kinds for a bad store
        raise _unusable(tracking_uri, error) from None
    return client


def _refused_login(error: MlflowException) -> bool:
    """Whether a server answered 401 or 403: wrong credentials, not an outage."""
    status = error.get_http_status_code()
    text = str(error)
    return status in (401, 403) or any(f"error code {code}" in text for code in (401, 403))


def _unusable(tracking_uri: str, error: Exception) -> TrackingError:
    message = " ".join(str(error).split())[:300]
    return TrackingError(f"cannot use the tracking URI {tracking_uri!r}: {message} (the "
                         f"default is {DEFAULT_TRACKING_URI})")
