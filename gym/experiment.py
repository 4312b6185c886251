"""Decision Mamba (and DT, DC, DS4) on D4RL MuJoCo (Tables 1 and 3 of the paper) and Minari.

    python gym/experiment.py --config configs/gym/hopper-medium.yaml [key=value ...] [--resume]
    python gym/experiment.py --config configs/minari/antmaze-umaze.yaml

Serves every continuous-control suite (decision_mamba/suites/: d4rl, minari): the suite
loads the data, makes the environment and scores the returns. Mirrors the Decision
Transformer codebase's gym/experiment.py: load the data,
normalise states, sample K-step windows, train for `num_iterations` x
`steps_per_iteration` updates and evaluate after each iteration in the real MuJoCo
environment, all episodes batched. Everything but the data, the environment and the
config is shared with atari/train_atari.py.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # before numba is imported: it fails on NUMBA_NUM_THREADS=0 with a traceback
    from decision_mamba.errors import exit_on_bad_thread_variables

    exit_on_bad_thread_variables()

    from decision_mamba.cpu import configure_process

    configure_process()  # the process settings, before torch loads (decision_mamba/cpu)

import numpy as np
import torch

from decision_mamba.checkpoint import run_identity
from decision_mamba.config import GymConfig, load_config
from decision_mamba.data.sampler import sample_batch, state_normalization
from decision_mamba.data.trajectories import Trajectories
from decision_mamba.errors import cli_main
from decision_mamba.evaluation import evaluate_after, evaluate_random_policy, evaluation_envs, resolve_targets
from decision_mamba.model import DecisionModel
from decision_mamba.naming import dataset_name, paper_name, run_group, run_name, run_tags
from decision_mamba.run import parse_args, preflight, run_directory, run_experiment, seed_everything
from decision_mamba.suites import suite_of
from decision_mamba.trainer import Trainer, resolve_device
from decision_mamba.video import check_rendering


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv, schema=GymConfig)
    cfg = load_config(GymConfig, args.config, args.overrides)
    run_dir = run_directory(cfg, run_name(cfg, ablation(cfg)))
    preflight(cfg, run_dir, args.resume)  # device, folders, renderer: before the data is read
    seed_everything(cfg.seed, cfg.train.num_threads)
    device = resolve_device(cfg.train.device)

    suite = suite_of(cfg)  # D4RL MuJoCo or Minari (decision_mamba/suites/)
    data = suite.load(cfg)
    traj, metadata = data.trajectories, data.metadata
    resolve_targets(cfg, suite, traj)
    obs_dim, act_dim = traj.observations.shape[1], traj.actions.shape[1]
    envs = evaluation_envs(cfg, data.env, obs_dim=obs_dim, act_dim=act_dim)
    check_rendering(envs)  # eval.video_episodes: a missing EGL shows now, not after the first iteration
    state_mean, state_std = state_normalization(traj)
    score = suite.score(cfg, data.env)

    trainer = build_trainer(cfg, traj, state_mean, state_std, device)
    evaluate = evaluate_after(cfg, trainer.model, envs, data.env, state_mean, state_std, run_dir=run_dir)

    def scored(returns: np.ndarray) -> dict:
        return {"return_mean": float(np.mean(returns)), "score_mean": float(np.mean(score(returns)))}

    reference = {
        "dataset": {"episodes": int(traj.num_episodes), "transitions": int(traj.num_transitions),
                    **scored(traj.episode_returns)},
        "behaviour_policy": {k: metadata[k] for k in ("behaviour_return_mean", "behaviour_normalized_score") if k in metadata},
        "random_policy": scored(evaluate_random_policy(envs, max_ep_len=cfg.eval.max_ep_len, seed=cfg.seed).returns),
    }
    summary = run_experiment(cfg, trainer, evaluate, run_dir=run_dir,
                             group=run_group(cfg, variant=ablation(cfg)), resume=args.resume, tags=run_tags(cfg),
                             extra_summary={"reference": reference, "dataset_name": dataset_name(cfg)},
                             identity=run_identity("gym", traj, env_id=data.env["env_id"], obs_shape=(obs_dim,),
                                                   act_dim=act_dim, discrete=False, state_mean=state_mean,
                                                   state_std=state_std, env=data.env),
                             data=f"{data.description}: {traj.num_episodes} episodes, {traj.num_transitions:,} transitions")
    envs.close()
    print(report(summary, paper_name(cfg.model.mixer)))
    return summary


def build_trainer(cfg: GymConfig, traj: Trajectories, state_mean: np.ndarray, state_std: np.ndarray,
                  device: torch.device) -> Trainer:
    """The model and its update step, drawing windows of `traj` as the config says (also what
    benchmarks/bench_context.py times, so that it measures this run's step)."""
    obs_dim, act_dim = traj.observations.shape[1], traj.actions.shape[1]
    model = DecisionModel(cfg.model, (obs_dim,), act_dim, discrete=False).to(device)
    model.zero_padded_tokens = cfg.train.padding == "masked"  # release: pads reach the model unmasked
    K, rtg_scale = cfg.train.context_len, cfg.train.rtg_scale

    def draw_batch(rng: np.random.Generator) -> dict[str, np.ndarray]:
        return sample_batch(traj, cfg.train.batch_size, K, rng, state_mean=state_mean, state_std=state_std,
                            rtg_scale=rtg_scale, max_ep_len=cfg.model.max_ep_len,
                            mode="episode" if cfg.train.window_start == "episode" else "dt-gym",
                            padding=cfg.train.padding)

    return Trainer(model, cfg.train, draw_batch, np.random.default_rng(cfg.seed), device)


def ablation(cfg: GymConfig) -> str:
    """The variant in a hand run's name: Table 3's ablation without the channel-mixing MLP
    ("RC"), with its depth, so that it never takes the default model's run directory (the
    sweep names its own runs: rc, rc-2l)."""
    return "" if cfg.model.channel_mlp else f"rc-{cfg.model.n_layer}l"


def report(summary: dict, model_name: str) -> str:
    """The closing lines: the model's normalized score beside the data's references."""
    lines = [f"run directory: {summary['run_dir']}",
             f"time: {summary['time_s']['train']:.0f} s training ({summary['steps']} steps), "
             f"{summary['time_s']['eval']:.0f} s evaluating"]
    for which in ("last", "best"):
        s = summary[which]
        if s is not None:
            lines.append(f"{model_name}, {which} evaluation (iteration {s['iteration']}): "
                         f"normalized score {s['score']:.1f} (target return {s['target']})")
    ref = summary.get("reference", {})
    behaviour = ref.get("behaviour_policy", {})
    if "behaviour_normalized_score" in behaviour:
        lines.append(f"behaviour policy (from the dataset's metadata): normalized score "
                     f"{behaviour['behaviour_normalized_score']:.1f} (return {behaviour['behaviour_return_mean']:.1f})")
    if "dataset" in ref:
        lines.append(f"dataset episodes: mean normalized score {ref['dataset']['score_mean']:.1f}")
    if "random_policy" in ref:
        lines.append(f"uniform random policy, measured: normalized score {ref['random_policy']['score_mean']:.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(cli_main(main, sys.argv[1:]))
