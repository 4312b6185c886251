"""benchmarks/bench.py's lower bound: the fused scan and conv made free, and put back."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
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


def test_action_selection_times_every_step_contender_beside_the_window_with_ratios():
    """3.: DMamba's, DT's and DMamba-2's one-token steps and DMamba's window, in one interleaved run,
    each with its ratio to DMamba's step, and a report column for each."""
    assert list(bench.STEP_CONTENDERS) == ["DMamba (fused CPU scan)", "DT", "DMamba-2 (chunked SSD)"]
    assert set(bench.STEP_CONTENDERS) <= set(bench.CONTENDERS)  # one home: the training step's table
    [row] = bench.bench_action_selection(reps=3, batch_sizes=(2,), K=3)
    columns = [*bench.STEP_CONTENDERS.values(), bench.WINDOW]
    assert [k for k in row if k not in ("envs", "K")] == columns and (row["envs"], row["K"]) == (2, 3)
    baseline = row["DMamba recurrent step"]
    assert (baseline["ratio"], baseline["ratio_lo"], baseline["ratio_hi"]) == (1.0, 1.0, 1.0)
    for column in columns:
        assert row[column]["ms"] > 0 and row[column]["ratio_lo"] <= row[column]["ratio"] <= row[column]["ratio_hi"]
    header, rule, line = bench.action_selection_table([row])[2:]
    assert header == ("| episodes batched | DMamba recurrent step | DT KV-cache step | DMamba-2 recurrent step | "
                      "DMamba K-window | DT KV-cache step / DMamba recurrent step | DMamba-2 recurrent step / "
                      "DMamba recurrent step | DMamba K-window / DMamba recurrent step |")
    assert rule.count("---") == 8  # the batch, 4 timings, 3 ratios
    cells = line.strip("|").split(" | ")
    assert cells[0].strip() == "2" and float(cells[3]) == pytest.approx(row["DMamba-2 recurrent step"]["ms"], abs=0.01)
    assert cells[6].startswith(f"{row['DMamba-2 recurrent step']['ratio']:.2f}x [")


def test_summarise_takes_medians_of_per_round_ratios():
    times = {"a": [1.0, 2.0, 4.0], "b": [2.0, 2.0, 2.0]}  # per round a / b: 0.5, 1, 2
    result = bench.summarise(times, "b")
    assert result["a"] == {"ms": 2000.0, "ratio": 1.0, "ratio_lo": 0.5, "ratio_hi": 2.0}
    assert result["b"]["ratio"] == 1.0
