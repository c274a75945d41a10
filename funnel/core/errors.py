"""Errors that reach the user as one line and exit code 2 (never a traceback)."""


class FunnelError(Exception):
    """A problem the user can fix: bad input, missing file, impossible option."""


class DataError(FunnelError):
    """Input data is missing, malformed or inconsistent; the message names file and column."""

