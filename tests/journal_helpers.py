"""Test helpers for the journal's tests (tests/test_journal.py, tests/test_store_outage.py):
a journal that is written and never sent, and files for a write to carry."""
from pathlib import Path

from cvlib.tracking.journal import Journal
from cvlib.tracking.store_writes import StoreWrites


class JournalOnly(StoreWrites):
    """The tracker's writes, journaled and not sent: the journal a command leaves when
    it is killed before the store had any of them."""

    def __init__(self, journal: Journal):
        self.journal = journal

    def _submit(self, op: dict, folder: str | None = None) -> None:
        self.journal.append(op, folder)


def plots_to_send(folder: Path) -> Path:
    """A folder holding plots/curves.png, in ``folder``."""
    plots = folder / "plots-to-send"
    (plots / "plots").mkdir(parents=True, exist_ok=True)
    (plots / "plots" / "curves.png").write_bytes(b"png")
    return plots
