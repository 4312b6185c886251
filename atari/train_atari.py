"""Decision Mamba (and DT, DC) on Atari from the DQN-replay data: Tables 2 and 4 of the paper.

    python atari/train_atari.py --config configs/atari/breakout.yaml [key=value ...] [--resume]

Mirrors the Decision Transformer codebase's atari/run_dt_atari.py: load 1% of the
DQN-replay transitions (REFERENCE §5), train with cross-entropy for `num_iterations`
epochs with the minGPT schedule, and evaluate with the DT protocol (sticky actions off,
4-frame stacks, actions sampled from the softmax), all episodes batched. Everything
but the data, the environment and the config is shared with gym/experiment.py.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from decision_mamba.checkpoint import run_identity
from decision_mamba.config import AtariConfig, load_config
from decision_mamba.data.atari_replay import load_dqn_replay
from decision_mamba.data.sampler import sample_batch
from decision_mamba.envs import atari_env_id, make_atari_vector_env, num_actions
from decision_mamba.errors import DataError, cli_main
from decision_mamba.evaluate import evaluate_policy, evaluation_seed
from decision_mamba.model import MODEL_NAMES, DecisionModel
from decision_mamba.run import parse_args, run_directory, run_experiment, seed_everything
from decision_mamba.trainer import Trainer, resolve_device


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv, schema=AtariConfig)
    cfg = load_config(AtariConfig, args.config, args.overrides)
    seed_everything(cfg.seed, cfg.train.num_threads)
    device = resolve_device(cfg.train.device)

    n_actions = num_actions(cfg.game)  # an unknown game fails here, before the data is read
    traj = load_dqn_replay(cfg.data_dir, cfg.game, num_buffers=cfg.num_buffers, num_steps=cfg.num_steps,
                           trajectories_per_buffer=cfg.trajectories_per_buffer, seed=cfg.seed,
                           verify_checksums=cfg.verify_checksums)
    if int(traj.actions.max()) >= n_actions:
        raise DataError(f"the replay data of {cfg.game} has action {int(traj.actions.max())}, but the game's "
                         f"minimal action set has {n_actions} actions: is data_dir holding another game?")
    model = DecisionModel(cfg.model, (4, 84, 84), n_actions, discrete=True).to(device)
    K, B = cfg.train.context_len, cfg.train.batch_size

    def draw_batch(rng: np.random.Generator) -> dict[str, np.ndarray]:
        return sample_batch(traj, B, K, rng, rtg_scale=cfg.train.rtg_scale, max_ep_len=cfg.model.max_ep_len,
                            mode="dt-atari")

    # DT's Atari code: an iteration is an epoch over the transitions, and the cosine
    # schedule ends at 2 * len(dataset) * K * 3 tokens.
    steps_per_epoch = cfg.train.steps_per_iteration or math.ceil(traj.num_transitions / B)
    final_tokens = cfg.train.final_tokens or 2 * traj.num_transitions * K * 3
    trainer = Trainer(model, cfg.train, draw_batch, np.random.default_rng(cfg.seed), device,
                      final_tokens=final_tokens)

    envs = make_atari_vector_env(cfg.game, num_envs=max(1, cfg.eval.episodes * len(cfg.eval.targets)),
                                 seed=cfg.seed)

    def evaluate(iteration: int) -> dict:  # the same call as `python -m decision_mamba.evaluate`
        return evaluate_policy(cfg, model, envs, evaluation_seed(cfg.seed, iteration), progress=cfg.run.progress)

    name = f"{cfg.game.lower()}-{cfg.model.mixer}-k{K}-s{cfg.seed}"
    summary = run_experiment(cfg, trainer, evaluate, run_dir=run_directory(cfg, name),
                             group=f"{cfg.game.lower()}/{cfg.model.mixer}", resume=args.resume,
                             steps_per_iteration=steps_per_epoch,
                             extra_summary={"dataset": {"episodes": int(traj.num_episodes),
                                                        "transitions": int(traj.num_transitions)}},
                             identity=run_identity("atari", traj, env_id=atari_env_id(cfg.game), obs_shape=(4, 84, 84),
                                                   act_dim=n_actions, discrete=True),
                             data=f"DQN-replay {cfg.game} in {cfg.data_dir}: {traj.num_episodes} episodes, "
                                  f"{traj.num_transitions:,} transitions")
    envs.close()
    print(f"run directory: {summary['run_dir']}")
    for which in ("last", "best"):
        if summary[which] is not None:
            print(f"{MODEL_NAMES[cfg.model.mixer]} on {cfg.game}, {which} evaluation "
                  f"(epoch {summary[which]['iteration']}): gamer-normalized score {summary[which]['score']:.1f}")
    return summary


if __name__ == "__main__":
    sys.exit(cli_main(main, sys.argv[1:]))
