"""Score normalisation for D4RL (gym) and Atari.

D4RL normalized score (REFERENCE §4):   100 * (return - random) / (expert - random)
Atari gamer-normalized score (Table 7): 100 * (return - random) / (gamer - random)

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
