"""Which MLflow store a command or a Python call uses, and which of its experiments it reads:
the one-line refusals both give when there is no store or no experiment to read."""
from __future__ import annotations

from dataclasses import dataclass

from cvlib.fields import ConfigError
from cvlib.tracking.uris import (
    check_store_uri,
    chosen_tracking_uri,
    command_line,
    sqlite_path,
    take_login,
)


@dataclass(frozen=True)
class ChosenStore:
    """A store, its login taken out of the URI (uris.take_login), and where it came from."""

    # The URI without its login.
    uri: str
    # ``--tracking-uri`` (given), ``$MLFLOW_TRACKING_URI`` or ``default``.
    origin: str

    @classmethod
    def choose(cls, given: str | None) -> ChosenStore:
        """The store given, else ``$MLFLOW_TRACKING_URI``, else the default.

        Args:
            given: The URI asked for (None: not given).

        Raises:
            ConfigError: for a URI of a kind cvlib does not use.
        """
        uri, origin = chosen_tracking_uri(given)
        check_store_uri(uri)
        return cls(take_login(uri), origin)

    @property
    def named(self) -> str:
        """The store and where it came from unless it was given:
        ``http://lab:5000 (from $MLFLOW_TRACKING_URI)``."""
        origin = {"--tracking-uri": "", "default": " (the default)"}.get(
            self.origin, f" (from {self.origin})")
        return f"{self.uri}{origin}"

    def exists(self) -> bool:
        """Whether a store is there to read (a SQLite file exists; a server is assumed)."""
        database = sqlite_path(self.uri)
        return database is None or database.exists()

    def first_run(self) -> str:
        """The hint of a reading command that found no runs: how to make some here."""
        return (f"{command_line('run', 'GRID.yaml', tracking_uri=self.uri)} (e.g. "
                f"{command_line('run', 'experiments/smoke.yaml', tracking_uri=self.uri)})")

    def open(self) -> None:
        """Check that the store is there and can be used, before reading it.

        Raises:
            ConfigError: a SQLite store does not exist (a reader never creates one).
            TrackingError: the store cannot be used (tracking.store.check_reachable).
        """
        if not self.exists():
            raise ConfigError(f"no runs yet: {self.named} does not exist; make some with "
                              f"{self.first_run()}")
        from cvlib.tracking.store import check_reachable

        check_reachable(self.uri)

    def experiment(self, name: str | None) -> str:
        """The experiment to read: ``name``, else the store's newest (MLflow's "Default"
        aside), once the store is open.

        Raises:
            ConfigError: when there is no store or no experiment yet.
        """
        self.open()
        if name is not None:
            return name
        from cvlib.tracking.reads import experiment_ids

        names = [n for n in experiment_ids(self.uri) if n != "Default"]
        if not names:
            raise ConfigError(f"no experiments in {self.named} yet; make one with "
                              f"{self.first_run()}")
        return names[0]
