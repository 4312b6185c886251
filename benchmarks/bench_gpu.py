"""The CUDA benchmark behind `bench.py --device cuda` (scripts/gpu_check.sh runs it).

    python benchmarks/bench.py --device cuda [--quick] [--out results/gpu_check/bench_cuda.md]

1. one training step (forward, backward, AdamW) of each model, and of DMamba with each scan
   path that runs on this GPU (cuda where mamba-ssm's kernel works, parallel, reference),
   in fp32 and bf16, at the paper's gym size (batch 64, K 20, 3 layers, width 128) and an
   Atari-sized sequence model (batch 128, K 30, 6 layers, width 128; a 512-vector state in
   place of the frame encoder, so the mixers' cost is what is measured);
2. 10 Hopper episodes of 200 steps evaluated at once (batched, K-window and recurrent).
Times are medians over repetitions, synchronised with the GPU.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from decision_mamba.envs import make_gym_vector_env
from decision_mamba.evaluation import evaluate_batched
from decision_mamba.model import DecisionModel, ModelConfig
from decision_mamba.run import write_text_atomic
from decision_mamba.selective_scan import resolve_scan_backend

SIZES = {"gym": dict(B=64, K=20, n_layer=3, obs=17, act=6), "atari": dict(B=128, K=30, n_layer=6, obs=512, act=18)}


def _timed(fn, reps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _train_step(overrides: dict, size: dict, device: torch.device, precision: str = "fp32"):
    torch.manual_seed(0)
    model = DecisionModel(ModelConfig(d_model=128, n_layer=size["n_layer"], **overrides), (size["obs"],), size["act"],
                          discrete=False).to(device)
    B, K = size["B"], size["K"]
    batch = {"states": torch.randn(B, K, size["obs"], device=device),
             "actions": torch.rand(B, K, size["act"], device=device) * 2 - 1,
             "returns_to_go": torch.randn(B, K, 1, device=device),
             "timesteps": (torch.randint(0, 900, (B, 1)) + torch.arange(K)).to(device),
             "mask": torch.ones(B, K, dtype=torch.bool, device=device)}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = {"bf16": torch.bfloat16}.get(precision)

    def step():
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            loss = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def run(out: str, quick: bool) -> str:
    device = torch.device("cuda")
    reps = 5 if quick else 20
    backends = ["parallel", "reference"]
    if resolve_scan_backend("auto", device)[0] == "cuda":
        backends.insert(0, "cuda")
    contenders = {f"DMamba ({b} scan)": {"mixer": "mamba", "scan_backend": b} for b in backends}
    contenders.update({"DT": {"mixer": "attention"}, "DC": {"mixer": "conv"}, "DS4": {"mixer": "s4"}})
    lines = [f"# CUDA benchmark on {torch.cuda.get_device_name(device)} (torch {torch.__version__}, "
             f"CUDA {torch.version.cuda}); auto scan backend: {resolve_scan_backend('auto', device)}", ""]
    for size_name, size in SIZES.items():
        lines += [f"## training step, {size_name} size {size}", "", "| model | fp32 ms | bf16 ms |", "|---|---|---|"]
        for label, overrides in contenders.items():
            n = max(2, reps // 5) if "reference" in label else reps
            ms = [1e3 * _timed(_train_step(overrides, size, device, p), n) for p in ("fp32", "bf16")]
            lines.append(f"| {label} | {ms[0]:.1f} | {ms[1]:.1f} |")
            print(lines[-1], flush=True)
        lines.append("")
    episodes, steps = 10, (50 if quick else 200)
    torch.manual_seed(0)
    model = DecisionModel(ModelConfig(mixer="mamba", d_model=128, n_layer=3), (11,), 3, discrete=False).to(device)
    envs = make_gym_vector_env("Hopper-v4", episodes, max_episode_steps=steps, terminate_when_unhealthy=False)
    lines += [f"## batched evaluation: {episodes} Hopper episodes x {steps} steps, DMamba", "", "| mode | s |", "|---|---|"]
    for mode in ("window", "recurrent"):
        t0 = time.perf_counter()
        evaluate_batched(model, envs, np.full(episodes, 3600.0), context_len=20, rtg_scale=1000.0, max_ep_len=steps,
                         seed=0, mode=mode)
        lines.append(f"| {mode} | {time.perf_counter() - t0:.2f} |")
        print(lines[-1], flush=True)
    envs.close()
    text = "\n".join(lines) + "\n"
    write_text_atomic(out, text)
    return text
