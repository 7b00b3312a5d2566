"""Where runs go: which store a command uses, the default one, where a SQLite store keeps
its artifacts, and where the writes to a tracking server wait while it is away.
MLflow-free, so that the CLI can name the store without importing MLflow.

A tracking server's URI may carry its login (``http://user:password@host:port``). The login
is taken out once, where the URI enters (:func:`take_login`), into the variables MLflow
reads it from; from there on, cvlib handles the URI without it, so that no message, progress
line, journal, param, tag or report can show it.
"""
from __future__ import annotations

import os
import re
import shlex
import urllib.parse
from pathlib import Path

from cvlib.errors import CvlibError, closest

# Where runs go unless --tracking-uri or $MLFLOW_TRACKING_URI says otherwise (artifacts:
# mlruns/artifacts/).
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
# MLflow's variables: the store, and the login it sends to a tracking server.
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"
# libpq's variable for a PostgreSQL store's password (psycopg reads it, in every process).
POSTGRES_PASSWORD_ENV = "PGPASSWORD"
# Where a command keeps the journal of its writes to a tracking server (tracking.journal).
JOURNAL_FOLDER = Path("mlruns", "journal")
# The stores a command takes, by their URI's scheme (SQLAlchemy's postgresql+DRIVER too),
# and how a refusal shows them.
STORE_FORMS = {"http": "http://HOST:PORT", "https": "https://HOST[:PORT]",
               "sqlite": "sqlite:///PATH/mlflow.db",
               "postgresql": "postgresql://USER@HOST[:PORT]/DATABASE"}
# How long a tracking server may stay unreachable before a command gives up.
DEFAULT_STORE_TIMEOUT_MINUTES = 30.0


def chosen_tracking_uri(flag: str | None) -> tuple[str, str]:
    """The store a command uses: ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else
    :data:`DEFAULT_TRACKING_URI`.

    Args:
        flag: The value of ``--tracking-uri`` (None when not given).

    Returns:
        The URI as given (its login still in it) and where it came from: the flag's name,
        the variable's name, or ``"default"``.
    """
    if flag:
        return flag, "--tracking-uri"
    if os.environ.get(TRACKING_URI_ENV):
        return os.environ[TRACKING_URI_ENV], f"${TRACKING_URI_ENV}"
    return DEFAULT_TRACKING_URI, "default"


def check_store_uri(tracking_uri: str) -> None:
    """Refuse a store URI of a kind cvlib does not use, before MLflow reads it (it would
    say its model registry is unavailable).

    Args:
        tracking_uri: The store's URI (its password, if any, is never shown).

    Raises:
        CvlibError: the scheme is none of STORE_FORMS'; the message lists them, and the
            likely meant URI when there is one (``http://`` before ``HOST:PORT``).
    """
    scheme, separator, rest = tracking_uri.partition("://")
    if separator and scheme.split("+")[0] in STORE_FORMS:
        return
    if separator:
        close = closest(scheme, STORE_FORMS)
        meant = f"{close}://{rest}" if close else None
    else:  # a server's address without its scheme, as a browser takes it
        meant = f"http://{tracking_uri}" if re.fullmatch(r"[^/\s]+:\d+(/\S*)?", tracking_uri) \
            else None
    hint = f"; did you mean {redacted(meant)!r}?" if meant else ""
    raise CvlibError(f"unknown store {redacted(tracking_uri)!r}: a tracking URI is one of "
                     f"{', '.join(STORE_FORMS.values())}{hint}")


def take_login(tracking_uri: str) -> str:
    """Move the secret a store's URI carries out of it, into the variables its client reads
    (of this process and of those it starts), and give the URI without it;
    $MLFLOW_TRACKING_URI, when it holds that URI, loses it too. A server's login goes to
    MLflow's login variables; a PostgreSQL store's password goes to libpq's
    ``PGPASSWORD`` and its user name stays in the URI. A URI without a secret is returned
    as it is.

    Args:
        tracking_uri: The store's URI.

    Returns:
        The URI without its password (and, for a server, without its user name).
    """
    parts = urllib.parse.urlsplit(tracking_uri)
    if is_postgresql(tracking_uri):
        if parts.password is None:
            return tracking_uri
        os.environ[POSTGRES_PASSWORD_ENV] = urllib.parse.unquote(parts.password)
        public = without_password(tracking_uri)
    else:
        public = without_credentials(tracking_uri)
        if public == tracking_uri:
            return tracking_uri
        for name, value in ((USERNAME_ENV, parts.username), (PASSWORD_ENV, parts.password)):
            if value is not None:
                os.environ[name] = urllib.parse.unquote(value)
    if os.environ.get(TRACKING_URI_ENV) == tracking_uri:
        os.environ[TRACKING_URI_ENV] = public
    return public


def command_line(*words: str, tracking_uri: str) -> str:
    """A cvlib command line for a hint to print, naming the store unless it is the
    default, so that following the hint reads the same store.

    Args:
        words: The command and its arguments (``"table", "--experiment", "smoke"``),
            quoted for a shell as needed.
        tracking_uri: The store (without its login).

    Returns:
        ``cvlib table --experiment smoke --tracking-uri http://lab:5000``.
    """
    store = () if tracking_uri == DEFAULT_TRACKING_URI else ("--tracking-uri", tracking_uri)
    return shlex.join(("cvlib", *words, *store))


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix):]) if tracking_uri.startswith(prefix) else None


def artifact_root(tracking_uri: str) -> str | None:
    """Artifacts sit beside a SQLite store, in ``artifacts/`` (mlruns/artifacts by default);
    None for other stores (a server decides where its artifacts go)."""
    database = sqlite_path(tracking_uri)
    return (database.parent / "artifacts").resolve().as_uri() if database else None


def is_postgresql(tracking_uri: str) -> bool:
    """Whether a store is a PostgreSQL database (``postgresql://``, ``postgresql+DRIVER://``)."""
    return tracking_uri.split("://", 1)[0].split("+")[0] == "postgresql"


def is_server(tracking_uri: str) -> bool:
    """Whether a store is a tracking server (reached over HTTP)."""
    return tracking_uri.startswith(("http://", "https://"))


def has_password(uri: str) -> bool:
    """Whether a URI carries a password (``scheme://user:password@host``)."""
    return urllib.parse.urlsplit(uri).password is not None


def redacted(uri: str) -> str:
    """A URI to show: its password, if any, replaced by ``***`` (the user name stays)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    user, _, host = parts.netloc.rpartition("@")
    return urllib.parse.urlunsplit(parts._replace(
        netloc=f"{user.partition(':')[0]}:***@{host}"))


def without_password(uri: str) -> str:
    """A URI without the password it may carry (the user name stays)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    user, _, host = parts.netloc.rpartition("@")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user.partition(':')[0]}@{host}"))


def without_credentials(address: str) -> str:
    """An address (a URI, or host:port) without the user name and password it may carry."""
    parts = urllib.parse.urlsplit(address if "://" in address else f"//{address}")
    if parts.username is None and parts.password is None:
        return address
    netloc = parts.hostname or ""
    if ":" in netloc:  # an IPv6 address
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)).removeprefix("//")
