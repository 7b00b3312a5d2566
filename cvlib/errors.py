"""The error every user-facing failure derives from: the CLI prints its message
on one line and exits with status 2, without a traceback."""


class CvlibError(Exception):
    """Bad input or missing data; the message says what to fix."""
