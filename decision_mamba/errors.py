"""User errors: one line on stderr and exit status 2, a traceback only when asked for.

Every mistake a user can make (a misspelt key, a missing file, a config that does not fit
the run being resumed) raises a `UserError` subclass whose message names the problem and
the fix. Command-line entry points wrap their `main` in `cli_main`, which turns such an
error into

    error: <message>

on stderr and exit status 2. `DM_DEBUG=1` re-raises it with its traceback. Anything that is
not a `UserError` is a bug in this project and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

DEBUG_ENV = "DM_DEBUG"  # DM_DEBUG=1: show the traceback of a user error


class UserError(Exception):
    """A mistake in the user's input; the message says what is wrong and how to fix it."""


class DataError(UserError, ValueError):
    """A dataset that is damaged, misnamed, or does not fit the run (another environment, other sizes)."""


class CorruptFileError(DataError, OSError):
    """A file that cannot be read as what it claims to be (truncated, bytes changed)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file the run needs is not there; the message says how to get it."""


def cli_main(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run an entry point's `main(argv)`; user errors become one line and exit status 2."""
    try:
        status = main(argv)
    except UserError as error:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        # One line even if a message (or a library's text inside it) spans several.
        message = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
        print(f"error: {message}", file=sys.stderr)
        return 2
    return status if isinstance(status, int) else 0
