"""Training step time and peak memory against the context length K: DMamba beside DT.

    python benchmarks/bench_context.py [--context 20,100,300,1000] [--batch 16] [--reps 10]
                                       [--out benchmarks/results_context.md]

For each K, the model of configs/gym/quickstart.yaml (width 128, 3 layers, Hopper's state and
action sizes, its bundled data) as DMamba (model.mixer=mamba) and as DT (model.mixer=attention),
trained on windows of train.window_start=episode (each window an episode from its first step,
up to K steps). One step is gym/experiment.py's update, built by its own `build_trainer`:
the batch drawn from the sampler, forward, loss, backward, clipping and AdamW. Every model at
every K is timed round-robin in one run (bench.interleaved), so the DT / DMamba ratio and the
growth from one K to the next are medians of per-round ratios, measured under the same load.
Peak memory is bench.py's measure (how far the steps raise the resident set), each model and K
in a fresh process.

The bundled episodes are 295 to 406 steps long. Past an episode's end a window is padded to K
(the mask hides the padding from the loss and from DT's attention), and both models still
compute on all 3K tokens: the step costs what K costs, whatever the episode's length. The
table's "real steps" column says how much of a window is episode.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from decision_mamba.cpu import configure_process  # noqa: E402

configure_process()  # before torch loads, as every entry point (decision_mamba/cpu)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import bench  # noqa: E402  (benchmarks/bench.py: its timing and memory measures)
from decision_mamba.config import GymConfig, load_config  # noqa: E402
from decision_mamba.data.sampler import state_normalization  # noqa: E402
from decision_mamba.run import write_text_atomic  # noqa: E402
from decision_mamba.suites import suite_of  # noqa: E402

CONFIG = REPO / "configs" / "gym" / "quickstart.yaml"
DATASET = REPO / "data" / "hopper-medium-v4-gen.hdf5"  # quickstart's data, found from any folder
MODELS = {"DMamba": "mamba", "DT": "attention"}  # label -> model.mixer
CONTEXTS = (20, 100, 300, 1000)


@functools.cache
def _load_gym_experiment():
    # gym/ is a folder of scripts, not a package (gym/__init__.py refuses the import)
    spec = importlib.util.spec_from_file_location("gym_experiment", REPO / "gym" / "experiment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config(mixer: str, K: int, B: int) -> GymConfig:
    return load_config(GymConfig, CONFIG, [f"dataset={DATASET}", f"model.mixer={mixer}", f"train.context_len={K}",
                                           f"train.batch_size={B}", "train.window_start=episode",
                                           "train.device=cpu"])


def load_data(cfg: GymConfig):
    """(trajectories, state mean, state std) of the config's dataset, as gym/experiment.py has them."""
    traj = suite_of(cfg).load(cfg).trajectories
    return (traj, *state_normalization(traj))


def build_trainer(mixer: str, K: int, B: int, data):
    """gym/experiment.py's Trainer for quickstart's model with this mixer, K and batch size."""
    cfg = config(mixer, K, B)
    torch.manual_seed(cfg.seed)
    return _load_gym_experiment().build_trainer(cfg, *data, torch.device("cpu"))


def mean_real_steps(lengths: np.ndarray, K: int) -> float:
    """The expected number of episode steps in a window of K: the sampler picks an episode with
    probability proportional to its length and takes up to K steps from its start."""
    lengths = np.asarray(lengths, dtype=np.float64)
    return float((lengths * np.minimum(lengths, K)).sum() / lengths.sum())


# ---------------------------------------------------------------------- time
def training_steps(contexts, B: int) -> dict[tuple[str, int], Callable[[], object]]:
    """(model, K) -> its Trainer's train_step, in the order they are timed: K by K, DMamba then DT."""
    data = load_data(config("mamba", contexts[0], B))
    return {(label, K): build_trainer(mixer, K, B, data).train_step for K in contexts for label, mixer in MODELS.items()}


def time_steps(contexts, B: int, reps: int, warmup: int = 2) -> dict[tuple[str, int], list[float]]:
    """Seconds of each (model, K)'s training step in each of `reps` rounds, all called round-robin."""
    times = bench.interleaved(training_steps(contexts, B), reps, warmup)
    for (label, K), ts in times.items():
        print(f"K {K} {label}: {statistics.median(ts):.3f} s / step", flush=True)
    return times


def _median_range(values) -> dict[str, float]:
    values = sorted(values)
    return {"median": statistics.median(values), "lo": values[0], "hi": values[-1]}


def summarise(times: dict[tuple[str, int], list[float]], contexts) -> list[dict]:
    """One row per K: median seconds per step of each model, DT / DMamba and each model's growth
    from the previous K, each a median [range] of the per-round ratios."""
    rows = []
    for i, K in enumerate(contexts):
        row = {"K": K, "seconds": {label: statistics.median(times[label, K]) for label in MODELS},
               "dt_over_dmamba": _median_range(t / m for t, m in zip(times["DT", K], times["DMamba", K]))}
        if i:
            previous = contexts[i - 1]
            row["growth"] = {label: _median_range(t / p for t, p in zip(times[label, K], times[label, previous]))
                             for label in MODELS}
        rows.append(row)
    return rows


# -------------------------------------------------------------------- memory
def memory_child(label: str, K: int, B: int, steps: int) -> None:
    """In a fresh process: print bench.peak_growth over `steps` training steps of (label, K)."""
    data = load_data(config(MODELS[label], K, B))
    # Compile numba's kernels at a tiny K first: the compiler's memory is not the step's.
    build_trainer(MODELS[label], 2, 2, data).train_step()
    trainer = build_trainer(MODELS[label], K, B, data)
    print(json.dumps(bench.peak_growth(trainer.train_step, steps)))


def measure_memory(contexts, B: int, steps: int) -> dict[tuple[str, int], dict]:
    out = {}
    for K in contexts:
        for label in MODELS:
            res = subprocess.run([sys.executable, __file__, "--memory-child", label, "--context", str(K),
                                  "--batch", str(B), "--memory-steps", str(steps)],
                                 capture_output=True, text=True, check=True)
            out[label, K] = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"K {K} {label}: peak RSS growth {out[label, K]['peak_growth_mib']:.0f} MiB", flush=True)
    return out


# -------------------------------------------------------------------- report
def report(rows: list[dict], memory: dict, lengths: np.ndarray, args) -> str:
    def ratio(r):
        return f"{r['median']:.2f}x [{r['lo']:.2f}-{r['hi']:.2f}]"

    lines = [
        f"Machine: {torch.get_num_threads()} torch threads, torch {torch.__version__}. Command: "
        f"`python benchmarks/bench_context.py --context {','.join(map(str, args.contexts))} --batch {args.batch} "
        f"--reps {args.reps} --memory-steps {args.memory_steps}`.",
        "",
        f"One training step of configs/gym/quickstart.yaml's model (width 128, 3 layers, Hopper, batch "
        f"{args.batch}, train.window_start=episode), {args.reps} interleaved rounds. Ratios and growth are "
        "median [range] of per-round ratios; growth is from the row above. Memory: peak RSS growth over "
        f"{args.memory_steps} steps in a fresh process (MiB). Real steps: the mean episode steps in a window "
        f"(episodes of {int(lengths.min())}-{int(lengths.max())} steps).",
        "",
        "| K | real steps | DMamba s / step | DT s / step | DT / DMamba | K growth | DMamba time growth | "
        "DT time growth | DMamba MiB | DT MiB | DMamba memory growth | DT memory growth |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(rows):
        K, s = row["K"], row["seconds"]
        mib = {label: memory[label, K]["peak_growth_mib"] for label in MODELS}
        cells = [str(K), f"{mean_real_steps(lengths, K):.0f}", f"{s['DMamba']:.3f}", f"{s['DT']:.3f}",
                 ratio(row["dt_over_dmamba"])]
        if i:
            previous = rows[i - 1]["K"]
            cells += [f"{K / previous:.2f}x", ratio(row["growth"]["DMamba"]), ratio(row["growth"]["DT"])]
        else:
            cells += ["", "", ""]
        cells += [f"{mib['DMamba']:.0f}", f"{mib['DT']:.0f}"]
        if i:
            cells += [f"{mib[label] / memory[label, previous]['peak_growth_mib']:.2f}x" for label in MODELS]
        else:
            cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", default=",".join(map(str, CONTEXTS)),
                        help="the context lengths K, comma-separated (default %(default)s)")
    parser.add_argument("--batch", type=int, default=16, help="windows per step (default %(default)s)")
    parser.add_argument("--reps", type=int, default=10, help="interleaved timing rounds (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each model and K first")
    parser.add_argument("--memory-steps", type=int, default=2, help="steps over which the peak memory is taken")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results_context.md"))
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.contexts = [int(k) for k in args.context.split(",")]
    except ValueError:
        parser.error(f"--context takes comma-separated integers such as 20,100,300,1000, got {args.context!r}")
    if min(args.contexts) < 1 or min(args.batch, args.reps, args.memory_steps) < 1 or args.warmup < 0:
        parser.error("K, --batch, --reps and --memory-steps must be positive, --warmup 0 or more")
    if args.memory_child:
        memory_child(args.memory_child, args.contexts[0], args.batch, args.memory_steps)
        return
    rows = summarise(time_steps(args.contexts, args.batch, args.reps, args.warmup), args.contexts)
    memory = measure_memory(args.contexts, args.batch, args.memory_steps)
    lengths = load_data(config("mamba", args.contexts[0], args.batch))[0].lengths
    text = report(rows, memory, lengths, args)
    write_text_atomic(Path(args.out), text)
    print(text)


if __name__ == "__main__":
    main()
