"""Any Minari dataset: `dataset: minari:<dataset id or local path>`.

data     the dataset's episodes (minari's reader, data/d4rl.py load_minari); Dict and
         goal-conditioned observations (antmaze, pointmaze, kitchen) are flattened in the
         Dict space's sorted key order (achieved_goal, desired_goal, observation; nested
         dicts likewise), at training and evaluation alike (data.d4rl.flatten_observations)
env      the dataset's own evaluation environment: its eval_env_spec, else the env_spec it
         was recorded with (id, version, kwargs such as the maze map, and time limit), as
         minari's recover_environment(eval_env=True) gives it; `env` and `env_version` of
         the config are not used. An episode ends at that environment's time limit or
         after eval.max_ep_len steps, whichever comes first.
score    100 * (R - ref_min_score) / (ref_max_score - ref_min_score), from the dataset's
         metadata (minari.get_normalized_score, times 100). Minari's mujoco/{hopper,halfcheetah,
         walker2d}/*-v0 datasets carry none: they are scored with this project's pinned -v5
         references (scores.MINARI_REFERENCE_RETURNS: a random policy measured here, the expert
         dataset's mean return), which makes their scores comparable with each other but not
         with D4RL's. Any other dataset without reference scores is refused, since every run
         reports a normalised score
targets  when eval.targets is []: the best episode return in the data. The paper gives
         none for these tasks, and for sparse rewards (antmaze: 1 per step at the goal,
         kitchen: 1 per task done) the best return the data shows is the one return the
         data proves reachable.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np

from decision_mamba.data.d4rl import load_minari
from decision_mamba.errors import DataError, UserError
from decision_mamba.scores import MINARI_REFERENCE_DATASETS, minari_reference_returns, normalize
from decision_mamba.suites import Suite, SuiteData

PREFIX = "minari"


def minari_source(cfg: Any) -> str:
    """'minari:D4RL/antmaze/umaze-v1' -> 'D4RL/antmaze/umaze-v1' (an id or a path)."""
    return str(cfg.dataset).removeprefix(f"{PREFIX}:")


class Minari(Suite):
    name = "minari"
    prefix = PREFIX

    def check_config(self, cfg: Any) -> None:
        if cfg.protocol != "clean":
            # The release ran D4RL MuJoCo only: its per-env targets would be another task's.
            raise UserError(f"protocol={cfg.protocol} is the authors' D4RL MuJoCo protocol; a Minari dataset runs "
                            f"with protocol=clean (set the release's switches one by one, e.g. model.init=release)")

    def load(self, cfg: Any) -> SuiteData:
        source = minari_source(cfg)
        traj, metadata = load_minari(source)
        if metadata["eval_env_spec"] is None:
            raise DataError(f"Minari dataset {metadata['dataset_id']} records no environment (env_spec is None), "
                            f"so there is nothing to evaluate in; record it with minari's DataCollector on a "
                            f"gymnasium environment")
        from gymnasium.envs.registration import EnvSpec

        spec = EnvSpec.from_json(metadata["eval_env_spec"])
        low, high = metadata["ref_min_score"], metadata["ref_max_score"]
        reference = "the dataset's ref_min_score and ref_max_score"
        if low is None and high is None and str(metadata["dataset_id"]).startswith(MINARI_REFERENCE_DATASETS):
            low, high = minari_reference_returns(metadata["dataset_id"], spec.id)
            reference = (f"this project's pinned {spec.id} references (decision_mamba/scores.py), "
                         f"not comparable with D4RL's normalized scores")
        if low is None or high is None or not high > low:
            raise DataError(f"Minari dataset {metadata['dataset_id']} has no usable reference scores "
                            f"(ref_min_score={low}, ref_max_score={high}), so no normalised score can be "
                            f"reported; create it with ref_min_score and ref_max_score "
                            f"(DataCollector.create_dataset(..., ref_min_score=..., ref_max_score=...))")
        env = {"env_id": spec.id, "env_spec": metadata["eval_env_spec"], "max_episode_steps": spec.max_episode_steps,
               "ref_min_score": float(low), "ref_max_score": float(high), "reference": reference,
               "dataset_id": metadata["dataset_id"]}
        kind = "dict observations, flattened" if metadata["dict_observations"] else "Box observations"
        return SuiteData(traj, env, f"minari {metadata['dataset_id']} ({kind}; evaluated on {spec.id})", metadata)

    def make_envs(self, cfg: Any, env: dict[str, Any], num_envs: int, obs_dim: int | None = None,
                  act_dim: int | None = None, record: Sequence[int] = ()):
        from gymnasium.envs.registration import EnvSpec

        from decision_mamba.envs import make_gym_vector_env

        limit = env.get("max_episode_steps")
        steps = cfg.eval.max_ep_len if limit is None else min(int(limit), cfg.eval.max_ep_len)
        return make_gym_vector_env(EnvSpec.from_json(env["env_spec"]), num_envs=num_envs, max_episode_steps=steps,
                                   dataset_obs_dim=obs_dim, dataset_act_dim=act_dim, record=record)

    def score(self, cfg: Any, env: dict[str, Any]):
        low, high = env["ref_min_score"], env["ref_max_score"]
        return lambda returns: normalize(returns, low, high)

    def default_targets(self, cfg: Any, trajectories: Any) -> list[float]:
        return [float(np.max(trajectories.episode_returns))]

    def dataset_name(self, cfg: Any) -> str:
        """mujoco-hopper-medium-v0 | D4RL-antmaze-umaze-v1: the id with / as - (of a path: its last
        three parts, minari's namespace/env/name layout)."""
        source = minari_source(cfg)
        if Path(source).is_absolute() or source.startswith("."):
            return "-".join(Path(source).parts[-3:])
        return source.strip("/").replace("/", "-")
