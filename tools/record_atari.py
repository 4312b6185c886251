"""Record a small DQN-replay-format dataset from the real ALE emulator (no download needed).

    python tools/record_atari.py --game Breakout --out data/dqn_replay_recorded \
        [--buffers 2] [--transitions 3000] [--seed 0]

Frames are preprocessed as dopamine's collecting agent did (4-frame skip, max of the last
two frames, grayscale, 84x84, sticky actions 0.25, rewards clipped to [-1, 1]); actions come
from a uniform random policy, and episodes are cut after `max_steps` steps (dopamine too
marks an episode cut by its step limit as terminal). Each buffer holds whole episodes with
dopamine's 3 zero transitions before each one and is written by
dqn_replay_writer.write_replay_buffer as buffers 50 - buffers .. 49 of run 1, where
load_dqn_replay(num_buffers=buffers) looks for them. configs/atari/quickstart.yaml trains
on it (`make run-atari`). It is a smoke-test dataset: the returns of a random policy, not
of DQN, so its scores say nothing about the paper's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from decision_mamba.data.atari_replay import replay_dir
from decision_mamba.data.download_atari import NUM_BUFFERS
from dqn_replay_writer import add_episode_padding, write_replay_buffer  # beside this file, in tools/

Episode = tuple[np.ndarray, np.ndarray, np.ndarray]  # frames (T, 84, 84) uint8, actions (T,) int32, rewards (T,) float32


def make_collection_env(game: str):
    """The emulator as dopamine's DQN saw it while the replay data was collected."""
    import ale_py
    import gymnasium as gym
    from gymnasium.wrappers import AtariPreprocessing

    gym.register_envs(ale_py)
    env = gym.make(f"ALE/{game}-v5", frameskip=1, repeat_action_probability=0.25, obs_type="grayscale")
    return AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84, terminal_on_life_loss=False)


def record_random_episodes(game: str, num_episodes: int, seed: int, min_steps: int = 6,
                           max_steps: int = 30) -> list[Episode]:
    """Random-policy episodes of the real game, each cut after a random number of steps
    in [min_steps, max_steps] (or at game over)."""
    env = make_collection_env(game)
    rng = np.random.default_rng(seed)
    episodes = []
    obs, _ = env.reset(seed=seed)
    for _ in range(num_episodes):
        cap = int(rng.integers(min_steps, max_steps + 1))
        frames, actions, rewards = [], [], []
        for _ in range(cap):
            action = int(rng.integers(env.action_space.n))
            frames.append(obs)  # the frame seen before the action
            actions.append(action)
            obs, reward, terminated, truncated, _ = env.step(action)
            rewards.append(np.sign(reward))  # dopamine clips rewards to [-1, 1]
            if terminated or truncated:
                break
        episodes.append((np.stack(frames), np.array(actions, np.int32), np.array(rewards, np.float32)))
        obs, _ = env.reset()
    env.close()
    return episodes


def write_buffer(out: str | Path, game: str, index: int, episodes: list[Episode]) -> Path:
    """One buffer of whole episodes, in dopamine's row order (3 zero rows before each)."""
    lengths = [len(actions) for _, actions, _ in episodes]
    terminals = np.zeros(sum(lengths), np.uint8)
    terminals[np.cumsum(lengths) - 1] = 1
    rows = add_episode_padding(np.concatenate([f for f, _, _ in episodes]), np.concatenate([a for _, a, _ in episodes]),
                               np.concatenate([r for _, _, r in episodes]), terminals)
    return write_replay_buffer(out, game, index, *rows)


def record_dataset(game: str, out: str | Path, *, buffers: int = 2, transitions: int = 3000, seed: int = 0,
                   max_steps: int = 200) -> Path:
    """`buffers` buffers of at least `transitions` transitions each (whole episodes); returns
    the replay_logs directory."""
    if not 0 < buffers <= NUM_BUFFERS or transitions <= 0:
        raise ValueError(f"buffers must be in 1..{NUM_BUFFERS} and transitions positive, got {buffers}, {transitions}")
    for k, index in enumerate(range(NUM_BUFFERS - buffers, NUM_BUFFERS)):
        episodes: list[Episode] = []
        while sum(len(a) for _, a, _ in episodes) < transitions:
            # one episode per call, each seeded from (seed, buffer, episode): reproducible
            episodes += record_random_episodes(game, 1, seed=seed * 100_003 + k * 1009 + len(episodes),
                                               min_steps=max_steps // 2, max_steps=max_steps)
        write_buffer(out, game, index, episodes)
    return replay_dir(out, game)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/record_atari.py",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--game", default="Breakout", help="ALE game name as in ALE/<game>-v5")
    parser.add_argument("--out", default="data/dqn_replay_recorded", help="the config's data_dir")
    parser.add_argument("--buffers", type=int, default=2, help="buffers to write (the config's num_buffers)")
    parser.add_argument("--transitions", type=int, default=3000, help="transitions per buffer, at least")
    parser.add_argument("--max-steps", type=int, default=200, help="episodes are cut after 100..this many steps")
    parser.add_argument("--seed", type=int, default=0, help="seeds the policy and the emulator")
    args = parser.parse_args(argv)
    try:
        print(record_dataset(args.game, args.out, buffers=args.buffers, transitions=args.transitions,
                             seed=args.seed, max_steps=args.max_steps))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
