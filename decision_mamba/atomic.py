"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Every file the project writes (datasets, replay buffers, checkpoints, metrics, configs)
is written to a temporary file beside its destination and renamed over it only once it
is complete; os.replace is atomic on POSIX file systems.

The temporary file is `.NAME.XXXX.tmp`, which a process killed in the middle (kill -9,
OOM, a SLURM time limit) leaves behind; `--resume` removes those (checkpoint.remove_leftovers).
With `nameless=True` (checkpoints: large, and written while a run may be killed at any
moment) and where the file system allows it (Linux's O_TMPFILE: ext4, xfs, btrfs, tmpfs),
the file has no name while it is written, so such a kill leaves nothing: the kernel frees a
nameless file when its last descriptor closes. Only the finished file gets a name (linked
in, then renamed over the destination). Not for every file: HDF5 refuses a path it cannot
resolve to a name (/proc/self/fd/N).
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, nameless: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    The temporary name does not end as `path` does (nameless: it is /proc/self/fd/N)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if not nameless:
            raise OSError
        fd = os.open(path.parent, os.O_TMPFILE | os.O_RDWR, 0o666)  # the umask applies
    except (AttributeError, OSError):  # asked for a name, or no O_TMPFILE here (not Linux, or the file system)
        with _named_temporary(path) as tmp:
            yield tmp
        return
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield Path(f"/proc/self/fd/{fd}")
        _name_and_replace(fd, dir_fd, path)
    finally:
        os.close(fd)
        os.close(dir_fd)


def _name_and_replace(fd: int, dir_fd: int, path: Path) -> None:
    """Give the nameless file `fd` a temporary name in its folder, then rename it over `path`."""
    name = f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        # dst_dir_fd makes os.link call linkat(), which follows the /proc link to the file.
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
    except OSError:  # a kernel or sandbox that does not link from /proc: copy it into a named file
        with _named_temporary(path) as tmp, open(f"/proc/self/fd/{fd}", "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return
    os.replace(name, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


@contextmanager
def _named_temporary(path: Path) -> Iterator[Path]:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike, what: str = "folder") -> None:
    """Raise UserError unless `path` (a folder, made if missing) can be written: the folder
    itself if it exists, else the nearest folder above it that does. access(2) answers for
    the file system too (EROFS), and for root as root can write."""
    from decision_mamba.errors import UserError

    path = Path(os.path.abspath(path))
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot write the {what} {path}: {existing} is a file, not a folder; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = "it is on a read-only file system" if _read_only_mount(existing) else "no write permission"
        raise UserError(f"cannot write the {what} {path} ({existing}: {reason}); choose a writable folder "
                        f"or fix its permissions")


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
