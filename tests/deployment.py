"""Real services for the deployment tests (tests/test_server_deployment.py): Debian's nginx
in front of `cvlib server`, a self-signed certificate made with openssl, a PostgreSQL that
asks for a password, and what a test reads of running processes. Each one FAILS the test
(AssertionError, pytest.fail) when it cannot start: a deployment test never turns green by
skipping."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, team_services

process_tree = team_services.process_tree

NGINX = Path("/usr/sbin/nginx")
DOCS = REPO / "docs" / "team-server.md"
START_SECONDS = 30


@contextlib.contextmanager
def password_postgres(password: str) -> Iterator:
    """throwaway_postgres asking for ``password`` over TCP; fails without PostgreSQL."""
    with contextlib.ExitStack() as stack:
        try:
            database = stack.enter_context(team_services.throwaway_postgres(password=password))
        except team_services.PostgresMissing as missing:
            pytest.fail(str(missing))
        yield database


def self_signed_certificate(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``name`` (and 127.0.0.1), as docs/team-server.md makes
    one.

    Returns:
        The certificate (what clients trust) and its key.
    """
    certificate, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-addext",
                    f"subjectAltName=DNS:{name},IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(certificate)],
                   check=True, capture_output=True)
    return certificate, key


def documented_nginx_site() -> str:
    """The nginx site that docs/team-server.md tells an admin to install (its ```nginx
    block), as written there."""
    blocks = re.findall(r"```nginx\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert len(blocks) == 1, f"{DOCS} should show exactly one nginx site"
    return blocks[0]


def substituted(text: str, replacements: dict[str, str]) -> str:
    """``text`` with each key replaced by its value; each key must be there."""
    for old, new in replacements.items():
        assert old in text, f"{old!r} is not in:\n{text}"
        text = text.replace(old, new)
    return text


@contextlib.contextmanager
def nginx(folder: Path, sites: list[str], ports: list[int]) -> Iterator[Path]:
    """Debian's nginx with these ``server`` blocks, in the foreground, its files in
    ``folder``; stopped at exit.

    Args:
        folder: Its configuration, logs and temporary files.
        sites: The server blocks.
        ports: The ports they listen on (on 127.0.0.1), waited for.

    Yields:
        Its error log.
    """
    assert NGINX.is_file(), f"{NGINX} is missing: apt-get install nginx"
    folder.mkdir(parents=True, exist_ok=True)
    temporary = "\n".join(f"    {kind}_temp_path {folder / kind};"
                          for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # As root, its workers would otherwise run as nobody, who cannot enter pytest's folders.
    user = "user root;\n" if os.geteuid() == 0 else ""
    config = folder / "nginx.conf"
    config.write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {folder / 'nginx.pid'};\n"
        f"error_log {folder / 'error.log'};\nevents {{ worker_connections 64; }}\n"
        f"http {{\n    access_log {folder / 'access.log'};\n{temporary}\n"
        + "\n".join(sites) + "\n}\n")
    process = subprocess.Popen([str(NGINX), "-p", str(folder), "-c", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + START_SECONDS
        while not all(_listening(port) for port in ports):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"nginx did not start:\n{process.stdout.read()}")
            time.sleep(0.1)
        yield folder / "error.log"
    finally:
        process.send_signal(signal.SIGQUIT)  # nginx's graceful stop
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def proxy_site(port: int, upstream: int) -> str:
    """An nginx site on ``port`` that passes requests, and the Host header the client sent,
    to 127.0.0.1:``upstream``: as an HTTP proxy (``HTTP_PROXY``), it lets a client on this
    machine reach a server by a name that no DNS knows."""
    return (f"server {{\n    listen 127.0.0.1:{port};\n    client_max_body_size 0;\n"
            f"    location / {{\n        proxy_pass http://127.0.0.1:{upstream};\n"
            f"        proxy_set_header Host $http_host;\n    }}\n}}\n")


def run_in(folder: Path, *args: str, env: dict | None = None,
           timeout: float = 600) -> subprocess.CompletedProcess:
    """The real ``cvlib`` command, run in ``folder`` (where a default store would appear)."""
    return subprocess.run([sys.executable, "-m", "cvlib", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=folder,
                          env={**os.environ, **(env or {})})


def start_in(folder: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """The real ``cvlib`` command, started in ``folder``, its output (stderr too) readable
    line by line."""
    return subprocess.Popen([sys.executable, "-m", "cvlib", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=folder,
                            env={**os.environ, **(env or {})})


def command_line(pid: int) -> str:
    """What /proc/PID/cmdline shows anyone on the machine ("" once the process is gone)."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def environment(pid: int) -> dict[str, str]:
    """A process's environment (readable by its user only)."""
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().partition("=")[::2] for entry in entries if b"=" in entry)
