"""silu(causal depthwise conv1d) on the CPU in (B, L, D) layout: mamba.causal_conv1d_silu's fast path.

torch's depthwise Conv1d is slow on the CPU (its weight gradient alone took longer than
the whole selective scan) and wants (B, D, L) while the Mamba block lives in (B, L, D);
these two kernels do the conv and the SiLU in (B, L, D), the role causal_conv1d plays for
mamba_ssm on a GPU.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import prange
from torch import Tensor

from decision_mamba.cpu.jit import jit_kernel, kernel_exp, use_torch_thread_count

__all__ = ["CausalConvSiLU"]


@jit_kernel
def _conv_silu_forward_kernel(x, weight, bias, out):
    """out[b, t] = silu(bias + sum_k weight[k] * x[b, t - K + 1 + k]) (zeros before t = 0).

    x, out: (B, L, D); weight: (K, D) (taps oldest first, conv1d's cross-correlation order); bias: (D,).
    """
    batch, seqlen, channels = x.shape
    taps = weight.shape[0]
    one = x.dtype.type(1)
    for b in prange(batch):
        pre = np.empty(channels, dtype=x.dtype)
        for t in range(seqlen):
            for j in range(channels):
                pre[j] = bias[j]
            for k in range(max(0, taps - 1 - t), taps):
                s = t - (taps - 1) + k
                for j in range(channels):
                    pre[j] += weight[k, j] * x[b, s, j]
            for j in range(channels):
                out[b, t, j] = pre[j] / (one + kernel_exp(-pre[j]))


@jit_kernel
def _conv_silu_backward_kernel(x, weight, bias, dout, dx, dweight_per_row, dbias_per_row):
    """Gradients of _conv_silu_forward_kernel; weight and bias gradients left per batch row.

    dx[b, s] = sum_k weight[k] * dpre[b, s + K - 1 - k];  dweight[k] = sum_t dpre[t] x[t - K + 1 + k].
    """
    batch, seqlen, channels = x.shape
    taps = weight.shape[0]
    one = x.dtype.type(1)
    for b in prange(batch):
        dpre = np.empty((seqlen, channels), dtype=x.dtype)  # (L, D) gradient before the SiLU
        for t in range(seqlen):
            row = dpre[t]
            for j in range(channels):
                row[j] = bias[j]
            for k in range(max(0, taps - 1 - t), taps):
                s = t - (taps - 1) + k
                for j in range(channels):
                    row[j] += weight[k, j] * x[b, s, j]
            for j in range(channels):  # silu'(p) = sigmoid(p) (1 + p (1 - sigmoid(p)))
                p = row[j]
                sigmoid = one / (one + kernel_exp(-p))
                row[j] = dout[b, t, j] * sigmoid * (one + p * (one - sigmoid))
        for j in range(channels):
            dbias_per_row[b, j] = 0
        for k in range(taps):
            for j in range(channels):
                dweight_per_row[b, k, j] = 0
        for s in range(seqlen):
            for j in range(channels):
                dx[b, s, j] = 0
                dbias_per_row[b, j] += dpre[s, j]
            for k in range(taps):
                t = s + (taps - 1) - k  # the output that saw x[s] through tap k
                if t < seqlen:
                    for j in range(channels):
                        dx[b, s, j] += weight[k, j] * dpre[t, j]
                        dweight_per_row[b, k, j] += dpre[t, j] * x[b, s, j]


class CausalConvSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        x, weight, bias = (t.detach().contiguous() for t in (x, weight, bias))
        out = torch.empty_like(x)
        use_torch_thread_count()
        _conv_silu_forward_kernel(x.numpy(), weight.numpy(), bias.numpy(), out.numpy())
        ctx.save_for_backward(x, weight, bias)
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        x, weight, bias = ctx.saved_tensors
        dout = dout.to(x.dtype).contiguous()
        dx = torch.empty_like(x)
        dweight_per_row = x.new_empty(x.shape[0], *weight.shape)  # (B, K, D)
        dbias_per_row = x.new_empty(x.shape[0], x.shape[2])  # (B, D)
        use_torch_thread_count()
        _conv_silu_backward_kernel(x.numpy(), weight.numpy(), bias.numpy(), dout.numpy(), dx.numpy(),
                                   dweight_per_row.numpy(), dbias_per_row.numpy())
        return dx, dweight_per_row.sum(0), dbias_per_row.sum(0)
