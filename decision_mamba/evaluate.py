"""Evaluate a trained checkpoint: the logged evaluation again, or another protocol.

    python -m decision_mamba.evaluate RUN_DIR_OR_CHECKPOINT [--which last|best] [--episodes N]
        [--targets R [R ...]] [--mode window|recurrent] [--seed S] [--device D] [--json OUT]
        [--video DIR [--video-episodes N]]

A checkpoint is self-contained (decision_mamba/checkpoint.py): the config, the state
normalisation and the environment come from the file, not from the data. Given a run
directory it takes the newest checkpoint (`--which last`) or the best evaluation's
(`--which best`, the run's own selection rule, as in summary.json). With the run's
settings and the default seed (seed * 1000 + iteration, as during training) and the
run's thread counts, it reproduces the evaluation logged in metrics.jsonl number for
number: training and this command call the same functions below. Works for gym and
Atari runs alike. Prints one line per target and writes JSON with --json. --video films
the first N episodes of each target of this same evaluation (decision_mamba/video.py):
the scores are those without --video.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from decision_mamba.compute import keep_freed_memory
from decision_mamba.atomic import check_writable, write_text_atomic
from decision_mamba.checkpoint import CheckpointError, checkpoint_path, list_checkpoints, load_checkpoint
from decision_mamba.config import AtariConfig, ConfigError, GymConfig, validate
from decision_mamba.errors import UserError, cli_main
from decision_mamba.evaluation import evaluate_batched, summarize
from decision_mamba.mixers import paper_name
from decision_mamba.model import DecisionModel
from decision_mamba.suites import suite_of
from decision_mamba.trainer import resolve_device
from decision_mamba.video import iteration_video_dir, record_episodes, recorded_indices

SCHEMAS = {"gym": GymConfig, "atari": AtariConfig}


# --------------------------------------------- shared with the training entry points
def evaluation_seed(seed: int, iteration: int) -> int:
    """The seed of the evaluation after `iteration`: fixed per (seed, iteration), so a resumed
    run and this command replay exactly the episodes the uninterrupted run played."""
    return seed * 1000 + iteration


def evaluate_policy(cfg: GymConfig | AtariConfig, model: DecisionModel, envs: gym.vector.VectorEnv, seed: int,
                    state_mean: np.ndarray | None = None, state_std: np.ndarray | None = None,
                    progress: bool = False, env: dict | None = None, video_dir: Path | None = None,
                    videos: list[Path] | None = None) -> dict[str, dict[str, float]]:
    """One evaluation (every target x cfg.eval.episodes, batched) -> summarize()'s per-target dict.

    env: the suite's description of the environment (suites.SuiteData.env), for its score.
    video_dir: write there an MP4 of each episode played by a filmed sub-environment of
    `envs` (video.recorded_indices), named target<R>_episode<k>.mp4, and append their paths to `videos`."""
    targets = np.repeat(np.asarray(cfg.eval.targets, dtype=np.float64), cfg.eval.episodes)

    def video_name(i: int) -> str:  # sub-environment i plays episode i % episodes of targets[i]
        return f"target{targets[i]:g}_episode{i % cfg.eval.episodes}"

    with record_episodes(envs, video_dir, video_name) as written:
        stats = evaluate_batched(model, envs, targets, context_len=cfg.train.context_len,
                                 rtg_scale=cfg.train.rtg_scale, max_ep_len=cfg.eval.max_ep_len, seed=seed,
                                 mode=cfg.eval.mode, state_mean=state_mean, state_std=state_std,
                                 sample_actions=cfg.eval.sample_actions,  # ignored when continuous
                                 short_prefix=cfg.eval.atari_short_prefix, overlap=cfg.eval.overlap,
                                 progress=progress)
    if videos is not None:
        videos.extend(written)
    return summarize(stats, suite_of(cfg).score(cfg, env or {}))


def evaluate_after(cfg: GymConfig | AtariConfig, model: DecisionModel, envs: gym.vector.VectorEnv, env: dict,
                   state_mean: np.ndarray | None = None, state_std: np.ndarray | None = None,
                   run_dir: Path | None = None):
    """The entry points' evaluate(iteration): evaluate_policy with the evaluation seed of that
    iteration, filming cfg.eval.video_episodes per target into run_dir/videos/iter_NNN."""
    def evaluate(iteration: int) -> dict:  # the same call as `python -m decision_mamba.evaluate`
        video_dir = iteration_video_dir(run_dir, iteration) if cfg.eval.video_episodes and run_dir else None
        return evaluate_policy(cfg, model, envs, evaluation_seed(cfg.seed, iteration), state_mean, state_std,
                               progress=cfg.run.progress, env=env, video_dir=video_dir)

    return evaluate


def evaluation_envs(cfg: GymConfig | AtariConfig, env: dict, obs_dim: int | None = None,
                    act_dim: int | None = None) -> gym.vector.VectorEnv:
    """The vector environment evaluate_policy steps: one sub-environment per (target, episode),
    the first cfg.eval.video_episodes of each target filmed. env: the suite's description
    (suites.SuiteData.env); obs_dim / act_dim: the data's sizes, checked against the env's."""
    record = recorded_indices(len(cfg.eval.targets), cfg.eval.episodes, cfg.eval.video_episodes)
    return suite_of(cfg).make_envs(cfg, env, max(1, cfg.eval.episodes * len(cfg.eval.targets)),
                                   obs_dim=obs_dim, act_dim=act_dim, record=record)


# -------------------------------------------------------------------- the command
def resolve_checkpoint(target: Path, which: str) -> Path:
    """A checkpoint file as given, or the run directory's newest / best one."""
    if target.is_file():
        return target
    ckpt_dir = target / "checkpoints"
    if not target.is_dir() or not ckpt_dir.is_dir():
        raise CheckpointError(f"{target} is neither a checkpoint file nor a run directory with checkpoints/")
    if which == "last":
        checkpoints = list_checkpoints(ckpt_dir)
        if not checkpoints:
            raise CheckpointError(f"no checkpoint in {ckpt_dir}")
        return checkpoints[-1][1]
    from decision_mamba.run import best_and_last, read_records  # the run's own selection rule

    best = best_and_last(read_records(target / "metrics.jsonl"))["best"]
    if best is None:
        raise CheckpointError(f"{target / 'metrics.jsonl'} has no evaluation yet, so there is no best checkpoint")
    path = checkpoint_path(ckpt_dir, best["iteration"])
    if not path.is_file():
        raise CheckpointError(f"the best evaluation was iteration {best['iteration']} but {path} is gone "
                              f"(run.keep_checkpoints removed it?); use --which last or give a file")
    return path


def config_from_checkpoint(state: dict, path: Path, overrides: list[str]) -> GymConfig | AtariConfig:
    identity = state.get("identity") or {}
    schema = SCHEMAS.get(identity.get("experiment"))
    if schema is None or "config" not in state:
        raise CheckpointError(f"{path} is not self-contained (no config or identity: written by an older "
                              f"version, or by run_experiment without an identity); it cannot be evaluated alone")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(state["config"]),
                                 OmegaConf.from_dotlist(overrides))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid evaluation settings for {path}: {err}") from None
    validate(cfg)
    return cfg


def _set_threads(threads: dict[str, int] | None) -> None:
    """The run's thread counts: reductions, hence the last bits, depend on them."""
    if not threads:
        return
    torch.set_num_threads(int(threads["torch"]))
    import numba

    if int(threads["numba"]) <= numba.config.NUMBA_NUM_THREADS:
        numba.set_num_threads(int(threads["numba"]))
    else:
        print(f"warning: the run used {threads['numba']} numba threads, this process has at most "
              f"{numba.config.NUMBA_NUM_THREADS} (NUMBA_NUM_THREADS); the last bits may differ", file=sys.stderr)


def make_envs(cfg: GymConfig | AtariConfig, identity: dict) -> gym.vector.VectorEnv:
    """The evaluation's environments, as training made them, from a checkpoint's identity."""
    return evaluation_envs(cfg, environment(identity), obs_dim=identity["obs_shape"][0], act_dim=identity["act_dim"])


def environment(identity: dict) -> dict:
    """The suite's environment description stored in a checkpoint (older D4RL ones: the env id only)."""
    return identity.get("env") or {"env_id": identity["env_id"]}


def evaluate_checkpoint(path: Path, *, episodes: int | None = None, targets: Sequence[float] | None = None,
                        mode: str | None = None, seed: int | None = None, device: str | None = None,
                        video: Path | None = None, video_episodes: int | None = None) -> dict:
    """Rebuild the policy of checkpoint `path` and evaluate it; returns the JSON report.

    video: a folder for MP4s of the first `video_episodes` episodes of each target (default:
    the run's eval.video_episodes, at least 1)."""
    state = load_checkpoint(path)
    overrides = [f"eval.episodes={episodes}"] if episodes is not None else []
    if targets is not None:
        overrides.append(f"eval.targets=[{','.join(repr(float(t)) for t in targets)}]")
    if mode is not None:
        overrides.append(f"eval.mode={mode}")
    if video is None:  # training may have filmed; this command films only with --video
        overrides.append("eval.video_episodes=0")
    elif video_episodes is not None:
        overrides.append(f"eval.video_episodes={video_episodes}")
    cfg = config_from_checkpoint(state, path, overrides)
    if video is not None:
        cfg.eval.video_episodes = max(1, cfg.eval.video_episodes)
    identity = state["identity"]
    _set_threads(identity.get("threads"))
    torch_device = resolve_device(device or cfg.train.device)
    model = DecisionModel(cfg.model, tuple(identity["obs_shape"]), identity["act_dim"], identity["discrete"],
                          context_len=cfg.train.context_len)
    if isinstance(cfg, GymConfig):  # as gym/experiment.py builds it
        model.zero_padded_tokens = cfg.train.padding == "masked"
    model.load_state_dict(state["trainer"]["model"])
    model.to(torch_device)
    normalization = {}
    if identity.get("state_mean") is not None:
        normalization = {"state_mean": np.asarray(identity["state_mean"], dtype=np.float32),
                         "state_std": np.asarray(identity["state_std"], dtype=np.float32)}
    seed = evaluation_seed(cfg.seed, state["iteration"]) if seed is None else seed
    envs = make_envs(cfg, identity)
    videos: list[Path] = []
    try:
        results = evaluate_policy(cfg, model, envs, seed, **normalization, progress=cfg.run.progress,
                                  env=environment(identity), video_dir=video, videos=videos)
    finally:
        envs.close()
    return {"checkpoint": str(path), "iteration": int(state["iteration"]), "step": int(state["trainer"]["step"]),
            "model": paper_name(cfg.model.mixer), "env_id": identity.get("env_id"),
            "seed": seed, "mode": cfg.eval.mode, "episodes_per_target": cfg.eval.episodes,
            "targets": results, "code": identity.get("code"), "threads": identity.get("threads"),
            "videos": [str(p) for p in videos]}


def format_report(report: dict) -> str:
    lines = [f"{report['model']} from {report['checkpoint']} (iteration {report['iteration']}, step {report['step']}) "
             f"on {report['env_id'] or 'Atari'}: {report['episodes_per_target']} episodes per target, "
             f"mode {report['mode']}, seed {report['seed']}",
             f"{'target':>10} {'return':>20} {'normalized score':>20} {'length':>8}"]
    for target, s in report["targets"].items():
        lines.append(f"{target:>10} {s['return_mean']:>11.1f} ± {s['return_std']:<6.1f} "
                     f"{s['score_mean']:>11.1f} ± {s['score_std']:<6.1f} {s['length_mean']:>8.0f}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m decision_mamba.evaluate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path, help="a run directory or a checkpoint file (iter_NNN.pt)")
    parser.add_argument("--which", choices=("last", "best"), default="last",
                        help="for a run directory: the newest checkpoint (default) or the best evaluation's")
    parser.add_argument("--episodes", type=int, help="episodes per target (default: the run's eval.episodes)")
    parser.add_argument("--targets", type=float, nargs="+", help="target returns (default: the run's eval.targets)")
    parser.add_argument("--mode", choices=("window", "recurrent"), help="default: the run's eval.mode")
    parser.add_argument("--seed", type=int, help="default: seed * 1000 + iteration, the seed training used")
    parser.add_argument("--device", help="default: the run's train.device")
    parser.add_argument("--json", type=Path, help="write the report here as JSON")
    parser.add_argument("--video", type=Path, metavar="DIR",
                        help="write MP4s of the evaluation's first episodes here (MuJoCo needs EGL or OSMesa)")
    parser.add_argument("--video-episodes", type=int, metavar="N",
                        help="with --video: episodes filmed per target (default: the run's eval.video_episodes, or 1)")
    return parser.parse_args(argv)


def check_outputs(json_path: Path | None, video_dir: Path | None) -> None:
    """Refuse, before evaluating, a --json that cannot be written and a --video folder that
    already holds videos (this evaluation's files would replace them: same names)."""
    if json_path is not None:
        if json_path.is_dir():
            raise UserError(f"--json {json_path} is a folder; give a file name, e.g. {json_path / 'eval.json'}")
        check_writable(json_path.parent, "folder of --json")
    if video_dir is not None:
        earlier = sorted(video_dir.glob("*.mp4")) if video_dir.is_dir() else []
        if earlier:
            raise UserError(f"--video {video_dir} already holds {len(earlier)} video(s) (e.g. {earlier[0].name}), "
                            f"which this evaluation would replace; choose another folder or delete them")
        check_writable(video_dir, "--video folder")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    check_outputs(args.json, args.video)  # before the evaluation, which may take hours
    keep_freed_memory()  # no page faults on every step's fresh tensors (compute.py)
    path = resolve_checkpoint(args.target, args.which)
    report = evaluate_checkpoint(path, episodes=args.episodes, targets=args.targets, mode=args.mode,
                                 seed=args.seed, device=args.device, video=args.video,
                                 video_episodes=args.video_episodes)
    print(format_report(report))
    for path in report["videos"]:
        print(f"video: {path}")
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    sys.exit(cli_main(main, sys.argv[1:]))
