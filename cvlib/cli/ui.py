"""``cvlib ui``: MLflow's UI on the store, opened on an experiment's runs table."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import webbrowser

from cvlib.cli.console import child_output
from cvlib.cli.options import add_store_options, chosen_experiment, store_named
from cvlib.cli.ports import (
    free_port,
    holder,
    http_status,
    listens,
    port_number,
    port_taken,
)
from cvlib.errors import CvlibError
from cvlib.fields import ConfigError

HOST = "127.0.0.1"
DEFAULT_PORT = 5000
# The default port taken, free ports to try: another program may take one while MLflow's
# UI starts (seconds), as a second `cvlib ui` started at the same time would.
PORT_ATTEMPTS = 3
# MLflow's UI takes seconds to start on a shared 2-core machine; this long at most.
START_TIMEOUT_SECONDS = 120
# The lightest server MLflow offers one local user: one uvicorn worker, no job runner
# (its worker processes), no telemetry (a closed network only makes it wait). A user's
# own setting of these variables wins.
SERVER_ENVIRONMENT = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                      "MLFLOW_DISABLE_TELEMETRY": "true"}


class UIFailed(CvlibError):
    """MLflow's UI ended, or did not answer, before it served; its output says why."""

    exit_status = 1


def add_ui_parser(commands) -> None:
    """The ui subcommand."""
    ui = commands.add_parser(
        "ui", help="start the MLflow UI on the store, opened on an experiment's runs",
        description="Start MLflow's UI on this store, bound to 127.0.0.1, and print (and open, "
                    "where a browser is available) the link to an experiment's runs table: "
                    "its cell runs, with the columns activation, initializer, bn, seed, "
                    "val_accuracy and test_accuracy, sorted by val_accuracy. Stop it with "
                    "Ctrl-C. On a tracking server (http[s]://), which serves its own UI, "
                    "print and open the link to it instead.")
    ui.add_argument("--port", type=port_number, metavar="PORT",
                    help=f"port; taken by another program, an error (default: {DEFAULT_PORT}, "
                         f"or a free port when another program holds {DEFAULT_PORT})")
    ui.add_argument("--no-browser", action="store_true",
                    help="print the link only, even where a browser is available")
    add_store_options(ui, "experiment to open (default: the newest one)")


def server_command(tracking_uri: str, port: int) -> list[str]:
    """The command that starts MLflow's UI for one local user on ``HOST``.

    Args:
        tracking_uri: The store it shows.
        port: The port it listens on.

    Returns:
        The argument list (run it with ``SERVER_ENVIRONMENT`` added to the environment).
    """
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
            "--host", HOST, "--port", str(port), "--workers", "1"]


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 within 2 s."""
    return http_status(url) == 200


def _browser_available() -> bool:
    """A graphical browser can open (a display, or macOS/Windows)."""
    graphical = sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    with contextlib.suppress(webbrowser.Error):
        return graphical and webbrowser.get() is not None
    return False


def command_ui(args) -> int:
    """``cvlib ui``: run MLflow's UI until Ctrl-C or SIGTERM; on a tracking server, which
    serves its own UI, give the link to it.

    Returns:
        0 after Ctrl-C or SIGTERM, or when MLflow's UI ends by itself after it served.

    Raises:
        ConfigError: for an unknown experiment, or a --port that another program holds.
        UIFailed: MLflow's UI ended, or did not answer, before it served.
    """
    from cvlib.tracking.uris import is_server

    local = not is_server(args.tracking_uri)
    if local and args.port is not None and port_taken(HOST, args.port):
        raise _taken(args.port)  # at once, before the store is read
    experiment = chosen_experiment(args)
    from cvlib.tracking.reads import experiment_ids
    from cvlib.tracking.view import runs_page_url
    from cvlib.tracking.writer import Tracker

    ids = experiment_ids(args.tracking_uri)
    if experiment not in ids:
        raise ConfigError(f"no experiment named {experiment!r} in {store_named(args)}; there "
                          f"are: {', '.join(ids)}")
    if not local:
        url = runs_page_url(args.tracking_uri, ids[experiment])
        print(f"MLflow UI of {store_named(args)}, experiment {experiment!r}:\n  {url}",
              flush=True)
        _open_browser(args, url)
        return 0
    # Tags an experiment made before the view existed; new ones carry it already.
    experiment_id = Tracker(args.tracking_uri).experiment_id(experiment)
    running: list[subprocess.Popen] = []

    def stop(*_) -> None:
        for server in running:
            server.terminate()
        raise KeyboardInterrupt  # as Ctrl-C: also while the server is starting

    # SIGTERM ends the server too; Ctrl-C reaches it through the terminal's process group.
    signal.signal(signal.SIGTERM, stop)
    try:
        port = _serve(args, running)
        server = running[-1]
        moved = "" if port in (args.port, DEFAULT_PORT) else \
            f" (port {DEFAULT_PORT} is taken: on port {port} instead)"
        url = runs_page_url(f"http://{HOST}:{port}", experiment_id)
        print(f"MLflow UI for {store_named(args)}, experiment {experiment!r}{moved}:\n"
              f"  {url}\nStop it with Ctrl-C.", flush=True)
        _open_browser(args, url)
        server.wait()
    except KeyboardInterrupt:
        for server in running:
            server.wait()  # the terminal's Ctrl-C stops the server as well, SIGTERM here
    return 0


def _serve(args, running: list[subprocess.Popen]) -> int:
    """Start MLflow's UI on --port, else on the default port or, when another program
    holds that, on a free one, and wait until it serves there.

    Args:
        args: The parsed command line.
        running: Gets each server started (the last one serves).

    Returns:
        The port it serves on.

    Raises:
        ConfigError: --port is taken.
        UIFailed: it ended, or did not answer, before it served.
    """
    explicit = args.port is not None
    for attempt in range(1 if explicit else PORT_ATTEMPTS):
        port = args.port if explicit else DEFAULT_PORT if attempt == 0 else free_port(HOST)
        if port_taken(HOST, port):
            if explicit:
                raise _taken(port)
            continue
        server = subprocess.Popen(server_command(args.tracking_uri, port),
                                  env={**SERVER_ENVIRONMENT, **os.environ},
                                  **child_output(args.log_file))
        running.append(server)
        if _serves(server, port):
            return port
        if not port_taken(HOST, port):  # it failed, not for want of its port
            raise UIFailed(f"MLflow's UI ended before it served (exit status "
                           f"{server.returncode})")
        if explicit:  # another program took it while the server started
            raise _taken(port)
    raise UIFailed(f"found no free port for MLflow's UI in {PORT_ATTEMPTS} tries")


def _taken(port: int) -> ConfigError:
    return ConfigError(f"port {port} of {HOST} is taken ({holder(HOST, port)}); choose "
                       f"another --port, or leave it out for a free one")


def _serves(server: subprocess.Popen, port: int) -> bool:
    """Wait until the server started here listens on ``port`` and answers there; False
    when it ends first.

    Raises:
        UIFailed: it did not answer within ``START_TIMEOUT_SECONDS`` (it is stopped).
    """
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while server.poll() is None:
        if listens(server, port) and answers(f"http://{HOST}:{port}/health"):
            return True
        if time.monotonic() > deadline:
            server.terminate()
            raise UIFailed(f"MLflow's UI did not answer on http://{HOST}:{port} within "
                           f"{START_TIMEOUT_SECONDS} s")
        time.sleep(0.2)
    return False


def _open_browser(args, url: str) -> None:
    if not args.no_browser and _browser_available():
        webbrowser.open(url)
