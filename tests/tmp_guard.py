"""Tests write only under pytest's temporary folders.

A pytest plugin, loaded by conftest.py. Before any test module is imported it points every
temporary and cache folder the libraries know of into this session's pytest folder:

- tempfile (tempfile.tempdir and TMPDIR, which subprocesses inherit): SB3's logger,
  multiprocessing, torch's inductor cache (its default is gettempdir()/torchinductor_$USER);
- TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR, said outright;
- numba's on-disk cache of the compiled kernels (by default decision_mamba/__pycache__ of
  the checkout) goes to .pytest_cache/numba-<key>, where the key hashes the kernels'
  source (decision_mamba/cpu/*.py) and numba's version: a rerun reads the kernels the last
  session compiled (compiling them takes most of a minute), and an edit to any kernel file
  starts an empty cache, so no session reads a kernel compiled from other source (numba's
  own cache would not see an edit to a kernel that the cached one calls from another file).
  A fresh clone, as CI's, compiles everything.

MuJoCo's warnings go to Python's warnings: its default handler appends them to
MUJOCO_LOG.TXT in the working folder (HalfCheetah's model warns at every load).

Then it catches what still writes into the real temporary folder (/tmp), as it happens:
an audit hook (sys.addaudithook) sees every file opened for writing, folder made and file
renamed, linked or symlinked by this process, and the test during which a path under /tmp
but outside pytest's folder was written fails at its teardown, naming the path. Writes made
by subprocesses or by C code (not audited) are covered by TMPDIR only; the summary lists
the entries that appeared in /tmp during the session, which on a shared machine may also
be other processes'.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import warnings
from pathlib import Path

import mujoco
import numba
import pytest

REAL_TMP = Path(tempfile.gettempdir()).resolve()  # read before it is redirected below
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class _Guard:
    allowed: tuple[Path, ...] = ()  # pytest's folder for this session (this worker's, under xdist), numba's cache
    stray: list[str] = []  # paths written outside it since the last check
    tmp_before: set[str] = set()


def _written_path(event: str, args: tuple) -> object:
    """The path an audited event writes, or None for events that write nothing."""
    if event == "open":
        path, mode, flags = args
        writes = (mode is not None and any(c in mode for c in "wax+")) or (flags & _WRITE_FLAGS)
        return path if writes else None
    if event == "os.mkdir":
        return args[0]
    if event in ("os.rename", "os.link"):  # (src, dst, src_dir_fd, dst_dir_fd)
        dst, dst_dir_fd = args[1], args[3]
        if dst_dir_fd is not None and dst_dir_fd >= 0 and not os.path.isabs(os.fsdecode(dst)):
            return os.path.join(os.readlink(f"/proc/self/fd/{dst_dir_fd}"), os.fsdecode(dst))
        return dst
    if event == "os.symlink":
        return args[1]
    return None


_EVENTS = frozenset({"open", "os.mkdir", "os.rename", "os.link", "os.symlink"})


def _audit(event: str, args: tuple) -> None:
    if event not in _EVENTS or not _Guard.allowed:
        return
    path = _written_path(event, args)
    if not isinstance(path, (str, bytes, os.PathLike)):  # an open file descriptor
        return
    resolved = Path(os.path.abspath(os.fsdecode(path)))
    if resolved.is_relative_to(REAL_TMP) and not any(resolved.is_relative_to(a) for a in _Guard.allowed):
        _Guard.stray.append(f"{event} {resolved}")


def stray_writes() -> list[str]:
    """Writes outside pytest's folder recorded since the last check (tests of the guard read it)."""
    return _Guard.stray


def kernel_cache(root: Path) -> Path:
    """.pytest_cache/numba-<sha256 of numba's version and decision_mamba/cpu/*.py, 16 hex digits>."""
    digest = hashlib.sha256(numba.__version__.encode())
    for source in sorted((root / "decision_mamba" / "cpu").glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return (root / ".pytest_cache" / f"numba-{digest.hexdigest()[:16]}").resolve()


@pytest.hookimpl(trylast=True)  # after the tmpdir plugin has made config._tmp_path_factory
def pytest_configure(config: pytest.Config) -> None:
    basetemp = config._tmp_path_factory.getbasetemp().resolve()  # pytest's own folder, under /tmp
    caches = basetemp / "caches"
    temp = basetemp / "tmp"
    temp.mkdir(exist_ok=True)
    tempfile.tempdir = str(temp)
    os.environ["TMPDIR"] = str(temp)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(caches / "torchinductor")
    os.environ["TRITON_CACHE_DIR"] = str(caches / "triton")
    kernels = kernel_cache(config.rootpath)
    os.environ["NUMBA_CACHE_DIR"] = str(kernels)  # for subprocesses
    numba.config.CACHE_DIR = str(kernels)  # read when a kernel is decorated, at import
    early = [name for name in sys.modules if name.startswith("decision_mamba.cpu.")]  # the kernels' modules
    if early:  # conftest imported them: their kernels would be cached in the checkout
        raise pytest.UsageError(f"tmp_guard: {', '.join(early)} imported before numba's cache was redirected")
    mujoco.set_mju_user_warning(lambda message: warnings.warn(f"MuJoCo: {message}", RuntimeWarning))
    _Guard.allowed = (basetemp, kernels)
    _Guard.tmp_before = set(os.listdir(REAL_TMP))
    sys.addaudithook(_audit)


@pytest.fixture(autouse=True)
def _no_writes_outside_pytest_folders():
    """Fails the test that wrote under /tmp outside pytest's folder, at its teardown.

    What a test's fixtures wrote is the test's (a session fixture's, the first test's that
    used it; collection's, the first test's)."""
    yield
    stray, _Guard.stray[:] = list(_Guard.stray), []
    if stray:
        pytest.fail("wrote outside pytest's temporary folders (use tmp_path): " + "; ".join(stray[:5]))


def pytest_terminal_summary(terminalreporter) -> None:
    new = sorted(set(os.listdir(REAL_TMP)) - _Guard.tmp_before)
    if new:
        terminalreporter.write_line(
            f"note: new entries in {REAL_TMP} during the tests (maybe other processes'): {', '.join(new[:20])}"
        )
