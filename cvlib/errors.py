"""The error every user-facing failure derives from: the CLI prints its message
on one line and exits with its status (2, bad input, unless it says otherwise), without
a traceback."""


class CvlibError(Exception):
    """Bad input or missing data; the message says what to fix."""

    exit_status = 2


class StoreUnavailable(CvlibError):
    """The tracking server stayed away longer than the command may wait; what it had not
    taken is kept in the local journal, which the next command sends."""

    exit_status = 3
