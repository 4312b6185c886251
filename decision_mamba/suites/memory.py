"""Memory tasks: the passive T-Maze and positions-only ("-P") MuJoCo; docs/memory.md.

T-Maze, `dataset: tmaze:<file>` (suite "tmaze")
  data     a file made by tools/make_tmaze_data.py (D4RL hdf5 layout; its metadata gives the
           corridor length L)
  env      envs_tmaze.TMaze(L), gymnasium id envs_tmaze.TMAZE_ID; episodes end at the choice
           or after L + 2 steps (or eval.max_ep_len, if smaller)
  score    the success rate in percent: 100 * return (the return is 1 for the right choice, else 0)
  targets  when eval.targets is []: [1.0], success
  `env` and `env_version` of the config are not used.

Positions-only MuJoCo, `dataset: positions:<D4RL name or file>` (suite "positions")
  Everything as the d4rl suite (d4rl_mujoco.py: data, environment, D4RL normalised score,
  the paper's targets), with the velocities removed: the data keeps the first
  POSITION_DIMS[env] entries of each observation, and the evaluation environment is
  wrapped in envs.PositionsOnly, which keeps the same entries (nq - 1, read from the model).
  Runs are named <dataset>-P.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from decision_mamba.data.d4rl import load_dataset
from decision_mamba.data.trajectories import Trajectories
from decision_mamba.envs import make_gym_vector_env
from decision_mamba.envs_tmaze import register_tmaze, time_limit
from decision_mamba.errors import DataError, MissingFileError, UserError
from decision_mamba.scores import normalize
from decision_mamba.suites import Suite, SuiteData
from decision_mamba.suites.d4rl_mujoco import D4RLMuJoCo

TMAZE_PREFIX = "tmaze"
POSITIONS_PREFIX = "positions"
# Gymnasium's observations are qpos[1:] then qvel: the positions are the first nq - 1 entries.
POSITION_DIMS = {"hopper": 5, "halfcheetah": 8, "walker2d": 8}


def _source(cfg: Any, prefix: str) -> str:
    return str(cfg.dataset).removeprefix(f"{prefix}:")


class TMazeSuite(Suite):
    name = "tmaze"
    prefix = TMAZE_PREFIX

    def check_config(self, cfg: Any) -> None:
        if cfg.protocol != "clean":
            raise UserError(f"protocol={cfg.protocol} is the authors' D4RL MuJoCo protocol; T-Maze runs with "
                            f"protocol=clean")

    def load(self, cfg: Any) -> SuiteData:
        source = _source(cfg, TMAZE_PREFIX)
        if not Path(source).is_file():
            raise MissingFileError(f"T-Maze dataset {source} not found; make it with "
                                   f"python tools/make_tmaze_data.py --out {source} --length <L>")
        traj, metadata = load_dataset(source)
        if "corridor_length" not in metadata:
            raise DataError(f"{source} has no corridor_length attribute: it was not made by "
                            f"tools/make_tmaze_data.py; remake it with that script")
        length = int(metadata["corridor_length"])
        env = {"env_id": register_tmaze(), "corridor_length": length}
        return SuiteData(traj, env, f"T-Maze L={length} ({source})", metadata)

    def make_envs(self, cfg: Any, env: dict[str, Any], num_envs: int, obs_dim: int | None = None,
                  act_dim: int | None = None, record: Sequence[int] = ()):
        if record:
            raise UserError("T-Maze has no video; set eval.video_episodes=0")
        length = int(env["corridor_length"])
        register_tmaze()
        return make_gym_vector_env(env["env_id"], num_envs=num_envs,
                                   max_episode_steps=min(time_limit(length), cfg.eval.max_ep_len),
                                   dataset_obs_dim=obs_dim, dataset_act_dim=act_dim, corridor_length=length)

    def score(self, cfg: Any, env: dict[str, Any]):
        return lambda returns: normalize(returns, 0.0, 1.0)

    def default_targets(self, cfg: Any, trajectories: Any) -> list[float]:
        return [1.0]

    def dataset_name(self, cfg: Any) -> str:
        """tmaze-L10 (the file's stem)."""
        return Path(_source(cfg, TMAZE_PREFIX)).stem


def positions_only(traj: Trajectories, env: str) -> Trajectories:
    """The same episodes with each observation cut to its first POSITION_DIMS[env] entries."""
    return Trajectories(traj.observations[:, :POSITION_DIMS[env]].copy(), traj.actions, traj.rewards,
                        traj.starts, traj.lengths)


class PositionsOnlyMuJoCo(D4RLMuJoCo):
    name = "positions"
    prefix = POSITIONS_PREFIX

    def _full_state(self, cfg: Any) -> Any:
        return dataclasses.replace(cfg, dataset=_source(cfg, POSITIONS_PREFIX))

    def load(self, cfg: Any) -> SuiteData:
        data = super().load(self._full_state(cfg))
        masked = positions_only(data.trajectories, cfg.env)
        return SuiteData(masked, data.env, f"{data.description}, positions only (velocities removed)", data.metadata)

    def make_envs(self, cfg: Any, env: dict[str, Any], num_envs: int, obs_dim: int | None = None,
                  act_dim: int | None = None, record: Sequence[int] = ()):
        return make_gym_vector_env(env["env_id"], num_envs=num_envs, max_episode_steps=cfg.eval.max_ep_len,
                                   dataset_obs_dim=obs_dim, dataset_act_dim=act_dim, record=record,
                                   positions_only=True)

    def dataset_name(self, cfg: Any) -> str:
        """hopper-medium-v4-gen-P."""
        return f"{super().dataset_name(self._full_state(cfg))}-P"
