"""Positions-only MuJoCo (dataset: positions:<...>): the data and the evaluation environment
lose the same (velocity) entries."""

import gymnasium as gym
import numpy as np
import pytest

from decision_mamba.config import GymConfig, load_config
from decision_mamba.data.trajectories import Trajectories
from decision_mamba.envs import make_gym_vector_env
from decision_mamba.naming import dataset_name
from decision_mamba.suites import suite_of
from decision_mamba.suites.memory import POSITION_DIMS, positions_only


@pytest.mark.parametrize("env_name, env_id", [("hopper", "Hopper-v4"), ("walker2d", "Walker2d-v4"),
                                              ("halfcheetah", "HalfCheetah-v4")])
def test_masked_data_equals_the_wrapped_environment_on_the_same_states(env_name, env_id):
    steps, seed = 15, 5  # short, small actions: the robot stays up (no episode end)
    actions = 0.2 * np.random.default_rng(0).uniform(-1, 1, size=(steps, gym.make(env_id).action_space.shape[0]))
    # Full-state episode, as a dataset records it, then masked as the suite masks data.
    full = make_gym_vector_env(env_id, num_envs=1, max_episode_steps=steps)
    wrapped = make_gym_vector_env(env_id, num_envs=1, max_episode_steps=steps, positions_only=True)
    observations, seen = [full.reset(seed=seed)[0][0]], [wrapped.reset(seed=seed)[0][0]]
    for action in actions[:-1]:
        observations.append(full.step(action[None].astype(np.float32))[0][0])
        seen.append(wrapped.step(action[None].astype(np.float32))[0][0])
    traj = Trajectories(np.asarray(observations), actions.astype(np.float32), np.zeros(steps, np.float32),
                        np.array([0]), np.array([steps]))
    masked = positions_only(traj, env_name).observations
    assert masked.shape == (steps, POSITION_DIMS[env_name])
    np.testing.assert_array_equal(masked, np.asarray(seen, dtype=np.float32))  # data is stored as float32
    # what was removed is the velocities, qvel, which the MuJoCo state holds
    np.testing.assert_allclose(np.asarray(observations)[-1, POSITION_DIMS[env_name]:],
                               full.envs[0].unwrapped.data.qvel, rtol=1e-6)
    assert wrapped.single_observation_space.shape == (POSITION_DIMS[env_name],)


def test_the_hopper_p_config_loads_masked_bundled_data():
    cfg = load_config(GymConfig, "configs/memory/hopper-P-medium.yaml")
    data = suite_of(cfg).load(cfg)
    assert data.trajectories.observations.shape[1] == 5 and dataset_name(cfg) == "hopper-medium-v4-gen-P"
    envs = suite_of(cfg).make_envs(cfg, data.env, 1, obs_dim=5, act_dim=3)
    assert envs.single_observation_space.shape == (5,)
    assert suite_of(cfg).score(cfg, data.env)(np.array([3234.3]))[0] == pytest.approx(100.0)
