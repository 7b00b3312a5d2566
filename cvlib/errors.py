"""The error every user-facing failure derives from: the CLI prints its message
on one line and exits with its status (2, bad input, unless it says otherwise), without
a traceback."""
from __future__ import annotations

import difflib


class CvlibError(Exception):
    """Bad input or missing data; the message says what to fix."""

    exit_status = 2


class StoreUnavailable(CvlibError):
    """The tracking server stayed away longer than the command may wait; what it had not
    taken is kept in the local journal, which the next command sends."""

    exit_status = 3


def closest(given: str, valid) -> str | None:
    """The valid name closest to a mistyped one (difflib's judgement), or None when none
    is close."""
    close = difflib.get_close_matches(str(given), [str(name) for name in valid], n=1)
    return close[0] if close else None


def did_you_mean(given: str, valid) -> str:
    """The closest valid spelling of a mistyped name, as the end of a one-line error.

    Args:
        given: What the user wrote (``tahn``).
        valid: The names that would have been accepted.

    Returns:
        ``"; did you mean 'tanh'?"``, or "" when nothing valid is close.
    """
    close = closest(given, valid)
    return f"; did you mean {close!r}?" if close else ""
