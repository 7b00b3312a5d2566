"""The port of a server that a command starts: whether another program holds it, which
port is free, and whether the server answering there is the one the command started."""
from __future__ import annotations

import argparse
import errno
import socket
import subprocess
import urllib.error
import urllib.request

import psutil


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 1 to 65535."""
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 1 to 65535, got {value}")
    return value


def port_taken(host: str, port: int) -> bool:
    """Whether another program listens on ``host:port`` (an IPv4 address), so that a
    server started there could not."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As a web server binds: a port whose old connections linger (TIME_WAIT) is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


def free_port(host: str) -> int:
    """A port of ``host`` that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def listens(server: subprocess.Popen, port: int) -> bool:
    """Whether the process or one of its descendants listens on ``port``: then every
    connection to that port reaches it, and no other program can answer there."""
    try:
        root = psutil.Process(server.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    for process in tree:
        try:
            connections = process.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
               for connection in connections):
            return True
    return False


def http_status(url: str) -> int | None:
    """The HTTP status ``url`` answers with within 2 s (an error status too), or None
    when nothing answers HTTP there."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return None


def holder(host: str, port: int) -> str:
    """What holds a taken port, for a message: an MLflow server (it answers /health with
    OK), another web server, or another program."""
    base = f"http://{host}:{port}"
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
            if response.status == 200 and response.read(16).strip() == b"OK":
                return "another MLflow server answers there"
    except (urllib.error.URLError, OSError):
        pass
    if http_status(base) is not None:
        return "another web server answers there"
    return "another program listens there"
