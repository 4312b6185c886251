"""A selective scan in plain PyTorch ops with log-depth parallelism: the GPU path with no build.

The recurrence h_t = a_t h_{t-1} + b_t (a_t = exp(delta_t A), b_t = delta_t B_t u_t, all
(B, D, N) per step) is a first-order linear recurrence, and its pairs compose
associatively:

    (a_1, b_1) then (a_2, b_2)  =  (a_2 a_1, a_2 b_1 + b_2)

so every prefix h_t is found in ceil(log2 L) rounds of whole-tensor multiply-adds
(Hillis & Steele's inclusive scan). Each round is a handful of elementwise kernels over the
(B, D, L, N) tensor, where the reference loop launches several kernels per time step.
At the paper's sizes (gym: B 64, D 256, L 60, N 16: 63 MB in float32; Atari: B 256,
L 90: 377 MB) that tensor is small for a GPU.

Memory. Autograd through the rounds would keep two (B, D, L, N) tensors per round and per
layer (several GB at the Atari size), so the backward is written out: the forward keeps
only its inputs; the backward recomputes the states with the same scan and runs the adjoint
recurrence g_t = C_t dy_t + a_{t+1} g_{t+1} as a second scan, backwards in time. Peak memory
is a few (B, D, L, N) tensors for one layer at a time.

The D skip, the z gate, delta_bias and softplus stay outside, in autograd (they are
(B, D, L), cheap), exactly as the fused CPU path does. The state is scanned in float32 (or
float64 for float64 inputs), as mamba_ssm's kernel accumulates, whatever the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["linear_scan", "ssm_scan_parallel"]


def linear_scan(a: Tensor, b: Tensor) -> Tensor:
    """All h_t of h_t = a_t h_{t-1} + b_t, h_{-1} = 0, along dim 2 (time) of (B, D, L, N) tensors.

    Hillis-Steele: after the round with offset k, (a_t, b_t) holds the composition of the
    pairs t-2k+1 .. t. Takes ownership of a and b (overwrites them); returns b, now h.
    """
    seqlen = a.shape[2]
    k = 1
    while k < seqlen:
        # Right-hand sides are evaluated into new tensors before the slice assignment, so the
        # overlapping views [k:] and [:-k] read the previous round's values.
        b[:, :, k:] = torch.addcmul(b[:, :, k:], a[:, :, k:], b[:, :, :-k])
        if 2 * k < seqlen:  # the last round's a is never read again
            a[:, :, k:] = a[:, :, k:] * a[:, :, :-k]
        k *= 2
    return b


def _states(u: Tensor, delta: Tensor, A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """(decay a_t, states h_t), both (B, D, L, N), from u, delta (B, D, L); A (D, N); B (B, N, L)."""
    decay = torch.exp(delta.unsqueeze(-1) * A[:, None, :])  # (B, D, L, N)
    drive = (delta * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)  # (B, D, L, N)
    h = linear_scan(decay.clone(), drive)  # (B, D, L, N)
    return decay, h


class _ParallelSSM(torch.autograd.Function):
    """y_t = C_t . h_t and h_L for h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t (no D, no gate)."""

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor):
        # Under bf16/fp16 autocast the einsums would run in the low dtype: the scan is float32.
        with torch.autocast(u.device.type, enabled=False):
            _, h = _states(u, delta, A, B)  # (B, D, L, N)
            y = torch.einsum("bdln,bnl->bdl", h, C)  # (B, D, L)
        ctx.save_for_backward(u, delta, A, B, C)
        ctx.set_materialize_grads(False)
        return y, h[:, :, -1].clone()  # (B, D, L), (B, D, N)

    @staticmethod
    def backward(ctx, dy: Tensor | None, dh_last: Tensor | None):
        u, delta, A, B, C = ctx.saved_tensors
        # The backward runs outside autocast; an incoming gradient may be bf16/fp16 all the same.
        dy = None if dy is None else dy.to(u.dtype)
        dh_last = None if dh_last is None else dh_last.to(u.dtype)
        decay, h = _states(u, delta, A, B)  # (B, D, L, N) each
        # Adjoint g_t = dLoss/dh_t = C_t dy_t + a_{t+1} g_{t+1}, plus dh_last at t = L:
        # a linear scan over reversed time with coefficients a_{t+1} (0 past the end).
        drive = (u.new_zeros(()) if dy is None else dy).unsqueeze(-1) * C.transpose(1, 2).unsqueeze(1)
        drive = drive.expand_as(h).clone()  # (B, D, L, N)
        if dh_last is not None:
            drive[:, :, -1] += dh_last
        coeff = torch.zeros_like(decay)
        coeff[:, :, :-1] = decay[:, :, 1:]
        g = linear_scan(coeff.flip(2), drive.flip(2)).flip(2)  # (B, D, L, N)
        h_prev = torch.zeros_like(h)
        h_prev[:, :, 1:] = h[:, :, :-1]  # h_{t-1}, h_0 = 0
        w = g * decay * h_prev  # (B, D, L, N): dLoss / d(delta_t A)
        g_dot_B = torch.einsum("bdln,bnl->bdl", g, B)  # (B, D, L)
        du = delta * g_dot_B
        ddelta = u * g_dot_B + torch.einsum("bdln,dn->bdl", w, A)
        dA = torch.einsum("bdln,bdl->dn", w, delta)
        dB = torch.einsum("bdln,bdl->bnl", g, delta * u)
        dC = (torch.zeros_like(C) if dy is None else torch.einsum("bdln,bdl->bnl", h, dy))
        return du, ddelta, dA, dB, dC


def ssm_scan_parallel(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """The selective scan's recurrence, no skip or gate: (y (B, D, L), h_L (B, D, N)).

    u, delta: (B, D, L), delta already biased and softplus-ed; A: (D, N); B, C: (B, N, L);
    all in the compute dtype (float32 or float64).
    """
    return _ParallelSSM.apply(u, delta, A, B, C)
