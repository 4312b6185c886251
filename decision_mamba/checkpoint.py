"""Checkpoints: save, load and verify them, what a run is (its identity), retention, resume checks.

A checkpoint (`checkpoints/iter_NNN.pt`) is self-contained: besides the trainer's full
state it holds the resolved config, the run's identity (data fingerprint, environment id
and package versions, model input/output spaces, the state normalisation, thread counts,
code version) and a SHA-256 digest of its contents, so that `python -m decision_mamba.evaluate`
can rebuild and score the policy from the file alone, and a damaged file is caught even
where torch's loader would read it.

Written atomically (decision_mamba/atomic.py). Loaded with `weights_only=True` only: a
checkpoint is data, never code. On `--resume` the run's config.yaml and identity.json are
compared with the present config and data before anything is written; a damaged newest
checkpoint falls back to the newest intact one.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from decision_mamba.atomic import atomic_path
from decision_mamba.config import flatten, parse_keep
from decision_mamba.errors import UserError
from decision_mamba.provenance import git_state, package_versions

FORMAT = 2  # 1: {"iteration", "trainer"} only (before self-contained checkpoints)
CHECKPOINT_RE = re.compile(r"^iter_(\d+)\.pt$")
IDENTITY_FILE = "identity.json"
# Keys that may differ on --resume: where the run lives and how it is displayed or
# logged; none changes a number.
RESUME_MAY_DIFFER = ("run.out_dir", "run.name", "run.progress", "run.wandb", "eval.video_episodes",
                     "run.resume_allow_changes")
# Identity entries a resumed run must share: other data or another thread count give
# other numbers. Package and code versions are recorded, not compared.
RESUME_COMPARED = ("data_fingerprint", "env_id", "threads")
# What run.resume_allow_changes may not name: the data. A run trained partly on one
# dataset and partly on another describes neither; no user knows better here (start a
# new run). Another thread count changes only the last bits, so it may be allowed.
RESUME_NEVER_ALLOWED = ("data_fingerprint", "env_id")

Say = Callable[[str], None]


class CheckpointError(UserError):
    """A checkpoint that cannot be read, or a run that does not fit the one being resumed."""


# ------------------------------------------------------------------- identity
def data_fingerprint(traj: Any) -> str:
    """SHA-256 over the dataset's arrays (observations in full when they are an array;
    for a lazy frame store, as for Atari, the first frame of each episode)."""
    h = hashlib.sha256()
    observations = traj.observations
    if not isinstance(observations, np.ndarray):
        observations = np.asarray(observations[traj.starts])
    for array in (observations, traj.actions, traj.rewards, traj.starts, traj.lengths):
        array = np.ascontiguousarray(array)
        h.update(f"{array.dtype.str}{array.shape}".encode())
        h.update(array.view(np.uint8).reshape(-1))
    return h.hexdigest()


def thread_counts() -> dict[str, int]:
    """torch's and numba's CPU thread counts: the numbers are bit-reproducible only at fixed ones."""
    import numba

    return {"torch": torch.get_num_threads(), "numba": int(numba.get_num_threads())}


def code_version() -> dict[str, Any]:
    """The package version and, in a git checkout, the commit and whether the tree was modified."""
    git = git_state()
    return {"package": package_versions("decision-mamba")["decision-mamba"], "git_commit": git["commit"],
            "git_dirty": git["dirty"]}


def run_identity(experiment: str, traj: Any, *, env_id: str, obs_shape: tuple[int, ...], act_dim: int,
                 discrete: bool, state_mean: np.ndarray | None = None,
                 state_std: np.ndarray | None = None, env: dict | None = None) -> dict:
    """What, besides the config, a checkpoint needs to be evaluated alone and a resume must match.

    env: the suite's description of its evaluation environment (suites.SuiteData.env), kept
    when it says more than the id (a Minari dataset's env spec and reference scores).
    Plain JSON-able values except the normalisation (float32 arrays, stored as tensors)."""
    env_packages = ("gymnasium", "mujoco") if experiment == "gym" else ("gymnasium", "ale-py")
    if env and "env_spec" in env:  # a Minari dataset's environment: its maze / kitchen / Adroit code too
        env_packages += ("minari", "gymnasium-robotics")
    identity = {
        "experiment": experiment,  # gym | atari
        "data_fingerprint": data_fingerprint(traj),
        "env_id": env_id,
        "env_packages": package_versions(*env_packages),
        "obs_shape": [int(n) for n in obs_shape],
        "act_dim": int(act_dim),
        "discrete": bool(discrete),
        "state_mean": None if state_mean is None else [float(x) for x in np.asarray(state_mean, np.float32)],
        "state_std": None if state_std is None else [float(x) for x in np.asarray(state_std, np.float32)],
    }
    if env and env != {"env_id": env_id}:
        identity["env"] = env
    return identity


# ------------------------------------------------------------ save, load, verify
def checkpoint_path(ckpt_dir: Path, iteration: int) -> Path:
    return Path(ckpt_dir) / f"iter_{iteration:03d}.pt"


def list_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(iteration, path) of every checkpoint file, oldest first (by number: iter_1000 after iter_999)."""
    found = []
    if Path(ckpt_dir).is_dir():
        for path in Path(ckpt_dir).iterdir():
            match = CHECKPOINT_RE.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
    return sorted(found)


def _digest(obj: Any, h: Any = None) -> str:
    """SHA-256 over a nested state (dicts by sorted key, lists in order, tensors by bytes)."""
    top = h is None
    h = h or hashlib.sha256()
    if isinstance(obj, dict):
        h.update(b"{")
        for key in sorted(obj, key=repr):
            h.update(repr(key).encode())
            _digest(obj[key], h)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for item in obj:
            _digest(item, h)
        h.update(b"]")
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    else:
        h.update(repr(obj).encode())
    return h.hexdigest() if top else ""


def save_checkpoint(path: Path, state: dict) -> None:
    """Write `state` plus its digest atomically; a full disk leaves the previous checkpoints as they were."""
    state = {**state, "format": FORMAT}
    state["digest"] = _digest(state)
    # Serialized in memory, then written by Python: a full disk is an OSError with its errno
    # (torch's own writer reports it as a RuntimeError without one).
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        with atomic_path(path, nameless=True) as tmp, open(tmp, "wb") as f:  # a kill while saving leaves no .tmp file
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise CheckpointError(f"no space left on the device while writing {path}; nothing was half-written "
                                  f"and the earlier checkpoints are intact: free space, then --resume") from None
        raise


def load_checkpoint(path: Path) -> dict:
    """Load and verify a checkpoint; a damaged one raises CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the file is damaged")
    try:
        # weights_only: a checkpoint is data, never code. torch's own message for a file it
        # refuses suggests weights_only=False, which must never be followed: it is not repeated.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror}") from None
    except Exception as err:  # zipfile, unpickling, EOF, OSError, RuntimeError: all mean "not a checkpoint"
        raise CheckpointError(f"checkpoint {path} is damaged or not a checkpoint of this project "
                              f"({type(err).__name__} while reading it)") from None
    if not isinstance(state, dict) or not {"iteration", "trainer"} <= set(state):
        raise CheckpointError(f"checkpoint {path} is not a checkpoint of this project (no iteration/trainer state)")
    if "digest" in state:
        stored = state.pop("digest")
        if _digest(state) != stored:
            raise CheckpointError(f"checkpoint {path} is damaged: its contents do not match the digest stored in it")
    return state


def newest_intact(ckpt_dir: Path, say: Say = print) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads and verifies. Damaged newer ones are renamed to
    *.damaged (kept for inspection, out of the way of the next resume), saying so."""
    for _, path in reversed(list_checkpoints(ckpt_dir)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as err:
            damaged = path.with_name(path.name + ".damaged")
            path.replace(damaged)
            say(f"warning: {err}; renamed it to {damaged.name} and falling back to the previous checkpoint")
    return None


# ------------------------------------------------------------------ retention
def retain(ckpt_dir: Path, policy: str, best_iteration: int | None) -> list[Path]:
    """Delete the checkpoints `policy` does not keep: it keeps the newest (resume needs it)
    and the best by the run's selection rule (what the paper reports). Returns what went."""
    keep = parse_keep(policy)
    if keep is None:
        return []
    checkpoints = list_checkpoints(ckpt_dir)
    kept = {i for i, _ in checkpoints[-keep:]} | ({best_iteration} if best_iteration is not None else set())
    removed = [path for i, path in checkpoints if i not in kept]
    for path in removed:
        path.unlink()
    return removed


def resumable(state: dict) -> bool:
    return "optimizer" in state["trainer"]


def compact_finished(ckpt_dir: Path, policy: str) -> None:
    """At the end of a run, rewrite the kept checkpoints without the optimizer and random
    states (a third of the size): evaluation needs only the weights, the config and the
    identity, and nothing is left to resume. run.keep_checkpoints=all keeps them whole."""
    if parse_keep(policy) is None:
        return
    for _, path in list_checkpoints(ckpt_dir):
        state = load_checkpoint(path)
        if resumable(state):
            trainer = state["trainer"]
            state["trainer"] = {"model": trainer["model"], "step": trainer["step"], "tokens": trainer["tokens"]}
            save_checkpoint(path, state)


# ---------------------------------------------------------------- resume checks
def remove_leftovers(run_dir: Path, say: Say = print) -> list[Path]:
    """Delete the temporary files a kill during an atomic write leaves (only our own pattern:
    .iter_NNN.pt.XXXX.tmp in checkpoints/, .<our file>.XXXX.tmp in the run directory)."""
    run_dir = Path(run_dir)
    patterns = [("checkpoints", r"^\.iter_\d+\.pt\..+\.tmp$")]
    patterns += [(".", rf"^\.{re.escape(name)}\..+\.tmp$")
                 for name in ("config.yaml", "metrics.jsonl", "summary.json", IDENTITY_FILE, "wandb_id.txt")]
    removed = []
    for folder, pattern in patterns:
        where = run_dir / folder
        if where.is_dir():
            removed += [p for p in where.iterdir() if p.is_file() and re.match(pattern, p.name)]
    for path in removed:
        path.unlink()
    if removed:
        say(f"removed {len(removed)} temporary file(s) left by an interrupted write: "
            f"{', '.join(p.name for p in removed)}")
    return removed


def differences(old: dict, new: dict, ignore: Iterable[str] = ()) -> dict[str, str]:
    """{key: 'key: old -> new'} for every leaf that differs (absent on one side included)."""
    old_flat, new_flat = flatten(old), flatten(new)
    ignore = set(ignore)
    missing = "(absent)"
    return {key: f"{key}: {old_flat.get(key, missing)!r} -> {new_flat.get(key, missing)!r}"
            for key in sorted(set(old_flat) | set(new_flat))
            if key not in ignore and old_flat.get(key, missing) != new_flat.get(key, missing)}


def _covers(allowed: str, key: str) -> bool:
    return key == allowed or key.startswith(allowed + ".")


def check_resume(run_dir: Path, config_yaml: str, identity: dict, say: Say = print) -> None:
    """Refuse to resume `run_dir` with another config, other data or another thread count.

    Compares the resolved config with the run's config.yaml (every key but RESUME_MAY_DIFFER)
    and `identity` with its identity.json (RESUME_COMPARED); reads only. Differences in the
    keys the new config lists in run.resume_allow_changes (a config key or section, or
    `threads`) are accepted, saying so; the data's (RESUME_NEVER_ALLOWED) never are."""
    run_dir = Path(run_dir)
    new_config = OmegaConf.to_container(OmegaConf.create(config_yaml))
    allowed = list(new_config.get("run", {}).get("resume_allow_changes") or [])
    known = set(flatten(new_config)) | {f"threads.{name}" for name in thread_counts()}
    for key in allowed:
        if any(_covers(key, never) or _covers(never, key) for never in RESUME_NEVER_ALLOWED):
            raise CheckpointError(f"run.resume_allow_changes cannot allow {key!r}: a run trained partly on other "
                                  f"data describes neither dataset; start a new run (another run.name)")
        if not any(_covers(key, k) for k in known):
            raise CheckpointError(f"run.resume_allow_changes names {key!r}, which is no config key (nor 'threads'); "
                                  f"list the keys as in config.yaml, e.g. [train.num_iterations]")
    found: dict[str, str] = {}
    config_file = run_dir / "config.yaml"
    if config_file.exists():
        try:
            old = OmegaConf.to_container(OmegaConf.load(config_file))
        except Exception as err:
            raise CheckpointError(f"cannot read {config_file} ({type(err).__name__}); it is damaged") from None
        found |= differences(old, new_config, RESUME_MAY_DIFFER)
    identity_file = run_dir / IDENTITY_FILE
    if identity_file.exists():
        try:
            old_identity = json.loads(identity_file.read_text())
        except ValueError:
            raise CheckpointError(f"cannot read {identity_file}: it is not JSON; it is damaged") from None
        new = {k: identity.get(k) for k in RESUME_COMPARED}
        found |= differences({k: old_identity.get(k) for k in RESUME_COMPARED}, new)
    accepted = [text for key, text in found.items() if any(_covers(a, key) for a in allowed)]
    refused = {key: text for key, text in found.items() if not any(_covers(a, key) for a in allowed)}
    if refused:
        data = [key for key in refused if any(_covers(never, key) for never in RESUME_NEVER_ALLOWED)]
        others = sorted({"threads" if key.startswith("threads.") else key for key in refused} - set(data))
        message = (f"--resume of {run_dir} with a different setup ({'; '.join(refused.values())}); run it as it "
                   f"was started or start a new run (another run.name)")
        if others:
            message += (f"; to resume anyway, if you know the change is safe: "
                        f"run.resume_allow_changes=[{','.join(others)}]")
        if data:
            message += "; other data has no override"
        raise CheckpointError(message)
    if accepted:
        say(f"warning: resuming {run_dir} with changes that run.resume_allow_changes allows: {'; '.join(accepted)}")
