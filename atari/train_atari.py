"""Decision Mamba (and DT, DC) on Atari from the DQN-replay data: Tables 2 and 4 of the paper.

    python atari/train_atari.py --config configs/atari/breakout.yaml [key=value ...] [--resume]

Mirrors the Decision Transformer codebase's atari/run_dt_atari.py: load 1% of the
DQN-replay transitions (docs/data.md), train with cross-entropy for `num_iterations`
epochs with the minGPT schedule, and evaluate with the DT protocol (sticky actions off,
4-frame stacks, actions sampled from the softmax), all episodes batched. Everything
but the data, the environment and the config is shared with gym/experiment.py.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # before numba is imported: it fails on NUMBA_NUM_THREADS=0 with a traceback
    from decision_mamba.errors import exit_on_bad_thread_variables

    exit_on_bad_thread_variables()

    from decision_mamba.cpu import configure_process

    configure_process()  # the process settings, before torch loads (decision_mamba/cpu)

import math
from collections.abc import Callable

import numpy as np

from decision_mamba.checkpoint import run_identity
from decision_mamba.config import AtariConfig, load_config
from decision_mamba.data.sampler import gather_windows, sample_batch, window_ends
from decision_mamba.envs import num_actions
from decision_mamba.errors import DataError, cli_main
from decision_mamba.evaluation import evaluate_after, evaluation_envs, resolve_targets
from decision_mamba.model import DecisionModel
from decision_mamba.naming import paper_name, run_group, run_name, run_tags
from decision_mamba.run import parse_args, preflight, run_directory, run_experiment, seed_everything
from decision_mamba.suites import suite_of
from decision_mamba.trainer import Trainer, resolve_device
from decision_mamba.video import check_rendering


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv, schema=AtariConfig)
    cfg = load_config(AtariConfig, args.config, args.overrides)
    run_dir = run_directory(cfg, run_name(cfg, f"k{cfg.train.context_len}"))
    preflight(cfg, run_dir, args.resume)  # device, folders: before the data is read
    seed_everything(cfg.seed, cfg.train.num_threads)
    device = resolve_device(cfg.train.device)

    n_actions = num_actions(cfg.game)  # an unknown game fails here, before the data is read
    suite = suite_of(cfg)  # decision_mamba/suites/atari.py
    data = suite.load(cfg)
    traj = data.trajectories
    resolve_targets(cfg, suite, traj)
    if int(traj.actions.max()) >= n_actions:
        raise DataError(f"the replay data of {cfg.game} has action {int(traj.actions.max())}, but the game's "
                         f"minimal action set has {n_actions} actions: is data_dir holding another game?")
    model = DecisionModel(cfg.model, (4, 84, 84), n_actions, discrete=True,
                          context_len=cfg.train.context_len).to(device)
    K = cfg.train.context_len
    draw_batch, steps_per_epoch, final_tokens = epoch_schedule(traj, cfg, lambda: trainer.step)
    trainer = Trainer(model, cfg.train, draw_batch, np.random.default_rng(cfg.seed), device,
                      final_tokens=final_tokens)

    envs = evaluation_envs(cfg, data.env)
    check_rendering(envs)  # eval.video_episodes: fails now, not after the first epoch
    evaluate = evaluate_after(cfg, model, envs, data.env, run_dir=run_dir)

    summary = run_experiment(cfg, trainer, evaluate, run_dir=run_dir,
                             group=run_group(cfg, variant=f"k{K}"), resume=args.resume, tags=run_tags(cfg),
                             steps_per_iteration=steps_per_epoch,
                             extra_summary={"dataset": {"episodes": int(traj.num_episodes),
                                                        "transitions": int(traj.num_transitions)}},
                             identity=run_identity("atari", traj, env_id=data.env["env_id"], obs_shape=(4, 84, 84),
                                                   act_dim=n_actions, discrete=True),
                             data=f"{data.description}: {traj.num_episodes} episodes, "
                                  f"{traj.num_transitions:,} transitions")
    envs.close()
    print(f"run directory: {summary['run_dir']}")
    for which in ("last", "best"):
        if summary[which] is not None:
            print(f"{paper_name(cfg.model.mixer)} on {cfg.game}, {which} evaluation "
                  f"(epoch {summary[which]['iteration']}): gamer-normalized score {summary[which]['score']:.1f} "
                  f"(target return {summary[which]['target']})")
    return summary


def epoch_schedule(traj, cfg: AtariConfig, step: Callable[[], int]):
    """(draw_batch, updates per epoch, final_tokens) of DT's Atari code.

    An iteration is an epoch over the dataset, and the cosine schedule ends at
    2 * len(dataset) * K * 3 tokens. With train.batch_order=shuffled_epoch the dataset is
    the release's, len(data) - 3K window starts; otherwise windows are drawn from all
    transitions. `step` is the trainer's update count (the shuffled order follows it).
    """
    K, B = cfg.train.context_len, cfg.train.batch_size
    if cfg.train.batch_order == "shuffled_epoch":
        draw_batch, steps_per_epoch = shuffled_epoch_sampler(traj, cfg, step)
        dataset_len = traj.num_transitions - 3 * K
    else:
        def draw_batch(rng: np.random.Generator) -> dict[str, np.ndarray]:
            return sample_batch(traj, B, K, rng, rtg_scale=cfg.train.rtg_scale, max_ep_len=cfg.model.max_ep_len,
                                mode="dt-atari")

        steps_per_epoch = math.ceil(traj.num_transitions / B)
        dataset_len = traj.num_transitions
    final_tokens = cfg.train.final_tokens or 2 * dataset_len * K * 3
    return draw_batch, cfg.train.steps_per_iteration or steps_per_epoch, final_tokens


def shuffled_epoch_sampler(traj, cfg: AtariConfig, step: Callable[[], int]):
    """train.batch_order=shuffled_epoch: the release's DataLoader(shuffle=True) order.

    Its dataset has len(data) - 3K start indices (block_size is 3K tokens, so the last 3K
    transitions never start a window); each epoch visits every start once in a fresh
    random order, in batches of B, the last one smaller. The order of epoch e is drawn
    from (seed, e) and the batch from the trainer's step, so a resumed run continues it.
    Returns (draw_batch, steps per epoch).
    """
    K, B = cfg.train.context_len, cfg.train.batch_size
    num_starts = traj.num_transitions - 3 * K
    if num_starts <= 0:
        raise ValueError(f"train.batch_order=shuffled_epoch needs more than 3K = {3 * K} transitions, "
                         f"the data has {traj.num_transitions}")
    steps_per_epoch = math.ceil(num_starts / B)
    cache: dict[int, np.ndarray] = {}

    def draw_batch(rng: np.random.Generator) -> dict[str, np.ndarray]:
        epoch, i = divmod(step(), steps_per_epoch)
        if epoch not in cache:
            cache.clear()
            cache[epoch] = np.random.default_rng([cfg.seed, epoch]).permutation(num_starts)
        first, end = window_ends(traj, cache[epoch][i * B:(i + 1) * B], K, mode="dt-atari")
        return gather_windows(traj, first, end, K, rtg_scale=cfg.train.rtg_scale, max_ep_len=cfg.model.max_ep_len)

    return draw_batch, steps_per_epoch


if __name__ == "__main__":
    sys.exit(cli_main(main, sys.argv[1:]))
