"""The vectorised batch sampler against a slow, per-sample reference and hand-made cases."""

from __future__ import annotations

import time

import numpy as np
import pytest

from decision_mamba.data.sampler import draw_window_ends, gather_windows, sample_batch, state_normalization
from decision_mamba.data.trajectories import Trajectories
from helpers import synthetic_trajectories


def reference_batch(traj, drawn_index, K, mode, state_mean, state_std, rtg_scale, max_ep_len):
    """One window at a time, written as plainly as possible (DT's get_batch loop).

    drawn_index: the uniform transition draws, replayed from the same seed as sample_batch.
    """
    samples = []
    for index in drawn_index:
        # Find the episode holding `index` by walking the episodes.
        for episode, (start, length) in enumerate(zip(traj.starts, traj.lengths)):
            if start <= index < start + length:
                break
        offset = int(index - start)
        if mode == "dt-gym":
            steps = list(range(offset, min(offset + K, length)))
        else:  # dt-atari: the K steps ending at min(offset + K, length), not before the start
            window_end = min(offset + K, length)
            steps = list(range(max(window_end - K, 0), window_end))
        rewards = traj.rewards[start:start + length].astype(np.float64)
        real = {
            "states": [(traj.observations[start + t] - state_mean) / state_std for t in steps],
            "actions": [traj.actions[start + t] for t in steps],
            "returns_to_go": [[rewards[t:].sum() / rtg_scale] for t in steps],
            "timesteps": [min(t, max_ep_len - 1) for t in steps],
        }
        pad = K - len(steps)
        sample = {}
        for key, values in real.items():
            values = np.asarray(values)
            padding = np.zeros((pad,) + values.shape[1:], dtype=values.dtype)
            sample[key] = np.concatenate([padding, values])
        sample["mask"] = np.array([False] * pad + [True] * len(steps))
        samples.append(sample)
    return {key: np.stack([s[key] for s in samples]) for key in samples[0]}


@pytest.mark.parametrize("mode", ["dt-gym", "dt-atari"])
def test_batch_equals_the_per_sample_reference(mode):
    traj = synthetic_trajectories([3, 25, 1, 8, 40, 12], obs_dim=5, act_dim=3)
    mean, std = state_normalization(traj)
    K, batch_size, seed = 10, 300, 123
    batch = sample_batch(traj, batch_size, K, np.random.default_rng(seed), state_mean=mean, state_std=std,
                         rtg_scale=7.0, max_ep_len=30, mode=mode)
    # sample_batch draws its transitions with one rng.integers call: replay it.
    drawn = np.random.default_rng(seed).integers(0, traj.num_transitions, size=batch_size)
    expected = reference_batch(traj, drawn, K, mode, mean, std, 7.0, 30)
    assert set(batch) == set(expected)
    np.testing.assert_array_equal(batch["mask"], expected["mask"])
    np.testing.assert_array_equal(batch["timesteps"], expected["timesteps"])
    np.testing.assert_allclose(batch["states"], expected["states"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(batch["actions"], expected["actions"])
    np.testing.assert_allclose(batch["returns_to_go"], expected["returns_to_go"], rtol=1e-5, atol=1e-5)
    assert batch["states"].shape == (batch_size, K, 5) and batch["states"].dtype == np.float32
    assert batch["actions"].shape == (batch_size, K, 3) and batch["actions"].dtype == np.float32
    assert batch["returns_to_go"].shape == (batch_size, K, 1) and batch["returns_to_go"].dtype == np.float32
    assert batch["timesteps"].dtype == np.int64 and batch["mask"].dtype == bool
    # The draw covered short windows (padding) and full ones.
    assert (~batch["mask"]).any() and batch["mask"].all(axis=1).any()


def test_episodes_are_drawn_in_proportion_to_their_length():
    lengths = np.array([5, 10, 50, 200, 35])
    traj = synthetic_trajectories(lengths.tolist())
    rng = np.random.default_rng(7)
    first, _ = draw_window_ends(traj, 200_000, 20, rng, mode="dt-gym")
    episode = np.searchsorted(traj.starts, first, side="right") - 1
    observed = np.bincount(episode, minlength=len(lengths))
    expected = len(first) * lengths / lengths.sum()
    chi_square = ((observed - expected) ** 2 / expected).sum()
    assert chi_square < 18.47  # 4 degrees of freedom, p = 0.001
    # Start offsets uniform within an episode (the 50-step one), 49 degrees of freedom.
    offsets = first[episode == 2] - traj.starts[2]
    counts = np.bincount(offsets, minlength=50)
    expected_count = len(offsets) / 50
    assert counts.size == 50 and ((counts - expected_count) ** 2 / expected_count).sum() < 85.35  # p = 0.001
    # A wrong sampler (episodes uniformly) would be far off: the test can tell them apart.
    uniform_counts = np.full(len(lengths), len(first) / len(lengths))
    assert ((uniform_counts - expected) ** 2 / expected).sum() > 1000


def test_left_padding_by_hand():
    # One episode of 3 steps, observations 10, 20, 30, actions 1, 2, 3, rewards 1, 2, 4.
    traj = Trajectories(np.array([[10.0], [20.0], [30.0]]), np.array([[1.0], [2.0], [3.0]]),
                        np.array([1.0, 2.0, 4.0]), [0], [3])
    mean, std = np.array([5.0]), np.array([5.0])
    batch = gather_windows(traj, first=np.array([1]), end=np.array([3]), K=4, state_mean=mean, state_std=std,
                           rtg_scale=2.0)
    assert batch["mask"].tolist() == [[False, False, True, True]]
    assert batch["states"][0, :, 0].tolist() == [0.0, 0.0, 3.0, 5.0]  # padding is 0 after normalising
    assert batch["actions"][0, :, 0].tolist() == [0.0, 0.0, 2.0, 3.0]
    assert batch["returns_to_go"][0, :, 0].tolist() == [0.0, 0.0, 3.0, 2.0]  # (2 + 4) / 2, 4 / 2
    assert batch["timesteps"][0].tolist() == [0, 0, 1, 2]


def test_rtg_scaling_and_timestep_clipping():
    traj = synthetic_trajectories([30, 45])
    scaled = sample_batch(traj, 64, 20, np.random.default_rng(3), rtg_scale=1000.0, max_ep_len=10)
    unscaled = sample_batch(traj, 64, 20, np.random.default_rng(3), rtg_scale=1.0, max_ep_len=1000)
    np.testing.assert_allclose(scaled["returns_to_go"] * 1000.0, unscaled["returns_to_go"], rtol=1e-6)
    assert scaled["timesteps"].max() == 9 and unscaled["timesteps"].max() > 9
    np.testing.assert_array_equal(scaled["timesteps"], np.minimum(unscaled["timesteps"], 9))


def test_dt_atari_window_shifts_left_at_the_episode_end():
    traj = synthetic_trajectories([12, 3, 20])
    K = 5
    # Drawn step 10 of the first episode: the window would cross its end (12), so it is [7, 12).
    first, end = draw_window_ends(traj, 1, K, _FixedDraws([10]), mode="dt-atari")
    assert (first.tolist(), end.tolist()) == ([7], [12])
    # In the 3-step episode (flat 12..14) no window of 5 fits: all 3 steps, left-padded.
    first, end = draw_window_ends(traj, 1, K, _FixedDraws([13]), mode="dt-atari")
    assert (first.tolist(), end.tolist()) == ([12], [15])
    batch = gather_windows(traj, first, end, K)
    assert batch["mask"].tolist() == [[False, False, True, True, True]]
    assert batch["timesteps"].tolist() == [[0, 0, 0, 1, 2]]
    # dt-gym from the same step keeps its start and is shorter instead.
    first, end = draw_window_ends(traj, 1, K, _FixedDraws([10]), mode="dt-gym")
    assert (first.tolist(), end.tolist()) == ([10], [12])


class _FixedDraws:
    """Stands in for np.random.Generator: rng.integers returns the given values."""

    def __init__(self, values):
        self.values = np.asarray(values, dtype=np.int64)

    def integers(self, low, high, size):
        assert size == len(self.values) and (low <= self.values).all() and (self.values < high).all()
        return self.values


class _FrameStackStore:
    """A toy Atari-style store: observation i is the stack of frames i-1 and i (clamped at 0)."""

    def __init__(self, frames: np.ndarray):
        self.frames = frames  # (N, H, W) uint8

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        previous = np.maximum(index - 1, 0)
        return np.stack([self.frames[previous], self.frames[index]], axis=-3)  # (..., 2, H, W)


def test_discrete_actions_and_frame_store_are_passed_through():
    rng = np.random.default_rng(0)
    frames = rng.integers(1, 256, size=(40, 6, 6), dtype=np.uint8)
    lengths = [15, 4, 21]
    traj = Trajectories(_FrameStackStore(frames), rng.integers(0, 4, size=40), np.ones(40), [0, 15, 19], lengths)
    batch = sample_batch(traj, 32, 8, np.random.default_rng(5), mode="dt-atari", max_ep_len=10_000)
    assert batch["states"].shape == (32, 8, 2, 6, 6) and batch["states"].dtype == np.uint8
    assert batch["actions"].shape == (32, 8) and batch["actions"].dtype == np.int64
    drawn = np.random.default_rng(5).integers(0, 40, size=32)
    first, end = draw_window_ends(traj, 32, 8, _FixedDraws(drawn), mode="dt-atari")
    for row in range(32):
        real = np.arange(first[row], end[row])
        np.testing.assert_array_equal(batch["states"][row, 8 - len(real):], traj.observations[real])
        np.testing.assert_array_equal(batch["actions"][row, 8 - len(real):], traj.actions[real])
        assert not batch["states"][row, : 8 - len(real)].any()  # frames are >= 1, padding is 0


def test_state_normalization_matches_numpy():
    traj = synthetic_trajectories([50, 70], obs_dim=6)
    mean, std = state_normalization(traj)
    np.testing.assert_allclose(mean, traj.observations.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(std, traj.observations.std(axis=0) + 1e-6, rtol=1e-5)
    assert mean.dtype == std.dtype == np.float32


def test_bad_arguments_are_refused():
    traj = synthetic_trajectories([10], obs_dim=4)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown sampling mode 'dt'; choose one of dt-gym, dt-atari"):
        sample_batch(traj, 4, 5, rng, mode="dt")
    with pytest.raises(ValueError, match="pass both state_mean and state_std"):
        sample_batch(traj, 4, 5, rng, state_mean=np.zeros(4))
    with pytest.raises(ValueError, match=r"state_mean has shape \(3,\)"):
        sample_batch(traj, 4, 5, rng, state_mean=np.zeros(3), state_std=np.ones(3))
    with pytest.raises(ValueError, match="batch_size and K must be positive"):
        sample_batch(traj, 0, 5, rng)


def test_sampling_is_much_cheaper_than_a_training_step():
    # B=64, K=20, obs 17 on 200k transitions; the target is < 2 ms, the bound (10 ms) is
    # loose so that a busy machine does not fail it.
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 1000, size=400)
    traj = Trajectories(rng.standard_normal((lengths.sum(), 17), dtype=np.float32),
                        rng.uniform(-1, 1, (lengths.sum(), 6)).astype(np.float32),
                        rng.standard_normal(lengths.sum()).astype(np.float32),
                        np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    mean, std = state_normalization(traj)
    sample_batch(traj, 64, 20, rng, state_mean=mean, state_std=std, rtg_scale=1000.0)  # warm the caches
    repeats = 200
    begin = time.perf_counter()
    for _ in range(repeats):
        sample_batch(traj, 64, 20, rng, state_mean=mean, state_std=std, rtg_scale=1000.0)
    assert (time.perf_counter() - begin) / repeats < 0.01
