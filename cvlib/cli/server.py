"""``cvlib server``: an MLflow tracking server for a team (docs/team-server.md).

A thin wrapper: MLflow serves. What it adds is sane defaults (artifacts served through the
server, so clients need no shared filesystem), the checks below, and the docs:

- it listens on 127.0.0.1 unless told otherwise, and refuses any other address without
  ``--auth`` (MLflow's basic-auth app) unless ``--insecure`` says the network is trusted;
  with ``--auth`` there, it warns unless a TLS proxy is declared (``--public-url https://``);
- secrets never go on a command line, where ``ps`` shows them: the Flask secret key
  (``MLFLOW_FLASK_SERVER_SECRET_KEY``), the admin's first password
  (``MLFLOW_AUTH_ADMIN_PASSWORD``) and a database password (``~/.pgpass``, or the whole
  backend URI in ``MLFLOW_BACKEND_STORE_URI``) come from the environment; MLflow's server
  gets the backend URI the same way, and the basic-auth config in a file only this user
  may read, removed when the server stops;
- the host names clients use (``--allowed-hosts``, ``--public-url``) pass MLflow's check
  against DNS rebinding, with their UI's origins (tracking.server_config).
"""
from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cvlib.cli.console import child_output
from cvlib.cli.ports import holder, listens, port_number, port_taken
from cvlib.cli.ui import SERVER_ENVIRONMENT
from cvlib.extras import require
from cvlib.fields import ConfigError
from cvlib.tracking.uris import DEFAULT_TRACKING_URI, has_password, redacted, sqlite_path

SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
AUTH_CONFIG_ENV = "MLFLOW_AUTH_CONFIG_PATH"
# MLflow's server reads its backend URI from here too: a password stays off command lines.
BACKEND_ENV = "MLFLOW_BACKEND_STORE_URI"
DEFAULT_ARTIFACTS = "mlruns/served-artifacts"
DEFAULT_AUTH_DATABASE = "sqlite:///mlruns/basic_auth.db"
# Every logged-in user may read every experiment, and edit those they made or were granted
# EDIT on: no one changes or deletes another's runs by default.
DEFAULT_PERMISSION = "READ"
# Signals that stop the server (and remove its config file); Ctrl-C is KeyboardInterrupt.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def add_server_parser(commands) -> None:
    """The server subcommand."""
    from cvlib.tracking.server_config import PERMISSIONS

    server = commands.add_parser(
        "server", help="start an MLflow tracking server for a team (docs/team-server.md)",
        description="Start MLflow's tracking server on a store (a PostgreSQL database in the "
                    "documented setup), serving the artifacts itself so that clients need no "
                    "shared filesystem. Point cvlib at it with --tracking-uri "
                    "http://HOST:PORT or MLFLOW_TRACKING_URI. It listens on 127.0.0.1 unless "
                    "--host says otherwise, and refuses other addresses without --auth. "
                    "Stop it with Ctrl-C.")
    server.add_argument("--backend-store-uri", metavar="URI",
                        help=f"where runs are kept, e.g. postgresql://cvlib@db/mlflow, its "
                             f"password in ~/.pgpass (default: ${BACKEND_ENV}, which may "
                             f"carry a password, else {DEFAULT_TRACKING_URI})")
    server.add_argument("--artifacts-destination", default=DEFAULT_ARTIFACTS, metavar="DIR",
                        help=f"where the server keeps the artifacts it serves "
                             f"(default: {DEFAULT_ARTIFACTS})")
    server.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only)")
    server.add_argument("--port", type=port_number, default=5000, help="port (default: 5000)")
    server.add_argument("--workers", type=int, default=2,
                        help="server processes answering requests (default: 2)")
    reach = server.add_argument_group(
        "names", "MLflow refuses requests addressed to a host name (not localhost or a "
                 "private address) unless the name is allowed")
    reach.add_argument("--allowed-hosts", type=_names, default=(), metavar="NAME[,NAME]",
                       help="host names clients reach the server by, e.g. mlflow.lab.example "
                            "(patterns such as *.lab.example too); its UI's origins on them "
                            "are allowed as well")
    reach.add_argument("--public-url", metavar="URL",
                       help="the address clients use when a proxy is in front, e.g. "
                            "https://mlflow.lab.example for a TLS proxy (docs/team-server.md): "
                            "its name is allowed, and https declares the TLS")
    reach.add_argument("--cors-allowed-origins", type=_names, default=(),
                       metavar="ORIGIN[,ORIGIN]",
                       help="further browser origins that may send requests, e.g. "
                            "https://notebooks.lab.example")
    logins = server.add_argument_group("logins")
    logins.add_argument("--auth", action="store_true",
                        help=f"require a login (MLflow's basic-auth app): users and their "
                             f"passwords in --auth-db-uri; needs ${SECRET_KEY_ENV}, and "
                             f"${ADMIN_PASSWORD_ENV} for the first start")
    logins.add_argument("--auth-db-uri", default=DEFAULT_AUTH_DATABASE, metavar="URI",
                        help=f"where users and permissions are kept, a password in ~/.pgpass "
                             f"(default: {DEFAULT_AUTH_DATABASE})")
    logins.add_argument("--default-permission", choices=PERMISSIONS,
                        default=DEFAULT_PERMISSION,
                        help=f"what every logged-in user may do to every experiment: READ, "
                             f"EDIT (write runs) or MANAGE (also delete it and grant "
                             f"permissions); a user always manages the experiments they make, "
                             f"and an owner grants more per experiment (default: "
                             f"{DEFAULT_PERMISSION})")
    server.add_argument("--insecure", action="store_true",
                        help="allow an address other than this machine's without --auth "
                             "(anyone who reaches it can read and change every run)")


def _names(text: str) -> tuple[str, ...]:
    """An argparse type: a comma-separated list."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def backend_store_uri(args) -> str:
    """--backend-store-uri, else $MLFLOW_BACKEND_STORE_URI, else the default store."""
    return args.backend_store_uri or os.environ.get(BACKEND_ENV) or DEFAULT_TRACKING_URI


def check_server_arguments(args) -> None:
    """Refuse what would expose the runs or leak a secret, in one line.

    Raises:
        ConfigError: for another address without --auth or --insecure, a password on the
            command line, a bad --public-url, or --auth without its secrets in the
            environment.
        MissingExtra: for --auth or a PostgreSQL store without their packages.
    """
    for flag, uri in (("--backend-store-uri", args.backend_store_uri),
                      ("--auth-db-uri", args.auth_db_uri)):
        if uri and has_password(uri):
            raise ConfigError(f"{flag} carries a password, which ps shows to anyone on this "
                              f"machine: put it in ~/.pgpass (mode 600), or the backend URI "
                              f"in ${BACKEND_ENV} (docs/team-server.md)")
    if args.auth:
        require("server", "cvlib server --auth", ("flask_wtf",))
    if backend_store_uri(args).startswith("postgresql"):
        require("server", "a PostgreSQL store", ("psycopg",))
    if args.public_url:
        from cvlib.tracking.server_config import check_public_url

        args.public_url = check_public_url(args.public_url)
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


def clear_text_warning(args, reach) -> str | None:
    """The warning for logins that would cross a network in clear text: --auth on an
    address other than this machine's, without a TLS proxy declared; else None."""
    if not args.auth or _loopback(args.host) or reach.behind_tls():
        return None
    return (f"cvlib: warning: logins to {args.host}:{args.port} cross the network in clear "
            f"text: put a TLS proxy in front and declare it with --public-url https://NAME "
            f"(docs/team-server.md)")


def server_command(args, reach, auth_config: str | None) -> list[str]:
    """The ``mlflow server`` command line: no secret is on it (the backend URI goes in
    $MLFLOW_BACKEND_STORE_URI).

    Args:
        args: The parsed arguments.
        reach: How clients reach it (tracking.server_config.Reach).
        auth_config: The basic-auth config file, with --auth.

    Returns:
        The argument list.
    """
    command = [sys.executable, "-m", "mlflow", "server",
               "--serve-artifacts", "--artifacts-destination", args.artifacts_destination,
               "--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
    if reach.allowed_hosts():
        command += ["--allowed-hosts", ",".join(reach.allowed_hosts())]
    if reach.cors_origins():
        command += ["--cors-allowed-origins", ",".join(reach.cors_origins())]
    if auth_config is not None:
        command += ["--app-name", "basic-auth"]
    return command


def command_server(args) -> int:
    """``cvlib server``: run MLflow's tracking server until Ctrl-C, SIGTERM or SIGHUP.

    Returns:
        0 when stopped by one of those; else the server failed (1, or its exit status).
    """
    from cvlib.tracking.server_config import Reach, write_auth_config

    check_server_arguments(args)
    backend = backend_store_uri(args)
    for database in (sqlite_path(backend), args.auth and sqlite_path(args.auth_db_uri)):
        if database:
            database.parent.mkdir(parents=True, exist_ok=True)
    Path(args.artifacts_destination).mkdir(parents=True, exist_ok=True)
    reach = Reach(args.host, args.port, args.allowed_hosts, args.cors_allowed_origins,
                  args.public_url)
    warning = clear_text_warning(args, reach)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    logins = f", logins required (default permission {args.default_permission})"
    announcement = (f"MLflow tracking server on http://{args.host}:{args.port} for "
                    f"{redacted(backend)}{logins if args.auth else ''}; point cvlib at it "
                    f"with --tracking-uri {reach.url()}. Stop it with Ctrl-C.")
    auth_config = None
    try:
        if args.auth:
            auth_config = write_auth_config(args.auth_db_uri, args.default_permission)
        return _serve(server_command(args, reach, auth_config), {
            **SERVER_ENVIRONMENT, **os.environ, BACKEND_ENV: backend,
            **({AUTH_CONFIG_ENV: auth_config} if auth_config else {})}, args, announcement)
    finally:
        if auth_config is not None:
            os.unlink(auth_config)


def _serve(command: list[str], environment: dict[str, str], args, announcement: str) -> int:
    """Run MLflow's server until it ends, or until a stop signal or Ctrl-C here stops it;
    print the announcement once it listens on its port.

    MLflow's own process dies at once on SIGTERM, without stopping its web server and
    workers; they are in this process's group (a terminal's job, a service), so when this
    process leads the group, the whole group gets the SIGTERM.

    Returns:
        0 when stopped here; else 1, or the server's own exit status if it gave one (it
        says 0 when its web server could not even listen).
    """
    server = subprocess.Popen(command, env=environment, **child_output(args.log_file))
    stopped = []

    def stop(*_) -> None:
        stopped.append(True)
        if os.getpgrp() == os.getpid():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group's SIGTERM, here
            os.killpg(0, signal.SIGTERM)
        else:
            server.terminate()

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)
    try:
        while server.poll() is None and not listens(server, args.port):
            time.sleep(0.2)
        if server.poll() is None:
            print(announcement, flush=True)
        status = server.wait()
    except KeyboardInterrupt:
        stop()
        status = server.wait()
    if stopped:
        return 0
    taken = f"; port {args.port} of {args.host} is taken ({holder(args.host, args.port)})" \
        if port_taken(args.host, args.port) else ""
    print(f"cvlib: error: MLflow's server ended by itself (exit status {status}){taken}",
          file=sys.stderr, flush=True)
    return status if status > 0 else 1
