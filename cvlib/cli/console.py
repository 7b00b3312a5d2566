"""What a command shows on the terminal, and what it holds back in its log file.

Libraries and the processes a command starts write lines a user cannot act on:
TensorFlow's C++ log in every process that trains (``E0000 ... meta_optimizer.cc:967]
remapper failed``), MLflow's server's deprecation warnings, its security banner and a line
per request. A command holds them back in a log file of its own (:func:`log_file`): what
the process writes to its file descriptor 2, which its worker processes and servers
inherit, and Python's warnings and library loggers. cvlib's own lines (results, progress,
errors) still reach the terminal through ``sys.stderr`` and ``sys.stdout``. A command that
fails names its log; ``--verbose`` shows everything on the terminal instead.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import time
from pathlib import Path
from typing import IO, Iterator

# Held-back output of every command: $XDG_CACHE_HOME/cvlib/logs, else ~/.cache/cvlib/logs.
# Not beside the store: a tracking server has no local folder, and a reading command
# never creates the folder of a store that is not there.
LOGS_SUBFOLDER = Path("cvlib", "logs")
# The newest logs kept; older ones are removed as a command starts.
KEPT_LOGS = 50


def add_verbose_option(parser: argparse.ArgumentParser) -> None:
    """Add --verbose, which every command takes."""
    parser.add_argument("--verbose", action="store_true",
                        help="show what libraries and servers print (TensorFlow's C++ log, "
                             "MLflow's server's warnings and access log), which is "
                             "otherwise kept in a log file that a failure names "
                             "(~/.cache/cvlib/logs/)")


def logs_folder() -> Path:
    """Where commands keep what they hold back: ``$XDG_CACHE_HOME/cvlib/logs``, else
    ``~/.cache/cvlib/logs``."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / LOGS_SUBFOLDER


def log_file(command: str) -> Path:
    """A new log file's path for one command: ``COMMAND-DATE-TIME-PID.log`` in
    :func:`logs_folder`."""
    return logs_folder() / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def _remove_old_logs(folder: Path) -> None:
    """Keep the newest :data:`KEPT_LOGS` logs of the folder."""
    def age(path: Path) -> float:
        with contextlib.suppress(OSError):
            return -path.stat().st_mtime
        return 0.0

    for old in sorted(folder.glob("*.log"), key=age)[KEPT_LOGS:]:
        old.unlink(missing_ok=True)


@contextlib.contextmanager
def held_back(path: Path | None) -> Iterator[None]:
    """Hold back, inside the block, what this process and the processes it starts write
    to file descriptor 2, Python's warnings and library loggers, in ``path``; cvlib's
    own lines on ``sys.stderr`` still reach the terminal. The log is removed at the end
    if nothing was written to it.

    Args:
        path: The log file; None holds nothing back (--verbose).
    """
    if path is None:
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        log = open(path, "ab")
    except OSError:  # nowhere to keep it (a read-only home): show everything
        yield
        return
    _remove_old_logs(path.parent)
    terminal = os.dup(2)
    python_stderr = sys.stderr
    handler = None
    try:
        with log:
            os.dup2(log.fileno(), 2)
            # sys.stderr stays on the terminal when it writes to fd 2; a stream that is
            # not fd 2 (a test's capture, a redirection in Python) is left as it is.
            if _writes_to_fd2(python_stderr):
                python_stderr.flush()
                sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(terminal), "wb", buffering=0),
                                              encoding=python_stderr.encoding,
                                              errors="backslashreplace", write_through=True)
            handler = _log_handler(path)
            yield
    finally:
        if handler is not None:
            _remove_log_handler(handler)
        if sys.stderr is not python_stderr:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = python_stderr
        os.dup2(terminal, 2)
        os.close(terminal)
        with contextlib.suppress(OSError):
            if path.stat().st_size == 0:
                path.unlink()


def _writes_to_fd2(stream: IO[str]) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return False


def _log_handler(path: Path) -> logging.Handler:
    """Send Python's warnings, and library loggers that have no handler of their own, to
    the log. (TensorFlow adds a terminal handler of its own only while the root logger
    has none.)"""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.captureWarnings(True)
    return handler


def _remove_log_handler(handler: logging.Handler) -> None:
    logging.captureWarnings(False)
    logging.getLogger().removeHandler(handler)
    handler.close()


def held_back_note(path: Path | None) -> str | None:
    """The line that names a failed command's log, when it holds anything; else None."""
    with contextlib.suppress(OSError):
        if path is not None and path.stat().st_size > 0:
            return f"cvlib: what libraries and servers printed is in {path} (--verbose shows it)"
    return None


def child_output(path: Path | None) -> dict[str, int]:
    """Popen's arguments that send a server's output, its stdout (a line per request)
    too, where this command's held-back output goes: its log (file descriptor 2 inside
    :func:`held_back`), or with --verbose the terminal."""
    return {} if path is None else {"stdout": 2}
