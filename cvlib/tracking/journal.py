"""The local journal of a command's writes to a tracking server: each write is appended
here before it is sent, so that a server that goes away costs no result.

One file per command in ``mlruns/journal/`` (JSON lines): a header that names the format
and the store, then the writes in order (``{"seq": N, "op": ...}``) and the
acknowledgements of those the store took (``{"ack": [N, ...], "ids": {run key: run
id}}``). The files a write carries (plots, tables) are copied beside it, into
``NAME.files/SEQ/``, which the write names relative to the journal's folder, so that a
project moved elsewhere still replays them. The journal is removed once the store has
taken every write.

What survives what:

- every line is handed to the operating system before its write is sent, so a command
  killed with SIGKILL loses nothing it has journaled;
- the journal is fsynced when a run ends, with a write that carries files (the copy,
  its folders, then the line that names them), and while metrics flow at most
  SYNC_SECONDS after a line was written: a power cut loses at most the last few
  seconds of metrics of unfinished runs, which a resume trains again anyway, and never
  a run's end or files once journaled;
- a line cut short by a crash while it was written is found when the journal is read
  back: it is dropped, with a notice, before anything is appended after it.

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
from typing import BinaryIO

from cvlib.tracking.uris import without_credentials

# A journal's first line: its format, and the store its writes go to.
FORMAT = "cvlib-journal-2"
# Formats still read back. Version 1 named each write's copy by its absolute path, which
# a moved project no longer holds; its copies are found by their sequence number instead.
READABLE_FORMATS = ("cvlib-journal-1", FORMAT)
SUFFIX = ".jsonl"
# A journal's name: its command's start and process id (time.strftime, then the pid).
NAME_PATTERN = "[0-9]*-[0-9]*-[0-9]*" + SUFFIX
# While metrics flow, the journal is fsynced at most this many seconds after a line.
SYNC_SECONDS = 2.0


def fsync_path(path: Path) -> None:
    """Make a file's data, or a folder's entries, durable (os.fsync on the path)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root``, and ``root`` itself, children first."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync_path(Path(folder, name))
        fsync_path(Path(folder))


@dataclass
class Journal:
    """One command's journal, open and locked.

    Attributes:
        path: The journal file.
        store: The store its writes go to, without credentials.
        pending: The writes the store has not acknowledged, in order: (seq, op).
        run_ids: Run keys -> the store's run ids, for the runs the store created.
        notices: What reading it back found wrong (a line cut short), one line each.
    """

    path: Path
    file: BinaryIO
    store: str = ""
    pending: list[tuple[int, dict]] = field(default_factory=list)
    run_ids: dict[str, str] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    next_seq: int = 1
    # Guards the file and the fields; notified when a line waits for an fsync.
    _lock: threading.Condition = field(default_factory=threading.Condition)
    # monotonic time of the oldest line written since the last fsync (None: all synced).
    _unsynced_since: float | None = None

    @classmethod
    def create(cls, folder: Path, tracking_uri: str) -> Journal:
        """A new, empty journal for a store, locked by this process; its header and its
        entry in ``folder`` are on disk when it returns."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}{SUFFIX}"
        file = path.open("a+b")
        fcntl.flock(file, fcntl.LOCK_EX)
        journal = cls(path, file, without_credentials(tracking_uri))
        journal._write({"journal": FORMAT, "store": journal.store, "started": time.time()})
        journal.sync()
        fsync_path(folder)
        threading.Thread(target=journal._sync_periodically, name="cvlib-journal-sync",
                         daemon=True).start()
        return journal

    @classmethod
    def unfinished(cls, folder: Path, tracking_uri: str) -> list[Journal]:
        """The journals of a store that no live command holds, oldest first, each locked
        by this process and read back (a line cut short at its end is dropped)."""
        store = without_credentials(tracking_uri)
        found = []
        for path in sorted(folder.glob(NAME_PATTERN)):
            file = path.open("a+b")
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

    def folder_of(self, op: dict) -> Path:
        """The copy of the files a journaled write carries (its ``folder``, relative to
        the journal's folder)."""
        return self.path.parent / op["folder"]

    def append(self, op: dict, folder: str | None = None, durable: bool = False
               ) -> tuple[int, dict]:
        """Append one write, handed to the operating system before this returns; a
        folder it carries is copied into the journal first, and fsynced with the line.

        Args:
            op: The write (JSON-ready).
            folder: Files the write sends (they may be gone by the time it is sent).
            durable: fsync the journal before returning (a run's end).

        Returns:
            The write's sequence number, and the write as journaled (``folder`` names
            the copy, relative to the journal's folder).
        """
        with self._lock:
            seq, self.next_seq = self.next_seq, self.next_seq + 1
        if folder is not None:
            op = {**op, "folder": self._copy(folder, seq)}
        self._write({"seq": seq, **op})
        if durable or folder is not None:
            self.sync()
        return seq, op

    def ack(self, seqs: list[int], run_ids: dict[str, str] | None = None) -> None:
        """Record that the store took these writes (and created these runs)."""
        line = {"ack": seqs, "ids": run_ids} if run_ids else {"ack": seqs}
        self._write(line)

    def sync(self) -> None:
        """fsync the journal: every line written so far survives a power cut."""
        with self._lock:
            if self.file.closed or self._unsynced_since is None:
                return
            self._unsynced_since = None
            descriptor = self.file.fileno()
        os.fsync(descriptor)

    def close(self, remove: bool) -> None:
        """Release the journal; remove it with its files when the store has them all."""
        with self._lock:
            if remove:
                shutil.rmtree(self.files_folder, ignore_errors=True)
                self.path.unlink(missing_ok=True)
            elif not self.file.closed and self._unsynced_since is not None:
                os.fsync(self.file.fileno())
            self.file.close()
            self._lock.notify_all()

    def _sync_periodically(self) -> None:
        """fsync each line at most SYNC_SECONDS after it was written (a thread of the
        command's own journal: metrics between two run ends)."""
        while True:
            with self._lock:
                while self._unsynced_since is None and not self.file.closed:
                    self._lock.wait()
                if self.file.closed:
                    return
                delay = self._unsynced_since + SYNC_SECONDS - time.monotonic()
                if delay > 0:
                    self._lock.wait(delay)
                    continue
            self.sync()

    def _copy(self, folder: str, seq: int) -> str:
        """Copy a write's folder into the journal's files, on disk with the folders that
        name it; returns the copy's path relative to the journal's folder."""
        new_files_folder = not self.files_folder.exists()
        copy = self.files_folder / str(seq)
        shutil.copytree(folder, copy)
        fsync_tree(copy)
        fsync_path(self.files_folder)
        if new_files_folder:
            fsync_path(self.path.parent)
        return str(copy.relative_to(self.path.parent))

    def _write(self, line: dict) -> None:
        data = (json.dumps(line, separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            if self.file.closed:  # a write acknowledged after the command gave up
                return
            self.file.write(data)
            self.file.flush()
            if self._unsynced_since is None:
                self._unsynced_since = time.monotonic()
                self._lock.notify_all()

    def _read(self) -> str | None:
        """Read the journal back: its pending writes and its runs' ids. A last line cut
        short (no line end) is cut off the file, so that no later line joins it; any
        line that is no JSON is dropped; each with a notice.

        Returns:
            The store it names (None for a file that is no journal).
        """
        self.file.seek(0)
        data = self.file.read()
        complete = data.rfind(b"\n") + 1
        lines = data[:complete].split(b"\n")[:-1]
        try:
            header = json.loads(lines[0]) if lines else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            header = {}
        if not isinstance(header, dict) or header.get("journal") not in READABLE_FORMATS:
            return None
        if complete < len(data):
            self.notices.append(
                f"{self.path}: its last line was cut short ({len(data) - complete} bytes, "
                f"a crash while it was written): dropped")
            self.file.truncate(complete)
            os.fsync(self.file.fileno())
        writes: dict[int, dict] = {}
        highest = 0
        for number, text in enumerate(lines[1:], start=2):
            try:
                line = json.loads(text)
            except (json.JSONDecodeError, UnicodeDecodeError):
                line = None
            if not isinstance(line, dict):
                self.notices.append(f"{self.path}: line {number} is unreadable: dropped")
                continue
            if "seq" in line:
                seq = line.pop("seq")
                highest = max(highest, seq)
                if "folder" in line:  # relative, whatever the format named
                    line["folder"] = str((self.files_folder / str(seq)).relative_to(
                        self.path.parent))
                writes[seq] = line
            elif "ack" in line:
                for seq in line["ack"]:
                    writes.pop(seq, None)
                self.run_ids.update(line.get("ids") or {})
        self.pending = sorted(writes.items())
        self.next_seq = highest + 1
        self.store = header.get("store") or ""
        return self.store
