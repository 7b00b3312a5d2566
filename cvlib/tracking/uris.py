"""Where runs go: the default store, where a SQLite store keeps its artifacts, and where
the writes to a tracking server wait while it is away. MLflow-free, so that the CLI can name the store without importing MLflow."""
from __future__ import annotations

import urllib.parse
from pathlib import Path

# Where runs go unless --tracking-uri says otherwise (artifacts: mlruns/artifacts/).
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
# Where a command keeps the journal of its writes to a tracking server (tracking.journal).
JOURNAL_FOLDER = Path("mlruns", "journal")
# How long a tracking server may stay unreachable before a command gives up.
DEFAULT_STORE_TIMEOUT_MINUTES = 30.0


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix):]) if tracking_uri.startswith(prefix) else None


def artifact_root(tracking_uri: str) -> str | None:
    """Artifacts sit beside a SQLite store, in ``artifacts/`` (mlruns/artifacts by default);
    None for other stores (a server decides where its artifacts go)."""
    database = sqlite_path(tracking_uri)
    return (database.parent / "artifacts").resolve().as_uri() if database else None


def is_server(tracking_uri: str) -> bool:
    """Whether a store is a tracking server (reached over HTTP)."""
    return tracking_uri.startswith(("http://", "https://"))


def without_credentials(address: str) -> str:
    """An address (a URI, or host:port) without the user name and password it may carry."""
    parts = urllib.parse.urlsplit(address if "://" in address else f"//{address}")
    if parts.username is None and parts.password is None:
        return address
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)).removeprefix("//")
