"""What a run says about itself besides its evaluations: where and with what it ran, the
training curve every `run.log_every` steps, and the lines it prints.

A run directory gets (next to run.py's config.yaml, metrics.jsonl, summary.json)
    run_info.json     git commit, package versions, device, scan backend, command line, one
                      entry per start (a resumed run appends its own start)
    train_steps.jsonl one line per `run.log_every` updates: loss, LR and gradient norm (means
                      over the window, the norm before clipping), steps/s and tokens/s

so that what wandb shows is also on disk when wandb is off (the default). Tokens are
counted as the trainer counts them for the Atari LR schedule: timesteps with a real
(non-padded) action target.
"""

from __future__ import annotations

import json
import platform
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from decision_mamba.atomic import write_text_atomic
from decision_mamba.provenance import git_state, package_versions
from decision_mamba.model import ModelConfig

RUN_INFO_FILE = "run_info.json"
STEPS_FILE = "train_steps.jsonl"
# Distributions whose versions change the numbers (or the speed) of a run.
PACKAGES = ("decision-mamba", "torch", "numpy", "numba", "gymnasium", "mujoco", "ale-py", "minari",
            "mamba-ssm", "causal-conv1d", "omegaconf", "wandb")


# ----------------------------------------------------------------- run_info.json
def describe_device(device: torch.device) -> str:
    """'cuda:0 (NVIDIA A100-SXM4-40GB)' or 'cpu (2 threads)'."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"{device.type} ({torch.get_num_threads()} threads)"


def scan_backend(model: ModelConfig, device: torch.device) -> str | None:
    """The selective-scan backend a Mamba model trains with on `device`
    (selective_scan.resolve_scan_backend decides); None for the other mixers, which have no scan."""
    if model.mixer != "mamba":
        return None
    from decision_mamba.selective_scan import resolve_scan_backend

    return resolve_scan_backend(model.scan_backend, device)[0]


def run_info(model: ModelConfig, device: torch.device, *, num_parameters: int | None = None,
             data: str = "", **extra: Any) -> dict[str, Any]:
    """Everything about this start of a run that its config does not say."""
    return {
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "host": socket.gethostname(),
        "git": git_state(),
        "packages": {"python": platform.python_version(), **package_versions(*PACKAGES)},
        "device": describe_device(device),
        "scan_backend": scan_backend(model, device),
        "num_parameters": num_parameters,
        "data": data,
        **extra,
    }


def write_run_info(run_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Write run_info.json; a resumed run keeps the first start's entry and appends its own
    under "resumes" (its commit or packages may differ: both are on record)."""
    path = Path(run_dir) / RUN_INFO_FILE
    if path.exists():
        first = json.loads(path.read_text())
        first.setdefault("resumes", []).append(info)
        record = first
    else:
        record = info
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")
    return record


# ------------------------------------------------------------ the training curve
class StepLog:
    """Collects each update's loss, LR and gradient norm and writes their means every
    `every` steps to train_steps.jsonl (and to wandb when a run is given).

    Only the time spent inside updates is counted for the throughput, so evaluations and
    checkpoints between iterations do not lower steps/s.
    """

    def __init__(self, run_dir: Path, every: int, wandb_run: Any = None):
        self.path = Path(run_dir) / STEPS_FILE
        self.every = every
        self.wandb_run = wandb_run
        self._reset()

    def _reset(self) -> None:
        self.n = 0
        self.loss = self.lr = self.grad_norm = self.seconds = 0.0
        self.grad_norm_max = 0.0
        self.tokens = 0

    def truncate(self, last_step: int) -> None:
        """Drop lines after `last_step` (written after the checkpoint a run resumes from)."""
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= last_step]
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def add(self, *, step: int, loss: float, lr: float, grad_norm: float, tokens: int, seconds: float) -> dict | None:
        """Account one update (`tokens` new tokens, `seconds` long); returns the record when one is written."""
        self.n += 1
        self.loss += loss
        self.lr += lr
        self.grad_norm += grad_norm
        self.grad_norm_max = max(self.grad_norm_max, grad_norm)
        self.tokens += tokens
        self.seconds += seconds
        if self.every <= 0 or step % self.every != 0:
            return None
        return self.flush(step)

    def flush(self, step: int) -> dict | None:
        if self.n == 0:
            return None
        seconds = max(self.seconds, 1e-9)
        record = {"step": step, "loss": self.loss / self.n, "lr": self.lr / self.n,
                  "grad_norm": self.grad_norm / self.n, "grad_norm_max": self.grad_norm_max,
                  "steps_per_s": self.n / seconds, "tokens_per_s": self.tokens / seconds}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=step)
        self._reset()
        return record


# ---------------------------------------------------------------- wall-clock
def iteration_times(record: dict, *, updates: int, sample_s: float, episodes: int, elapsed_s: float) -> dict:
    """metrics.jsonl's "time" of one iteration (d3rlpy-benchmarks' time_algorithm_update,
    time_sample_batch and time_step): seconds per update (the batch's draw included), per batch
    draw, per evaluation step (the evaluation's wall-clock over its episodes' steps: the
    episodes run in lock-step, so this is the amortised cost of one simulator step and its
    share of the model call; null without an evaluation), and the run's wall-clock so far."""
    steps = sum(target["length_mean"] for target in record.get("eval", {}).values()) * episodes
    return {"update_s": record["train"]["time_s"] / max(1, updates),
            "sample_s": sample_s / max(1, updates),
            "eval_step_s": record["eval_time_s"] / steps if record.get("eval") and steps else None,
            "elapsed_s": elapsed_s}


# ------------------------------------------------------------------ the terminal
def banner(run_dir: Path, info: dict[str, Any], *, total_steps: int, start_step: int = 0) -> str:
    """The lines a run prints before its first update."""
    scan = info.get("scan_backend")
    git = info.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12] + (" (dirty)" if git.get("dirty") else "")
    params = info.get("num_parameters")
    lines = [f"run directory: {run_dir}",
             f"device: {info['device']}" + (f", scan backend: {scan}" if scan else ""),
             f"data: {info.get('data') or 'n/a'}",
             f"model: {params / 1e6:.2f}M parameters" if params is not None else "model: n/a",
             f"code: {commit}, torch {info['packages'].get('torch')}",
             f"updates: {total_steps:,}" + (f" (resuming at {start_step:,})" if start_step else "")]
    return "\n".join(lines)


def format_eval(iteration: int, n_iter: int, record: dict) -> str:
    """One line per evaluation: losses, throughput and time, then each target's numbers."""
    train = record["train"]
    head = (f"[iter {iteration}/{n_iter} step {record['step']}] loss {train['loss_mean']:.4f}, "
            f"{train['steps_per_s']:.1f} steps/s, train {train['time_s']:.0f} s, eval {record['eval_time_s']:.0f} s")
    parts = [head]
    for target, s in record["eval"].items():
        parts.append(f"target {target}: return {s['return_mean']:.1f} ± {s['return_std']:.1f}, "
                     f"score {s['score_mean']:.1f}, length {s['length_mean']:.0f}")
    return " | ".join(parts)

