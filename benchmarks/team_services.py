"""A throwaway PostgreSQL server and `cvlib server` on it, for the benchmarks and the tests.

Not a benchmark: tracking_server.py imports it (ui_startup.py and driver_capacity.py its
``free_port``, ui_startup.py its ``process_tree``), and tests/conftest.py loads it (the ``postgres`` fixture, and
``start_server``, ``stop_server`` and ``free_port`` for every test file).
Standard library only at import time, so that a script's ``--help`` stays instant::

    with throwaway_postgres() as database:
        server, url = start_server(database("runs"), folder)
        ...  # cvlib run GRID --tracking-uri URL
        stop_server(server)

PostgreSQL is Debian's package (initdb and pg_ctl, on $PATH or in
/usr/lib/postgresql/*/bin), run as the postgres user when this process is root, since
PostgreSQL refuses to run as root.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

HOST = "127.0.0.1"
SERVER_START_SECONDS = 120


class PostgresMissing(RuntimeError):
    """PostgreSQL's initdb or pg_ctl is not installed."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def process_tree(root: int) -> list[int]:
    """The pids of ``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, waiting = [], [root]
    while waiting:
        pid = waiting.pop()
        tree.append(pid)
        waiting.extend(children.get(pid, []))
    return tree


def _postgres_tool(name: str) -> str | None:
    """The newest installed PostgreSQL's ``name`` tool, or None."""
    return shutil.which(name) or next(iter(sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def throwaway_postgres(password: str | None = None) -> Iterator[Callable[[str], str]]:
    """A PostgreSQL server in a temporary folder under /tmp, on a free port, trusting
    local logins (or, with ``password``, asking it of TCP logins); stopped and removed at
    exit.

    Args:
        password: The postgres user's password, required over TCP (scram-sha-256).

    Yields:
        ``database(name)``: creates the database ``name`` and returns its
        ``postgresql://`` URI (with the password in it, when there is one).

    Raises:
        PostgresMissing: initdb or pg_ctl is not installed.
    """
    initdb, pg_ctl = _postgres_tool("initdb"), _postgres_tool("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise PostgresMissing("needs PostgreSQL's initdb and pg_ctl: apt-get install postgresql")
    # Under /tmp, whatever $TMPDIR says: the postgres user must be able to enter it, and
    # pytest's folders (the benchmarks' tests point $TMPDIR there) only their owner may.
    folder = Path(tempfile.mkdtemp(prefix="cvlib-postgres-", dir="/tmp"))
    data, port = folder / "data", free_port()
    try:
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
        logins = ["--auth=trust"]
        if password is not None:
            secret = folder / "password"
            secret.write_text(password)
            if os.geteuid() == 0:
                shutil.chown(secret, "postgres", "postgres")
            logins = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={secret}"]
        subprocess.run(_as_postgres([initdb, "-D", str(data), "-U", "postgres", *logins]),
                       check=True, capture_output=True)
        subprocess.run(_as_postgres([
            pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-w", "start", "-o",
            f"-p {port} -k {folder} -c listen_addresses={HOST}"]), check=True,
            capture_output=True)
        import urllib.parse

        import psycopg

        login = "postgres" + (f":{urllib.parse.quote(password, safe='')}" if password else "")

        def database(name: str) -> str:
            with psycopg.connect(f"postgresql://{login}@{HOST}:{port}/postgres",
                                 autocommit=True) as connection:
                connection.execute(f'CREATE DATABASE "{name}"')
            return f"postgresql://{login}@{HOST}:{port}/{name}"

        yield database
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "stop"]),
                           capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def _answers(url: str) -> bool:
    """Whether anything answers at ``url`` (an HTTP error is an answer: a login server's
    401 too)."""
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def start_server(backend: str, folder: Path, *flags: str, env: dict | None = None,
                 port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Start the real `cvlib server` and wait until it answers on /health.

    Args:
        backend: Its backend store, in $MLFLOW_BACKEND_STORE_URI (off its command line: a
            password may be in it).
        folder: Its working folder; its artifacts go to ``folder/artifacts``.
        *flags: More of its options, e.g. ``--auth``.
        env: Variables added to this process's environment for it (secrets).
        port: Its port (default: a free one).

    Returns:
        The server (in a session of its own, its output, stderr too, appended to
        ``folder/server.log``: its access log, a line per request, would fill a pipe
        that nothing reads and stall it) and its URL, ``http://127.0.0.1:PORT``.

    Raises:
        AssertionError: It exited, or did not answer within 120 s; the message is the
            end of its log.
    """
    port = port or free_port()
    log = Path(folder) / "server.log"
    with log.open("a") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "cvlib", "server",
             "--artifacts-destination", str(Path(folder) / "artifacts"), "--port", str(port),
             *flags],
            cwd=folder, env={**os.environ, "MLFLOW_BACKEND_STORE_URI": backend, **(env or {})},
            stdout=output,
            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + SERVER_START_SECONDS
    while not _answers(f"{url}/health"):
        if server.poll() is not None or time.monotonic() >= deadline:
            if server.poll() is None:  # not answering: do not leave it behind
                os.killpg(server.pid, signal.SIGKILL)
            raise AssertionError(log.read_text()[-5000:])
        time.sleep(0.5)
    return server, url


def stop_server(server: subprocess.Popen) -> None:
    """Stop a server that :func:`start_server` started, as Ctrl-C would (SIGTERM: it ends
    MLflow's server, web server and workers, its process group), and wait for it (at most
    60 s); then end whatever of its session outlived it."""
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=60)
    try:
        os.killpg(server.pid, signal.SIGKILL)  # its own session: start_new_session
    except ProcessLookupError:  # nothing left, as it should be
        pass
