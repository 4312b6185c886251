"""The selective scan: the fused numba kernels against the sequential PyTorch loop.

The ground truth is `selective_scan_reference` run in float64 on the same inputs (a loop
over time, differentiated by autograd); gradcheck covers the fused backward on its own.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from decision_mamba.cpu.jit import jit_kernel, kernel_exp
from decision_mamba.selective_scan import selective_scan, selective_scan_reference

INPUT_NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected||; an exactly-zero expectation (dA at L = 1) needs ~0."""
    diff = (actual.double() - expected.double()).norm().item()
    scale = expected.double().norm().item()
    return diff / scale if scale > 0 else diff


def make_inputs(batch, d_inner, seqlen, d_state, dtype=torch.float64, seed=0, *, softplus=True):
    """All eight inputs, contiguous, with the value ranges a Mamba block produces."""
    g = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    u = randn(batch, d_inner, seqlen)
    # raw delta goes through softplus; without softplus it must already be a positive step
    delta = randn(batch, d_inner, seqlen) - 1.0 if softplus else torch.rand(batch, d_inner, seqlen, generator=g,
                                                                             dtype=torch.float64) * 0.5 + 0.01
    A = -torch.exp(randn(d_inner, d_state))  # negative real, several scales
    B = randn(batch, d_state, seqlen)
    C = randn(batch, d_state, seqlen)
    D = randn(d_inner)
    z = randn(batch, d_inner, seqlen)
    delta_bias = randn(d_inner) * 0.5 if softplus else torch.rand(d_inner, generator=g, dtype=torch.float64) * 0.1
    return [t.to(dtype) for t in (u, delta, A, B, C, D, z, delta_bias)]


def run_scan(inputs, fn, *, gate, skip, bias, softplus, last_state, weights):
    """Outputs and the gradients of sum(w * outputs) with respect to every used input."""
    u, delta, A, B, C, D, z, delta_bias = inputs
    kwargs = dict(D=D if skip else None, z=z if gate else None, delta_bias=delta_bias if bias else None,
                  delta_softplus=softplus, return_last_state=last_state)
    out = fn(u, delta, A, B, C, **kwargs)
    outs = out if last_state else (out,)
    used = [t for t in inputs if t.requires_grad]
    loss = sum((o * w.to(o.dtype)).sum() for o, w in zip(outs, weights))
    grads = torch.autograd.grad(loss, used, allow_unused=True)
    return outs, grads


def fused(*args, **kwargs):
    return selective_scan(*args, **kwargs, backend="fused")


def compare_to_reference(inputs, *, gate=True, skip=True, bias=True, softplus=True, last_state=True, tol=1e-4):
    """Run fused on `inputs` (any dtype/layout) and the float64 reference on contiguous copies."""
    names = [n for n, use in zip(INPUT_NAMES, [1, 1, 1, 1, 1, skip, gate, bias]) if use]
    used = dict(zip(INPUT_NAMES, inputs))
    for name in names:
        used[name].requires_grad_(True)
    ref_inputs = [t.detach().double().contiguous().requires_grad_(t.requires_grad) for t in inputs]
    batch, d_inner, seqlen = inputs[0].shape
    g = torch.Generator().manual_seed(123)
    weights = [torch.randn(batch, d_inner, seqlen, generator=g, dtype=torch.float64),
               torch.randn(batch, d_inner, inputs[2].shape[1], generator=g, dtype=torch.float64)]
    options = dict(gate=gate, skip=skip, bias=bias, softplus=softplus, last_state=last_state, weights=weights)
    outs, grads = run_scan(inputs, fused, **options)
    ref_outs, ref_grads = run_scan(ref_inputs, selective_scan_reference, **options)
    assert outs[0].dtype == inputs[0].dtype
    assert outs[0].shape == (batch, d_inner, seqlen)
    for out, ref in zip(outs, ref_outs):
        assert rel_err(out, ref) < tol
    for name, grad, ref in zip(names, grads, ref_grads):
        assert grad is not None and grad.shape == ref.shape, name
        assert rel_err(grad, ref) < tol, f"gradient of {name}: relative error {rel_err(grad, ref):.2e}"


# --------------------------------------------------------------------------- fused == reference

SHAPES = [
    (2, 3, 1, 4),  # L = 1: a single step, dA is exactly 0
    (3, 17, 9, 16),
    (2, 300, 7, 5),  # more channels than one kernel block (256): a ragged second block
    (4, 64, 60, 16),  # the paper's gym sequence length
]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_matches_reference_with_every_option(shape, dtype, tol):
    compare_to_reference(make_inputs(*shape, dtype=dtype, seed=sum(shape)), tol=tol)


def test_backward_blocks_are_whole_loop_bodies_within_the_cap():
    """256 channels while the states fit, then the largest multiple of 64 under the cap (64 at
    least, never more than the channels); hand-computed for N 16, float32, a 64 MiB cap."""
    from decision_mamba.cpu.scan import _backward_block

    per_channel = lambda seqlen: 2 * (seqlen + 1) * 16 * 4  # noqa: E731  bytes of one channel's states
    assert 64 * 2**20 // per_channel(2047) == 256 and _backward_block(2047, 16, 512, 4) == 256
    assert 64 * 2**20 // per_channel(3000) == 174 and _backward_block(3000, 16, 512, 4) == 128
    assert _backward_block(6000, 16, 512, 4) == 64  # 87 fit: one loop body
    assert _backward_block(100_000, 16, 512, 4) == 64  # none fit: the floor
    assert _backward_block(3000, 16, 100, 4) == 100 and _backward_block(60, 16, 40, 4) == 40


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_fused_matches_reference_when_the_backward_splits_channels_into_narrow_blocks(dtype, tol, monkeypatch):
    """A cap so small that the backward takes 64-channel blocks over 160 channels (a ragged
    third block): the gradients are still the reference's."""
    import decision_mamba.cpu.scan as cpu_scan

    monkeypatch.setattr(cpu_scan, "_MAX_BACKWARD_BUFFER_BYTES", 1)
    assert cpu_scan._backward_block(12, 4, 160, 8) == 64
    compare_to_reference(make_inputs(2, 160, 12, 4, dtype=dtype, seed=7), tol=tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("gate,skip,bias,softplus,last_state", [
    (False, False, False, False, False),  # the bare recurrence
    (True, False, False, False, True),
    (False, True, True, True, False),
    (False, False, True, False, True),  # a bias without softplus
])
def test_fused_matches_reference_for_each_option_subset(gate, skip, bias, softplus, last_state, dtype, tol):
    inputs = make_inputs(3, 20, 11, 6, dtype=dtype, seed=7, softplus=softplus)
    compare_to_reference(inputs, gate=gate, skip=skip, bias=bias, softplus=softplus, last_state=last_state, tol=tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_fused_accepts_non_contiguous_inputs(dtype, tol):
    batch, d_inner, seqlen, d_state = 3, 12, 10, 4
    u, delta, A, B, C, D, z, delta_bias = make_inputs(batch, d_inner, seqlen, d_state, dtype=dtype, seed=3)
    # transposed views (the Mamba block's own layout), a strided slice and a transposed A
    u = u.transpose(1, 2).contiguous().transpose(1, 2)
    delta = torch.stack([delta, delta + 1], dim=-1)[..., 0]  # stride 2 along time
    A = A.t().contiguous().t()
    B = B.transpose(1, 2).contiguous().transpose(1, 2)
    C = torch.cat([C, C], dim=1)[:, :d_state]
    z = z.transpose(0, 2).contiguous().transpose(0, 2)
    D = torch.stack([D, D], dim=1)[:, 1]
    delta_bias = torch.stack([delta_bias, delta_bias], dim=1)[:, 0]
    inputs = [u, delta, A, B, C, D, z, delta_bias]
    assert not any(t.is_contiguous() for t in inputs)
    compare_to_reference(inputs, tol=tol)


def test_auto_backend_on_cpu_is_the_fused_scan():
    inputs = make_inputs(2, 8, 5, 3, dtype=torch.float32, seed=1)
    auto = selective_scan(*inputs[:5], D=inputs[5], z=inputs[6], delta_bias=inputs[7], delta_softplus=True)
    fused_out = selective_scan(*inputs[:5], D=inputs[5], z=inputs[6], delta_bias=inputs[7], delta_softplus=True,
                               backend="fused")
    assert torch.equal(auto, fused_out)


def test_half_precision_inputs_are_scanned_in_float32():
    inputs = make_inputs(2, 8, 5, 3, dtype=torch.float32, seed=2)
    y32 = fused(*inputs[:5], D=inputs[5], z=inputs[6], delta_bias=inputs[7], delta_softplus=True)
    bf16 = [t.to(torch.bfloat16) for t in inputs]
    y16 = fused(*bf16[:5], D=bf16[5], z=bf16[6], delta_bias=bf16[7], delta_softplus=True)
    assert y16.dtype == torch.bfloat16
    assert rel_err(y16, y32) < 3e-2  # bf16 rounding of the inputs and of the output


def test_fused_is_deterministic_and_independent_of_the_thread_count():
    inputs = make_inputs(6, 40, 12, 8, dtype=torch.float32, seed=4)
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            leaves = [t.clone().requires_grad_() for t in inputs]
            y, h = fused(*leaves[:5], D=leaves[5], z=leaves[6], delta_bias=leaves[7], delta_softplus=True,
                         return_last_state=True)
            grads = torch.autograd.grad(y.square().sum() + h.sum(), leaves)
            results.append([y, h, *grads])
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_gradcheck_of_the_fused_scan():
    inputs = [t.requires_grad_() for t in make_inputs(2, 3, 4, 2, dtype=torch.float64, seed=5)]

    def scan(u, delta, A, B, C, D, z, delta_bias):
        return fused(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=True, return_last_state=True)

    assert torch.autograd.gradcheck(scan, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradient_through_the_last_state_only():
    u, delta, A, B, C, *_ = make_inputs(2, 5, 6, 3, dtype=torch.float64, seed=6, softplus=False)
    leaves = [t.requires_grad_() for t in (u, delta, A, B, C)]
    _, h = fused(*leaves, return_last_state=True)
    grads = torch.autograd.grad(h.sum(), leaves)
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    _, h_ref = selective_scan_reference(*ref_leaves, return_last_state=True)
    ref_grads = torch.autograd.grad(h_ref.sum(), ref_leaves, allow_unused=True)
    ref_grads = [torch.zeros_like(t) if g is None else g for t, g in zip(ref_leaves, ref_grads)]
    for grad, ref in zip(grads, ref_grads):
        assert rel_err(grad, ref) < 1e-12
    # C only enters through y: its gradient is exactly zero
    assert torch.count_nonzero(grads[4]) == 0


def test_reference_matches_the_closed_form_of_a_scalar_recurrence():
    # one channel, one state, constant step: h_t = a h_{t-1} + dt b u_t is a geometric sum
    dt, a_coef, b_val, c_val = 0.3, -0.7, 2.0, 1.5
    seqlen = 6
    u = torch.arange(1.0, seqlen + 1, dtype=torch.float64).view(1, 1, seqlen)
    delta = torch.full((1, 1, seqlen), dt, dtype=torch.float64)
    A = torch.tensor([[a_coef]], dtype=torch.float64)
    B = torch.full((1, 1, seqlen), b_val, dtype=torch.float64)
    C = torch.full((1, 1, seqlen), c_val, dtype=torch.float64)
    decay = math.exp(dt * a_coef)
    expected = [c_val * sum(decay ** (t - s) * dt * b_val * (s + 1) for s in range(t + 1)) for t in range(seqlen)]
    for backend in ("reference", "fused"):
        y = selective_scan(u, delta, A, B, C, backend=backend)
        torch.testing.assert_close(y.flatten(), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- the kernels' exp


@numba.njit
def _kernel_exp_of_array(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = kernel_exp(x[i])
    return out


def test_float32_kernel_exp_is_accurate_and_handles_extremes():
    x = np.linspace(-87.0, 88.0, 400_001).astype(np.float32)
    ours = _kernel_exp_of_array(x).astype(np.float64)
    exact = np.exp(x.astype(np.float64))
    assert np.max(np.abs(ours - exact) / exact) < 1.2e-7  # 1 float32 ulp
    special = np.array([-1e4, -88.0, -np.inf, 0.0, np.nan], dtype=np.float32)
    got = _kernel_exp_of_array(special)
    assert got[0] == 0 and got[1] == 0 and got[2] == 0 and got[3] == 1 and np.isnan(got[4])


def test_kernels_divide_as_ieee_floats():
    # jit_kernel's error_model="numpy": no zero test per division (it kept silu loops from
    # vectorising), so x / 0 is inf, as in numpy, instead of numba's ZeroDivisionError.
    def divide(x, y, out):
        for i in range(x.shape[0]):
            out[i] = x[i] / y[i]

    out = np.empty(2, dtype=np.float32)
    jit_kernel(divide, parallel=False)(np.array([1, 3], np.float32), np.array([0, 2], np.float32), out)
    assert out[0] == np.inf and out[1] == 1.5


def test_nan_in_the_step_size_propagates():
    u, delta, A, B, C, *_ = make_inputs(1, 4, 5, 3, dtype=torch.float32, seed=8, softplus=False)
    delta[0, 2, 3] = float("nan")
    y = fused(u, delta, A, B, C)
    assert torch.isnan(y[0, 2, 3:]).all() and not torch.isnan(y[0, 2, :3]).any()


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_value_errors_naming_the_expected_shape():
    u, delta, A, B, C, D, z, delta_bias = make_inputs(2, 6, 5, 3, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"u must be a tensor of shape \(batch, d_inner, seq_len\)"):
        selective_scan(u[0], delta, A, B, C)
    with pytest.raises(ValueError, match=r"delta must have shape \(batch, d_inner, seq_len\) = \(2, 6, 5\)"):
        selective_scan(u, delta[..., :4], A, B, C)
    with pytest.raises(ValueError, match=r"A must have shape \(d_inner, d_state\) = \(6, N\)"):
        selective_scan(u, delta, A[:5], B, C)
    with pytest.raises(ValueError, match=r"B must have shape \(batch, d_state, seq_len\) = \(2, 3, 5\)"):
        selective_scan(u, delta, A, B[:, :2], C)
    with pytest.raises(ValueError, match=r"C must have shape"):
        selective_scan(u, delta, A, B, C.transpose(1, 2))
    with pytest.raises(ValueError, match=r"D must have shape \(d_inner,\) = \(6,\)"):
        selective_scan(u, delta, A, B, C, D=D[:2])
    with pytest.raises(ValueError, match=r"z must have shape"):
        selective_scan(u, delta, A, B, C, z=z[:1])
    with pytest.raises(ValueError, match=r"delta_bias must have shape"):
        selective_scan(u, delta, A, B, C, delta_bias=delta_bias[None])
    with pytest.raises(ValueError, match=r"u must be a floating-point tensor, got dtype torch.int64"):
        selective_scan(u.long(), delta, A, B, C)
    with pytest.raises(ValueError, match=r"seq_len is 0"):
        selective_scan(u[..., :0], delta[..., :0], A, B[..., :0], C[..., :0])
    with pytest.raises(ValueError, match=r"unknown backend 'numba'; expected one of auto, cuda, parallel, fused, reference"):
        selective_scan(u, delta, A, B, C, backend="numba")
    with pytest.raises(ValueError, match=r"backend 'cuda' needs CUDA tensors"):
        selective_scan(u, delta, A, B, C, backend="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_scan_runs_on_cuda_tensors():  # pragma: no cover - no GPU on the CI machine
    inputs = [t.cuda() for t in make_inputs(2, 8, 5, 3, dtype=torch.float32)]
    y = selective_scan(*inputs[:5], D=inputs[5], z=inputs[6], delta_bias=inputs[7], delta_softplus=True)
    y_ref = selective_scan_reference(*[t.cpu().double() for t in inputs[:5]], inputs[5].cpu().double(),
                                     inputs[6].cpu().double(), inputs[7].cpu().double(), True)
    assert rel_err(y.cpu(), y_ref) < 1e-4


def test_softplus_and_bias_are_applied_before_the_scan():
    # delta_bias + softplus inside the scan equals doing them by hand first
    u, delta, A, B, C, D, z, delta_bias = make_inputs(2, 6, 5, 3, dtype=torch.float64, seed=10)
    by_hand = selective_scan_reference(u, F.softplus(delta + delta_bias[:, None]), A, B, C, D, z)
    inside = fused(u, delta, A, B, C, D, z, delta_bias=delta_bias, delta_softplus=True)
    torch.testing.assert_close(inside, by_hand, rtol=1e-12, atol=1e-12)
