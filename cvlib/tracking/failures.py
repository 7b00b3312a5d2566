"""What a store's failure means to a user, in one line: a login or a host name that a
tracking server refuses, a request it forbids, a server or a database that cannot be
reached. Every command runs inside :func:`store_failures` (cvlib.cli.main), so that no
command, whatever it was reading or writing when the store failed, ends in MLflow's
traceback; the store is never named with its password.

MLflow-free at import time: the CLI enters it before it knows whether MLflow is needed,
and an MLflow error, when there is one, has imported MLflow already.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

from cvlib.errors import CvlibError
from cvlib.tracking.uris import (
    PASSWORD_ENV,
    USERNAME_ENV,
    is_server,
    redacted,
    without_credentials,
)

# MLflow's server answers a request for a host name it does not allow with this text (its
# check against DNS rebinding); mlflow.server.security_utils.INVALID_HOST_MSG.
INVALID_HOST_TEXT = "Invalid Host header"
# How much of a library's own reason a one-line error keeps.
REASON_CHARACTERS = 200


class TrackingError(CvlibError):
    """The MLflow store cannot be used; the message says why."""


@contextlib.contextmanager
def store_failures(tracking_uri: str) -> Iterator[None]:
    """Turn a store's failure inside the block into a one-line TrackingError.

    Args:
        tracking_uri: The store the block uses (without its login).

    Raises:
        TrackingError: for a failure :func:`explained` recognises; any other error
            passes unchanged.
    """
    try:
        yield
    except CvlibError:
        raise
    except Exception as error:
        failure = explained(tracking_uri, error)
        if failure is None:
            raise
        raise failure from None


def explained(tracking_uri: str, error: BaseException) -> TrackingError | None:
    """The one-line reason of a store's failure.

    Args:
        tracking_uri: The store.
        error: What MLflow (or requests, SQLAlchemy, psycopg) raised.

    Returns:
        The TrackingError to show, or None when the error is not the store's (a bug
        shows its traceback).
    """
    shown = without_credentials(tracking_uri)
    text = str(error)
    if INVALID_HOST_TEXT in text:
        from urllib.parse import urlsplit

        host = urlsplit(tracking_uri).hostname
        return TrackingError(
            f"the tracking server {shown} refused the host name {host!r} (MLflow's check "
            f"against DNS rebinding): start it with cvlib server --allowed-hosts {host} "
            f"(docs/team-server.md)")
    status = http_status(error)
    if status == 401:
        return TrackingError(
            f"the tracking server {shown} refused the login: set {USERNAME_ENV} and "
            f"{PASSWORD_ENV} to a user of it (docs/team-server.md)")
    if status == 403:
        user = os.environ.get(USERNAME_ENV) or "this login"
        return TrackingError(
            f"the tracking server {shown} does not let {user!r} do this (403 Forbidden): "
            f"its admin or the experiment's owner can grant the permission "
            f"(docs/team-server.md)")
    chain = causes(error)
    if is_server(tracking_uri) and any(_is_unreachable(cause) for cause in chain):
        return TrackingError(f"cannot reach the tracking server {shown}: "
                             f"{reason(chain[-1], tracking_uri)}")
    if not is_server(tracking_uri) and any(_is_database_error(cause) for cause in chain):
        return TrackingError(f"cannot use the database {redacted(tracking_uri)}: "
                             f"{reason(chain[-1], tracking_uri)}")
    return None


def http_status(error: BaseException) -> int | None:
    """The HTTP status of a tracking server's refusal (401 or 403, else None): MLflow's
    error carries it or says it in its text ("error code 401"); requests' (from MLflow's
    artifact uploads) carries the response."""
    status_of = getattr(error, "get_http_status_code", None)
    response = getattr(error, "response", None)
    status = status_of() if callable(status_of) else getattr(response, "status_code", None)
    if status in (401, 403):
        return status
    text = str(error)
    return next((code for code in (401, 403) if f"error code {code}" in text), None)


def causes(error: BaseException) -> list[BaseException]:
    """The error and those under it, outermost first (the socket's or the database
    driver's own last, under MLflow's, requests' and urllib3's wrappers)."""
    chain = [error]
    while (chain[-1].__cause__ or chain[-1].__context__) is not None \
            and len(chain) < 50:  # a cycle of contexts ends somewhere
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    return chain


def reason(error: BaseException, tracking_uri: str) -> str:
    """A library's reason on one line, short, the store's password replaced by ``***``."""
    text = str(error).replace(tracking_uri, redacted(tracking_uri))
    password = _password(tracking_uri)
    if password:
        text = text.replace(password, "***")
    return " ".join(text.split())[:REASON_CHARACTERS] or type(error).__name__


def _password(uri: str) -> str | None:
    from urllib.parse import unquote, urlsplit

    password = urlsplit(uri).password
    return unquote(password) if password else None


def _is_unreachable(error: BaseException) -> bool:
    """A connection that failed or timed out (refused, reset, no route, no such host)."""
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    kind = type(error)
    return kind.__module__.split(".")[0] in ("requests", "urllib3") and any(
        word in kind.__name__ for word in ("Connection", "Timeout", "MaxRetry", "NameResolution"))


def _is_database_error(error: BaseException) -> bool:
    """A database that refused or dropped the connection (SQLAlchemy's and psycopg's
    OperationalError)."""
    kind = type(error)
    return kind.__name__ == "OperationalError" and \
        kind.__module__.split(".")[0] in ("sqlalchemy", "psycopg", "sqlite3")
