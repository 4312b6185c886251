"""Speed and memory of the models and of evaluation, side by side in one run.

    python benchmarks/bench.py [--quick] [--out benchmarks/results.md]

Measures, on whatever machine runs it (docs/benchmarks.md has dated runs on our 2-core CPU):
  1. one training step at the paper's gym setting (batch 64, K 20, 3 layers) at width 128
     and 256: our DMamba (fused CPU scan), our DT, HF transformers' DecisionTransformerModel
     (the `bench` extra; left out with a note when not installed) and, at width 128, DC,
     DS4 and DMamba with the plain sequential PyTorch scan (what a pure-PyTorch
     implementation costs). Every model uses the same fused AdamW step and gradient clipping.
     A bound beside them: the same DMamba step with its scan and conv kernels replaced by
     ones that only zero their outputs, the cost of everything else in the step;
  2. the peak memory of our training steps at width 128 (each in a fresh process);
  3. choosing one action at K 20, width 128, at batch 1, 10, 100 and 400: DMamba's and
     DMamba-2's recurrent steps, DT's KV-cache step (a cache of the last K timesteps, 3K
     tokens) and DMamba recomputing the K-step window (the paper's protocol);
  4. a whole paper evaluation: 4 targets x 100 Hopper episodes of 1000 steps, all 400 at
     once, with the recurrent step (the simulators stepped in turn with the model, and
     overlapped with it: eval.overlap) and with the K-window, against stepping the same 400
     simulators with no model; the time split into simulator, model and the rest.
     Episodes never end early (terminate_when_unhealthy=False: an untrained model falls
     within tens of steps), so this is the longest evaluation the protocol can take.
     --quick: 4 x 10 episodes of 100 steps, fewer rounds, no sequential-scan row, memory over one step;
     --evaluation full|quick sets the evaluation's size on its own.
Timings are interleaved round-robin; each ratio is the median of the per-round ratios,
with their range, so that a noisy machine slows every contender alike. Ratios are what
to read, absolute times move with the load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from decision_mamba.cpu import configure_process  # noqa: E402

configure_process()  # before torch loads: the settings every entry point makes (decision_mamba/cpu)

import decision_mamba.cpu.conv as conv_module  # noqa: E402
import decision_mamba.cpu.scan as scan_module  # noqa: E402
from decision_mamba.envs import make_gym_vector_env  # noqa: E402
from decision_mamba.evaluation import _step_lockstep, evaluate_batched  # noqa: E402
from decision_mamba.model import DecisionModel, ModelConfig  # noqa: E402
from decision_mamba.run import write_text_atomic  # noqa: E402

import torch  # noqa: E402

OBS_DIM, ACT_DIM = 17, 6  # HalfCheetah / Walker2d sizes
HF_DT = "HF transformers DT"
CONTENDERS = {  # label -> ModelConfig overrides
    "DMamba (fused CPU scan)": {"mixer": "mamba", "scan_backend": "fused"},
    "DT": {"mixer": "attention"},
    "DC": {"mixer": "conv"},
    "DS4": {"mixer": "s4"},
    "DMamba-2 (chunked SSD)": {"mixer": "mamba2"},
    "DMamba (sequential PyTorch scan)": {"mixer": "mamba", "scan_backend": "reference"},
}
WIDE_CONTENDERS = ("DMamba (fused CPU scan)", "DT")  # also measured at width 256
# Contenders whose one-token step (evaluation's recurrent mode) is timed in 3., with its
# column there; the first is the baseline of that table's ratios.
STEP_CONTENDERS = {
    "DMamba (fused CPU scan)": "DMamba recurrent step",
    "DT": "DT KV-cache step",
    "DMamba-2 (chunked SSD)": "DMamba-2 recurrent step",
}
WINDOW = "DMamba K-window"  # the paper's protocol: DMamba re-run on the K-step window
SLOW = "DMamba (sequential PyTorch scan)"
BOUND = "bound: DMamba with free scan and conv"  # FREE_KERNELS, timed beside the others


def _zero_outputs(*outputs):
    for array in outputs:
        array.fill(0)


# The fused scan's and conv's kernels (forward, backward), each replaced by one that zeroes
# the arrays it writes: the step's other work is unchanged, so its time bounds DMamba's
# step from below for any speed of these kernels (the numbers it computes are meaningless).
FREE_KERNELS = {
    (scan_module, "_scan_forward_kernel"): lambda u, delta, A, B, C, D, z, gated, y, h_last, block:
        _zero_outputs(y, h_last),
    (scan_module, "_scan_backward_kernel"): lambda u, delta, A, B, C, D, z, gated, dy, dh_last, *grads_block:
        _zero_outputs(*grads_block[:-1]),
    (conv_module, "_conv_silu_forward_kernel"): lambda x, weight, bias, out: _zero_outputs(out),
    (conv_module, "_conv_silu_backward_kernel"): lambda x, weight, bias, dout, *grads: _zero_outputs(*grads),
}


@contextlib.contextmanager
def free_scan_and_conv():
    saved = {(module, name): getattr(module, name) for module, name in FREE_KERNELS}
    try:
        for (module, name), stand_in in FREE_KERNELS.items():
            setattr(module, name, stand_in)
        yield
    finally:
        for (module, name), kernel in saved.items():
            setattr(module, name, kernel)


def with_free_scan_and_conv(step):
    def bound_step():
        with free_scan_and_conv():
            step()
    return bound_step


def build(overrides: dict, d_model=128, n_layer=3, obs_dim=OBS_DIM, act_dim=ACT_DIM) -> DecisionModel:
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=d_model, n_layer=n_layer, **overrides)
    return DecisionModel(cfg, (obs_dim,), act_dim, discrete=False)


def build_hf_dt(d_model=128, n_layer=3):
    """HF transformers' DecisionTransformerModel at our DT's sizes (GELU MLP of 4d, dropout 0.1), or None."""
    try:
        from transformers import DecisionTransformerConfig, DecisionTransformerModel
        from transformers.utils import logging as hf_logging
    except ImportError:
        return None
    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = DecisionTransformerConfig(state_dim=OBS_DIM, act_dim=ACT_DIM, hidden_size=d_model, n_layer=n_layer,
                                    n_head=1, n_inner=4 * d_model, activation_function="gelu", max_ep_len=1000,
                                    resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    return DecisionTransformerModel(cfg)


def random_batch(B: int, K: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "states": torch.randn(B, K, OBS_DIM, generator=g),
        "actions": torch.rand(B, K, ACT_DIM, generator=g) * 2 - 1,
        "returns_to_go": torch.randn(B, K, 1, generator=g),
        "timesteps": torch.randint(0, 1000 - K, (B, 1), generator=g) + torch.arange(K),
        "mask": torch.ones(B, K, dtype=torch.bool),
    }


def train_step_fn(model: torch.nn.Module, batch: dict, loss_fn=None):
    """One update: the loss, backward, clipping, and the fused AdamW of our Trainer."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4, fused=True)
    model.train()
    loss_fn = loss_fn or model.loss

    def step():
        loss = loss_fn(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()

    return step


def hf_loss_fn(model):
    def loss(batch):
        out = model(states=batch["states"], actions=batch["actions"], returns_to_go=batch["returns_to_go"],
                    timesteps=batch["timesteps"], attention_mask=batch["mask"].long(), return_dict=True)
        mask = batch["mask"]
        return torch.nn.functional.mse_loss(out.action_preds[mask], batch["actions"][mask])
    return loss


def interleaved(fns: dict, reps: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of each contender in each of `reps` rounds, called round-robin."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def summarise(times: dict[str, list[float]], baseline) -> dict:
    """Per contender: median ms, and the median [min, max] of its per-round ratio to `baseline`."""
    out = {}
    for name, ts in times.items():
        ratios = sorted(t / b for t, b in zip(ts, times[baseline]))
        out[name] = {"ms": statistics.median(ts) * 1e3, "ratio": statistics.median(ratios),
                     "ratio_lo": ratios[0], "ratio_hi": ratios[-1]}
    return out


# ---------------------------------------------------------------- 1. training step
def bench_training(reps: int, widths=(128, 256), B=64, K=20, sequential=True) -> dict[int, dict]:
    batch = random_batch(B, K)
    results = {}
    for width in widths:
        fns = {}
        for label, overrides in CONTENDERS.items():
            if label != SLOW and (width == 128 or label in WIDE_CONTENDERS):
                fns[label] = train_step_fn(build(overrides, d_model=width), batch)
        fns[BOUND] = with_free_scan_and_conv(train_step_fn(build(CONTENDERS["DMamba (fused CPU scan)"], d_model=width),
                                                           batch))
        hf = build_hf_dt(width)
        if hf is not None:
            fns[HF_DT] = train_step_fn(hf, batch, hf_loss_fn(hf))
        results[width] = summarise(interleaved(fns, reps), "DT")
        print(f"training step, width {width} (ms):", {k: round(v["ms"], 1) for k, v in results[width].items()},
              flush=True)
    if not sequential:
        return results
    # The sequential scan is ~10x slower: a few rounds beside DT alone.
    fns = {"DT": train_step_fn(build(CONTENDERS["DT"]), batch), SLOW: train_step_fn(build(CONTENDERS[SLOW]), batch)}
    results[widths[0]][SLOW] = summarise(interleaved(fns, max(2, reps // 5), warmup=1), "DT")[SLOW]
    return results


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
    print(json.dumps(peak_growth(step, steps)))


def peak_growth(step, steps: int) -> dict[str, float]:
    """How far `steps` calls of `step` raise the resident set above its level before them (MiB),
    and the peak itself. Meant for a fresh process: memory a previous step freed stays resident
    (decision_mamba.cpu's malloc settings), so a step measured after another looks free."""
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    before = _proc_status_mib("VmRSS")
    for _ in range(steps):
        step()
    return {"peak_growth_mib": _proc_status_mib("VmHWM") - before, "peak_rss_mib": _proc_status_mib("VmHWM")}


def bench_memory(steps: int, labels=tuple(CONTENDERS)) -> dict[str, dict]:
    out = {}
    for label in labels:
        n = 1 if label == SLOW else steps  # the sequential scan is slow; one step shows its peak
        res = subprocess.run([sys.executable, __file__, "--memory-child", label, "--steps", str(n)],
                             capture_output=True, text=True, check=True)
        out[label] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


# ------------------------------------------------------------ 3. action selection
def _warm_state(model: DecisionModel, b: dict, E: int, K: int):
    """The recurrent state (DMamba) or KV cache (DT) after feeding the K timesteps of `b`."""
    state = model.init_state(E)
    with torch.no_grad():
        for t in range(K):
            _, state = model.step(b["states"][:, t], b["returns_to_go"][:, t], b["timesteps"][:, t],
                                  b["actions"][:, t - 1] if t else None, state)
    return state


def bench_action_selection(reps: int, batch_sizes=(1, 10, 100, 400), K=20) -> list[dict]:
    """Per batch size: median ms per call of each STEP_CONTENDERS step and of WINDOW, and the
    median [min, max] of their per-round ratios to the first contender's step."""
    models = {label: build(CONTENDERS[label]).eval() for label in STEP_CONTENDERS}
    dmamba = models["DMamba (fused CPU scan)"]
    baseline = STEP_CONTENDERS[next(iter(STEP_CONTENDERS))]
    rows = []
    for E in batch_sizes:
        b = random_batch(E, K, seed=1)

        def window():
            with torch.no_grad():
                dmamba(b["states"], b["actions"], b["returns_to_go"], b["timesteps"], b["mask"])

        fns = {}
        # Each timed call steps from the same state after K timesteps (a step leaves its
        # input state untouched): a recurrent state's size is independent of K, the KV
        # cache holds the 3K tokens a K-window DT attends to.
        for label, column in STEP_CONTENDERS.items():
            model = models[label]
            state = _warm_state(model, b, E, K)

            def step(model=model, state=state):
                with torch.no_grad():
                    model.step(b["states"][:, -1], b["returns_to_go"][:, -1], b["timesteps"][:, -1],
                               b["actions"][:, -2], state)

            fns[column] = step
        fns[WINDOW] = window
        res = summarise(interleaved(fns, reps if E < 400 else max(3, reps // 4)), baseline)
        rows.append({"envs": E, "K": K, **{column: res[column] for column in fns}})
        print("action selection:", E, {column: round(res[column]["ms"], 2) for column in fns}, flush=True)
    return rows


# ------------------------------------------------------------------ 4. evaluation
EVALUATIONS = {  # label -> (eval.mode, eval.overlap)
    "recurrent step": ("recurrent", "off"),
    "recurrent step, simulator overlapped": ("recurrent", "on"),
    "K-window (paper)": ("window", "off"),
    "K-window, simulator overlapped": ("window", "on"),  # only with --compare-overlap: ~1.7x slower on 2 cores
}
DEFAULT_EVALUATIONS = ("recurrent step", "recurrent step, simulator overlapped", "K-window (paper)")


def bench_evaluation(episodes_per_target: int, max_steps: int, targets=(3600.0, 2400.0, 1200.0, 600.0),
                     evaluations=DEFAULT_EVALUATIONS) -> dict:
    """A paper evaluation (len(targets) x episodes_per_target Hopper episodes, all at once) in
    each way of `evaluations`, and the same simulators stepped with no model."""
    torch.manual_seed(0)
    model = DecisionModel(ModelConfig(mixer="mamba", d_model=128, n_layer=3), (11,), 3, discrete=False)
    E = len(targets) * episodes_per_target
    target_per_env = np.repeat(np.asarray(targets), episodes_per_target)
    # terminate_when_unhealthy=False: every episode lasts max_steps, the longest evaluation.
    envs = make_gym_vector_env("Hopper-v4", E, max_episode_steps=max_steps, terminate_when_unhealthy=False)
    out = {"episodes": E, "steps": max_steps}
    # The simulator alone: the same lock-step loop, zero actions, no model.
    actions = np.zeros((E, 3))
    returns, lengths, active = np.zeros(E), np.zeros(E, dtype=np.int64), np.ones(E, dtype=bool)
    t0 = time.perf_counter()
    envs.reset(seed=0)
    for _ in range(max_steps):
        _step_lockstep(envs, actions, active, returns, lengths)
    out["simulator alone"] = {"total": time.perf_counter() - t0}
    print("evaluation, simulator alone (s):", round(out["simulator alone"]["total"], 1), flush=True)
    for label in evaluations:
        mode, overlap = EVALUATIONS[label]
        stats = evaluate_batched(model, envs, target_per_env, seed=0, mode=mode, overlap=overlap, context_len=20,
                                 rtg_scale=1000.0, max_ep_len=max_steps)
        out[label] = dict(stats.seconds)  # evaluate_batched's own clock: simulator, model, total
        print(f"evaluation, {label} (s):", {k: round(v, 1) for k, v in out[label].items()}, flush=True)
    envs.close()
    return out


def report(train: dict, memory: dict, actions: list[dict], evaluation: dict, args) -> str:
    lines = [
        f"Machine: {torch.get_num_threads()} torch threads, torch {torch.__version__}. "
        f"Command: `python benchmarks/bench.py{' --quick' if args.quick else ''}"
        f"{' --evaluation ' + args.evaluation_flag if args.evaluation_flag else ''}`.",
        "",
        f"Training step at the paper's gym setting (batch 64, K 20, 3 layers), {args.reps} interleaved rounds; "
        "vs DT = median [range] of the per-round ratios to our DT; every model with the same fused AdamW:",
        "",
        "| model | width | ms / step | vs DT | peak RSS growth (MiB) |",
        "|---|---|---|---|---|",
    ]
    for width, rows in train.items():
        for label, r in rows.items():
            mem = memory.get(label) if width == 128 else None
            lines.append(f"| {label} | {width} | {r['ms']:.1f} | {r['ratio']:.2f}x [{r['ratio_lo']:.2f}-"
                         f"{r['ratio_hi']:.2f}] | {mem['peak_growth_mib']:.0f} |" if mem else
                         f"| {label} | {width} | {r['ms']:.1f} | {r['ratio']:.2f}x [{r['ratio_lo']:.2f}-"
                         f"{r['ratio_hi']:.2f}] | |")
    if not any(HF_DT in rows for rows in train.values()):
        lines += ["", f"({HF_DT} not measured: install the bench extra, `pip install -e .[bench]`.)"]
    lines += ["", *action_selection_table(actions)]
    return "\n".join(lines + ["", *evaluation_table(evaluation)]) + "\n"


def action_selection_table(actions: list[dict]) -> list[str]:
    """3.'s rows: ms per call of every step and the window, then each one's ratio to the first step."""
    columns = [*STEP_CONTENDERS.values(), WINDOW]
    baseline, others = columns[0], columns[1:]
    lines = [f"Choosing one action at K {actions[0]['K']}, width 128 (no gradient), median ms per call; ratios "
             f"are medians [range] of per-round ratios to the {baseline}:", "",
             "| episodes batched | " + " | ".join(columns) + " | "
             + " | ".join(f"{c} / {baseline}" for c in others) + " |",
             "|" + "---|" * (1 + len(columns) + len(others))]
    for r in actions:
        lines.append(f"| {r['envs']} | " + " | ".join(f"{r[c]['ms']:.2f}" for c in columns) + " | "
                     + " | ".join(f"{r[c]['ratio']:.2f}x [{r[c]['ratio_lo']:.2f}-{r[c]['ratio_hi']:.2f}]"
                                  for c in others) + " |")
    return lines


def evaluation_table(evaluation: dict) -> list[str]:
    E, steps = evaluation["episodes"], evaluation["steps"]
    floor = evaluation["simulator alone"]["total"]
    lines = [f"A paper evaluation: 4 targets x {E // 4} Hopper episodes of {steps} steps (no early "
             f"termination), {E} at once, with the same untrained DMamba, seconds:", "",
             "| evaluation | total | vs simulator alone | simulator | model | rest |",
             "|---|---|---|---|---|---|", f"| simulator alone (zero actions) | {floor:.1f} | 1.00x | {floor:.1f} | | |"]
    for name in (label for label in EVALUATIONS if label in evaluation):
        r = evaluation[name]
        # overlapped, the simulator and the model run at the same time: the rest is negative
        lines.append(f"| {name} | {r['total']:.1f} | {r['total'] / floor:.2f}x | {r['simulator']:.1f} | "
                     f"{r['model']:.1f} | {r['total'] - r['simulator'] - r['model']:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer rounds; the evaluation with 4 x 10 episodes of 100 steps")
    parser.add_argument("--evaluation", choices=["quick", "full"],
                        help="the evaluation's size on its own: full = 4 x 100 episodes of 1000 steps "
                             "(the default without --quick; ~9 min on 2 cores), quick = 4 x 10 of 100")
    parser.add_argument("--compare-overlap", type=int, metavar="STEPS",
                        help="only the evaluation, 4 x 100 episodes of STEPS steps, each mode with and without "
                             "eval.overlap (the measurement behind eval.overlap=auto); printed, not written")
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
    if args.compare_overlap:
        evaluation = bench_evaluation(100, args.compare_overlap, evaluations=tuple(EVALUATIONS))
        print("\n".join(evaluation_table(evaluation)))
        return
    args.reps = 5 if args.quick else 15
    # --quick leaves out the sequential PyTorch scan (~10x a fused step) and measures memory over one step.
    train = bench_training(args.reps, sequential=not args.quick)
    memory = bench_memory(1 if args.quick else 3, [k for k in CONTENDERS if not (args.quick and k == SLOW)])
    actions = bench_action_selection(args.reps * 4)
    args.evaluation_flag = args.evaluation  # as given, for the report's command line
    full = (args.evaluation or ("quick" if args.quick else "full")) == "full"
    evaluation = bench_evaluation(100 if full else 10, 1000 if full else 100)
    text = report(train, memory, actions, evaluation, args)
    write_text_atomic(Path(args.out), text)
    print(text)


if __name__ == "__main__":
    main()
