"""Where runs go: the default store, and where a SQLite store keeps its artifacts.
MLflow-free, so that the CLI can name the store without importing MLflow."""
from __future__ import annotations

from pathlib import Path

# Where runs go unless --tracking-uri says otherwise (artifacts: mlruns/artifacts/).
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix):]) if tracking_uri.startswith(prefix) else None


def artifact_root(tracking_uri: str) -> str | None:
    """Artifacts sit beside a SQLite store, in ``artifacts/`` (mlruns/artifacts by default);
    None for other stores (a server decides where its artifacts go)."""
    database = sqlite_path(tracking_uri)
    return (database.parent / "artifacts").resolve().as_uri() if database else None
