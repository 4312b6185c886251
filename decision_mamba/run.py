"""Run directories, metrics, checkpoints, resume and wandb: the loop both experiments share.

A run directory holds
    config.yaml          the resolved config
    metrics.jsonl        one line per iteration: training statistics and the evaluation
    checkpoints/iter_NNN.pt  the trainer's full state after iteration NNN (atomic)
    summary.json         the last and the best evaluation, saying which is which

`--resume` reloads the newest checkpoint, drops metrics written after it, and goes on;
on the CPU a resumed run ends with the same numbers as an uninterrupted one, because the
checkpoint carries every random state and each evaluation is seeded from (seed, iteration).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from decision_mamba.atomic import atomic_path, write_text_atomic
from decision_mamba.config import AtariConfig, GymConfig, to_dict, to_yaml
from decision_mamba.protocols import protocol_label
from decision_mamba.trainer import Trainer

# evaluate(iteration) -> {"targets": {target: {"return_mean", ..., "score_mean"}}, ...}
Evaluate = Callable[[int], dict[str, Any]]


# ------------------------------------------------------------- entry-point glue
def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="YAML file under configs/")
    parser.add_argument("--resume", action="store_true", help="continue the run in its run directory")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.batch_size=32 seed=23")
    return parser.parse_args(argv)


def seed_everything(seed: int, num_threads: int = 0) -> None:
    """Seed python, numpy and torch; deterministic kernels on the CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def run_directory(cfg: GymConfig | AtariConfig, default_name: str) -> Path:
    return Path(cfg.run.out_dir) / (cfg.run.name or default_name)


# ----------------------------------------------------------------- atomic files
def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    # weights_only: a checkpoint is data, never code.
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------- logging
class MetricsLog:
    """metrics.jsonl plus, optionally, wandb (offline when there are no credentials)."""

    def __init__(self, run_dir: Path, cfg: GymConfig | AtariConfig, group: str, name: str,
                 tags: list[str] | None = None):
        self.path = run_dir / "metrics.jsonl"
        self.wandb_run = None
        if cfg.run.wandb != "disabled":
            import wandb

            self.wandb_run = wandb.init(
                project=cfg.run.wandb_project, group=cfg.run.wandb_group or group, name=name, tags=tags,
                config=to_dict(cfg), dir=str(run_dir), mode=cfg.run.wandb,
                id=_wandb_id(run_dir), resume="allow",
            )

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate(self, last_iteration: int) -> None:
        """Forget iterations after `last_iteration` (written by a run killed after its checkpoint)."""
        kept = [r for r in self.records() if r["iteration"] <= last_iteration]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def log(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.wandb_run is not None:
            self.wandb_run.log(_flatten(record), step=record["step"])

    def close(self, summary: dict) -> None:
        if self.wandb_run is not None:
            self.wandb_run.summary.update(_flatten(summary))
            self.wandb_run.finish()


def _wandb_id(run_dir: Path) -> str:
    """A stable wandb id per run directory, so a resumed run continues the same wandb run."""
    id_file = run_dir / "wandb_id.txt"
    if not id_file.exists():
        write_text_atomic(id_file, uuid.uuid4().hex[:12])
    return id_file.read_text().strip()


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "/"))
        elif isinstance(v, (int, float)):
            flat[key] = v
    return flat


# ------------------------------------------------------------------- summaries
def best_and_last(records: list[dict]) -> dict:
    """The last evaluation and the best one (by mean normalized score over targets).

    The paper's release reports the best evaluation seen during training; a fair table
    shows the last one too. Both are stored, named as what they are.
    """
    evaluated = [r for r in records if r.get("eval")]
    if not evaluated:
        return {"last": None, "best": None}

    def score(r: dict) -> float:
        return max(t["score_mean"] for t in r["eval"].values())

    def view(r: dict) -> dict:
        return {"iteration": r["iteration"], "step": r["step"], "score": score(r), "targets": r["eval"]}

    best = max(evaluated, key=score)  # first of equal scores: the earliest
    return {"last": view(evaluated[-1]), "best": view(best)}


# ------------------------------------------------------------------ main loop
def run_experiment(cfg: GymConfig | AtariConfig, trainer: Trainer, evaluate: Evaluate, *, run_dir: Path,
                   group: str, resume: bool = False, steps_per_iteration: int | None = None,
                   extra_summary: dict | None = None, tags: list[str] | None = None) -> dict:
    """Train for cfg.train.num_iterations, evaluating and checkpointing after each; return the summary."""
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise FileExistsError(
            f"run directory {run_dir} already exists; pass --resume to continue it, "
            f"or choose another run.name / run.out_dir"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", to_yaml(cfg))
    log = MetricsLog(run_dir, cfg, group=group, name=run_dir.name, tags=tags)

    start_iteration = 1
    checkpoints = sorted(ckpt_dir.glob("iter_*.pt"))
    if resume and checkpoints:
        state = load_checkpoint(checkpoints[-1])
        trainer.load_state_dict(state["trainer"])
        start_iteration = state["iteration"] + 1
        print(f"resumed {run_dir} from {checkpoints[-1].name} (step {trainer.step})")
    log.truncate(start_iteration - 1)

    steps = steps_per_iteration if steps_per_iteration is not None else cfg.train.steps_per_iteration
    n_iter = cfg.train.num_iterations
    for iteration in range(start_iteration, n_iter + 1):
        t0 = time.perf_counter()
        losses = []
        bar = tqdm(range(steps), desc=f"train {iteration}/{n_iter}", disable=not cfg.run.progress,
                   leave=False, dynamic_ncols=True, mininterval=2.0)
        for _ in bar:
            stats = trainer.train_step()
            losses.append(stats.loss)
            if trainer.step % 50 == 0:
                bar.set_postfix(loss=f"{stats.loss:.4f}", lr=f"{stats.lr:.2e}")
        train_time = time.perf_counter() - t0
        record: dict[str, Any] = {
            "iteration": iteration,
            "step": trainer.step,
            "train": {
                "loss_mean": sum(losses) / max(1, len(losses)),
                "loss_last": losses[-1] if losses else float("nan"),
                "lr": trainer.cfg.learning_rate * trainer.lr_multiplier(),
                "time_s": train_time,
            },
        }
        if iteration % cfg.eval.every == 0 or iteration == n_iter:
            t1 = time.perf_counter()
            record["eval"] = evaluate(iteration)
            record["eval_time_s"] = time.perf_counter() - t1
            print(_format_eval(iteration, n_iter, record))
        log.log(record)
        save_checkpoint(ckpt_dir / f"iter_{iteration:03d}.pt", {"iteration": iteration, "trainer": trainer.state_dict()})
        _prune_checkpoints(ckpt_dir, cfg.run.keep_checkpoints)

    records = log.records()
    seconds = {"train": sum(r["train"]["time_s"] for r in records),
               "eval": sum(r.get("eval_time_s", 0.0) for r in records)}
    summary = {"run_dir": str(run_dir), "group": group, "protocol": protocol_label(cfg),
               "tags": tags or [], "steps": trainer.step, **best_and_last(records),
               "time_s": seconds,
               "note": "'best' is the best evaluation seen during training (what the paper's release "
                       "reports); 'last' is the final evaluation.",
               **(extra_summary or {})}
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
    log.close(summary)
    return summary


def _prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    if keep > 0:
        for old in sorted(ckpt_dir.glob("iter_*.pt"))[:-keep]:
            old.unlink()


def _format_eval(iteration: int, n_iter: int, record: dict) -> str:
    parts = [f"[iter {iteration}/{n_iter}] loss {record['train']['loss_mean']:.4f}"]
    for target, s in record["eval"].items():
        parts.append(f"target {target}: return {s['return_mean']:.1f} ± {s['return_std']:.1f}, "
                     f"score {s['score_mean']:.1f}, length {s['length_mean']:.0f}")
    return " | ".join(parts)
