"""Run directories, metrics, checkpoints, resume and wandb: the loop both experiments share.

A run directory holds
    config.yaml          the resolved config
    metrics.jsonl        one line per iteration: training statistics, the evaluation, and the wall
                         time per update, batch draw and evaluation step (runlog.iteration_times)
    identity.json        what the numbers depend on besides the config: data fingerprint,
                         environment, thread counts, code version (decision_mamba/checkpoint.py)
    checkpoints/iter_NNN.pt  self-contained: the trainer's full state after iteration NNN, the
                         config and the identity (atomic, verified on load); by default only
                         the newest and the best are kept (run.keep_checkpoints)
    summary.json         the last and the best evaluation, saying which is which
    run_info.json, train_steps.jsonl   code, packages, device; the curve every run.log_every steps (runlog.py)

`--resume` first compares the config and the identity with the run's and refuses any
difference (but those run.resume_allow_changes names; never other data); then it reloads
the newest intact checkpoint, drops metrics written after it (and a torn last line), and goes on;
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

from decision_mamba.atomic import write_text_atomic
from decision_mamba.checkpoint import (IDENTITY_FILE, CheckpointError, check_resume, checkpoint_path, code_version,
                                       compact_finished, newest_intact, remove_leftovers, resumable, retain,
                                       save_checkpoint, thread_counts)
from decision_mamba.compute import describe_compute, format_compute
from decision_mamba.config import AtariConfig, GymConfig, flatten, load_config, to_dict, to_yaml
from decision_mamba.confighelp import describe_config
from decision_mamba.errors import UserError
from decision_mamba.protocols import protocol_label
from decision_mamba.runlog import StepLog, banner, format_eval, iteration_times, run_info, write_run_info
from decision_mamba.scores import run_score
from decision_mamba.trainer import Trainer
from decision_mamba.video import iteration_video_dir


class RunExistsError(UserError, FileExistsError):
    """The run directory holds another run, and --resume was not asked for."""


# evaluate(iteration) -> {"targets": {target: {"return_mean", ..., "score_mean"}}, ...}
Evaluate = Callable[[int], dict[str, Any]]


# ------------------------------------------------------------- entry-point glue
def parse_args(description: str, argv: list[str] | None = None,
               schema: type[GymConfig] | type[AtariConfig] | None = None) -> argparse.Namespace:
    """The entry points' command line; with `schema`, --help lists every config key (default and
    description) and --show-config prints the resolved config and exits."""
    epilog = describe_config(schema(), "config keys (default, description); set them in the YAML file or as key=value:") \
        if schema is not None else None
    parser = argparse.ArgumentParser(description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file under configs/")
    parser.add_argument("--resume", action="store_true", help="continue the run in its run directory")
    parser.add_argument("--show-config", action="store_true",
                        help="print every key as the YAML file and overrides set it, then exit")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.batch_size=32 seed=23")
    args = parser.parse_args(argv)
    if args.show_config and schema is not None:
        print(describe_config(load_config(schema, args.config, args.overrides), f"{args.config} with {args.overrides}:"))
        raise SystemExit(0)
    return args


def seed_everything(seed: int, num_threads: int = 0) -> None:
    """Seed python, numpy and torch; deterministic kernels on the CPU.

    `num_threads` > 0 fixes torch's and numba's thread counts (numba's at most
    NUMBA_NUM_THREADS): the last bits of the reductions depend on them, so a run resumed
    under another launcher (e.g. another --slots) computes the same numbers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if num_threads > 0:
        import numba

        torch.set_num_threads(num_threads)
        numba.set_num_threads(min(num_threads, numba.config.NUMBA_NUM_THREADS))
    torch.use_deterministic_algorithms(True, warn_only=True)


def run_directory(cfg: GymConfig | AtariConfig, default_name: str) -> Path:
    return Path(cfg.run.out_dir) / (cfg.run.name or default_name)


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

    @property
    def url(self) -> str | None:
        """The run's page on wandb's server; None when wandb is off or offline (nothing is uploaded)."""
        return getattr(self.wandb_run, "url", None) if self.wandb_run is not None and not self.wandb_run.offline else None

    def records(self) -> list[dict]:
        return read_records(self.path)

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
            self.wandb_run.log(_numbers(record), step=record["step"])

    def log_videos(self, directory: Path, step: int) -> None:
        """The evaluation's MP4s (eval.video_episodes) as wandb videos, video/<file name>."""
        if self.wandb_run is None:
            return
        import wandb

        videos = {f"video/{path.stem}": wandb.Video(str(path), format="mp4") for path in sorted(directory.glob("*.mp4"))}
        if videos:
            self.wandb_run.log(videos, step=step)

    def close(self, summary: dict) -> None:
        if self.wandb_run is not None:
            self.wandb_run.summary.update(_numbers(summary))
            self.wandb_run.finish()


def read_records(path: Path) -> list[dict]:
    """The lines of metrics.jsonl. A torn last line (a kill, power loss or full disk in the
    middle of an append) is dropped, saying so; a damaged line before it is an error."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            if number < len(lines):
                raise CheckpointError(f"{path} line {number} is damaged (not JSON); only a torn last line "
                                      f"can be repaired: fix or delete the line, then --resume") from None
            print(f"warning: dropped the torn last line of {path} (an append cut short): {line[:60]!r}")
    return records


def _wandb_id(run_dir: Path) -> str:
    """A stable wandb id per run directory, so a resumed run continues the same wandb run."""
    id_file = run_dir / "wandb_id.txt"
    if not id_file.exists():
        write_text_atomic(id_file, uuid.uuid4().hex[:12])
    return id_file.read_text().strip()


def _numbers(record: dict) -> dict:
    """What wandb plots of a record: its numeric leaves, keys joined by /."""
    return {key: value for key, value in flatten(record, sep="/").items() if isinstance(value, (int, float))}


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
        return run_score(r["eval"])

    def view(r: dict) -> dict:  # target: the one the score belongs to (the first of equal scores)
        target = max(r["eval"], key=lambda t: r["eval"][t]["score_mean"])
        return {"iteration": r["iteration"], "step": r["step"], "score": score(r), "target": target,
                "targets": r["eval"]}

    best = max(evaluated, key=score)  # first of equal scores: the earliest
    return {"last": view(evaluated[-1]), "best": view(best)}


# ------------------------------------------------------------------ main loop
def run_experiment(cfg: GymConfig | AtariConfig, trainer: Trainer, evaluate: Evaluate, *, run_dir: Path,
                   group: str, resume: bool = False, steps_per_iteration: int | None = None,
                   extra_summary: dict | None = None, identity: dict | None = None, data: str = "",
                   tags: list[str] | None = None) -> dict:
    """Train for cfg.train.num_iterations, evaluating and checkpointing after each; return the summary.

    `identity` (checkpoint.run_identity) makes the checkpoints self-contained and is what
    --resume compares besides the config; `data` is one line describing the training data,
    for the banner and run_info.json; `tags` go to wandb and the summary."""
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise RunExistsError(
            f"run directory {run_dir} already exists; pass --resume to continue it, "
            f"or choose another run.name / run.out_dir"
        )
    config_yaml = to_yaml(cfg)
    identity = {**(identity or {}), "threads": thread_counts(), "code": code_version()}
    found = None
    if resume:
        check_resume(run_dir, config_yaml, identity)  # reads only: a refusal leaves the run as it was
        remove_leftovers(run_dir)
        found = newest_intact(ckpt_dir)
        if found is None and any(ckpt_dir.glob("iter_*.pt.damaged")):
            print(f"warning: no intact checkpoint in {ckpt_dir}; starting {run_dir} over from iteration 1")
    start_iteration = 1
    if found is not None:  # loaded before anything is written: a checkpoint that does not fit changes nothing
        path, state = found
        try:
            if resumable(state):
                trainer.load_state_dict(state["trainer"])
            elif state["iteration"] >= cfg.train.num_iterations:  # a finished run, compacted: nothing to train
                trainer.model.load_state_dict(state["trainer"]["model"])
                trainer.step = int(state["trainer"]["step"])
            else:
                raise CheckpointError(f"{path} holds the weights only (compacted at the end of a run), so the run "
                                      f"cannot continue from it; start a new run (run.keep_checkpoints=all keeps "
                                      f"a finished run whole, so that it can be extended)")
        except (RuntimeError, KeyError, ValueError) as err:  # e.g. a width run.resume_allow_changes let through
            raise CheckpointError(f"{path} does not fit the model or optimizer of this config "
                                  f"({type(err).__name__}: {str(err).strip().splitlines()[0][:200]}); "
                                  f"start a new run (another run.name)") from None
        start_iteration = state["iteration"] + 1
        print(f"resumed {run_dir} from {path.name} (step {trainer.step})")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", config_yaml)
    write_text_atomic(run_dir / IDENTITY_FILE, json.dumps(identity, indent=2))
    log = MetricsLog(run_dir, cfg, group=group, name=run_dir.name, tags=tags)
    compute = describe_compute(cfg, trainer.device)  # which scan runs, and why: never a secret
    print(format_compute(compute))
    if log.wandb_run is not None:
        log.wandb_run.config.update({"compute": compute}, allow_val_change=True)

    log.truncate(start_iteration - 1)

    steps = steps_per_iteration if steps_per_iteration is not None else cfg.train.steps_per_iteration
    n_iter = cfg.train.num_iterations
    info = write_run_info(run_dir, run_info(cfg.model, trainer.device, data=data,
                                            num_parameters=sum(p.numel() for p in trainer.model.parameters())))
    print(banner(run_dir, info.get("resumes", [info])[-1], total_steps=n_iter * steps, start_step=trainer.step))
    step_log = StepLog(run_dir, cfg.run.log_every, wandb_run=log.wandb_run)
    step_log.truncate(trainer.step)
    # One bar over the whole run, so its ETA is the run's.
    bar = tqdm(total=n_iter * steps, initial=(start_iteration - 1) * steps, desc="train", unit="step",
               disable=not cfg.run.progress, dynamic_ncols=True, mininterval=2.0)
    # The run's wall-clock so far (a resumed run goes on from its last record's), for the curves against time.
    previous = log.records()
    elapsed, mark = (previous[-1].get("time", {}).get("elapsed_s", 0.0) if previous else 0.0), time.perf_counter()
    for iteration in range(start_iteration, n_iter + 1):
        losses, grad_norms, train_time, sample_time = [], [], 0.0, 0.0
        tokens_before = trainer.tokens
        for _ in range(steps):
            t0 = time.perf_counter()
            tokens = trainer.tokens
            stats = trainer.train_step()
            dt = time.perf_counter() - t0
            train_time += dt
            sample_time += stats.sample_s
            losses.append(stats.loss)
            grad_norms.append(stats.grad_norm)
            step_log.add(step=trainer.step, loss=stats.loss, lr=stats.lr, grad_norm=stats.grad_norm,
                         tokens=trainer.tokens - tokens, seconds=dt)
            bar.update(1)
            if trainer.step % 50 == 0:
                bar.set_postfix(iter=f"{iteration}/{n_iter}", loss=f"{stats.loss:.4f}", lr=f"{stats.lr:.2e}")
        step_log.flush(trainer.step)  # the iteration's tail, so each record below has its curve
        record: dict[str, Any] = {
            "iteration": iteration,
            "step": trainer.step,
            "train": {
                "loss_mean": sum(losses) / max(1, len(losses)),
                "loss_last": losses[-1] if losses else float("nan"),
                "lr": trainer.cfg.learning_rate * trainer.lr_multiplier(),
                "grad_norm_mean": sum(grad_norms) / max(1, len(grad_norms)),
                "time_s": train_time,
                "steps_per_s": len(losses) / max(train_time, 1e-9),
                "tokens_per_s": (trainer.tokens - tokens_before) / max(train_time, 1e-9),
            },
        }
        if iteration % cfg.eval.every == 0 or iteration == n_iter:
            t1 = time.perf_counter()
            record["eval"] = evaluate(iteration)
            record["eval_time_s"] = time.perf_counter() - t1
            log.log_videos(iteration_video_dir(run_dir, iteration), trainer.step)
            bar.write(format_eval(iteration, n_iter, record))
        now = time.perf_counter()
        elapsed, mark = elapsed + now - mark, now
        record["time"] = iteration_times(record, updates=len(losses), sample_s=sample_time,
                                         episodes=cfg.eval.episodes, elapsed_s=elapsed)
        log.log(record)
        save_checkpoint(checkpoint_path(ckpt_dir, iteration), {"iteration": iteration, "trainer": trainer.state_dict(),
                                                               "config": config_yaml, "identity": identity})
        best = best_and_last(log.records())["best"]
        retain(ckpt_dir, cfg.run.keep_checkpoints, best["iteration"] if best else None)
    bar.close()

    compact_finished(ckpt_dir, cfg.run.keep_checkpoints)
    records = log.records()
    seconds = {"train": sum(r["train"]["time_s"] for r in records),
               "eval": sum(r.get("eval_time_s", 0.0) for r in records)}
    summary = {"run_dir": str(run_dir), "group": group, "protocol": protocol_label(cfg),
               "tags": tags or [], "steps": trainer.step, **best_and_last(records),
               "time_s": {**seconds, "wall": records[-1].get("time", {}).get("elapsed_s") if records else None},
               "wandb_url": log.url, "compute": compute,
               "note": "'best' is the best evaluation seen during training (what the paper's release "
                       "reports); 'last' is the final evaluation.",
               **(extra_summary or {})}
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
    log.close(summary)
    return summary


