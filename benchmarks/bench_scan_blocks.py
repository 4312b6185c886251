"""The fused scan's backward on long sequences: its channel-block rule against the rule it
replaced, side by side in one run (docs/benchmarks.md, "The scan's backward on long sequences").

    .venv/bin/python benchmarks/bench_scan_blocks.py [--tokens 900,3000,6000] [--batch 16] [--reps 3]

One thread; forward and backward of the fused scan (decision_mamba/cpu/scan.py) at batch 16,
256 channels, N 16; the backward's block rule swapped in turn (best of `reps`), reported as
microseconds per token of the backward.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from decision_mamba.cpu import configure_process  # noqa: E402

configure_process()

import torch  # noqa: E402

import decision_mamba.cpu.scan as cpu_scan  # noqa: E402
from decision_mamba.selective_scan import selective_scan  # noqa: E402


def old_rule(seqlen: int, d_state: int, d_inner: int, itemsize: int) -> int:
    """Before: any width whose states fit 16 MiB, at least 16 channels."""
    fits = 16 * 2**20 // (2 * (seqlen + 1) * d_state * itemsize)
    return max(1, min(d_inner, 256, max(16, fits)))


RULES = {"old rule": old_rule, "new rule": cpu_scan._backward_block}


def backward_us_per_token(tokens: int, batch: int, channels: int, d_state: int, reps: int) -> dict[str, tuple]:
    g = torch.Generator().manual_seed(0)
    u, delta, z = (torch.randn(batch, tokens, channels, generator=g).requires_grad_() for _ in range(3))
    B, C = (torch.randn(batch, tokens, d_state, generator=g).requires_grad_() for _ in range(2))
    A = (-torch.rand(channels, d_state, generator=g)).requires_grad_()
    D = torch.randn(channels, generator=g).requires_grad_()
    best = {name: float("inf") for name in RULES}
    for _ in range(reps):
        for name, rule in RULES.items():  # interleaved: each round runs every rule
            cpu_scan._backward_block = rule
            y = selective_scan(u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), D,
                               z.transpose(1, 2), delta_softplus=True, backend="fused")
            start = time.perf_counter()
            y.sum().backward()
            best[name] = min(best[name], time.perf_counter() - start)
    cpu_scan._backward_block = RULES["new rule"]
    return {name: (RULES[name](tokens, d_state, channels, 4), 1e6 * best[name] / (batch * tokens)) for name in RULES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="900,3000,6000")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| tokens | old rule: block | old rule: us / token | new rule: block | new rule: us / token |")
    print("|---|---|---|---|---|")
    for tokens in (int(t) for t in args.tokens.split(",")):
        r = backward_us_per_token(tokens, args.batch, 256, 16, args.reps)
        print(f"| {tokens:,} | {r['old rule'][0]} | {r['old rule'][1]:.1f} | {r['new rule'][0]} | {r['new rule'][1]:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
