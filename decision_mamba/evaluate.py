"""Evaluate a trained checkpoint: the logged evaluation again, or another protocol.

    python -m decision_mamba.evaluate RUN_DIR_OR_CHECKPOINT [--which last|best] [--episodes N]
        [--targets R [R ...]] [--mode window|recurrent] [--seed S] [--device D] [--json OUT]
        [--video DIR [--video-episodes N]]

A checkpoint is self-contained (decision_mamba/checkpoint.py): the config, the state
normalisation and the environment come from the file, not from the data. Given a run
directory it takes the newest checkpoint (`--which last`) or the best evaluation's
(`--which best`, the run's own selection rule, as in summary.json). With the run's
settings, the default seed (seed * 1000 + iteration, as during training) and the run's
thread counts it reproduces the evaluation logged in metrics.jsonl number for number:
training and this command call the same functions (decision_mamba/evaluation.py). Works
for gym and Atari runs alike. Prints one line per target and writes JSON with --json.
--video films the first N episodes of each target of this same evaluation
(decision_mamba/video.py): the scores are those without --video.
"""

from __future__ import annotations

if __name__ == "__main__":  # the command's process settings, before torch loads (decision_mamba/cpu)
    from decision_mamba.cpu import configure_process

    configure_process()

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from decision_mamba.atomic import check_writable, write_text_atomic
from decision_mamba.checkpoint import CheckpointError, checkpoint_path, list_checkpoints
from decision_mamba.config import EVAL_MODES
from decision_mamba.errors import UserError, cli_main
from decision_mamba.evaluation import evaluate_checkpoint


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
    parser.add_argument("--mode", choices=EVAL_MODES, help="default: the run's eval.mode")
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
