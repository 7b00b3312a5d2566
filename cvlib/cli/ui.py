"""``cvlib ui``: MLflow's UI on the store, opened on an experiment's runs table."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import webbrowser

from cvlib.cli.options import add_store_options, chosen_experiment, store_named
from cvlib.fields import ConfigError

HOST = "127.0.0.1"
# MLflow's UI takes seconds to start on a shared 2-core machine; this long at most.
START_TIMEOUT_SECONDS = 120
# The lightest server MLflow offers one local user: one uvicorn worker, no job runner
# (its worker processes), no telemetry (a closed network only makes it wait). A user's
# own setting of these variables wins.
SERVER_ENVIRONMENT = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                      "MLFLOW_DISABLE_TELEMETRY": "true"}


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
    ui.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
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
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


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
        The server's exit status (0 after Ctrl-C or SIGTERM).
    """
    experiment = chosen_experiment(args)
    from cvlib.tracking.reads import experiment_ids
    from cvlib.tracking.uris import is_server
    from cvlib.tracking.view import runs_page_url
    from cvlib.tracking.writer import Tracker

    ids = experiment_ids(args.tracking_uri)
    if experiment not in ids:
        raise ConfigError(f"no experiment named {experiment!r} in {store_named(args)}; there "
                          f"are: {', '.join(ids)}")
    if is_server(args.tracking_uri):
        url = runs_page_url(args.tracking_uri, ids[experiment])
        print(f"MLflow UI of {store_named(args)}, experiment {experiment!r}:\n  {url}",
              flush=True)
        _open_browser(args, url)
        return 0
    # Tags an experiment made before the view existed; new ones carry it already.
    experiment_id = Tracker(args.tracking_uri).experiment_id(experiment)
    base = f"http://{HOST}:{args.port}"
    server = subprocess.Popen(server_command(args.tracking_uri, args.port),
                              env={**SERVER_ENVIRONMENT, **os.environ})
    # SIGTERM ends the server too; Ctrl-C reaches it through the terminal's process group.
    signal.signal(signal.SIGTERM, lambda signum, frame: server.terminate())
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while server.poll() is None and not answers(f"{base}/health"):
            if time.monotonic() > deadline:
                server.terminate()
                raise ConfigError(f"MLflow's UI did not answer on {base} within "
                                  f"{START_TIMEOUT_SECONDS} s")
            time.sleep(0.2)
        if server.poll() is not None:
            return server.returncode
        url = runs_page_url(base, experiment_id)
        print(f"MLflow UI for {store_named(args)}, experiment {experiment!r}:\n  {url}\n"
              f"Stop it with Ctrl-C.", flush=True)
        _open_browser(args, url)
        server.wait()
    except KeyboardInterrupt:
        server.wait()  # the terminal's Ctrl-C stops the server as well
    return 0


def _open_browser(args, url: str) -> None:
    if not args.no_browser and _browser_available():
        webbrowser.open(url)
