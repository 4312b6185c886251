"""What a run computes with: mixed precision, and the record of device, precision and scan backend.

(The process-wide CPU settings are decision_mamba.cpu.configure_process's, made by the entry points.)

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
import importlib.metadata
import platform
from typing import Any

import torch

from decision_mamba.config import PRECISIONS
from decision_mamba.mamba2 import Mamba2
from decision_mamba.selective_scan import resolve_scan_backend

__all__ = ["PRECISIONS", "autocast", "grad_scaler", "describe_compute", "format_compute"]

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
    if cfg.model.mixer == "mamba":  # the one mixer that runs the selective scan
        backend, reason = resolve_scan_backend(cfg.model.scan_backend, device)
    elif cfg.model.mixer == "mamba2":  # Mamba-2's SSD has paths of its own
        backend, reason = Mamba2.resolve_backend(device)
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
