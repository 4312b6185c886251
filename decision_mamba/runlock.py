"""One writer per run directory: an advisory lock on <run dir>/.lock.

Two processes writing one run (two `--resume` at once, or a sweep re-launched while an
orphan of the first still trains) would interleave metrics.jsonl and checkpoints. The lock
is flock(2) on a file in the run directory, holding the PID of its holder for the message
the second writer gets. The kernel drops a flock when its holder dies, however it dies
(kill -9, OOM), so a lock file left by a dead process never blocks: only a live holder does.
The file itself stays (removing it would let a third process lock a fresh file while the
second still holds the old one); readers ignore it (LOCK_FILE).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from decision_mamba.errors import UserError

LOCK_FILE = ".lock"


class RunLockedError(UserError):
    """Another live process writes this run directory."""


@contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the run directory's lock for the block (creating the directory if need be);
    RunLockedError naming the holder's PID when another process holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            who = f"process {holder}" if holder.isdigit() else "another process"
            stop = f" (kill {holder} stops it)" if holder.isdigit() else ""
            raise RunLockedError(f"run directory {run_dir} is being written by {who}{stop}; wait for it "
                                 f"to end, then run the command again (with --resume to continue the run)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
