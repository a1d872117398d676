"""User-facing errors: the CLI prints these as one line and exits non-zero, never a traceback."""


class LatteclipError(Exception):
    """An error caused by the user's input (a path, a value, a missing stage) with a fix in its message."""

    exit_code = 2
