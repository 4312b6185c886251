"""The D4RL MuJoCo suite (hopper, halfcheetah, walker2d): the paper's Tables 1 and 3.

data     a D4RL v2 name (`env` + `dataset: medium` -> hopper-medium-v2, read from data_dir),
         or a file: .hdf5 / .h5 in the D4RL layout (our generated data), .pkl (DT's)
env      gymnasium `{Env}-{env_version}` (v4: the mujoco-py era models D4RL was recorded on);
         a file whose metadata names another environment is refused (data/identity.py)
score    D4RL's normalised score, 100 * (R - random) / (expert - random) (scores.py)
targets  when eval.targets is []: the paper's, 3600 / 6000 / 5000 (docs/protocol.md)
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Sequence
from typing import Any

from decision_mamba.data.d4rl import is_file_dataset, load_dataset
from decision_mamba.data.identity import check_dataset_env
from decision_mamba.envs import gym_env_id, make_gym_vector_env
from decision_mamba.scores import d4rl_normalized_score
from decision_mamba.suites import Suite, SuiteData

# The paper's (and DT's) return-to-go per environment (docs/protocol.md).
PAPER_TARGETS = {"hopper": 3600.0, "halfcheetah": 6000.0, "walker2d": 5000.0}


def dataset_spec(cfg: Any) -> str:
    """'medium' on hopper -> 'hopper-medium-v2'; file paths pass through."""
    return cfg.dataset if is_file_dataset(cfg.dataset) else f"{cfg.env}-{cfg.dataset}-v2"


class D4RLMuJoCo(Suite):
    name = "d4rl"
    prefix = None

    def load(self, cfg: Any) -> SuiteData:
        source = dataset_spec(cfg)
        traj, metadata = load_dataset(source, cfg.data_dir, allow_pickle=cfg.allow_pickle,
                                      drop_unterminated_tail=cfg.drop_unterminated_tail)
        env_id = gym_env_id(cfg.env, cfg.env_version)
        check_dataset_env(metadata, env_id, source=source, allow_mismatch=cfg.allow_env_mismatch)
        return SuiteData(traj, {"env_id": env_id}, source, metadata)

    def make_envs(self, cfg: Any, env: dict[str, Any], num_envs: int, obs_dim: int | None = None,
                  act_dim: int | None = None, record: Sequence[int] = ()):
        return make_gym_vector_env(env["env_id"], num_envs=num_envs, max_episode_steps=cfg.eval.max_ep_len,
                                   dataset_obs_dim=obs_dim, dataset_act_dim=act_dim, record=record)

    def score(self, cfg: Any, env: dict[str, Any]):
        return lambda returns: d4rl_normalized_score(cfg.env, returns)

    def default_targets(self, cfg: Any, trajectories: Any) -> list[float]:
        return [PAPER_TARGETS[cfg.env]]

    def dataset_name(self, cfg: Any) -> str:
        """hopper-medium | hopper-medium-v4-gen (a file's stem, the env prefixed where it lacks it)."""
        if not is_file_dataset(cfg.dataset):
            return f"{cfg.env}-{cfg.dataset}"
        stem = Path(cfg.dataset).stem
        return stem if stem.startswith(f"{cfg.env}-") else f"{cfg.env}-{stem}"
