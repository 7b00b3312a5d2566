"""What ``cvlib server`` hands MLflow's tracking server: the Host headers and browser origins
it accepts, and the basic-auth app's config file.

MLflow's security middleware answers 403 to a Host header outside localhost and the private
address ranges (a guard against DNS rebinding), and to a state-changing request from a
browser origin outside localhost. A server reached by a name (``mlflow.lab.example``,
directly or through a TLS proxy that passes the name on) needs that name among the allowed
hosts, and its UI's origins among the CORS origins, since the UI's own requests carry them.
Naming hosts replaces MLflow's default list, so the defaults are kept beside the names.
MLflow is imported only to build that list: the ``cvlib`` command imports this module to
build its parser.
"""
from __future__ import annotations

import os
import tempfile
import urllib.parse
from dataclasses import dataclass

from cvlib.fields import ConfigError

# The permissions a logged-in user may have on every experiment by default (MLflow's names).
PERMISSIONS = ("READ", "EDIT", "MANAGE")
AUTHORIZATION_FUNCTION = "mlflow.server.auth:authenticate_request_basic_auth"


@dataclass(frozen=True)
class Reach:
    """How clients reach the server.

    Attributes:
        host: The address it listens on.
        port: Its port.
        names: Host names clients use besides localhost and private addresses (or fnmatch
            patterns, e.g. ``*.lab.example``).
        origins: Browser origins allowed besides those of the server's own UI.
        public_url: The address clients use when a proxy is in front, e.g.
            ``https://mlflow.lab.example``; None without one.
    """

    host: str
    port: int
    names: tuple[str, ...] = ()
    origins: tuple[str, ...] = ()
    public_url: str | None = None

    def url(self) -> str:
        """The address to give clients."""
        return self.public_url or f"http://{self.host}:{self.port}"

    def behind_tls(self) -> bool:
        """Whether clients reach it over https (a TLS proxy is declared)."""
        return bool(self.public_url and self.public_url.startswith("https://"))

    def allowed_hosts(self) -> list[str]:
        """The Host headers MLflow accepts: its defaults (localhost, private addresses),
        and each name with and without a port; empty when there are no names (MLflow's
        defaults apply)."""
        names = [*self.names, *([_public_host(self.public_url)] if self.public_url else [])]
        if not names:
            return []
        from mlflow.server.security_utils import get_default_allowed_hosts

        expanded = [form for name in names
                    for form in ((name,) if ":" in name else (name, f"{name}:*"))]
        return list(dict.fromkeys([*get_default_allowed_hosts(), *expanded]))

    def cors_origins(self) -> list[str]:
        """The browser origins MLflow accepts state-changing requests from besides
        localhost: the UI's own, as each name and the public URL serve it, and
        ``origins``."""
        own = [origin for name in self.names if "*" not in name
               for origin in (f"http://{_with_port(name, self.port)}",
                              f"https://{name.partition(':')[0]}")]
        if self.public_url:
            parts = urllib.parse.urlsplit(self.public_url)
            own.append(f"{parts.scheme}://{parts.netloc}")
        return list(dict.fromkeys([*own, *self.origins]))


def _with_port(name: str, port: int) -> str:
    return name if ":" in name else f"{name}:{port}"


def _public_host(public_url: str) -> str:
    return urllib.parse.urlsplit(public_url).hostname or ""


def check_public_url(url: str) -> str:
    """An argparse-friendly check of ``--public-url``.

    Raises:
        ConfigError: not an http(s) URL with a host, or it carries a login.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--public-url must be an address such as "
                          f"https://mlflow.lab.example, got {url!r}")
    if parts.username or parts.password:
        raise ConfigError("--public-url is the address clients use, without a login")
    return url.rstrip("/")


def write_auth_config(database_uri: str, default_permission: str) -> str:
    """Write the basic-auth app's config file, readable by this user only (mode 0600: the
    users' database URI may carry a password); the secrets stay in the environment.

    Args:
        database_uri: Where users and permissions are kept.
        default_permission: What every logged-in user may do to every experiment, unless
            granted more on one (one of :data:`PERMISSIONS`).

    Returns:
        The file's path; the caller removes it.
    """
    handle, path = tempfile.mkstemp(prefix="cvlib-auth-", suffix=".ini")
    os.fchmod(handle, 0o600)
    with os.fdopen(handle, "w") as config:
        # MLflow's configparser reads % as the start of an interpolation.
        config.write(f"[mlflow]\ndefault_permission = {default_permission}\n"
                     f"database_uri = {database_uri.replace('%', '%%')}\n"
                     f"admin_username = admin\n"
                     f"authorization_function = {AUTHORIZATION_FUNCTION}\n")
    return path
