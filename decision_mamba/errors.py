"""User errors: one line on stderr and exit status 2, a traceback only when asked for.

Every mistake a user can make (a misspelt key, a missing file, a config that does not fit
the run being resumed) raises a `UserError` subclass whose message names the problem and
the fix. Command-line entry points wrap their `main` in `cli_main`, which turns such an
error into

    error: <message>

on stderr and exit status 2. `DM_DEBUG=1` re-raises it with its traceback. Anything that is
not a `UserError` is a bug in this project and keeps its traceback, except what the machine
did, not the code: a full disk or a read-only folder (OSError ENOSPC, EDQUOT, EROFS, EACCES,
EPERM) is one line naming the file, status 2, too.

Ctrl-C and SIGTERM (a scheduler's or `kill`'s stop) end the program with one line,
`interrupted (SIGINT): <what was stopped and how to continue>`, and status 130 or 143
(128 + the signal, as a shell reports a process the signal killed). cli_main turns SIGTERM
into an `Interrupted` exception while the entry point runs, so that `finally` blocks run
(a run directory's lock, a sweep's child processes) and the run loop can name its --resume.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
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


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM; the message says what was stopped and how to continue it."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum


def interrupted_again(interrupt: KeyboardInterrupt, message: str) -> Interrupted:
    """The same interrupt (same signal), with a message saying what it stopped."""
    return Interrupted(message, getattr(interrupt, "signum", signal.SIGINT))


# The OSErrors that are the machine's state, not a bug: said in one line with the file.
MACHINE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                  errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                  errno.EPERM: "operation not permitted"}


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted("", signum)


def cli_main(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run an entry point's `main(argv)`; user errors become one line and exit status 2,
    Ctrl-C and SIGTERM one line and 128 + the signal."""
    in_main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = signal.signal(signal.SIGTERM, _raise_interrupted) if in_main_thread else None
    try:
        status = main(argv)
    except UserError as error:
        if _debug():
            raise
        # One line even if a message (or a library's text inside it) spans several.
        message = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
        print(f"error: {message}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in MACHINE_ERRNOS or _debug():
            raise
        where = f" writing {error.filename}" if error.filename else ""
        print(f"error: {MACHINE_ERRNOS[error.errno]}{where}; free space or choose a writable folder "
              f"(run.out_dir, --out-dir), then run the same command again", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        if _debug():
            raise
        signum = getattr(interrupt, "signum", signal.SIGINT)
        what = str(interrupt) or "stopped"
        print(f"\ninterrupted ({signal.Signals(signum).name}): {what}", file=sys.stderr)
        return 128 + signum
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return status if isinstance(status, int) else 0


# Read by torch, numba and OpenMP; numba refuses a bad NUMBA_NUM_THREADS when it is imported.
THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def exit_on_bad_thread_variables() -> None:
    """One line and status 2 when a thread-count variable is set but is not a positive whole
    number. Entry points call it before importing numba, which fails on NUMBA_NUM_THREADS=0
    at import, with a traceback, before cli_main could say anything."""
    for name in THREAD_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value and not all(part.strip().isdigit() and int(part) > 0 for part in value.split(",")):  # OpenMP: "4,2"
            print(f"error: {name}={value} is not a positive number of threads; unset it or set e.g. {name}=1",
                  file=sys.stderr)
            raise SystemExit(2)
