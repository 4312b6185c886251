"""train.window_start=episode: training windows from an episode's first step, so that the
recurrent step at evaluation (eval.mode=recurrent) acts as the model was trained."""

import numpy as np
import pytest
import torch

from decision_mamba.config import ConfigError, GymConfig, load_config
from decision_mamba.data.sampler import gather_windows, sample_batch, state_normalization, window_ends
from decision_mamba.errors import UserError
from decision_mamba.evaluation import check_evaluation
from decision_mamba.model import DecisionModel, ModelConfig
from helpers import synthetic_trajectories

LENGTHS = [7, 12, 3, 9]  # the longest episode, 12, fits the context
K = 15


def test_episode_windows_start_at_the_first_step_with_padding_after():
    traj = synthetic_trajectories(LENGTHS)
    batch = sample_batch(traj, 64, K, np.random.default_rng(0), mode="episode")
    assert (batch["timesteps"][:, 0] == 0).all() and batch["mask"][:, 0].all()
    num_real = batch["mask"].sum(axis=1)
    assert set(num_real) == set(LENGTHS)  # whole episodes, every one drawn
    for row, n in enumerate(num_real):
        assert batch["mask"][row, :n].all() and not batch["mask"][row, n:].any()
        np.testing.assert_array_equal(batch["timesteps"][row, :n], np.arange(n))
    short = sample_batch(traj, 64, 4, np.random.default_rng(0), mode="episode")  # K below the episodes' lengths
    positions = np.broadcast_to(np.arange(4), short["timesteps"].shape)
    np.testing.assert_array_equal(short["timesteps"][short["mask"]], positions[short["mask"]])


@pytest.mark.parametrize("mixer", ["mamba", "conv", "s4"])
def test_recurrent_step_equals_the_trained_forward_at_every_step(mixer):
    traj = synthetic_trajectories(LENGTHS, obs_dim=5, act_dim=3, seed=4)
    mean, std = state_normalization(traj)
    torch.manual_seed(0)
    model = DecisionModel(ModelConfig(mixer=mixer, d_model=32, n_layer=2, dropout=0.0, max_ep_len=50,
                                      s4_d_state=8), (5,), 3, discrete=False).double().eval()
    # One training window per episode, drawn from a step in its middle: episode mode moves it to the start.
    middle = traj.starts + traj.lengths // 2
    first, end = window_ends(traj, middle, K, mode="episode")
    batch = gather_windows(traj, first, end, K, state_mean=mean, state_std=std, rtg_scale=10.0, align="left")
    b = {k: torch.as_tensor(v) for k, v in batch.items()}
    for k in ("states", "returns_to_go", "actions"):
        b[k] = b[k].double()
    with torch.no_grad():
        trained = model(b["states"], b["actions"], b["returns_to_go"], b["timesteps"], b["mask"])
        # The recurrent step over each whole episode, read straight from the data.
        for e, (start, length) in enumerate(zip(traj.starts, traj.lengths)):
            steps = slice(start, start + length)
            states = torch.as_tensor((traj.observations[steps] - mean) / std).double()
            actions = torch.as_tensor(traj.actions[steps]).double()
            rtg = torch.as_tensor(traj.returns_to_go()[steps] / 10.0).double()
            state = model.init_state(1)
            for t in range(length):
                prev = actions[t - 1:t] if t > 0 else None
                action, state = model.step(states[t:t + 1], rtg[t:t + 1, None], torch.tensor([t]), prev, state)
                torch.testing.assert_close(action[0], trained[e, t], rtol=1e-9, atol=1e-10)


def test_episode_windows_are_refused_with_window_evaluation_for_recurrent_mixers():
    # checked where the model is built (the config module does not know the mixers)
    cfg = load_config(GymConfig, None, ["train.window_start=episode", "eval.mode=window"])
    with pytest.raises(UserError, match="eval.mode=recurrent"):
        check_evaluation(cfg, DecisionModel(cfg.model, (11,), 3, discrete=False))
    cfg = load_config(GymConfig, None, ["train.window_start=episode", "eval.mode=recurrent"])
    assert cfg.train.window_start == "episode"
    check_evaluation(cfg, DecisionModel(cfg.model, (11,), 3, discrete=False))
    with pytest.raises(ConfigError, match="window_start must be random or episode"):
        load_config(GymConfig, None, ["train.window_start=first"])
