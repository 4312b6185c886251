"""numba set-up shared by the CPU kernels: compile options, a vectorisable exp, a fixed-order dot product.

The kernels are written so that the same inputs give the same bits however they were
compiled (fresh or loaded from numba's disk cache, 256- or 512-bit vectors): no kernel
lets LLVM reassociate a sum, and the one sum across vector lanes (`dot`) fixes its own
association.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

__all__ = ["jit_kernel", "kernel_exp", "dot", "use_torch_thread_count"]

# fastmath without nnan/ninf: the kernels may see inf/nan from a diverging model and must
# pass them through. Without reassoc too, although reassociation vectorises the sums over
# channels (the scan is ~2x faster with it): with reassoc, a kernel compiled in the running
# process and the same kernel loaded from numba's on-disk cache gave different low bits
# so the first run on a machine and every later one disagreed. Runs with the same seed must
# give the same numbers. Where a sum over channels is needed (the backward kernel's dB and
# dC), its association is written out in explicit vector IR (`dot`).
_FASTMATH = {"nsz", "arcp", "contract", "afn"}


# error_model="numpy": a float division is IEEE's (x / 0 = inf), not numba's default Python
# semantics, which test every divisor for zero to raise ZeroDivisionError. That branch kept
# every loop with a division (silu, sigmoid, layer norm) from vectorising (docs/benchmarks.md
# has the measurement); the bits are the same. The kernels never divide by zero (their
# divisors are 1 + exp(.) and sqrt(var + eps)).
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


DOT_LANES = 32


@intrinsic
def dot(typingctx, x, y, n):
    """sum_j x[j] y[j] over 0 <= j < n of two contiguous 1-D arrays, in 32 lanes added in a fixed tree.

    The backward kernel's sums over channels (dB, dC). Lane k sums the products of channels
    j = k (mod 32) by FMA, 32 channels per step (four 8-wide FMAs on AVX2, independent so
    the FPU is never waiting on one), then the lanes are added pairwise: 32 -> 16 -> ... -> 1.
    Written as explicit vector IR because LLVM will not vectorise a sum without fastmath
    reassoc, and reassoc is banned here (_FASTMATH): these operations have one IEEE
    result, so every compile (fresh or cached, any vector width) gives the same bits.
    """
    if not (isinstance(x, types.Array) and isinstance(y, types.Array) and x.ndim == y.ndim == 1
            and x.layout == y.layout == "C" and x.dtype == y.dtype and x.dtype in (types.float32, types.float64)
            and isinstance(n, types.Integer)):
        return None
    lanes = DOT_LANES

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



def use_torch_thread_count() -> None:
    """Use as many threads as torch (e.g. 1 when the user runs jobs side by side)."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))

