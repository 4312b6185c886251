"""The CPU engineering behind one door: numba kernels, and the process settings they run best under.

Nothing here runs on import, and this module imports neither torch nor numba. The kernels
live in the submodules and are imported only when a CPU fast path runs:

    jit.py    numba set-up shared by the kernels (`jit_kernel`, a vectorisable float32 exp)
    scan.py   the selective scan, forward and backward   <- selective_scan(..., backend="fused")
    conv.py   causal depthwise conv1d + SiLU             <- mamba.causal_conv1d_silu on the CPU
    step.py   DMamba's recurrent step, all layers        <- decision_mamba/fused_step.py

`configure_process()` is the one call that changes process-wide state; the entry points
(gym/experiment.py, atari/train_atari.py, `python -m decision_mamba.evaluate`, the
benchmarks) make it first thing, before torch loads. Code that imports the package
without it gets the same numbers, only slower. docs/benchmarks.md ("Process settings")
has the measurements behind each setting.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys

__all__ = ["configure_process", "GOMP_SPINCOUNT", "NUMBA_THREADING_LAYER", "KEEP_FREED_MEMORY_ENV"]

GOMP_SPINCOUNT = "10000"
NUMBA_THREADING_LAYER = "workqueue"
KEEP_FREED_MEMORY_ENV = "DM_KEEP_FREED_MEMORY"

# glibc's mallopt parameters (malloc.h) and the sizes we give them.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES = 256 * 2**20
_TRIM_THRESHOLD_BYTES = 1 * 2**30
_malloc_configured = False


def configure_process() -> dict[str, str]:
    """Set the process-wide options the CPU paths are tuned for; returns what it set.

    Call it before torch is imported. Each setting leaves a choice of the user's own alone,
    and none changes a number (same config and seed, same bits with or without it):

    - GOMP_SPINCOUNT=10000 (unless GOMP_SPINCOUNT or OMP_WAIT_POLICY is set, or torch is
      already loaded: libgomp reads it once, when torch loads it). After each parallel
      region torch's OpenMP threads spin, waiting for the next one, and take the cores from
      the numba kernels' threads; a shorter spin gives them back sooner.
    - NUMBA_THREADING_LAYER=workqueue (unless set). numba's default layer is OpenMP through
      the system's libgomp, a second OpenMP runtime beside torch's; the two keep their idle
      threads spinning and steal each other's cores. The workqueue layer's threads sleep.
      It does not support calls from several Python threads at once.
    - NUMBA_CPU_FEATURES = the host's features plus "-prefer-256-bit", on CPUs with AVX-512
      (unless NUMBA_CPU_FEATURES, NUMBA_CPU_NAME or NUMBA_ENABLE_AVX is set). LLVM tunes
      Intel's AVX-512 cores to prefer 256-bit vectors; this lets the kernels use 512-bit
      ones. No kernel reassociates a sum, so both widths give the same bits; numba's disk
      cache keys each kernel by these features.
    - glibc's malloc keeps freed blocks up to 256 MiB in its heap (mallopt
      M_MMAP_THRESHOLD 256 MiB, M_TRIM_THRESHOLD 1 GiB) instead of unmapping them, so a step
      does not page-fault its fresh few-MB tensors in again. The price: memory freed at a
      peak stays with the process (up to 1 GiB above what it uses). Only on glibc; not when
      DM_KEEP_FREED_MEMORY=0 or MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ is set.

    The first three are environment variables, so the processes this one starts inherit
    them. If numba is already imported, its config is updated too (it takes effect if no
    kernel has been compiled yet).
    """
    applied: dict[str, str] = {}
    if "torch" not in sys.modules and not {"GOMP_SPINCOUNT", "OMP_WAIT_POLICY"} & os.environ.keys():
        applied["GOMP_SPINCOUNT"] = os.environ["GOMP_SPINCOUNT"] = GOMP_SPINCOUNT
    if "NUMBA_THREADING_LAYER" not in os.environ:
        applied["NUMBA_THREADING_LAYER"] = os.environ["NUMBA_THREADING_LAYER"] = NUMBA_THREADING_LAYER
        _set_numba_config("THREADING_LAYER", NUMBA_THREADING_LAYER)
    features = _wide_vector_features()
    if features is not None:
        applied["NUMBA_CPU_FEATURES"] = os.environ["NUMBA_CPU_FEATURES"] = features
        _set_numba_config("CPU_FEATURES", features)
    if _keep_freed_memory():
        applied["mallopt"] = f"M_MMAP_THRESHOLD={_MMAP_THRESHOLD_BYTES}, M_TRIM_THRESHOLD={_TRIM_THRESHOLD_BYTES}"
    return applied


def _set_numba_config(name: str, value: str) -> None:
    numba = sys.modules.get("numba")
    if numba is not None:
        setattr(numba.config, name, value)


def _wide_vector_features() -> str | None:
    """The host's CPU features with 512-bit vectors preferred, or None (no AVX-512, or the user's own choice)."""
    if {"NUMBA_CPU_FEATURES", "NUMBA_CPU_NAME", "NUMBA_ENABLE_AVX"} & os.environ.keys():
        return None
    import llvmlite.binding  # numba's LLVM binding, without numba

    try:
        features = llvmlite.binding.get_host_cpu_features()
    except RuntimeError:  # LLVM cannot tell on this host
        return None
    if not features.get("avx512f"):
        return None
    return features.flatten() + ",-prefer-256-bit"  # numba's own host string, plus the one flag


def _keep_freed_memory() -> bool:
    """glibc's mallopt, as configure_process describes; whether it changed anything."""
    global _malloc_configured
    if _malloc_configured or os.environ.get(KEEP_FREED_MEMORY_ENV, "1") == "0":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _malloc_configured = (bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))
                          and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)))
    return _malloc_configured
