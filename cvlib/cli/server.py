"""``cvlib server``: an MLflow tracking server for a team (docs/team-server.md).

A thin wrapper: MLflow serves. What it adds is sane defaults (artifacts served through the
server, so clients need no shared filesystem), the checks below, and the docs:

- it listens on 127.0.0.1 unless told otherwise, and refuses any other address without
  ``--auth`` (MLflow's basic-auth app) unless ``--insecure`` says the network is trusted;
- with ``--auth``, the secrets come from the environment, never the command line: the
  Flask secret key (``MLFLOW_FLASK_SERVER_SECRET_KEY``) and, for the first start, the
  admin's password (``MLFLOW_AUTH_ADMIN_PASSWORD``).
"""
from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from cvlib.cli.ui import SERVER_ENVIRONMENT
from cvlib.extras import require
from cvlib.fields import ConfigError
from cvlib.tracking.uris import DEFAULT_TRACKING_URI, sqlite_path

SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
AUTH_CONFIG_ENV = "MLFLOW_AUTH_CONFIG_PATH"
DEFAULT_ARTIFACTS = "mlruns/served-artifacts"
DEFAULT_AUTH_DATABASE = "sqlite:///mlruns/basic_auth.db"
# Logged-in users may read and write every experiment: a team shares its grids.
DEFAULT_PERMISSION = "EDIT"


def add_server_parser(commands) -> None:
    """The server subcommand."""
    server = commands.add_parser(
        "server", help="start an MLflow tracking server for a team (docs/team-server.md)",
        description="Start MLflow's tracking server on a store (a PostgreSQL database in the "
                    "documented setup), serving the artifacts itself so that clients need no "
                    "shared filesystem. Point cvlib at it with --tracking-uri "
                    "http://HOST:PORT or MLFLOW_TRACKING_URI. It listens on 127.0.0.1 unless "
                    "--host says otherwise, and refuses other addresses without --auth. "
                    "Stop it with Ctrl-C.")
    server.add_argument("--backend-store-uri", default=DEFAULT_TRACKING_URI, metavar="URI",
                        help=f"where runs are kept, e.g. postgresql://cvlib@db/mlflow "
                             f"(default: {DEFAULT_TRACKING_URI})")
    server.add_argument("--artifacts-destination", default=DEFAULT_ARTIFACTS, metavar="DIR",
                        help=f"where the server keeps the artifacts it serves "
                             f"(default: {DEFAULT_ARTIFACTS})")
    server.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only)")
    server.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    server.add_argument("--workers", type=int, default=2,
                        help="server processes answering requests (default: 2)")
    server.add_argument("--auth", action="store_true",
                        help=f"require a login (MLflow's basic-auth app): users and their "
                             f"passwords in --auth-db-uri; needs ${SECRET_KEY_ENV}, and "
                             f"${ADMIN_PASSWORD_ENV} for the first start")
    server.add_argument("--auth-db-uri", default=DEFAULT_AUTH_DATABASE, metavar="URI",
                        help=f"where users and permissions are kept (default: "
                             f"{DEFAULT_AUTH_DATABASE})")
    server.add_argument("--insecure", action="store_true",
                        help="allow an address other than this machine's without --auth "
                             "(anyone who reaches it can read and change every run)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_server_arguments(args) -> None:
    """Refuse what would expose the runs or leak a secret, in one line.

    Raises:
        ConfigError: for another address without --auth or --insecure, or --auth
            without its secrets in the environment.
        MissingExtra: for --auth or a PostgreSQL store without their packages.
    """
    if args.auth:
        require("server", "cvlib server --auth", ("flask_wtf",))
    if args.backend_store_uri.startswith("postgresql"):
        require("server", "a PostgreSQL store", ("psycopg",))
    if not _loopback(args.host) and not args.auth and not args.insecure:
        raise ConfigError(f"refusing to listen on {args.host} without --auth: anyone who "
                          f"reaches it could read and change every run; add --auth, or "
                          f"--insecure on a network you trust")
    if not args.auth:
        return
    if not os.environ.get(SECRET_KEY_ENV):
        raise ConfigError(f"--auth needs a secret key in ${SECRET_KEY_ENV} (never on the "
                          f"command line), e.g. export {SECRET_KEY_ENV}=$(openssl rand -hex 32)")
    users = sqlite_path(args.auth_db_uri)
    if users is not None and not users.exists() and not os.environ.get(ADMIN_PASSWORD_ENV):
        raise ConfigError(f"the first start with --auth creates the admin user: put its "
                          f"password in ${ADMIN_PASSWORD_ENV} (never on the command line)")


def server_command(args, auth_config: str | None) -> list[str]:
    """The ``mlflow server`` command line (no secret is on it).

    Args:
        args: The parsed arguments.
        auth_config: The basic-auth config file, with --auth.

    Returns:
        The argument list.
    """
    command = [sys.executable, "-m", "mlflow", "server",
               "--backend-store-uri", args.backend_store_uri,
               "--serve-artifacts", "--artifacts-destination", args.artifacts_destination,
               "--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
    if auth_config is not None:
        command += ["--app-name", "basic-auth"]
    return command


def _auth_config(database_uri: str) -> str:
    """A basic-auth config file naming the users' database (secrets stay in the
    environment)."""
    database = sqlite_path(database_uri)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    handle, path = tempfile.mkstemp(prefix="cvlib-auth-", suffix=".ini")
    with os.fdopen(handle, "w") as config:
        config.write(f"[mlflow]\ndefault_permission = {DEFAULT_PERMISSION}\n"
                     f"database_uri = {database_uri}\nadmin_username = admin\n"
                     f"authorization_function = "
                     f"mlflow.server.auth:authenticate_request_basic_auth\n")
    return path


def command_server(args) -> int:
    """``cvlib server``: run MLflow's tracking server until Ctrl-C or SIGTERM.

    Returns:
        The server's exit status (0 after Ctrl-C or SIGTERM).
    """
    check_server_arguments(args)
    database = sqlite_path(args.backend_store_uri)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    Path(args.artifacts_destination).mkdir(parents=True, exist_ok=True)
    auth_config = _auth_config(args.auth_db_uri) if args.auth else None
    environment = {**SERVER_ENVIRONMENT, **os.environ}
    if auth_config is not None:
        environment[AUTH_CONFIG_ENV] = auth_config
    print(f"MLflow tracking server on http://{args.host}:{args.port} for "
          f"{args.backend_store_uri}{', logins required' if args.auth else ''}; point cvlib "
          f"at it with --tracking-uri http://{args.host}:{args.port}. Stop it with Ctrl-C.",
          flush=True)
    server = subprocess.Popen(server_command(args, auth_config), env=environment)
    signal.signal(signal.SIGTERM, lambda signum, frame: server.terminate())
    try:
        status = server.wait()
    except KeyboardInterrupt:
        server.wait()  # the terminal's Ctrl-C stops the server as well
        status = 0
    finally:
        if auth_config is not None:
            os.unlink(auth_config)
    return 0 if status in (0, -signal.SIGTERM) else status
