"""Offline T-Maze data in the D4RL hdf5 layout, recorded from a scripted policy.

    python tools/make_tmaze_data.py --length 10 [--episodes 2000] [--random-move 0.1] [--wrong-choice 0.3]
    -> data/tmaze-L10.hdf5 (--out to choose the file)

The behaviour policy is decision_mamba.envs_tmaze.ScriptedTMazePolicy: the oracle, with a
share of wrong choices at the junction and of random moves in the corridor, so that the data
holds both returns (1 and 0) and conditioning on return 1 is what selects the right choice.
Episode i is recorded from env.reset(seed=seed + i) (the cue is the env's draw), so every
episode replays in the environment. The root attributes say how the file was made
(env_id, corridor_length, the shares, seed) and its success rate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from decision_mamba.data.d4rl import write_d4rl_hdf5
from decision_mamba.envs_tmaze import TMaze, TMAZE_ID, ScriptedTMazePolicy


def record_tmaze(corridor_length: int, episodes: int, random_move_prob: float, wrong_choice_prob: float,
                 seed: int) -> dict[str, np.ndarray]:
    """The D4RL arrays of `episodes` episodes of the scripted policy (next_observations included)."""
    env = TMaze(corridor_length)
    policy = ScriptedTMazePolicy(random_move_prob, wrong_choice_prob, seed=seed)
    columns: dict[str, list] = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts",
                                                "next_observations")}
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        policy.reset(obs)
        done = False
        while not done:
            action = policy.act(obs)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            for key, value in zip(columns, (obs, action, reward, terminated, truncated, next_obs)):
                columns[key].append(value)
            obs, done = next_obs, terminated or truncated
    return {key: np.asarray(values) for key, values in columns.items()}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, required=True, help="corridor length L")
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--random-move", type=float, default=0.1, help="share of random moves in the corridor")
    parser.add_argument("--wrong-choice", type=float, default=0.3, help="share of episodes choosing against the cue")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="default: data/tmaze-L<length>.hdf5")
    args = parser.parse_args(argv)
    if args.length < 1 or args.episodes < 1:
        parser.error("--length and --episodes must be at least 1")
    for name in ("random_move", "wrong_choice"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            parser.error(f"--{name.replace('_', '-')} must be in [0, 1]")
    arrays = record_tmaze(args.length, args.episodes, args.random_move, args.wrong_choice, args.seed)
    success = float(arrays["rewards"].sum() / args.episodes)
    out = args.out or Path("data") / f"tmaze-L{args.length}.hdf5"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_d4rl_hdf5(out, **arrays, metadata={
        "env_id": TMAZE_ID, "corridor_length": args.length, "episodes": args.episodes,
        "random_move_prob": args.random_move, "wrong_choice_prob": args.wrong_choice, "seed": args.seed,
        "behaviour_success_rate": success, "generator": "tools/make_tmaze_data.py"})
    print(f"{out}: {args.episodes} episodes, {len(arrays['rewards'])} transitions, success rate {success:.3f}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
