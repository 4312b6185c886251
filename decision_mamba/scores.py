"""Score normalisation for D4RL (gym), Minari's MuJoCo datasets and Atari.

D4RL normalized score (docs/data.md):   100 * (return - random) / (expert - random)
Atari gamer-normalized score (Table 7): 100 * (return - random) / (gamer - random)
Minari mujoco/*-v0 score:              100 * (return - random) / (expert - random) with this
    project's pinned -v5 references (MINARI_REFERENCE_RETURNS), since those datasets carry none;
    not comparable with D4RL's scores (other environments, other policies, other references)

    python -m decision_mamba.scores random Hopper-v5 --episodes 100     # measure a random policy
    python -m decision_mamba.scores dataset mujoco/hopper/expert-v0     # a dataset's mean return

The constants are the same for every dataset of an environment, so names are matched on
their environment / game part: "hopper", "hopper-medium-v2", "hopper_medium_replay-v2",
"Hopper-v4" all map to the hopper constants.
"""

from __future__ import annotations

import re

import numpy as np

# env -> (random policy return, expert return); D4RL's reference scores.
D4RL_REFERENCE_RETURNS: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
}

# Minari's mujoco/{hopper,halfcheetah,walker2d}/{simple,medium,expert}-v0 (recorded on the
# gymnasium -v5 environments) have no reference scores in their metadata. Ours, per -v5
# environment, each with its source:
#   random: the mean return of 100 episodes of uniformly random actions (episode seeds 0-99,
#           time limit 1000), measured with `python -m decision_mamba.scores random <env> --episodes 100`
#           (measured with gymnasium 1.4.0 and mujoco 4.0.1; the numbers are the command's output).
#   expert: the mean episode return of the dataset mujoco/<env>/expert-v0, as its dataset card
#           on Minari's site gives it (Hopper 4098.2 ± 247.7, Walker2d 6956.6 ± 16.0), or
#           `python -m decision_mamba.scores dataset mujoco/<env>/expert-v0` on the downloaded data.
#           None: not known here (the card was not reachable); the suite refuses the env, naming the command.
MINARI_REFERENCE_RETURNS: dict[str, tuple[float, float | None]] = {
    "Hopper-v5": (17.039865, 4098.2),
    "HalfCheetah-v5": (-267.709172, None),
    "Walker2d-v5": (1.928287, 6956.6),
}
MINARI_REFERENCE_DATASETS = ("mujoco/hopper/", "mujoco/halfcheetah/", "mujoco/walker2d/")

# game -> (random policy raw score, human gamer raw score); paper Table 7.
ATARI_REFERENCE_SCORES: dict[str, tuple[float, float]] = {
    "breakout": (1.7, 30.5),
    "qbert": (163.9, 13455.0),
    "pong": (-20.7, 14.6),
    "seaquest": (68.4, 42054.7),
}


def _env_key(name: str) -> str:
    # "HalfCheetah-v4" -> "halfcheetah", "hopper_medium-v2" -> "hopper",
    # "ALE/Breakout-v5" -> "breakout", "BreakoutNoFrameskip-v4" -> "breakout".
    if not isinstance(name, str) or not name:
        raise ValueError(f"expected an environment / dataset name, got {name!r}")
    base = name.strip().lower().rsplit("/", 1)[-1]
    base = re.split(r"[-_]", base, maxsplit=1)[0]
    return base.removesuffix("noframeskip")


def run_score(evaluation: dict) -> float:
    """The score of one evaluation, as summary.json, the tables and the curves give it: the best,
    over the return-to-go targets, of the mean normalized score of that target's episodes."""
    return max(float(t["score_mean"]) for t in evaluation.values())


def normalize(returns, low: float, high: float):
    """100 * (R - low) / (high - low) of one return (-> float) or an array of them (-> array)."""
    values = np.asarray(returns, dtype=np.float64)
    scores = 100.0 * (values - low) / (high - low)
    return float(scores) if scores.ndim == 0 else scores


def d4rl_normalized_score(env_name: str, returns):
    """D4RL normalized score of one return (-> float) or of an array of returns (-> array)."""
    key = _env_key(env_name)
    if key not in D4RL_REFERENCE_RETURNS:
        raise ValueError(
            f"no D4RL reference returns for {env_name!r}; "
            f"known environments: {', '.join(sorted(D4RL_REFERENCE_RETURNS))}"
        )
    return normalize(returns, *D4RL_REFERENCE_RETURNS[key])


def atari_normalized_score(game: str, returns):
    """Gamer-normalized score (paper Table 7) of one raw return or an array of them."""
    key = _env_key(game)
    if key not in ATARI_REFERENCE_SCORES:
        raise ValueError(
            f"no Atari reference scores for {game!r}; "
            f"known games: {', '.join(sorted(ATARI_REFERENCE_SCORES))}"
        )
    return normalize(returns, *ATARI_REFERENCE_SCORES[key])


def minari_reference_returns(dataset_id: str, env_id: str) -> tuple[float, float]:
    """The pinned (random, expert) returns of a Minari mujoco/*-v0 dataset evaluated on `env_id`."""
    from decision_mamba.errors import DataError

    if env_id not in MINARI_REFERENCE_RETURNS:
        raise DataError(f"Minari dataset {dataset_id} is evaluated on {env_id}, which has no pinned reference "
                        f"returns; known: {', '.join(MINARI_REFERENCE_RETURNS)}")
    low, high = MINARI_REFERENCE_RETURNS[env_id]
    if high is None:
        expert = dataset_id.rsplit("/", 1)[0] + "/expert-v0"
        raise DataError(f"no expert reference return is pinned for {env_id}; measure it with "
                        f"`python -m decision_mamba.scores dataset {expert}` (after downloading it) and pin the "
                        f"mean in MINARI_REFERENCE_RETURNS in decision_mamba/scores.py, with its source")
    return low, high


def random_policy_returns(env_id: str, episodes: int, max_episode_steps: int = 1000) -> np.ndarray:
    """Returns of `episodes` episodes of uniformly random actions; episode i is seeded with i
    (the reset and the action sampler), so the numbers repeat."""
    import gymnasium as gym

    env = gym.make(env_id, max_episode_steps=max_episode_steps)
    returns = np.zeros(episodes)
    for i in range(episodes):
        env.reset(seed=i)
        env.action_space.seed(i)
        done = False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            returns[i] += reward
            done = terminated or truncated
    env.close()
    return returns


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m decision_mamba.scores",
                                     description="Measure the reference returns pinned in decision_mamba/scores.py.")
    sub = parser.add_subparsers(dest="what", required=True)
    random_parser = sub.add_parser("random", help="a uniformly random policy's mean return on a gymnasium environment")
    random_parser.add_argument("env_id", help="e.g. Hopper-v5")
    random_parser.add_argument("--episodes", type=int, default=100)
    dataset_parser = sub.add_parser("dataset", help="the mean episode return of a (downloaded) Minari dataset")
    dataset_parser.add_argument("dataset_id", help="e.g. mujoco/halfcheetah/expert-v0")
    args = parser.parse_args(argv)
    if args.what == "random":
        returns = random_policy_returns(args.env_id, args.episodes)
        print(f"{args.env_id}: uniformly random actions, {args.episodes} episodes (seeds 0-{args.episodes - 1}): "
              f"mean return {returns.mean():.6f} ± {returns.std():.6f}")
    else:
        from decision_mamba.data.d4rl import load_minari

        trajectories, _ = load_minari(args.dataset_id)
        returns = np.asarray(trajectories.episode_returns)
        print(f"{args.dataset_id}: {len(returns)} episodes, mean return {returns.mean():.6f} ± {returns.std():.6f}")
    return 0


if __name__ == "__main__":
    import sys

    from decision_mamba.errors import cli_main

    sys.exit(cli_main(main))
