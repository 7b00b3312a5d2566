"""The local journal of a command's writes to a tracking server: each write is appended
here before it is sent, so that a server that goes away costs no result.

One file per command in ``mlruns/journal/`` (JSON lines): a header that names the store,
then the writes in order (``{"seq": N, "op": ...}``) and the acknowledgements of those
the store took (``{"ack": [N, ...], "ids": {run key: run id}}``). The files a write
carries (plots, tables) are copied beside it, into ``NAME.files/SEQ/``. The journal is
fsynced whenever a run ends, and removed once the store has taken every write.

A command holds an exclusive lock on its journal while it lives; a later command on the
same store replays the unlocked journals it finds (tracking.journaled_writes). Nothing
of the login enters a journal: the store is named without its user information, and the
writes carry runs' data only.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from cvlib.tracking.uris import without_credentials

# A journal's first line: its format, and the store its writes go to.
FORMAT = "cvlib-journal-1"
SUFFIX = ".jsonl"


@dataclass
class Journal:
    """One command's journal, open and locked.

    Attributes:
        path: The journal file.
        pending: The writes the store has not acknowledged, in order: (seq, op).
        run_ids: Run keys -> the store's run ids, for the runs the store created.
    """

    path: Path
    file: IO[str]
    pending: list[tuple[int, dict]] = field(default_factory=list)
    run_ids: dict[str, str] = field(default_factory=dict)
    next_seq: int = 1
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, folder: Path, tracking_uri: str) -> Journal:
        """A new, empty journal for a store, locked by this process."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}{SUFFIX}"
        file = path.open("a+", encoding="utf-8")
        fcntl.flock(file, fcntl.LOCK_EX)
        journal = cls(path, file)
        journal._write({"journal": FORMAT, "store": without_credentials(tracking_uri),
                        "started": time.time()})
        journal.sync()
        return journal

    @classmethod
    def unfinished(cls, folder: Path, tracking_uri: str) -> list[Journal]:
        """The journals of a store that no live command holds, oldest first, each locked
        by this process and read back."""
        store = without_credentials(tracking_uri)
        found = []
        for path in sorted(folder.glob(f"*{SUFFIX}")):
            file = path.open("a+", encoding="utf-8")
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live command's
                file.close()
                continue
            journal = cls(path, file)
            if journal._read() == store:
                found.append(journal)
            else:
                file.close()
        return found

    @property
    def files_folder(self) -> Path:
        """Where the files of the journal's writes are kept."""
        return self.path.with_suffix(".files")

    def append(self, op: dict, folder: str | None = None) -> tuple[int, dict]:
        """Append one write; a folder it carries is copied into the journal first.

        Args:
            op: The write (JSON-ready).
            folder: Files the write sends (they may be gone by the time it is sent).

        Returns:
            The write's sequence number, and the write as journaled (``folder`` names
            the copy).
        """
        with self._lock:
            seq, self.next_seq = self.next_seq, self.next_seq + 1
        if folder is not None:
            copy = self.files_folder / str(seq)
            shutil.copytree(folder, copy)
            op = {**op, "folder": str(copy.resolve())}
        self._write({"seq": seq, **op})
        return seq, op

    def ack(self, seqs: list[int], run_ids: dict[str, str] | None = None) -> None:
        """Record that the store took these writes (and created these runs)."""
        line = {"ack": seqs, "ids": run_ids} if run_ids else {"ack": seqs}
        self._write(line)

    def sync(self) -> None:
        """Flush the journal to the disk (a run ended: its writes must survive)."""
        with self._lock:
            if not self.file.closed:
                self.file.flush()
                os.fsync(self.file.fileno())

    def close(self, remove: bool) -> None:
        """Release the journal; remove it with its files when the store has them all."""
        self.sync()
        with self._lock:
            if remove:
                shutil.rmtree(self.files_folder, ignore_errors=True)
                self.path.unlink(missing_ok=True)
            self.file.close()

    def _write(self, line: dict) -> None:
        text = json.dumps(line, separators=(",", ":")) + "\n"
        with self._lock:
            if not self.file.closed:  # a write acknowledged after the command gave up
                self.file.write(text)

    def _read(self) -> str | None:
        """Read the journal back: its pending writes and its runs' ids.

        Returns:
            The store it names (None for a file that is no journal).
        """
        self.file.seek(0)
        writes: dict[int, dict] = {}
        store, highest = None, 0
        for number, text in enumerate(self.file):
            try:
                line = json.loads(text)
            except json.JSONDecodeError:  # a last line cut short by a crash
                continue
            if number == 0:
                if line.get("journal") != FORMAT:
                    return None
                store = line.get("store")
            elif "seq" in line:
                highest = max(highest, line["seq"])
                writes[line.pop("seq")] = line
            elif "ack" in line:
                for seq in line["ack"]:
                    writes.pop(seq, None)
                self.run_ids.update(line.get("ids") or {})
        self.pending = sorted(writes.items())
        self.next_seq = highest + 1
        return store
