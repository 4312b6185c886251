"""What a run computes with: mixed precision, and the record of device, precision and scan backend.

`describe_compute` is what every run prints at its start and stores in summary.json and in
wandb's config, so which selective scan ran (and why) is never a secret.

Precision (train.precision): "fp32" runs as it always did (no autocast, bit-deterministic
on the CPU); "bf16" and "fp16" run the forward and loss under torch.autocast, and fp16
scales the loss with a GradScaler (fp16 gradients underflow otherwise). Weights and
optimiser state stay float32; the selective scan keeps its state in float32 (mamba.py
hands it float32 A, D and dt bias, as mamba_ssm does).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.metadata
import os
import platform
from typing import Any

import torch

from decision_mamba.mixers import mixer_class, mixer_spec
from decision_mamba.selective_scan import resolve_scan_backend

__all__ = ["PRECISIONS", "autocast", "grad_scaler", "describe_compute", "format_compute", "keep_freed_memory"]

PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward's context: nothing for fp32, torch.autocast for bf16 / fp16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=_AUTOCAST_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler, enabled for fp16 only (disabled, it passes everything through unchanged)."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe_compute(cfg: Any, device: torch.device) -> dict[str, Any]:
    """Device, precision and the selective scan that runs, with the reason (a GymConfig or AtariConfig)."""
    device = torch.device(device)
    if mixer_spec(cfg.model.mixer).uses_scan:
        backend, reason = resolve_scan_backend(cfg.model.scan_backend, device)
    elif hasattr(mixer_class(cfg.model.mixer), "resolve_backend"):  # a mixer with paths of its own (Mamba2's SSD)
        backend, reason = mixer_class(cfg.model.mixer).resolve_backend(device)
    else:
        backend, reason = "none", f"the {cfg.model.mixer} mixer has no selective scan"
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "precision": cfg.train.precision,
        "scan_backend_requested": cfg.model.scan_backend,
        "scan_backend": backend,
        "scan_backend_reason": reason,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "mamba_ssm": _version("mamba-ssm") or _version("mamba_ssm"),
    }


def format_compute(record: dict[str, Any]) -> str:
    """One line for the start of a run."""
    return (f"compute: {record['device']} ({record['device_name']}), precision {record['precision']}, "
            f"scan backend {record['scan_backend']} (requested {record['scan_backend_requested']}: "
            f"{record['scan_backend_reason']})")


# glibc's mallopt parameters (malloc.h) and the sizes we give them.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES = 256 * 2**20
_TRIM_THRESHOLD_BYTES = 1 * 2**30
KEEP_FREED_MEMORY_ENV = "DM_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed blocks for reuse instead of handing them back to the OS.

    Every training step and every batched recurrent step allocates the same few-MB tensors
    afresh (activations; at 400 episodes, 1.6 MB per layer of SSM state). By default glibc
    serves blocks of that size with mmap and unmaps them when freed, so each step pays a page
    fault per 4 KiB on first touch: measured, a batch-100 DMamba step went from 11-15 ms to
    8.4-9.0 ms without them (MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_, the same setting
    as environment variables). The price: memory freed at a peak stays with the process
    (up to 1 GiB above what it uses). What PyTorch's CPU tuning guide gets from jemalloc or
    tcmalloc, without a preload. Only on glibc; DM_KEEP_FREED_MEMORY=0, or the user's own
    MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_, leaves malloc as it is. Returns
    whether it changed anything.
    """
    if os.environ.get(KEEP_FREED_MEMORY_ENV, "1") == "0":
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
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES))
