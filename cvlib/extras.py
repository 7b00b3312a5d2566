"""cvlib's optional parts and the packages each needs, as pyproject.toml declares them:
``pip install 'cvlib[ray]'`` for ``--ray``, ``'cvlib[server]'`` for ``cvlib server`` and
PostgreSQL stores, ``'cvlib[all]'`` for both. A command that needs a missing part says so
in one line (exit status 2) before it starts anything."""
from __future__ import annotations

import importlib.util

from cvlib.errors import CvlibError

# Extra -> the modules it installs that cvlib checks for, and the distribution of each.
EXTRAS = {
    "ray": {"ray": "ray"},
    "server": {"psycopg": "psycopg", "flask_wtf": "Flask-WTF"},
}


class MissingExtra(CvlibError):
    """A command needs an optional part of cvlib that is not installed."""


def require(extra: str, feature: str, modules: tuple[str, ...] | None = None) -> None:
    """Check that an extra's packages are installed before a feature uses them.

    Args:
        extra: The extra's name (a key of EXTRAS).
        feature: What needs it, as the user asked for it (``--ray``, ``cvlib server``).
        modules: The extra's modules this feature needs (default: all of them).

    Raises:
        MissingExtra: naming the missing packages and the install command.
    """
    needed = EXTRAS[extra]
    missing = [needed[module] for module in (modules or tuple(needed))
               if importlib.util.find_spec(module) is None]
    if missing:
        raise MissingExtra(f"{feature} needs {' and '.join(missing)}, which "
                           f"{'is' if len(missing) == 1 else 'are'} not installed: "
                           f"pip install 'cvlib[{extra}]'")
