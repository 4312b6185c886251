"""The selective scan of Mamba (S6), the recurrence inside every DMamba token mixer.

Paper §3, Eq. 1-5 (docs/architecture.md). For every batch row b and channel d, with a
state h of size N:

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
- "fused": a CPU scan compiled with numba, forward and backward, the D skip and the z gate
  included (softplus and delta_bias stay in torch): decision_mamba/cpu/scan.py, imported
  the first time it runs. It never materialises the (B, L, D, N) state tensor.
- "reference": a plain PyTorch loop over time, obviously correct and differentiable by
  autograd; the tests' ground truth.

Recurrent inference does not come here: `Mamba.step_chunk` (mamba.py) runs the one-token
recurrence in PyTorch, and decision_mamba/cpu/step.py all layers of a DMamba step in one
numba kernel.

This module imports neither numba nor the kernels: only the "fused" backend does, when it runs.
"""

from __future__ import annotations

import functools
import importlib
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from decision_mamba.config import SCAN_BACKENDS as BACKENDS, ScanBackend as Backend
from decision_mamba.scan_parallel import ssm_scan_parallel

__all__ = ["BACKENDS", "selective_scan", "selective_scan_reference", "cuda_scan_available",
           "cuda_kernel_status", "resolve_scan_backend"]



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
    from decision_mamba.cpu.scan import FusedSelectiveScan  # the CPU fast path: numba loads here

    # The kernels' layouts (cpu/scan.py); free when the caller's tensors are (B, L, D) underneath.
    y, h_last = FusedSelectiveScan.apply(
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
