"""The GPU benchmark: the entry of `bench.py --device cuda` and of scripts/gpu_check.sh.

    python benchmarks/bench_gpu.py [--device cuda] [--quick] [--out FILE.md] [--json FILE.json]
    python benchmarks/bench_gpu.py --device cpu --tiny     # the same code at a tiny size (a check, not a measurement)

1. one training step (forward, backward, AdamW) of each model, and of DMamba with each scan
   path that runs on the device (cuda where mamba-ssm's kernel works, parallel, reference;
   on a CPU fused, parallel, reference), in fp32 and bf16, at the paper's gym size (its
   Table 5: batch 64, K 20, 3 layers, width 128, HalfCheetah's 17/6 sizes) and Atari size (6
   layers, width 128, batch 256, K 30, 4x84x84 frames through the frame encoder, 4
   actions, DT with 8 heads); with the peak GPU memory of the step;
2. 10 Hopper episodes evaluated at once (batched, K-window and recurrent step).
Times are medians over repetitions, synchronised with the GPU. A contender that fails
(out of memory, a broken kernel) is reported with its error and the others still run;
the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from decision_mamba.cpu import configure_process  # noqa: E402

configure_process()  # before torch loads (decision_mamba/cpu)

import torch  # noqa: E402
from decision_mamba.compute import autocast  # noqa: E402
from decision_mamba.envs import make_gym_vector_env  # noqa: E402
from decision_mamba.evaluation import evaluate_batched  # noqa: E402
from decision_mamba.model import DecisionModel, ModelConfig  # noqa: E402
from decision_mamba.run import write_text_atomic  # noqa: E402
from decision_mamba.selective_scan import resolve_scan_backend  # noqa: E402

# The paper's settings (its Tables 5 and 6; docs/protocol.md); "tiny" runs the same code in seconds on a CPU.
SIZES = {
    "gym": dict(B=64, K=20, n_layer=3, d_model=128, state=(17,), act=6, discrete=False, n_head=1),
    "atari": dict(B=256, K=30, n_layer=6, d_model=128, state=(4, 84, 84), act=4, discrete=True, n_head=8),
}
TINY = {
    "gym": dict(B=2, K=4, n_layer=1, d_model=16, state=(17,), act=6, discrete=False, n_head=1),
    "atari": dict(B=2, K=3, n_layer=1, d_model=16, state=(4, 84, 84), act=4, discrete=True, n_head=2),
}
PRECISIONS = ("fp32", "bf16")
DEFAULT_OUT = REPO / "results" / "bench_gpu.md"


def scan_paths(device: torch.device) -> list[str]:
    """Every selective scan that runs on `device`: the kernel only where it works."""
    if device.type == "cpu":
        return ["fused", "parallel", "reference"]
    return (["cuda"] if resolve_scan_backend("auto", device)[0] == "cuda" else []) + ["parallel", "reference"]


def contenders(device: torch.device, size: dict) -> dict[str, dict]:
    models = {f"DMamba ({scan} scan)": {"mixer": "mamba", "scan_backend": scan} for scan in scan_paths(device)}
    models.update({"DT": {"mixer": "attention", "n_head": size["n_head"]}, "DC": {"mixer": "conv"},
                   "DS4": {"mixer": "s4"}})
    return models


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, reps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def random_batch(size: dict, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    B, K = size["B"], size["K"]
    if size["discrete"]:
        states = torch.randint(0, 256, (B, K, *size["state"]), generator=g, dtype=torch.uint8)
        actions = torch.randint(0, size["act"], (B, K), generator=g)
    else:
        states = torch.randn(B, K, *size["state"], generator=g)
        actions = torch.rand(B, K, size["act"], generator=g) * 2 - 1
    batch = {"states": states, "actions": actions, "returns_to_go": torch.randn(B, K, 1, generator=g),
             "timesteps": torch.randint(0, 900, (B, 1), generator=g) + torch.arange(K),
             "mask": torch.ones(B, K, dtype=torch.bool)}
    return {k: v.to(device) for k, v in batch.items()}


def train_step_fn(overrides: dict, size: dict, device: torch.device, precision: str):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=size["d_model"], n_layer=size["n_layer"], **overrides)
    model = DecisionModel(cfg, size["state"], size["act"], discrete=size["discrete"]).to(device).train()
    batch = random_batch(size, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with autocast(precision, device):
            loss = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bench_training(device: torch.device, sizes: dict, reps: int) -> list[dict]:
    rows = []
    for size_name, size in sizes.items():
        for label, overrides in contenders(device, size).items():
            for precision in PRECISIONS:
                row = {"size": size_name, "model": label, "precision": precision,
                       "batch": size["B"], "K": size["K"], "layers": size["n_layer"], "width": size["d_model"]}
                n = max(2, reps // 5) if "reference" in label else reps  # the loop over time is slow
                try:
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats(device)
                    row["ms"] = 1e3 * _timed(train_step_fn(overrides, size, device, precision), device, n)
                    if device.type == "cuda":
                        row["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
                except Exception as err:  # reported, and the other contenders still run
                    row["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
                rows.append(row)
                print("training step:", json.dumps(row), flush=True)
    return rows


def bench_evaluation(device: torch.device, episodes: int, steps: int, tiny: bool) -> list[dict]:
    torch.manual_seed(0)
    width, layers = (16, 1) if tiny else (128, 3)
    model = DecisionModel(ModelConfig(mixer="mamba", d_model=width, n_layer=layers), (11,), 3, discrete=False)
    model = model.to(device).eval()
    # terminate_when_unhealthy=False: every episode lasts `steps`, so both modes do equal work.
    envs = make_gym_vector_env("Hopper-v4", episodes, max_episode_steps=steps, terminate_when_unhealthy=False)
    rows = []
    try:
        # overlap on: the simulators step while the model acts (eval.overlap; not yet measured on a GPU)
        for mode, overlap in (("window", "off"), ("window", "on"), ("recurrent", "off"), ("recurrent", "on")):
            row = {"episodes": episodes, "steps": steps, "mode": mode, "overlap": overlap}
            try:
                t0 = time.perf_counter()
                evaluate_batched(model, envs, np.full(episodes, 3600.0), context_len=20, rtg_scale=1000.0,
                                 max_ep_len=steps, seed=0, mode=mode, overlap=overlap)
                _sync(device)
                row["s"] = time.perf_counter() - t0
            except Exception as err:
                row["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            rows.append(row)
            print("evaluation:", json.dumps(row), flush=True)
    finally:
        envs.close()
    return rows


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def to_markdown(result: dict) -> str:
    lines = [f"# {'CUDA' if result['device'].startswith('cuda') else 'CPU'} benchmark on {result['device_name']}",
             "", f"torch {result['torch']}, CUDA {result['cuda']}; auto scan backend: {result['auto_scan']} "
             f"({result['auto_scan_reason']}). Command: `{result['command']}`.", ""]
    if result["tiny"]:
        lines += ["Tiny sizes: a check that the code runs, not a measurement.", ""]
    for size_name in dict.fromkeys(r["size"] for r in result["training"]):
        rows = [r for r in result["training"] if r["size"] == size_name]
        r0 = rows[0]
        lines += [f"## Training step, {size_name} size (batch {r0['batch']}, K {r0['K']}, {r0['layers']} layers, "
                  f"width {r0['width']}): median ms", "",
                  "| model | " + " | ".join(f"{p} ms" for p in PRECISIONS) + " | "
                  + " | ".join(f"{p} peak MiB" for p in PRECISIONS) + " |", "|---" * (1 + 2 * len(PRECISIONS)) + "|"]
        for label in dict.fromkeys(r["model"] for r in rows):
            by_p = {r["precision"]: r for r in rows if r["model"] == label}
            cell = lambda r, key, fmt: r.get("error", "") if "error" in r else (fmt.format(r[key]) if key in r else "n/a")  # noqa: E731
            lines.append(f"| {label} | " + " | ".join(cell(by_p[p], "ms", "{:.2f}") for p in PRECISIONS) + " | "
                         + " | ".join(cell(by_p[p], "peak_mib", "{:.0f}") for p in PRECISIONS) + " |")
        lines.append("")
    ev = result["evaluation"]
    if ev:
        lines += [f"## Batched evaluation: {ev[0]['episodes']} Hopper episodes x {ev[0]['steps']} steps, DMamba", "",
                  "| mode | simulator overlapped | seconds |", "|---|---|---|"]
        lines += [f"| {r['mode']} | {r['overlap']} | {r['error'] if 'error' in r else format(r['s'], '.2f')} |"
                  for r in ev]
    return "\n".join(lines) + "\n"


def run(out: str | Path | None = None, quick: bool = False, device: str = "cuda", tiny: bool = False,
        json_out: str | Path | None = None) -> dict:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"bench_gpu: --device {device} but torch sees no CUDA device (torch {torch.__version__}, "
                         f"CUDA {torch.version.cuda}); use --device cpu --tiny to check the code on a CPU")
    auto_scan, reason = resolve_scan_backend("auto", device)
    reps = 2 if tiny else (5 if quick else 20)
    episodes, steps = (2, 5) if tiny else (10, 50 if quick else 200)
    result = {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
              "cuda": torch.version.cuda, "auto_scan": auto_scan, "auto_scan_reason": reason, "tiny": tiny,
              "command": " ".join(["python benchmarks/bench_gpu.py", *sys.argv[1:]]),
              "training": bench_training(device, TINY if tiny else SIZES, reps),
              "evaluation": bench_evaluation(device, episodes, steps, tiny)}
    text = to_markdown(result)
    out = Path(out) if out else DEFAULT_OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, text)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(json_out), json.dumps(result, indent=1) + "\n")
    print(text)
    return result


def failed(result: dict) -> bool:
    return any("error" in r for r in result["training"] + result["evaluation"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and shorter episodes")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: checks that the code runs (a CPU test)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="markdown table (default results/bench_gpu.md)")
    parser.add_argument("--json", help="also write every number to this JSON file")
    args = parser.parse_args(argv)
    result = run(args.out, args.quick, args.device, args.tiny, args.json)
    sys.exit(1 if failed(result) else 0)


if __name__ == "__main__":
    main()
