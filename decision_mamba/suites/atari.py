"""The Atari suite (DQN-replay data, ALE v5 with DT's evaluation protocol): Tables 2 and 4.

data     1% of the DQN-replay transitions of `game` (data/atari_replay.py)
env      ALE/{Game}-v5 with the DT protocol (envs.py: sticky actions off, 4-frame stacks,
         0..29 no-ops)
score    gamer-normalised, 100 * (R - random) / (gamer - random) (paper Table 7, scores.py)
targets  when eval.targets is []: DT's per game (Breakout 90, Qbert 14000, Pong 20,
         Seaquest 1150), docs/protocol.md
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from decision_mamba.data.atari_replay import load_dqn_replay
from decision_mamba.envs import atari_env_id, make_atari_vector_env
from decision_mamba.errors import UserError
from decision_mamba.scores import atari_normalized_score
from decision_mamba.suites import Suite, SuiteData

DT_TARGETS = {"breakout": 90.0, "qbert": 14000.0, "pong": 20.0, "seaquest": 1150.0}


class Atari(Suite):
    name = "atari"
    prefix = None

    def load(self, cfg: Any) -> SuiteData:
        traj = load_dqn_replay(cfg.data_dir, cfg.game, num_buffers=cfg.num_buffers, num_steps=cfg.num_steps,
                               trajectories_per_buffer=cfg.trajectories_per_buffer, seed=cfg.seed,
                               verify_checksums=cfg.verify_checksums)
        return SuiteData(traj, {"env_id": atari_env_id(cfg.game)},
                         f"DQN-replay {cfg.game} in {cfg.data_dir}", {})

    def make_envs(self, cfg: Any, env: dict[str, Any], num_envs: int, obs_dim: int | None = None,
                  act_dim: int | None = None, record: Sequence[int] = ()):
        return make_atari_vector_env(cfg.game, num_envs=num_envs, seed=cfg.seed, resize=cfg.eval.atari_resize,
                                     record=record)

    def score(self, cfg: Any, env: dict[str, Any]):
        return lambda returns: atari_normalized_score(cfg.game, returns)

    def default_targets(self, cfg: Any, trajectories: Any) -> list[float]:
        game = str(cfg.game).lower()
        if game not in DT_TARGETS:
            raise UserError(f"DT gives no target return for {cfg.game}; set eval.targets, e.g. eval.targets=[90]")
        return [DT_TARGETS[game]]

    def dataset_name(self, cfg: Any) -> str:
        return str(cfg.game).lower()
