"""Speed and memory of the models and of evaluation, side by side in one run.

    python benchmarks/bench.py [--quick] [--out benchmarks/results.md]

Measures, on whatever machine runs it (the README's table is from our 2-core CPU):
  1. one training step at the paper's gym setting (batch 64, K 20, 3 layers, width 128)
     for DMamba (fused CPU scan), DT, DC, DS4, and DMamba with the plain sequential
     PyTorch scan (what a pure-PyTorch implementation costs);
  2. the peak memory of those training steps (each in a fresh process);
  3. choosing one action: DMamba's recurrent step (the fused kernel, and the same step in
     PyTorch operations) against recomputing the K-step window, at K 20 and K 60;
  4. evaluating 10 Hopper episodes one at a time with the same model (the DT-style loop)
     against all at once, with the K-window and with the recurrent step.
Timings are interleaved round-robin and the median is reported, so that a noisy
machine slows every contender alike; ratios are what to read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from decision_mamba.envs import make_gym_vector_env  # noqa: E402
from decision_mamba.evaluation import evaluate_batched  # noqa: E402
from decision_mamba.model import DecisionModel, ModelConfig  # noqa: E402
from decision_mamba.run import write_text_atomic  # noqa: E402

OBS_DIM, ACT_DIM = 17, 6  # HalfCheetah / Walker2d sizes
CONTENDERS = {  # label -> ModelConfig overrides
    "DMamba (fused CPU scan)": {"mixer": "mamba", "scan_backend": "fused"},
    "DT": {"mixer": "attention"},
    "DC": {"mixer": "conv"},
    "DS4": {"mixer": "s4"},
    "DMamba (sequential PyTorch scan)": {"mixer": "mamba", "scan_backend": "reference"},
}


def build(overrides: dict, d_model=128, n_layer=3) -> DecisionModel:
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=d_model, n_layer=n_layer, **overrides)
    return DecisionModel(cfg, (OBS_DIM,), ACT_DIM, discrete=False)


def random_batch(B: int, K: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "states": torch.randn(B, K, OBS_DIM, generator=g),
        "actions": torch.rand(B, K, ACT_DIM, generator=g) * 2 - 1,
        "returns_to_go": torch.randn(B, K, 1, generator=g),
        "timesteps": torch.randint(0, 1000 - K, (B, 1), generator=g) + torch.arange(K),
        "mask": torch.ones(B, K, dtype=torch.bool),
    }


def train_step_fn(model: DecisionModel, batch: dict):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    model.train()

    def step():
        loss = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()

    return step


def interleaved_medians(fns: dict, reps: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call, calling the contenders round-robin."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


# ---------------------------------------------------------------- 1. training step
def bench_training(reps: int, B=64, K=20) -> dict[str, float]:
    batch = random_batch(B, K)
    fns = {}
    for label, overrides in CONTENDERS.items():
        fns[label] = train_step_fn(build(overrides), batch)
    slow = "DMamba (sequential PyTorch scan)"
    medians = interleaved_medians({k: v for k, v in fns.items() if k != slow}, reps)
    medians[slow] = interleaved_medians({slow: fns[slow]}, max(2, reps // 5), warmup=1)[slow]
    return medians


# ---------------------------------------------------------------- 2. peak memory
def _proc_status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def peak_memory_child(label: str, steps: int, B=64, K=20) -> None:
    """Run in a fresh process: print how far training steps raise the resident set above its level before."""
    # Compile numba's kernels on a tiny copy first: the compiler's memory is not the model's.
    train_step_fn(build(CONTENDERS[label], d_model=16, n_layer=1), random_batch(2, 2))()
    step = train_step_fn(build(CONTENDERS[label]), random_batch(B, K))
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    before = _proc_status_mib("VmRSS")
    for _ in range(steps):
        step()
    print(json.dumps({"peak_growth_mib": _proc_status_mib("VmHWM") - before, "peak_rss_mib": _proc_status_mib("VmHWM")}))


def bench_memory(steps: int) -> dict[str, dict]:
    out = {}
    for label in CONTENDERS:
        n = 1 if "sequential" in label else steps  # the sequential scan is slow; one step shows its peak
        res = subprocess.run([sys.executable, __file__, "--memory-child", label, "--steps", str(n)],
                             capture_output=True, text=True, check=True)
        out[label] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


# ------------------------------------------------------------ 3. action selection
def bench_action_selection(reps: int, batch_sizes=(1, 10, 100), Ks=(20, 60)) -> list[dict]:
    model = build({"mixer": "mamba", "scan_backend": "auto"}).eval()
    # The same weights stepping in PyTorch operations: what the fused kernel replaces.
    torch_ops = build({"mixer": "mamba", "scan_backend": "reference"}).eval()
    torch_ops.load_state_dict(model.state_dict())
    rows = []
    for E in batch_sizes:
        fns = {}
        for K in Ks:
            b = random_batch(E, K, seed=1)

            def window(b=b):
                with torch.no_grad():
                    model(b["states"], b["actions"], b["returns_to_go"], b["timesteps"], b["mask"])

            fns[("window", K)] = window
            # The recurrent state after K steps has the same size as after 1: what a
            # step costs cannot depend on K; measured after K warm-up steps to show it.
            for label, stepper in (("recurrent", model), ("recurrent, PyTorch ops", torch_ops)):
                state = stepper.init_state(E)
                with torch.no_grad():
                    for t in range(K):
                        _, state = stepper.step(b["states"][:, t], b["returns_to_go"][:, t], b["timesteps"][:, t],
                                                b["actions"][:, t - 1] if t else None, state)

                def step(b=b, state=state, stepper=stepper):
                    with torch.no_grad():
                        stepper.step(b["states"][:, -1], b["returns_to_go"][:, -1], b["timesteps"][:, -1],
                                     b["actions"][:, -2], state)

                fns[(label, K)] = step
        medians = interleaved_medians(fns, reps)
        for K in Ks:
            rows.append({"envs": E, "K": K, "window_ms": medians[("window", K)] * 1e3,
                         "recurrent_ms": medians[("recurrent", K)] * 1e3,
                         "recurrent_torch_ms": medians[("recurrent, PyTorch ops", K)] * 1e3})
    return rows


# ------------------------------------------------------------------ 4. evaluation
def bench_evaluation(episodes: int, max_steps: int) -> dict[str, float]:
    """The same model evaluates `episodes` Hopper episodes of fixed length: one at a time
    (the DT-style loop), batched with the K-window, batched with the recurrent step."""
    torch.manual_seed(0)
    model = DecisionModel(ModelConfig(mixer="mamba", d_model=128, n_layer=3), (11,), 3, discrete=False)
    kwargs = dict(context_len=20, rtg_scale=1000.0, max_ep_len=max_steps)
    # terminate_when_unhealthy=False: every episode lasts max_steps, so every loop does equal work.
    make = lambda n: make_gym_vector_env("Hopper-v4", n, max_episode_steps=max_steps, terminate_when_unhealthy=False)
    seconds = {}
    single = make(1)
    t0 = time.perf_counter()
    for i in range(episodes):
        evaluate_batched(model, single, np.full(1, 3600.0), seed=i, mode="window", **kwargs)
    seconds["one at a time, K-window (DT-style loop)"] = time.perf_counter() - t0
    single.close()
    envs = make(episodes)
    for mode in ("window", "recurrent"):
        t0 = time.perf_counter()
        evaluate_batched(model, envs, np.full(episodes, 3600.0), seed=0, mode=mode, **kwargs)
        seconds[f"batched, {'K-window' if mode == 'window' else 'recurrent step'}"] = time.perf_counter() - t0
    envs.close()
    return seconds


def report(train: dict, memory: dict, actions: list[dict], evaluation: dict, args) -> str:
    dt = train["DT"]
    lines = [
        f"Machine: {torch.get_num_threads()} torch threads, torch {torch.__version__}. "
        f"Command: `python benchmarks/bench.py{' --quick' if args.quick else ''}`.",
        "",
        "Training step at the paper's gym setting (batch 64, K 20, 3 layers, width 128), median of "
        f"{args.reps} interleaved steps:",
        "",
        "| model | ms / step | vs DT | peak RSS growth (MiB) |",
        "|---|---|---|---|",
    ]
    for label, t in train.items():
        lines.append(f"| {label} | {t * 1e3:.1f} | {t / dt:.2f}x | {memory[label]['peak_growth_mib']:.0f} |")
    lines += ["", "Choosing one action with DMamba (no gradient), median ms; the recurrent step runs all "
              "layers in one numba kernel (fused_step.py), the last column the same step in PyTorch "
              "operations (`scan_backend=reference`):", "",
              "| episodes batched | K | recompute K-step window | recurrent step | speed-up | "
              "recurrent step, PyTorch ops |", "|---|---|---|---|---|---|"]
    for r in actions:
        lines.append(f"| {r['envs']} | {r['K']} | {r['window_ms']:.2f} | {r['recurrent_ms']:.2f} | "
                     f"{r['window_ms'] / r['recurrent_ms']:.1f}x | {r['recurrent_torch_ms']:.2f} |")
    lines += ["", f"Evaluating {args.episodes} Hopper episodes of {args.episode_steps} steps with the same DMamba:", "",
              "| evaluation loop | seconds | speed-up |", "|---|---|---|"]
    baseline = next(iter(evaluation.values()))
    for name, t in evaluation.items():
        lines.append(f"| {name} | {t:.1f} | {baseline / t:.1f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and shorter episodes")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results.md"))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cuda: the GPU benchmark, benchmarks/bench_gpu.py (its --out default: results/bench_gpu.md)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "cuda":
        from bench_gpu import main as cuda_main  # benchmarks/ is on sys.path when run as a script

        out = [] if args.out == parser.get_default("out") else ["--out", args.out]  # never this CPU table
        cuda_main(["--device", "cuda", *(["--quick"] if args.quick else []), *out])
        return
    if args.memory_child:
        peak_memory_child(args.memory_child, args.steps)
        return
    args.reps = 5 if args.quick else 20
    args.episodes = 10
    args.episode_steps = 100 if args.quick else 1000
    train = bench_training(args.reps)
    print("training step (ms):", {k: round(v * 1e3, 1) for k, v in train.items()}, flush=True)
    memory = bench_memory(3)
    actions = bench_action_selection(args.reps * 5)
    evaluation = bench_evaluation(args.episodes, args.episode_steps)
    text = report(train, memory, actions, evaluation, args)
    write_text_atomic(Path(args.out), text)
    print(text)


if __name__ == "__main__":
    main()
