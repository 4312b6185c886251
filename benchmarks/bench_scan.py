"""Speed and memory of the selective scan backends at the paper's gym size.

One DMamba layer at the gym setting (the paper's Table 5, docs/protocol.md: batch 64,
K 20 -> L = 60 tokens, d_model 128 -> d_inner 256, N 16) scans B*L*D*N = 15.7M states.
Compared here, forward and forward+backward, inputs laid out as the Mamba block produces
them:

- fused:     the numba kernels (decision_mamba/cpu/scan.py, selective_scan's backend "fused")
- reference: the sequential PyTorch loop over time (backend "reference")
- doubling:  a materialised parallel scan written below: every (B, D, L, N) decay and
             input is built, then combined in log2(L) Hillis-Steele doubling steps.

Peak memory is the growth of the process's peak resident set (VmHWM, reset through
/proc/self/clear_refs) while one forward+backward runs in a fresh subprocess, so that it
counts torch tensors, autograd's saved tensors and numba's buffers alike. Linux only;
elsewhere it is reported as n/a.

    .venv/bin/python benchmarks/bench_scan.py [--threads 2] [--batch 64 --seqlen 60 --d-inner 256 --d-state 16]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from decision_mamba.cpu import configure_process

configure_process()  # before torch loads: the settings every entry point makes (decision_mamba/cpu)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from decision_mamba.selective_scan import selective_scan, selective_scan_reference

ScanFn = Callable[..., torch.Tensor]


def selective_scan_doubling(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The selective scan as a materialised parallel scan (same arguments as selective_scan).

    h_t = a_t h_{t-1} + b_t is an inclusive scan of the pairs (a_t, b_t) under
    (a, b) then (a', b') = (a a', a' b + b'). Hillis & Steele: at offsets 1, 2, 4, ... every t
    combines with t - offset, all t at once. O(L log L) work on (B, D, L, N) tensors.
    """
    dt = delta if delta_bias is None else delta + delta_bias[:, None]
    dt = F.softplus(dt) if delta_softplus else dt  # (B, D, L)
    decay = torch.exp(dt.unsqueeze(-1) * A[:, None, :])  # (B, D, L, N)
    state = (dt * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)  # (B, D, L, N)
    seqlen, offset = u.shape[-1], 1
    while offset < seqlen:
        state = torch.cat([state[:, :, :offset], state[:, :, offset:] + decay[:, :, offset:] * state[:, :, :-offset]],
                          dim=2)
        decay = torch.cat([decay[:, :, :offset], decay[:, :, offset:] * decay[:, :, :-offset]], dim=2)
        offset *= 2
    y = (state * C.transpose(1, 2).unsqueeze(1)).sum(-1)  # (B, D, L)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y


BACKENDS: dict[str, ScanFn] = {
    "fused": lambda *args, **kwargs: selective_scan(*args, **kwargs, backend="fused"),
    "reference": selective_scan_reference,
    "doubling": selective_scan_doubling,
}


def make_inputs(batch: int = 64, seqlen: int = 60, d_inner: int = 256, d_state: int = 16, seed: int = 0,
                dtype: torch.dtype = torch.float32) -> tuple[list[torch.Tensor], dict]:
    """Leaf tensors with the Mamba block's layouts and value ranges: (args, kwargs) of a scan.

    u, delta, z are (B, L, D) in memory and B, C (B, L, N), viewed as (B, D, L) / (B, N, L).
    """
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale + shift).requires_grad_()

    u, delta, z = leaf(batch, seqlen, d_inner), leaf(batch, seqlen, d_inner, scale=0.5), leaf(batch, seqlen, d_inner)
    B, C = leaf(batch, seqlen, d_state), leaf(batch, seqlen, d_state)
    A_log = torch.log(torch.arange(1, d_state + 1, dtype=dtype)).repeat(d_inner, 1)  # S4D-real init
    A = (-torch.exp(A_log)).requires_grad_()
    D = torch.ones(d_inner, dtype=dtype, requires_grad=True)
    # softplus(delta_bias) log-uniform in [1e-3, 1e-1], as Mamba initialises it
    dt = torch.exp(torch.rand(d_inner, generator=g, dtype=dtype) * math.log(100.0) + math.log(1e-3))
    delta_bias = (dt + torch.log(-torch.expm1(-dt))).requires_grad_()
    args = [u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2)]
    kwargs = dict(D=D, z=z.transpose(1, 2), delta_bias=delta_bias, delta_softplus=True)
    return args, kwargs


def _leaves(args: list[torch.Tensor], kwargs: dict) -> list[torch.Tensor]:
    tensors = [*args, *(v for v in kwargs.values() if isinstance(v, torch.Tensor))]
    return [t for t in tensors if t.requires_grad]


def time_scan(fn: ScanFn, args: list[torch.Tensor], kwargs: dict, min_reps: int = 3,
              min_seconds: float = 1.0) -> dict[str, float]:
    """Best-of-n wall and CPU milliseconds of a forward and of a forward+backward.

    CPU time (process_time, all threads) is the steadier number on a shared machine.
    """
    grad_out = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(1), dtype=args[0].dtype)
    leaves = _leaves(args, kwargs)

    def forward():
        with torch.no_grad():
            fn(*args, **kwargs)

    def forward_backward():
        torch.autograd.grad(fn(*args, **kwargs), leaves, grad_out)

    result = {}
    for name, work in [("fwd", forward), ("fwd+bwd", forward_backward)]:
        work()  # warm-up (numba loads its cache or compiles here)
        best_wall = best_cpu = float("inf")
        reps, started = 0, time.perf_counter()
        while reps < min_reps or time.perf_counter() - started < min_seconds:
            wall, cpu = time.perf_counter(), time.process_time()
            work()
            best_wall = min(best_wall, time.perf_counter() - wall)
            best_cpu = min(best_cpu, time.process_time() - cpu)
            reps += 1
        result[f"{name} ms"] = 1000 * best_wall
        result[f"{name} cpu ms"] = 1000 * best_cpu
    return result


def _peak_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise OSError("no VmHWM in /proc/self/status")


def _current_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise OSError("no VmRSS in /proc/self/status")


def peak_memory_mb_here(backend: str, sizes: dict) -> float:
    """Peak RSS growth (MB) of one forward+backward in this process (call it in a fresh one)."""
    fn = BACKENDS[backend]

    def forward_backward(args, kwargs):
        torch.autograd.grad(fn(*args, **kwargs), _leaves(args, kwargs), torch.ones(args[0].shape))

    forward_backward(*make_inputs(batch=1, seqlen=2, d_inner=3, d_state=2))  # load the kernels at a tiny size
    args, kwargs = make_inputs(**sizes)
    baseline = _current_rss_kb()  # inputs included
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    forward_backward(args, kwargs)
    return (_peak_rss_kb() - baseline) / 1024


def peak_memory_mb(backend: str, sizes: dict, threads: int) -> float | None:
    """peak_memory_mb_here in a fresh subprocess; None where /proc is not available."""
    command = [sys.executable, __file__, "--peak-memory-of", backend, "--threads", str(threads),
               "--sizes", json.dumps(sizes)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return None
    return float(done.stdout.strip().splitlines()[-1])


def check_agreement(sizes: dict) -> dict[str, float]:
    """Relative error of each backend against the reference, in float64, on a smaller batch."""
    small = dict(sizes, batch=min(sizes["batch"], 4))
    args, kwargs = make_inputs(**small, dtype=torch.float64)
    expected = selective_scan_reference(*args, **kwargs)
    errors = {}
    for name, fn in BACKENDS.items():
        y = fn(*args, **kwargs)
        errors[name] = ((y - expected).norm() / expected.norm()).item()
    return errors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=60)
    parser.add_argument("--d-inner", type=int, default=256)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--peak-memory-of", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.peak_memory_of:  # the subprocess of peak_memory_mb
        print(peak_memory_mb_here(args.peak_memory_of, json.loads(args.sizes)))
        return

    sizes = dict(batch=args.batch, seqlen=args.seqlen, d_inner=args.d_inner, d_state=args.d_state)
    states = args.batch * args.seqlen * args.d_inner * args.d_state
    print(f"selective scan, B={args.batch} L={args.seqlen} D={args.d_inner} N={args.d_state} float32, "
          f"{args.threads} thread(s): {states / 1e6:.1f}M states, a (B, L, D, N) float32 tensor is "
          f"{4 * states / 2**20:.0f} MB")
    for name, error in check_agreement(sizes).items():
        print(f"  {name:9s} relative error vs reference (float64): {error:.1e}")
    print(f"{'backend':10s} {'fwd ms':>8s} {'fwd+bwd ms':>11s} {'fwd cpu ms':>11s} {'fwd+bwd cpu ms':>15s} "
          f"{'peak MB':>8s}")
    for name in args.backends.split(","):
        scan_args, scan_kwargs = make_inputs(**sizes)
        times = time_scan(BACKENDS[name], scan_args, scan_kwargs)
        peak = peak_memory_mb(name, sizes, args.threads)
        peak_text = "n/a" if peak is None else f"{peak:.0f}"
        print(f"{name:10s} {times['fwd ms']:8.1f} {times['fwd+bwd ms']:11.1f} {times['fwd cpu ms']:11.1f} "
              f"{times['fwd+bwd cpu ms']:15.1f} {peak_text:>8s}")


if __name__ == "__main__":
    main()
