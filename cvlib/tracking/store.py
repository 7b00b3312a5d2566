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
import ssl
import time
from pathlib import Path
from typing import Iterator

from alembic.util.exc import CommandError
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request
from sqlalchemy.exc import OperationalError

from cvlib.errors import CvlibError
from cvlib.extras import require
from cvlib.tracking.failures import TrackingError, causes, explained, reason
from cvlib.tracking.uris import (
    DEFAULT_TRACKING_URI,
    USERNAME_ENV,
    is_postgresql,
    is_server,
    redacted,
    sqlite_path,
    without_credentials,
)

# How long to wait for another process to finish building a store; building one takes
# about 2 CPU seconds on 2 CPU cores.
BUILD_WAIT_SECONDS = 30
# What MLflow and alembic log, line by line, while they build a new store: progress that
# says nothing to a cvlib user.
BUILD_LOGGERS = ("mlflow.store.db.utils", "alembic")
# A store written within this many seconds may still be being built by another process.
BUILDING_RECENTLY_SECONDS = 10
# How long a tracking server may take to answer /health before it counts as unreachable.
HEALTH_TIMEOUT_SECONDS = 5
# How long a PostgreSQL store may take to take a connection before it counts as down.
DATABASE_TIMEOUT_SECONDS = 5
# MLflow's variable naming the certificate (or CA bundle) a client trusts for https.
SERVER_CERTIFICATE_ENV = "MLFLOW_TRACKING_SERVER_CERT_PATH"


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
    if is_postgresql(tracking_uri):
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
        # exists, a column that does not yet (sqlalchemy's AttributeError), an index that
        # does not yet (alembic's ValueError), a lock.
        except (OperationalError, CommandError, MlflowException, AttributeError, ValueError):
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

    Args:
        tracking_uri: The store; a server's login, if the URI carries one, is never shown.

    Returns:
        The store's client.

    Raises:
        TrackingError: for an unreachable server or database, a certificate it cannot
            verify, a host name or login it refuses (failures.explained), an unusable
            SQLite path, or a store MLflow refuses (such as a plain folder: MLflow 3 wants
            a database).
    """
    if is_server(tracking_uri):
        _check_answers(tracking_uri)
    if is_postgresql(tracking_uri):
        _check_database(tracking_uri)
    database = sqlite_path(tracking_uri)
    try:
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        client = open_client(tracking_uri)
        client.search_experiments(max_results=1)
    except CvlibError:
        raise
    except Exception as error:  # MLflow raises many kinds for a bad store
        raise (explained(tracking_uri, error) or _unusable(tracking_uri, error)) from None
    return client


def _check_answers(tracking_uri: str) -> None:
    """Ask a server's /health once, as MLflow's client asks (its TLS trust, its login): the
    client itself retries for minutes, and a user wants to know now.

    Raises:
        TrackingError: it does not answer, or its TLS certificate cannot be verified.
    """
    shown = without_credentials(tracking_uri)
    try:
        http_request(get_default_host_creds(shown), "/health", "GET", max_retries=0,
                     timeout=HEALTH_TIMEOUT_SECONDS).close()
    except MlflowException as error:
        cause = causes(error)[-1]
        if isinstance(cause, ssl.SSLError):
            raise TrackingError(
                f"cannot verify the TLS certificate of the tracking server {shown} "
                f"({reason(cause, tracking_uri)}): point {SERVER_CERTIFICATE_ENV} at the "
                f"certificate that signed it (docs/team-server.md)") from None
        raise TrackingError(f"cannot reach the tracking server {shown}: "
                            f"{reason(cause, tracking_uri)}") from None


def _check_database(tracking_uri: str) -> None:
    """Connect to a PostgreSQL store once, waiting at most ``DATABASE_TIMEOUT_SECONDS``:
    MLflow retries a database that is down for minutes, logging each try.

    Raises:
        TrackingError: the database does not take the connection (named without its
            password).
        MissingExtra: without psycopg.
    """
    require("server", "a PostgreSQL store", ("psycopg",))
    import psycopg

    # SQLAlchemy names its driver in the scheme (postgresql+psycopg://); libpq does not.
    conninfo = "postgresql://" + tracking_uri.split("://", 1)[1]
    try:
        psycopg.connect(conninfo, connect_timeout=DATABASE_TIMEOUT_SECONDS).close()
    except psycopg.Error as error:
        raise TrackingError(f"cannot reach the database {redacted(tracking_uri)}: "
                            f"{reason(error, tracking_uri)}") from None


def writable_experiment(client: MlflowClient, tracking_uri: str, name: str,
                        location: str | None, tags: dict[str, str]) -> str:
    """The id of the named experiment, made if new. An existing one gets ``tags`` set,
    changed or not: on a server with logins that write is also the check, before anything
    is trained or written, that this login may edit the experiment.

    Args:
        client: The store's client.
        tracking_uri: The store (named in the error).
        name: The experiment.
        location: Where a new experiment keeps its artifacts (None: the store decides).
        tags: The experiment's tags.

    Returns:
        The experiment's id.

    Raises:
        TrackingError: the server does not let this login create or edit it.
    """
    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            return client.create_experiment(name, artifact_location=location, tags=tags)
        for key, value in tags.items():
            client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    except MlflowException as error:
        if error.get_http_status_code() != 403:
            raise
        user = os.environ.get(USERNAME_ENV, "this login")
        raise TrackingError(
            f"the tracking server {without_credentials(tracking_uri)} does not let {user!r} "
            f"write to experiment {name!r}: its owner or an admin can grant EDIT on it, or "
            f"pick another with --experiment (docs/team-server.md)") from None


def _unusable(tracking_uri: str, error: Exception) -> TrackingError:
    message = " ".join(str(error).replace(tracking_uri, without_credentials(tracking_uri))
                       .split())[:300]
    return TrackingError(f"cannot use the tracking URI {redacted(tracking_uri)!r}: {message} "
                         f"(the default is {DEFAULT_TRACKING_URI})")
