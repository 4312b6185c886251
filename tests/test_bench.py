"""benchmarks/bench.py's lower bound: the fused scan and conv made free, and put back."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from decision_mamba.mamba import causal_conv1d_silu
from decision_mamba.selective_scan import selective_scan, selective_scan_reference

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench", REPO / "benchmarks" / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def scan_and_conv_outputs():
    """Outputs and every input gradient of one fused scan and one fused conv."""
    g = torch.Generator().manual_seed(0)
    u, delta, z = (torch.randn(2, 5, 7, generator=g, requires_grad=True) for _ in range(3))  # (B, D, L)
    A = -torch.rand(5, 3, generator=g)
    B, C = (torch.randn(2, 3, 7, generator=g, requires_grad=True) for _ in range(2))
    D = torch.randn(5, generator=g, requires_grad=True)
    y, h_last = selective_scan(u, delta, A, B, C, D, z, delta_softplus=True, return_last_state=True, backend="fused")
    x = torch.randn(2, 7, 5, generator=g, requires_grad=True)  # (B, L, D)
    weight, bias = torch.randn(5, 1, 4, generator=g, requires_grad=True), torch.randn(5, generator=g, requires_grad=True)
    conv = causal_conv1d_silu(x, weight, bias, backend="fused")
    (y.sum() + h_last.sum() + conv.sum()).backward()
    grads = [t.grad for t in (u, delta, z, B, C, D, x, weight, bias)]
    reference = selective_scan_reference(u, delta, A, B, C, D, z, delta_softplus=True)
    return [y, h_last, conv, *grads], reference


def test_free_scan_and_conv_zero_every_output_and_gradient_then_restore_the_kernels():
    with bench.free_scan_and_conv():
        outputs, _ = scan_and_conv_outputs()
    # (softplus' and the conv's own gradient paths pass zeros through as zeros)
    assert all(t is not None and not t.any() for t in outputs)
    outputs, reference = scan_and_conv_outputs()
    torch.testing.assert_close(outputs[0], reference, rtol=1e-4, atol=1e-5)
    assert outputs[2].abs().sum() > 0 and all(t.abs().sum() > 0 for t in outputs[3:])
