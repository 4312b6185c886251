"""The door to DMamba's fused recurrent step on the CPU (decision_mamba/cpu/step.py).

For DMamba (model.mixer=mamba), `DecisionModel.step` asks `fused_step_applies` and,
when it says yes, runs all layers through `fused_layers_step` instead of each layer's
PyTorch `step`. numba and the kernels load on the first step that takes this path.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["fused_step_applies", "fused_layers_step"]


def fused_step_applies(model: nn.Module, x: Tensor) -> bool:
    """Whether `fused_layers_step` may run this step: a DMamba model in eval mode,
    CPU tokens in float32/float64, no gradient wanted, and a scan backend that allows it
    (not "reference")."""
    cfg = model.cfg
    return (cfg.mixer == "mamba" and cfg.scan_backend in ("auto", "fused")
            and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64) and not model.training
            and not (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in model.parameters()))))


def fused_layers_step(layers: nn.ModuleList, x: Tensor, states: list[tuple[Tensor, Tensor]]
                      ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """All DecisionLayers of a DMamba over T new tokens: x (B, T, d) -> (B, T, d), new states.

    The numba kernel where it covers the layers exactly (the modules and parameters it was
    written for: decision_mamba.cpu.step.covers), each layer's PyTorch `step` otherwise."""
    from decision_mamba.cpu import step  # the CPU fast path: numba loads here

    return step.fused_layers_step(layers, x, states)
