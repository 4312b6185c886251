"""The selective scan on the CPU: numba kernels, forward and backward (selective_scan's "fused" backend).

    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,   y_t = (C_t . h_t + D u_t) silu(z_t)

(paper §3, Eq. 2-3, after the discretisation of Eq. 4). The D skip and the z gate are
inside; delta_bias and softplus stay in torch (decision_mamba/selective_scan.py). The
kernels never materialise the (B, L, D, N) state tensor (15.7M values per layer at the
paper's gym size): each thread owns one batch row and keeps the N states of a block of
channels in a small local buffer. The backward recomputes those states block by block and
runs the adjoint recurrence backwards in time.

Layout: u, delta, y as (B, L, D) and B, C as (B, L, N): the innermost loop runs over a
block of contiguous channels d, so LLVM vectorises it with no horizontal reductions
(N = 16 is too short a vector to pay for the dot product C_t . h_t across lanes).
(B, L, D) is also the Mamba block's layout, so the transposes around the kernel are free.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import prange
from torch import Tensor

from decision_mamba.cpu.jit import dot, jit_kernel, kernel_exp, use_torch_thread_count

__all__ = ["FusedSelectiveScan"]


@jit_kernel
def _scan_forward_kernel(u, delta, A, B, C, D, z, gated, y, h_last, block):
    """y_t = (C_t . h_t + D u_t) * silu(z_t),  h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t.

    u, delta, z, y: (Bt, L, D); A: (N, D); B, C: (Bt, L, N); D: (D,); h_last: (Bt, N, D) <- h_L.
    z is read only if `gated`. One batch row per thread; its channels in blocks of `block`
    with the block's states in an (N, block) buffer.
    """
    batch, seqlen, d_inner = u.shape
    d_state = A.shape[0]
    one = u.dtype.type(1)
    for b in prange(batch):
        h = np.empty((d_state, block), dtype=u.dtype)  # (N, W)
        delta_u = np.empty(block, dtype=u.dtype)  # (W,)
        for block_index in range((d_inner + block - 1) // block):
            # (not `range(0, d_inner, block)`: LLVM must see d0 >= 0 to drop numba's
            # negative-index checks, or the channel loop does not vectorise: 10x slower)
            d0 = block_index * block
            width = min(block, d_inner - d0)
            h[:, :width] = 0
            for t in range(seqlen):
                for j in range(width):
                    delta_u[j] = delta[b, t, d0 + j] * u[b, t, d0 + j]
                    y[b, t, d0 + j] = D[d0 + j] * u[b, t, d0 + j]
                for n in range(d_state):
                    b_tn = B[b, t, n]
                    c_tn = C[b, t, n]
                    for j in range(width):  # contiguous channels: the vectorised loop
                        h_new = kernel_exp(delta[b, t, d0 + j] * A[n, d0 + j]) * h[n, j] + delta_u[j] * b_tn
                        h[n, j] = h_new
                        y[b, t, d0 + j] += c_tn * h_new
                if gated:
                    for j in range(width):
                        z_j = z[b, t, d0 + j]
                        y[b, t, d0 + j] *= z_j / (one + kernel_exp(-z_j))
            for n in range(d_state):
                for j in range(width):
                    h_last[b, n, d0 + j] = h[n, j]



@jit_kernel
def _scan_backward_kernel(u, delta, A, B, C, D, z, gated, dy, dh_last,
                          du, ddelta, dA_per_row, dB, dC, dD_per_row, dz, block):
    """Gradients of _scan_forward_kernel by the adjoint recurrence, backwards in time.

    With s_t = C_t . h_t + D u_t the pre-gate output, e_t = dy_t silu(z_t) its gradient,
    a_t = exp(delta_t A) and g_t = dLoss/dh_t (through y_t and every later state):
        g_t = C_t e_t + a_{t+1} g_{t+1},     g_L = C_L e_L + dLoss/dh_L
        du_t = delta_t (g_t . B_t) + D e_t   ddelta_t = u_t (g_t . B_t) + sum_n A g_t a_t h_{t-1}
        dA += delta_t g_t a_t h_{t-1}        dB_t += delta_t u_t g_t,  dC_t += e_t h_t  (sums over d)
        dD += e_t u_t                        dz_t = dy_t s_t silu'(z_t)
    Each thread takes one batch row and, per channel block, recomputes the states h_0..h_L
    and decays a_1..a_L into (L+1, N, W) and (L, N, W) buffers (never a (B, L, D, N)
    array). dB, dC (Bt, L, N) are summed over the row's blocks by its own thread; dA and dD
    are left per row (dA_per_row (Bt, N, D), dD_per_row (Bt, D)) for the caller to sum:
    deterministic, no atomics.
    """
    batch, seqlen, d_inner = u.shape
    d_state = A.shape[0]
    zero = u.dtype.type(0)
    one = u.dtype.type(1)
    for b in prange(batch):
        hs = np.empty((seqlen + 1, d_state, block), dtype=u.dtype)  # (L+1, N, W): h_0 .. h_L
        decay = np.empty((seqlen, d_state, block), dtype=u.dtype)  # (L, N, W): a_1 .. a_L
        pre_gate = np.empty((seqlen, block), dtype=u.dtype)  # (L, W): s_t
        g = np.empty((d_state, block), dtype=u.dtype)  # (N, W) adjoint, carried backwards
        dA_acc = np.empty((d_state, block), dtype=u.dtype)  # (N, W)
        delta_u = np.empty(block, dtype=u.dtype)  # (W,)
        dy_pre = np.empty(block, dtype=u.dtype)  # (W,) e_t
        g_dot_B = np.empty(block, dtype=u.dtype)  # (W,)
        grad_decay = np.empty(block, dtype=u.dtype)  # (W,) sum_n A g a h_{t-1}
        g_t = np.empty(block, dtype=u.dtype)  # (W,) the adjoint g_t of one state n
        dB[b] = 0
        dC[b] = 0
        for block_index in range((d_inner + block - 1) // block):
            d0 = block_index * block
            width = min(block, d_inner - d0)
            # 1) forward again, keeping every state, decay and pre-gate output of this block
            hs[0, :, :width] = 0
            for t in range(seqlen):
                for j in range(width):
                    delta_u[j] = delta[b, t, d0 + j] * u[b, t, d0 + j]
                    pre_gate[t, j] = D[d0 + j] * u[b, t, d0 + j]
                for n in range(d_state):
                    b_tn = B[b, t, n]
                    c_tn = C[b, t, n]
                    for j in range(width):
                        a = kernel_exp(delta[b, t, d0 + j] * A[n, d0 + j])
                        decay[t, n, j] = a
                        h_t = a * hs[t, n, j] + delta_u[j] * b_tn
                        hs[t + 1, n, j] = h_t
                        pre_gate[t, j] += c_tn * h_t
            # 2) backwards in time
            for n in range(d_state):
                for j in range(width):
                    g[n, j] = dh_last[b, n, d0 + j]
                    dA_acc[n, j] = 0
            for j in range(width):
                dD_per_row[b, d0 + j] = 0
            for t in range(seqlen - 1, -1, -1):
                for j in range(width):
                    delta_u[j] = delta[b, t, d0 + j] * u[b, t, d0 + j]
                    g_dot_B[j] = 0
                    grad_decay[j] = 0
                    if gated:  # (a loop-invariant branch: LLVM unswitches it)
                        z_j = z[b, t, d0 + j]
                        sigmoid = one / (one + kernel_exp(-z_j))
                        dy_pre[j] = dy[b, t, d0 + j] * z_j * sigmoid
                        dz[b, t, d0 + j] = dy[b, t, d0 + j] * pre_gate[t, j] * sigmoid * (one + z_j * (one - sigmoid))
                    else:
                        dy_pre[j] = dy[b, t, d0 + j]
                    dD_per_row[b, d0 + j] += dy_pre[j] * u[b, t, d0 + j]
                for n in range(d_state):
                    b_tn = B[b, t, n]
                    c_tn = C[b, t, n]
                    g_n, decay_n, h_prev, h_t = g[n], decay[t, n], hs[t, n], hs[t + 1, n]
                    dA_n = dA_acc[n]
                    for j in range(width):  # no sums over j here: the vectorised loop
                        g_t[j] = g_n[j] + c_tn * dy_pre[j]
                        g_dot_B[j] += g_t[j] * b_tn
                        w = g_t[j] * decay_n[j] * h_prev[j]  # dLoss / d(delta_t A)
                        dA_n[j] += delta[b, t, d0 + j] * w
                        grad_decay[j] += A[n, d0 + j] * w
                        g_n[j] = decay_n[j] * g_t[j]  # carried to h_{t-1}
                    dB[b, t, n] += dot(g_t, delta_u, width)
                    dC[b, t, n] += dot(dy_pre, h_t, width)
                for j in range(width):
                    du[b, t, d0 + j] = delta[b, t, d0 + j] * g_dot_B[j] + D[d0 + j] * dy_pre[j]
                    ddelta[b, t, d0 + j] = u[b, t, d0 + j] * g_dot_B[j] + grad_decay[j]
            for n in range(d_state):
                for j in range(width):
                    dA_per_row[b, n, d0 + j] = dA_acc[n, j]


# Channels per block. Larger blocks vectorise better (LLVM's loop body is 4 x 16 lanes) and
# measured faster even when the backward buffers spill from L2 to L3 (B 64, D 256, L 60 to
# 180). The backward keeps every state of its block, (L + 1) x N x block per thread, so long
# sequences take narrower blocks: whole loop bodies (multiples of 64 channels) within a cap.
# A width that is not a multiple of 64 leaves a scalar tail that costs more than the
# buffer it saves (docs/benchmarks.md, "The scan's backward on long sequences").
_CHANNEL_BLOCK = 256
_BLOCK_MULTIPLE = 64
_MAX_BACKWARD_BUFFER_BYTES = 64 * 2**20


def _backward_block(seqlen: int, d_state: int, d_inner: int, itemsize: int) -> int:
    """Channels per backward block: 256, or the largest multiple of 64 whose states fit the
    cap (at least 64), never more than the channels there are."""
    fits = _MAX_BACKWARD_BUFFER_BYTES // (2 * (seqlen + 1) * d_state * itemsize)
    block = max(_BLOCK_MULTIPLE, fits - fits % _BLOCK_MULTIPLE)
    return min(d_inner, _CHANNEL_BLOCK, block)


class FusedSelectiveScan(torch.autograd.Function):
    """(y, h_L) of the gated SSM in the kernels' layouts (module docstring).

    u, delta, z: (B, L, D) with delta already discretised (bias, softplus); A: (N, D);
    B, C: (B, L, N); D: (D,); z may be None (no gate). Returns y (B, L, D), h_L (B, N, D).
    """

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                z: Tensor | None) -> tuple[Tensor, Tensor]:
        gated = z is not None
        z = z if gated else u.new_zeros(1, 1, 1)  # a placeholder the kernels never read
        u, delta, A, B, C, D, z = (t.detach().contiguous() for t in (u, delta, A, B, C, D, z))
        batch, seqlen, d_inner = u.shape
        y = torch.empty_like(u)  # (B, L, D)
        h_last = u.new_empty(batch, A.shape[0], d_inner)  # (B, N, D)
        use_torch_thread_count()
        _scan_forward_kernel(u.numpy(), delta.numpy(), A.numpy(), B.numpy(), C.numpy(), D.numpy(), z.numpy(), gated,
                             y.numpy(), h_last.numpy(), min(_CHANNEL_BLOCK, d_inner))
        ctx.save_for_backward(u, delta, A, B, C, D, z)
        ctx.gated = gated
        ctx.set_materialize_grads(False)
        return y, h_last

    @staticmethod
    def backward(ctx, dy: Tensor | None, dh_last: Tensor | None):
        u, delta, A, B, C, D, z = ctx.saved_tensors
        batch, seqlen, d_inner = u.shape
        d_state = A.shape[0]
        dy = torch.zeros_like(u) if dy is None else dy.to(u.dtype).contiguous()
        dh_last = (u.new_zeros(batch, d_state, d_inner) if dh_last is None
                   else dh_last.to(u.dtype).contiguous())
        du, ddelta = torch.empty_like(u), torch.empty_like(u)
        dA_per_row = u.new_empty(batch, d_state, d_inner)  # (B, N, D)
        dB, dC = torch.empty_like(B), torch.empty_like(C)  # (B, L, N)
        dD_per_row = u.new_empty(batch, d_inner)  # (B, D)
        dz = torch.empty_like(z)
        use_torch_thread_count()
        _scan_backward_kernel(u.numpy(), delta.numpy(), A.numpy(), B.numpy(), C.numpy(), D.numpy(), z.numpy(),
                              ctx.gated, dy.numpy(), dh_last.numpy(), du.numpy(), ddelta.numpy(), dA_per_row.numpy(),
                              dB.numpy(), dC.numpy(), dD_per_row.numpy(), dz.numpy(),
                              _backward_block(seqlen, d_state, d_inner, u.element_size()))
        return du, ddelta, dA_per_row.sum(0), dB, dC, dD_per_row.sum(0), (dz if ctx.gated else None)


