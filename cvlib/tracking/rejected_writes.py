"""Writes that failed for good, set aside beside the journals, so that one bad write
cannot hold back the others, nor stall every later command that would replay it.

``mlruns/journal/rejected.jsonl`` holds one JSON line per write set aside: when, the
store, the journal and sequence number it came from, the run it was for (its key and
the store's id), the write itself and why it failed. The files such a write carried are
moved to ``rejected.files/JOURNAL-SEQ/``, named relative to the folder. A write set
aside is never sent again; each command on the store says how many there are, until a
person has dealt with them and removed the file.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from cvlib.tracking.journal import Journal, fsync_path, fsync_tree

REJECTED_FILE = "rejected.jsonl"
REJECTED_FILES_FOLDER = "rejected.files"


def rejected_file(journal_folder: Path) -> Path:
    """Where the writes set aside from the journals of a folder are kept."""
    return journal_folder / REJECTED_FILE


def set_aside(journal: Journal, seq: int, op: dict, run_id: str, reason: str) -> Path:
    """Keep a write that failed for good in the rejected-writes file, on disk before
    this returns (the journal then acknowledges it: it is never sent again).

    Args:
        journal: The journal that holds the write.
        seq: Its sequence number there.
        op: The write as journaled.
        run_id: The store's id of its run (its key when the store never created it).
        reason: Why it failed, in one line.

    Returns:
        The rejected-writes file.
    """
    folder = journal.path.parent
    if "folder" in op and journal.folder_of(op).is_dir():
        kept = folder / REJECTED_FILES_FOLDER / f"{journal.path.stem}-{seq}"
        kept.parent.mkdir(exist_ok=True)
        os.replace(journal.folder_of(op), kept)
        fsync_tree(kept)
        fsync_path(kept.parent)
        op = {**op, "folder": str(kept.relative_to(folder))}
    line = {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "store": journal.store,
            "journal": journal.path.name, "seq": seq, "run_id": run_id, "write": op,
            "error": reason}
    path = rejected_file(folder)
    new = not path.exists()
    with path.open("ab") as file:
        fcntl.flock(file, fcntl.LOCK_EX)  # another command may set one aside too
        file.write((json.dumps(line, separators=(",", ":")) + "\n").encode("utf-8"))
        file.flush()
        os.fsync(file.fileno())
    if new:
        fsync_path(folder)
    return path


def rejected_count(journal_folder: Path, store: str) -> int:
    """How many writes for a store (named without credentials) are set aside."""
    path = rejected_file(journal_folder)
    if not path.exists():
        return 0
    count = 0
    for text in path.read_bytes().splitlines():
        try:
            count += json.loads(text).get("store") == store
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            continue  # a line cut short by a crash: no write
    return count
