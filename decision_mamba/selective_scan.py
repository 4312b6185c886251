"""The selective scan of Mamba (S6), the recurrence inside every DMamba token mixer.

REFERENCE §2 / paper §3. For every batch row b and channel d, with a state h of size N:

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t        h_0 = 0
    y_t = C_t . h_t + D * u_t                                      (then y_t *= silu(z_t))

with u, delta, z (B, D, L); A (D, N); B, C (B, N, L) shared by all channels; D (D,).
`delta_bias` is added to delta and `delta_softplus` maps it through softplus first. The
signature is that of mamba_ssm's `selective_scan_fn`, so the CUDA kernel drops in.

Four interchangeable implementations behind `selective_scan(..., backend=)`, chosen by
`resolve_scan_backend` (the one home of that decision, with the reason for it):

- "cuda": mamba_ssm's kernel, used by "auto" on a CUDA device when its compiled extension
  is present and a tiny test call succeeds (`cuda_kernel_status`). Never required.
- "parallel": a log-depth scan in PyTorch ops (scan_parallel.py), for any device; what
  "auto" takes on a GPU without a working mamba_ssm kernel, with a warning saying why.
- "fused": a CPU scan compiled with numba, forward and backward (a torch.autograd.Function),
  the D skip and the z gate included (softplus and delta_bias stay in torch).
  It never materialises the (B, L, D, N) state tensor (15.7M values per layer at the paper's
  gym size): each thread owns one batch row and keeps the N states of a block of channels
  in a small local buffer. The backward recomputes those states block by block and runs the
  adjoint recurrence backwards in time.
- "reference": a plain PyTorch loop over time, obviously correct and differentiable by
  autograd; the tests' ground truth.

Recurrent inference does not come here: `Mamba.step_chunk` (mamba.py) runs the one-token
recurrence in PyTorch, and fused_step.py all layers of a DMamba step in one numba kernel.

Layout of the fused kernels. They work on u, delta, y as (B, L, D) and on B, C as
(B, L, N): the innermost loop runs over a block of contiguous channels d, so LLVM
vectorises it with no horizontal reductions (N = 16 is too short a vector to pay for the
dot product C_t . h_t across lanes). (B, L, D) is also the natural layout of the Mamba
block, so the transposes around the kernel cost nothing there. numba's libm exp does not
vectorise (pip's llvmlite has no SVML), so float32 uses the small vectorisable exp below.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import warnings
from typing import Literal

import numba
import numpy as np
import torch
import torch.nn.functional as F
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic, overload
from torch import Tensor

from decision_mamba.scan_parallel import ssm_scan_parallel

__all__ = ["BACKENDS", "selective_scan", "selective_scan_reference", "cuda_scan_available",
           "cuda_kernel_status", "resolve_scan_backend"]

Backend = Literal["auto", "cuda", "parallel", "fused", "reference"]
BACKENDS = ("auto", "cuda", "parallel", "fused", "reference")


# --------------------------------------------------------------------------- numba set-up

# numba's default threading layer is OpenMP through the system libgomp, a second OpenMP
# runtime next to the one torch bundles; after each parallel region both keep their idle
# threads spinning, and on a 2-core machine they steal each other's cores (measured: a
# Mamba block's forward+backward 3x slower, even with one thread asked of numba). The
# workqueue layer's idle threads sleep. It does not support calls from several Python
# threads at once; set NUMBA_THREADING_LAYER to choose another layer.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

# fastmath without nnan/ninf: the kernels may see inf/nan from a diverging model and must
# pass them through. Without reassoc too, although reassociation vectorises the sums over
# channels (the scan is ~2x faster with it): with reassoc, a kernel compiled in the running
# process and the same kernel loaded from numba's on-disk cache gave different low bits
# (measured here), so the first run on a machine and every later one disagreed. Runs with
# the same seed must give the same numbers. Where a sum over channels is needed (the
# backward kernel's dB and dC), its association is written out in explicit vector IR (`_dot`).
_FASTMATH = {"nsz", "arcp", "contract", "afn"}

# numba compiles for the host CPU, and LLVM tunes its Intel AVX-512 cores to "prefer
# 256-bit" vectors (it guards older ones against the clock drop of 512-bit work), so the
# kernels' loops ran 8 float32 lanes wide on a CPU that has 16. Undoing that tuning is one
# feature flag. The bits do not change: no kernel reassociates, so every lane computes
# what a scalar loop would (the one vector sum, `_dot`, fixes its own width). Measured
# here (2 threads, batch 64, L 60, D 256, N 16; kernels compiled both ways in turn): scan
# forward 4.0 -> 3.4 ms, backward 10.8 -> 8.6 ms. numba's disk cache keys every kernel by
# these features, so a kernel cached with the other width is never loaded. It must be set
# before numba builds its code generator (its first compilation in the process); a
# NUMBA_CPU_NAME or NUMBA_CPU_FEATURES of the user's own is left as it is.
NUMBA_PREFER_512_BIT_VECTORS = True


def _prefer_wide_vectors() -> None:
    if not NUMBA_PREFER_512_BIT_VECTORS or {"NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES"} & os.environ.keys():
        return
    features = get_host_cpu_features()  # "" where LLVM cannot tell
    if "+avx512f" in features.split(","):
        numba.config.CPU_FEATURES = features + ",-prefer-256-bit"


_prefer_wide_vectors()


# error_model="numpy": a float division is IEEE's (x / 0 = inf), not numba's default Python
# semantics, which test every divisor for zero to raise ZeroDivisionError. That branch kept
# every loop with a division (silu, sigmoid, layer norm) from vectorising: measured, a silu
# over (100, 3, 256) float32 took 221 us with it and 32 us without, the same bits. The
# kernels never divide by zero (their divisors are 1 + exp(.) and sqrt(var + eps)).
# numba's disk cache keys a kernel by its source file's time stamp and bytecode, not by
# these options: a change of options must come with an edit of every file that defines
# kernels (a comment will do), or an unchanged file loads its old machine code.
def jit_kernel(fn, *, parallel: bool = True):
    """njit a kernel: parallel (unless told), no GIL, cached on disk when a cache directory is writable."""
    options = dict(parallel=parallel, nogil=True, fastmath=_FASTMATH, error_model="numpy")
    try:
        return numba.njit(cache=True, **options)(fn)
    except RuntimeError:  # numba found no writable cache location: compile at each start
        return numba.njit(**options)(fn)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret the low 32 bits of an integer as a float32 (a register bitcast)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        (value,) = args
        if bits.bitwidth != 32:
            value = builder.trunc(value, ir.IntType(32)) if bits.bitwidth > 32 else builder.sext(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())

    return types.float32(bits), codegen


# exp(x) = 2^k * exp(r), k = round(x / ln2), |r| <= ln2 / 2. ln2 is split in a part exact in
# float32 and a remainder (Cody & Waite) so that r is accurate, exp(r) is a degree-6
# polynomial: the Chebyshev interpolant of exp on [-ln2/2, ln2/2]
# (numpy.polynomial.Chebyshev.interpolate(np.exp, 6, domain=[-ln2/2, ln2/2]) in power
# form), max relative error 1e-7 in float32 (1.6 ulp), and 2^k is built in the exponent bits.
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # 8 significant bits: k * _LN2_HI is exact
_LN2_LO = np.float32(-2.12194440e-4)  # ln2 - _LN2_HI
_EXP_MIN = np.float32(-87.33)  # exp(x) underflows float32 (min normal 1.2e-38) below this: return 0
_EXP_MAX = np.float32(88.0)  # 2^k must stay finite; exp(88.72) overflows float32 anyway
_HALF = np.float32(0.5)
_ZERO = np.float32(0.0)
_P0 = np.float32(1.0)
_P1 = np.float32(1.0000000377162153)
_P2 = np.float32(0.5000000047117972)
_P3 = np.float32(0.16666415514649002)
_P4 = np.float32(0.041666352896198126)
_P5 = np.float32(0.008375126398416404)
_P6 = np.float32(0.001394110846934711)


def kernel_exp(x):
    """exp inside the kernels; numba picks an implementation per dtype (below)."""
    return math.exp(x)


def _exp_float32(x):
    # Written as selects (not min/max) so that a NaN goes through unchanged.
    clamped = _EXP_MIN if x < _EXP_MIN else x
    clamped = _EXP_MAX if clamped > _EXP_MAX else clamped
    k = np.floor(clamped * _LOG2E + _HALF)
    r = clamped - k * _LN2_HI - k * _LN2_LO
    p = _P6
    p = p * r + _P5
    p = p * r + _P4
    p = p * r + _P3
    p = p * r + _P2
    p = p * r + _P1
    p = p * r + _P0
    two_to_k = _float32_from_bits((np.int32(k) + 127) << 23)
    return _ZERO if x < _EXP_MIN else p * two_to_k


# Compiled apart from the kernels (LLVM inlines it) so that it gets FMA contraction but
# not the kernels' reassociation, which would fold the Cody-Waite split k*ln2_hi + k*ln2_lo
# back into k*ln2 and lose ~3 ulp at large |x|.
@overload(kernel_exp, jit_options={"fastmath": {"contract"}})
def _exp_overload(x):
    if x == types.float32:
        return _exp_float32
    # float64 runs at reference precision through libm (used by tests and gradcheck).
    return lambda x: math.exp(x)


# --------------------------------------------------------------------------- fused kernels


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


_DOT_LANES = 32


@intrinsic
def _dot(typingctx, x, y, n):
    """sum_j x[j] y[j] over 0 <= j < n of two contiguous 1-D arrays, in 32 lanes added in a fixed tree.

    The backward kernel's sums over channels (dB, dC). Lane k sums the products of channels
    j = k (mod 32) by FMA, 32 channels per step (four 8-wide FMAs on AVX2, independent so
    the FPU is never waiting on one), then the lanes are added pairwise: 32 -> 16 -> ... -> 1.
    Written as explicit vector IR because LLVM will not vectorise a sum without fastmath
    reassoc, and reassoc is banned here (module set-up): these operations have one IEEE
    result, so every compile (fresh or cached, any vector width) gives the same bits.
    """
    if not (isinstance(x, types.Array) and isinstance(y, types.Array) and x.ndim == y.ndim == 1
            and x.layout == y.layout == "C" and x.dtype == y.dtype and x.dtype in (types.float32, types.float64)
            and isinstance(n, types.Integer)):
        return None
    lanes = _DOT_LANES

    def codegen(context, builder, signature, args):
        x_value, y_value, count = args
        scalar = context.get_value_type(x.dtype)
        vector = ir.VectorType(scalar, lanes)
        x_data = context.make_array(x)(context, builder, x_value).data
        y_data = context.make_array(y)(context, builder, y_value).data
        count = context.cast(builder, count, n, types.intp)
        zero = ir.Constant(vector, [ir.Constant(scalar, 0.0)] * lanes)
        acc = cgutils.alloca_once_value(builder, zero)  # promoted to a register by LLVM
        steps = builder.udiv(count, ir.Constant(count.type, lanes))
        align = scalar.get_abi_alignment(context.target_data)
        suffix = "f32" if x.dtype == types.float32 else "f64"
        fma_vector = cgutils.get_or_insert_function(  # x y + acc with one rounding, as `contract` gives
            builder.module, ir.FunctionType(vector, [vector] * 3), f"llvm.fma.v{lanes}{suffix}")
        fma_scalar = cgutils.get_or_insert_function(builder.module, ir.FunctionType(scalar, [scalar] * 3),
                                                    f"llvm.fma.{suffix}")

        def load_vector(data, offset):
            pointer = builder.bitcast(builder.gep(data, [offset]), vector.as_pointer())
            return builder.load(pointer, align=align)

        with cgutils.for_range(builder, steps) as loop:  # 32 channels per step
            offset = builder.mul(loop.index, ir.Constant(count.type, lanes))
            total = builder.call(fma_vector, [load_vector(x_data, offset), load_vector(y_data, offset),
                                              builder.load(acc)])
            builder.store(total, acc)
        full = builder.mul(steps, ir.Constant(count.type, lanes))
        one = ir.Constant(count.type, 1)
        with cgutils.for_range_slice(builder, full, count, one) as (j, _):  # the last n mod 32 channels, one by one
            lane = builder.sub(j, full)
            x_j = builder.load(builder.gep(x_data, [j]))
            y_j = builder.load(builder.gep(y_data, [j]))
            lanes_now = builder.load(acc)
            summed = builder.call(fma_scalar, [x_j, y_j, builder.extract_element(lanes_now, lane)])
            builder.store(builder.insert_element(lanes_now, summed, lane), acc)
        total = builder.load(acc)
        width = lanes
        while width > 1:  # lane k + width/2 onto lane k: a fixed tree
            width //= 2
            index = ir.VectorType(ir.IntType(32), width)
            low = builder.shuffle_vector(total, total, ir.Constant(index, list(range(width))))
            high = builder.shuffle_vector(total, total, ir.Constant(index, list(range(width, 2 * width))))
            total = builder.fadd(low, high)  # no fastmath flags: exactly this association
        return builder.extract_element(total, ir.Constant(ir.IntType(32), 0))

    return x.dtype(x, y, n), codegen


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
                    dB[b, t, n] += _dot(g_t, delta_u, width)
                    dC[b, t, n] += _dot(dy_pre, h_t, width)
                for j in range(width):
                    du[b, t, d0 + j] = delta[b, t, d0 + j] * g_dot_B[j] + D[d0 + j] * dy_pre[j]
                    ddelta[b, t, d0 + j] = u[b, t, d0 + j] * g_dot_B[j] + grad_decay[j]
            for n in range(d_state):
                for j in range(width):
                    dA_per_row[b, n, d0 + j] = dA_acc[n, j]


# Channels per block. Larger blocks vectorise better (LLVM's loop body is 4 x 16 lanes) and
# measured faster even when the backward buffers spill from L2 to L3 (B 64, D 256, L 60 to
# 180); the cap on the buffers only matters for very long sequences.
_CHANNEL_BLOCK = 256
_MAX_BACKWARD_BUFFER_BYTES = 16 * 2**20


def _backward_block(seqlen: int, d_state: int, d_inner: int, itemsize: int) -> int:
    fits = _MAX_BACKWARD_BUFFER_BYTES // (2 * (seqlen + 1) * d_state * itemsize)
    return max(1, min(d_inner, _CHANNEL_BLOCK, max(16, fits)))


def use_torch_thread_count() -> None:
    """Use as many threads as torch (e.g. 1 when the user runs jobs side by side)."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


class _FusedSelectiveScan(torch.autograd.Function):
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


# --------------------------------------------------------------------------- validation


def _describe(x: object) -> str:
    return f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__


def _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, backend) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"selective_scan: unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if not isinstance(u, Tensor) or u.dim() != 3:
        raise ValueError(f"selective_scan: u must be a tensor of shape (batch, d_inner, seq_len), got {_describe(u)}")
    batch, d_inner, seqlen = u.shape
    if seqlen == 0:
        raise ValueError("selective_scan: seq_len is 0; pass at least one time step")
    if not isinstance(A, Tensor) or A.dim() != 2 or A.shape[0] != d_inner:
        raise ValueError(f"selective_scan: A must have shape (d_inner, d_state) = ({d_inner}, N), got {_describe(A)}"
                         + ("; complex A and grouped B/C of mamba_ssm are not supported" if isinstance(A, Tensor)
                            else ""))
    d_state = A.shape[1]
    expected = {
        "delta": (delta, (batch, d_inner, seqlen), "(batch, d_inner, seq_len)"),
        "B": (B, (batch, d_state, seqlen), "(batch, d_state, seq_len)"),
        "C": (C, (batch, d_state, seqlen), "(batch, d_state, seq_len)"),
        "D": (D, (d_inner,), "(d_inner,)"),
        "z": (z, (batch, d_inner, seqlen), "(batch, d_inner, seq_len)"),
        "delta_bias": (delta_bias, (d_inner,), "(d_inner,)"),
    }
    for name, (tensor, shape, symbols) in expected.items():
        if tensor is None and name in ("D", "z", "delta_bias"):
            continue
        if not isinstance(tensor, Tensor) or tuple(tensor.shape) != shape:
            raise ValueError(f"selective_scan: {name} must have shape {symbols} = {shape} to match u {tuple(u.shape)} "
                             f"and A {tuple(A.shape)}, got {_describe(tensor)}")
    for name, tensor in [("u", u), ("A", A)] + [(k, v[0]) for k, v in expected.items()]:
        if tensor is None:
            continue
        if not tensor.is_floating_point():
            raise ValueError(f"selective_scan: {name} must be a floating-point tensor, got dtype {tensor.dtype}; "
                             f"cast it with .float()")
        if tensor.device != u.device:
            raise ValueError(f"selective_scan: {name} is on {tensor.device} but u is on {u.device}; "
                             f"move all inputs to one device")


# --------------------------------------------------------------------------- backend choice

CUDA_SCAN_MODULE = "mamba_ssm.ops.selective_scan_interface"
CUDA_SCAN_FIX = ("install mamba-ssm with its kernel as docs/gpu.md says (make install GPU=1; "
                 "if the build fails see its troubleshooting), or set model.scan_backend=parallel")
_warned: set[str] = set()


def cuda_kernel_status(device: torch.device | str = "cuda") -> tuple[bool, str]:
    """Whether mamba_ssm's compiled selective scan works on `device`, and why (not).

    An import is not enough: mamba_ssm may be installed without its extension (a build with
    MAMBA_SKIP_CUDA_BUILD, or mamba-ssm's main branch, where the Mamba-1 kernel is opt-in
    through MAMBA_KEEP_CUDA_BUILD and the module is then None), and a kernel built for
    another GPU architecture or CUDA version fails only when called. So: the extension
    must be there, and a tiny scan on `device` must run and match the reference.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return _cuda_kernel_status(str(device))


@functools.cache
def _cuda_kernel_status(device: str) -> tuple[bool, str]:
    try:
        interface = importlib.import_module(CUDA_SCAN_MODULE)
    except Exception as err:  # ImportError, or a broken CUDA build failing at import
        return False, f"mamba_ssm's selective scan does not import ({type(err).__name__}: {err})"
    extension = getattr(interface, "selective_scan_cuda", None)
    if extension is None or not hasattr(extension, "fwd"):
        return False, ("mamba_ssm is installed without its compiled kernel (selective_scan_cuda is missing; "
                       "reinstall it with MAMBA_KEEP_CUDA_BUILD=TRUE pip install --no-build-isolation mamba-ssm, "
                       "which make install GPU=1 sets)")
    if torch.device(device).type != "cuda":
        return False, f"mamba_ssm's kernel runs on CUDA devices, not {device}"
    try:
        generator = torch.Generator().manual_seed(0)
        batch, d_inner, d_state, seqlen = 1, 4, 2, 5
        args = [torch.randn(shape, generator=generator) for shape in
                [(batch, d_inner, seqlen), (batch, d_inner, seqlen), (d_inner, d_state), (batch, d_state, seqlen),
                 (batch, d_state, seqlen), (d_inner,), (batch, d_inner, seqlen), (d_inner,)]]
        args[2] = -args[2].exp()  # A < 0
        expected = selective_scan_reference(*args, delta_softplus=True)
        got = interface.selective_scan_fn(*(a.to(device) for a in args), delta_softplus=True)
        if not torch.allclose(got.cpu(), expected, rtol=1e-3, atol=1e-4):
            return False, f"mamba_ssm's kernel gave wrong numbers in a test call on {device}"
    except Exception as err:  # e.g. "no kernel image is available for execution on the device"
        return False, f"mamba_ssm's kernel failed a test call on {device} ({type(err).__name__}: {err})"
    return True, f"mamba_ssm's CUDA kernel works on {device}"


def cuda_scan_available(device: torch.device | str = "cuda") -> bool:
    """True when mamba_ssm's CUDA selective scan works on `device` (see cuda_kernel_status)."""
    return cuda_kernel_status(device)[0]


def resolve_scan_backend(requested: str, device: torch.device | str) -> tuple[str, str]:
    """The scan backend that runs for `requested` on `device`, and the reason: the one home of that choice.

    "auto": cuda where mamba_ssm's kernel works, else parallel on a GPU (with a warning,
    once, naming the reason and the fix) and fused on the CPU. An explicit backend that
    cannot run on `device` is an error naming the fix.
    """
    if requested not in BACKENDS:
        raise ValueError(f"selective_scan: unknown backend {requested!r}; expected one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    if device.type == "cpu":
        if requested == "auto":
            return "fused", "auto on the CPU: the numba kernel"
        if requested == "cuda":
            raise ValueError(f"selective_scan: backend 'cuda' needs CUDA tensors, got {device}; "
                             f"use backend='fused' on CPU")
        return requested, "requested"
    if requested == "fused":
        raise ValueError(f"selective_scan: backend 'fused' runs on CPU tensors, got {device}; "
                         f"use backend='cuda', 'parallel' or 'reference'")
    if requested in ("parallel", "reference"):
        return requested, "requested"
    ok, why = cuda_kernel_status(device) if device.type == "cuda" else (False, f"no CUDA kernel for {device}")
    if requested == "cuda":
        if not ok:
            raise ValueError(f"selective_scan: backend 'cuda' is not usable: {why}; {CUDA_SCAN_FIX}")
        return "cuda", f"requested; {why}"
    if ok:
        return "cuda", f"auto: {why}"
    if device.type == "cuda" and why not in _warned:
        _warned.add(why)
        warnings.warn(f"model.scan_backend=auto on {device}: {why}. Using the PyTorch parallel scan, "
                      f"slower than the kernel; to fix: {CUDA_SCAN_FIX}.", RuntimeWarning, stacklevel=2)
    return "parallel", f"auto: {why}; the PyTorch parallel scan needs no build"


def _compute_dtype(u: Tensor) -> torch.dtype:
    # float16/bfloat16 inputs are scanned in float32, like mamba_ssm's kernels accumulate.
    return torch.float64 if u.dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- public API


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: Backend = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """The selective scan, with mamba_ssm's `selective_scan_fn` signature plus `backend`.

    u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L); D, delta_bias: (D,).
    Returns y (B, D, L) in u's dtype, and h_L (B, D, N) too if return_last_state.
    backend: "auto" (resolve_scan_backend: cuda where mamba_ssm's kernel works, else parallel
    on a GPU and fused on the CPU), "cuda", "parallel" (log-depth, PyTorch ops), "fused"
    (CPU, numba) or "reference" (a PyTorch loop over time).
    """
    _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, backend)
    backend = resolve_scan_backend(backend, u.device)[0]
    if backend == "cuda":  # looked up at each call: mamba_ssm's entry point as it is now
        scan = importlib.import_module(CUDA_SCAN_MODULE).selective_scan_fn
        return scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if backend == "reference":
        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

    dtype = _compute_dtype(u)
    dt = _discretisation_step(delta.to(dtype), delta_bias, delta_softplus)  # (B, D, L)
    if backend == "parallel":
        u_c = u.to(dtype)
        y, h_last = ssm_scan_parallel(u_c, dt, A.to(dtype), B.to(dtype), C.to(dtype))  # (B, D, L), (B, D, N)
        y = _skip_and_gate(y, u_c, D, z).to(u.dtype)
        return (y, h_last) if return_last_state else y
    # Kernel layouts (module docstring); free when the caller's tensors are (B, L, D) underneath.
    y, h_last = _FusedSelectiveScan.apply(
        u.to(dtype).transpose(1, 2),  # (B, L, D)
        dt.transpose(1, 2),  # (B, L, D)
        A.to(dtype).t(),  # (N, D)
        B.to(dtype).transpose(1, 2),  # (B, L, N)
        C.to(dtype).transpose(1, 2),  # (B, L, N)
        u.new_zeros(u.shape[1], dtype=dtype) if D is None else D.to(dtype),  # (D,)
        None if z is None else z.to(dtype).transpose(1, 2),  # (B, L, D)
    )
    y = y.transpose(1, 2).to(u.dtype)  # (B, D, L)
    return (y, h_last.transpose(1, 2)) if return_last_state else y


def _discretisation_step(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    if delta_bias is not None:
        delta = delta + delta_bias.to(delta.dtype)[:, None]
    return F.softplus(delta) if delta_softplus else delta


def _skip_and_gate(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """y + D u, times silu(z): the parts of the Mamba output outside the recurrence. (B, D, L)."""
    if D is not None:
        y = torch.addcmul(y, u, D.to(y.dtype)[:, None])
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def selective_scan_reference(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """The recurrence written out step by step in PyTorch (the ground truth of the tests)."""
    _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, "reference")
    dtype = _compute_dtype(u)
    u_c, A_c, B_c, C_c = u.to(dtype), A.to(dtype), B.to(dtype), C.to(dtype)
    dt = _discretisation_step(delta.to(dtype), delta_bias, delta_softplus)  # (B, D, L)
    batch, d_inner, seqlen = u.shape
    h = u_c.new_zeros(batch, d_inner, A.shape[1])  # (B, D, N)
    ys = []
    for t in range(seqlen):
        decay = torch.exp(dt[:, :, t, None] * A_c)  # (B, D, N)
        h = decay * h + (dt[:, :, t] * u_c[:, :, t])[:, :, None] * B_c[:, None, :, t]  # (B, D, N)
        ys.append((h * C_c[:, None, :, t]).sum(-1))  # (B, D)
    y = _skip_and_gate(torch.stack(ys, dim=-1), u_c, D, z).to(u.dtype)  # (B, D, L)
    return (y, h) if return_last_state else y
