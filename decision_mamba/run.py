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

`--resume` continues the run in its run directory, starts it when there is none, and only
prints the scores of a run that has finished (so `make run` can pass it every time). It first compares the config and the identity with the run's and refuses any
difference (but those run.resume_allow_changes names; never other data); then it reloads
the newest intact checkpoint, drops metrics written after it (and a torn last line), and goes on;
on the CPU a resumed run ends with the same numbers as an uninterrupted one, because the
checkpoint carries every random state and each evaluation is seeded from (seed, iteration).

One process writes a run directory at a time (runlock.py: a second gets one line naming the
first's PID). `preflight` checks, before data is read or anything written, what would
otherwise fail later with a traceback or a half-made run: devices, thread counts, folders
that cannot be written, the renderer; Ctrl-C or SIGTERM ends a run with one line naming
--resume (errors.cli_main).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from decision_mamba.atomic import check_writable, write_text_atomic
from decision_mamba.checkpoint import (IDENTITY_FILE, CheckpointError, check_resume, checkpoint_path, code_version,
                                       compact_finished, list_checkpoints, newest_intact, remove_leftovers, resumable,
                                       retain, save_checkpoint, thread_counts)
from decision_mamba.compute import describe_compute, format_compute
from decision_mamba.config import AtariConfig, GymConfig, flatten, load_config, to_dict, to_yaml
from decision_mamba.confighelp import config_rows, describe_config, show_value
from decision_mamba.errors import UserError, interrupted_again
from decision_mamba.protocols import protocol_label
from decision_mamba.runlock import LOCK_FILE, run_lock
from decision_mamba.runlog import StepLog, banner, format_eval, iteration_times, run_info, write_run_info
from decision_mamba.scores import run_score
from decision_mamba.trainer import Trainer, linear_warmup
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
    parser.add_argument("--config", required=True, help="a YAML config file (those of the paper are under configs/)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in its run directory (start it if there is none; a finished run "
                             "prints its scores); may come anywhere, also between overrides")
    parser.add_argument("--show-config", action="store_true",
                        help="print every key as the YAML file and overrides set it, then exit")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.batch_size=32 seed=23")
    args = parser.parse_intermixed_args(argv)  # `... key=value --resume key=value` too
    if args.show_config and schema is not None:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `--show-config | head` ends quietly, as other tools do
        print(show_config(schema, args.config, args.overrides))
        raise SystemExit(0)
    return args


def show_config(schema: type[GymConfig] | type[AtariConfig], path: str, overrides: list[str]) -> str:
    """Every key with its value, marked where it differs from the default: `*` set by the YAML
    file (or the protocol it names), `+` by the key=value overrides."""
    layers = [schema(), load_config(schema, path), load_config(schema, path, overrides)]
    default, from_file = ({key: value for key, value, _ in config_rows(layer)} for layer in layers[:2])
    rows = []
    for key, value, text in config_rows(layers[2]):
        source = "override" if value != from_file[key] else "file" if value != default[key] else ""
        rows.append((f"{key} = {show_value(value)}", source, text))
    width = max(len(setting) for setting, _, _ in rows)
    return "\n".join([f"{path} with {overrides or 'no overrides'} (file: set by the YAML file or its protocol; "
                      f"override: by key=value; blank: the default):"]
                     + [f"  {setting:<{width}}  {source:<8}  {text}".rstrip() for setting, source, text in rows])


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


def run_started(run_dir: Path) -> bool:
    """Whether training in `run_dir` has begun: a metrics line, a checkpoint (intact or
    damaged) or a summary. A run that failed while starting leaves at most its config and
    identity; it blocks neither a new run of the corrected command nor its --resume."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    checkpoints = run_dir / "checkpoints"
    return ((run_dir / "summary.json").is_file() or (metrics.is_file() and metrics.stat().st_size > 0)
            or (checkpoints.is_dir() and any(checkpoints.iterdir())))


def _refuse_existing(run_dir: Path, resume: bool) -> None:
    if run_started(run_dir) and not resume:
        raise RunExistsError(f"run directory {run_dir} already holds a run; pass --resume to continue it (or to "
                             f"print its scores if it has finished), or choose another run.name / run.out_dir")


def preflight(cfg: GymConfig | AtariConfig, run_dir: Path, resume: bool) -> None:
    """What would fail later with a traceback, or after writing half a run: checked before the
    data is read. The device and scan backend, the run directory (free, or --resume; writable)
    and, for MuJoCo, the renderer variable MUJOCO_GL that importing mujoco reads."""
    from decision_mamba.selective_scan import resolve_scan_backend
    from decision_mamba.trainer import resolve_device

    try:
        device = resolve_device(cfg.train.device)
    except RuntimeError as err:  # no CUDA here, or a device name torch does not know
        message = str(err).splitlines()[0]
        raise UserError(message if "train.device" in message else f"train.device={cfg.train.device}: {message}") from None
    try:
        resolve_scan_backend(cfg.model.scan_backend, device)
    except ValueError as err:
        raise UserError(f"model.scan_backend={cfg.model.scan_backend} cannot run on {device} "
                        f"({str(err).removeprefix('selective_scan: ').split(';')[0]}); model.scan_backend=auto "
                        f"picks the one that runs (fused on the CPU)") from None
    _refuse_existing(run_dir, resume)
    check_writable(run_dir, "run directory")
    for name in ("metrics.jsonl", "checkpoints", "config.yaml"):
        if (run_dir / name).exists() and not os.access(run_dir / name, os.W_OK):
            raise UserError(f"cannot write {run_dir / name} (no write permission); fix its permissions, "
                            f"or choose another run.name / run.out_dir")
    check_relative_data_paths(cfg)
    if isinstance(cfg, GymConfig) and str(cfg.dataset).startswith("minari:"):
        local = Path(str(cfg.dataset).removeprefix("minari:"))
        if local.exists() and not any((folder / "metadata.json").is_file() for folder in (local, local / "data")):
            raise UserError(f"dataset={cfg.dataset}: {local} is no Minari dataset (a Minari dataset folder holds "
                            f"data/metadata.json and data/main_data.hdf5); give its folder, or its id (minari:"
                            f"namespace/env/name-v0) after python -m decision_mamba.data.download minari <id>")
    if isinstance(cfg, GymConfig):
        try:
            import mujoco  # noqa: F401  (reads MUJOCO_GL when imported, and loads that renderer's library)
        except Exception as err:  # RuntimeError: an unknown value; AttributeError, ImportError: no such library
            gl = os.environ.get("MUJOCO_GL", "")
            raise UserError(f"cannot import mujoco with MUJOCO_GL={gl} ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else 'its library is missing'}); MuJoCo draws "
                            f"with MUJOCO_GL=egl (libegl1), osmesa (libosmesa6) or glfw, or leave it unset") from None


REPOSITORY = Path(__file__).resolve().parents[1]


def check_relative_data_paths(cfg: GymConfig | AtariConfig) -> None:
    """Relative data paths (dataset=FILE, data_dir), in a YAML file or an override alike, are
    read from the current folder, as a shell reads them. Run from elsewhere, the configs'
    paths (data/..., written from the repository's root) miss; say so, naming both folders."""
    from decision_mamba.data.d4rl import is_file_dataset

    paths = {"data_dir": cfg.data_dir}  # Atari's replay folder, gym's D4RL folder
    if isinstance(cfg, GymConfig):
        minari = str(cfg.dataset).startswith("minari:")
        paths = {} if minari else {"dataset": cfg.dataset} if is_file_dataset(cfg.dataset) else paths
    for key, value in paths.items():
        path = Path(value)
        if not path.is_absolute() and not path.exists() and (REPOSITORY / path).exists():
            raise UserError(f"{key}={value} is read from the current folder, {Path.cwd()}, where it is not; the "
                            f"repository has it: run from {REPOSITORY}, or set {key}={REPOSITORY / path}")


def warn_if_warmup_outlasts(cfg: GymConfig | AtariConfig, total_steps: int) -> None:
    """One line when the learning-rate warm-up is longer than the run: a paper config shortened
    by overrides keeps its 10,000-step warm-up, and its few updates all run at a small
    fraction of train.learning_rate."""
    t = cfg.train
    if t.lr_schedule == "linear_warmup":
        warmup, length = f"train.warmup_steps={t.warmup_steps}", t.warmup_steps
        peak = linear_warmup(total_steps - 1, t.warmup_steps)
    else:  # tokens: at most batch_size x context_len per update
        most_tokens = total_steps * t.batch_size * t.context_len
        warmup, length = f"train.warmup_tokens={t.warmup_tokens}", t.warmup_tokens / (t.batch_size * t.context_len)
        peak = most_tokens / max(1, t.warmup_tokens)
    if peak < 1.0:
        print(f"warning: the warm-up ({warmup}, about {length:,.0f} updates) is longer than this run's "
              f"{total_steps:,} updates: the learning rate stays below {peak * t.learning_rate:.2g} "
              f"(train.learning_rate={t.learning_rate:g}); shorten the warm-up for a short run", file=sys.stderr)


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
def _finished_summary(run_dir: Path, num_iterations: int) -> dict | None:
    """The stored summary of a run that trained all its iterations, else None."""
    records = read_records(run_dir / "metrics.jsonl")
    summary = run_dir / "summary.json"
    if summary.is_file() and records and records[-1]["iteration"] >= num_iterations:
        return json.loads(summary.read_text())
    return None


def _iteration(cfg: GymConfig | AtariConfig, trainer: Trainer, evaluate: Evaluate, log: MetricsLog,
               step_log: StepLog, bar: Any, run_dir: Path, iteration: int, steps: int, config_yaml: str,
               identity: dict, clock: dict[str, float]) -> None:
    """Train one iteration, evaluate if it is time, log it and checkpoint it. clock: the run's
    wall time so far ("elapsed_s") and the perf_counter reading it was taken at ("mark")."""
    n_iter, ckpt_dir = cfg.train.num_iterations, run_dir / "checkpoints"
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
    clock["elapsed_s"], clock["mark"] = clock["elapsed_s"] + now - clock["mark"], now
    record["time"] = iteration_times(record, updates=len(losses), sample_s=sample_time, episodes=cfg.eval.episodes,
                                     elapsed_s=clock["elapsed_s"])
    log.log(record)
    save_checkpoint(checkpoint_path(ckpt_dir, iteration), {"iteration": iteration, "trainer": trainer.state_dict(),
                                                           "config": config_yaml, "identity": identity})
    best = best_and_last(log.records())["best"]
    retain(ckpt_dir, cfg.run.keep_checkpoints, best["iteration"] if best else None)


def run_experiment(cfg: GymConfig | AtariConfig, trainer: Trainer, evaluate: Evaluate, *, run_dir: Path,
                   group: str, resume: bool = False, steps_per_iteration: int | None = None,
                   extra_summary: dict | None = None, identity: dict | None = None, data: str = "",
                   tags: list[str] | None = None) -> dict:
    """Train for cfg.train.num_iterations, evaluating and checkpointing after each; return the summary.

    `identity` (checkpoint.run_identity) makes the checkpoints self-contained and is what
    --resume compares besides the config; `data` is one line describing the training data,
    for the banner and run_info.json; `tags` go to wandb and the summary.

    With `resume`, a run that has finished is not trained again: its summary is returned as it was."""
    run_dir = Path(run_dir)
    _refuse_existing(run_dir, resume)
    config_yaml = to_yaml(cfg)
    identity = {**(identity or {}), "threads": thread_counts(), "code": code_version()}
    if resume and run_started(run_dir):  # a refusal touches nothing, not even the lock file
        check_resume(run_dir, config_yaml, identity, say=lambda text: None)
    created = not run_dir.exists()
    try:
        with run_lock(run_dir):  # one writer at a time; a second gets an error naming the first's PID
            return _run_locked(cfg, trainer, evaluate, run_dir=run_dir, group=group, resume=resume,
                               steps_per_iteration=steps_per_iteration, extra_summary=extra_summary,
                               config_yaml=config_yaml, identity=identity, data=data, tags=tags)
    except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM (errors.cli_main): one line, naming --resume
        saved = list_checkpoints(run_dir / "checkpoints")
        n_iter = cfg.train.num_iterations
        where = (f"its newest checkpoint is iteration {saved[-1][0]} of {n_iter}" if saved
                 else f"it stopped before its first checkpoint (iteration 1 of {n_iter})")
        raise interrupted_again(interrupt, f"{run_dir}: {where}; continue it with the same command and "
                                           f"--resume") from None
    finally:  # a run refused before it wrote anything leaves no folder behind
        if created and run_dir.is_dir() and [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:
            (run_dir / LOCK_FILE).unlink()
            run_dir.rmdir()


def _run_locked(cfg: GymConfig | AtariConfig, trainer: Trainer, evaluate: Evaluate, *, run_dir: Path,
                group: str, resume: bool, steps_per_iteration: int | None, extra_summary: dict | None,
                config_yaml: str, identity: dict, data: str, tags: list[str] | None) -> dict:
    ckpt_dir = run_dir / "checkpoints"
    _refuse_existing(run_dir, resume)  # again, now that no other process can start it meanwhile
    found = None
    if resume and run_started(run_dir):  # else nothing was trained: start over, with this config
        check_resume(run_dir, config_yaml, identity)  # reads only: a refusal leaves the run as it was
        finished = _finished_summary(run_dir, cfg.train.num_iterations)
        if finished is not None:
            print(f"{run_dir} finished earlier (iteration {cfg.train.num_iterations} of "
                  f"{cfg.train.num_iterations}); its scores, as in summary.json:")
            return finished
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
    warn_if_warmup_outlasts(cfg, n_iter * steps)
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
    clock = {"elapsed_s": previous[-1]["time"]["elapsed_s"] if previous else 0.0,
             "mark": time.perf_counter()}
    try:
        for iteration in range(start_iteration, n_iter + 1):
            _iteration(cfg, trainer, evaluate, log, step_log, bar, run_dir, iteration, steps, config_yaml, identity,
                       clock)
    finally:
        bar.close()

    compact_finished(ckpt_dir, cfg.run.keep_checkpoints)
    records = log.records()
    seconds = {"train": sum(r["train"]["time_s"] for r in records),
               "eval": sum(r.get("eval_time_s", 0.0) for r in records)}
    summary = {"run_dir": str(run_dir), "group": group, "protocol": protocol_label(cfg),
               "tags": tags or [], "steps": trainer.step, **best_and_last(records),
               "time_s": {**seconds, "wall": records[-1]["time"]["elapsed_s"] if records else None},
               "wandb_url": log.url, "compute": compute,
               "note": "'best' is the best evaluation seen during training (what the paper's release "
                       "reports); 'last' is the final evaluation.",
               **(extra_summary or {})}
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
    log.close(summary)
    return summary


