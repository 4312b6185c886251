"""Trajectories, the D4RL / pickle / Minari readers and the score constants, checked against
real Hopper-v4 rollouts whose episode boundaries and returns were tracked step by step."""

from __future__ import annotations

import os
import pickle

import h5py
import numpy as np
import pytest

from decision_mamba.data.d4rl import (
    load_d4rl_hdf5,
    load_dataset,
    load_minari,
    load_pickle_trajectories,
    write_d4rl_hdf5,
)
from decision_mamba.data.trajectories import Trajectories
from decision_mamba.scores import atari_normalized_score, d4rl_normalized_score
from helpers import minari_datasets_path, synthetic_trajectories, write_episodes_d4rl, write_episodes_pickle


def assert_matches_episodes(traj: Trajectories, episodes) -> None:
    """traj holds exactly `episodes`, in order."""
    assert traj.num_episodes == len(episodes)
    assert traj.lengths.tolist() == [len(e) for e in episodes]
    assert traj.num_transitions == sum(len(e) for e in episodes)
    for i, episode in enumerate(episodes):
        stored = traj.episode(i)
        np.testing.assert_array_equal(stored["observations"], episode.observations)
        np.testing.assert_array_equal(stored["actions"], episode.actions)
        np.testing.assert_array_equal(stored["rewards"], episode.rewards)


# ----- Trajectories ----------------------------------------------------------------------


def sequential_returns_to_go(rewards: np.ndarray, starts, lengths) -> np.ndarray:
    out = np.zeros(len(rewards), dtype=np.float64)
    for start, length in zip(starts, lengths):
        running = 0.0
        for i in reversed(range(start, start + length)):
            running += float(rewards[i])
            out[i] = running
    return out


def test_returns_to_go_and_timesteps_match_sequential_loops():
    traj = synthetic_trajectories([1, 7, 3, 12, 2])
    expected = sequential_returns_to_go(traj.rewards, traj.starts, traj.lengths)
    np.testing.assert_allclose(traj.returns_to_go(), expected, rtol=1e-6, atol=1e-5)
    assert traj.returns_to_go().dtype == np.float32
    expected_timesteps = [t for length in traj.lengths for t in range(length)]
    assert traj.timesteps().tolist() == expected_timesteps
    assert traj.timesteps().dtype == np.int64
    np.testing.assert_allclose(traj.episode_returns, expected[traj.starts], rtol=1e-6, atol=1e-5)
    assert traj.episode_index().tolist() == [e for e, length in enumerate(traj.lengths) for _ in range(length)]


def test_returns_to_go_by_hand():
    traj = Trajectories.from_flat(
        observations=np.zeros((6, 1)), actions=np.zeros((6, 1)),
        rewards=[1, 2, 3, 10, 20, 5], episode_ended=[0, 0, 1, 0, 1, 0],
    )
    assert traj.returns_to_go().tolist() == [6, 5, 3, 30, 20, 5]
    assert traj.timesteps().tolist() == [0, 1, 2, 0, 1, 0]
    assert traj.episode_returns.tolist() == [6, 30, 5]


def test_derived_arrays_are_read_only():
    traj = synthetic_trajectories([3, 4])
    with pytest.raises(ValueError):
        traj.returns_to_go()[0] = 1.0


@pytest.mark.parametrize("array_name", ["observations", "actions", "rewards"])
@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_nonfinite_values_are_refused_with_name_and_index(array_name, bad_value):
    traj = synthetic_trajectories([3, 4])
    arrays = {"observations": traj.observations.copy(), "actions": traj.actions.copy(), "rewards": traj.rewards.copy()}
    arrays[array_name][5] = bad_value
    with pytest.raises(ValueError, match=rf"{array_name} contains NaN or inf \(first at transition 5\)"):
        Trajectories(**arrays, starts=traj.starts, lengths=traj.lengths)


def test_inconsistent_lengths_are_refused():
    traj = synthetic_trajectories([3, 4])
    with pytest.raises(ValueError, match="actions has 6 rows but rewards has 7"):
        Trajectories(traj.observations, traj.actions[:-1], traj.rewards, traj.starts, traj.lengths)
    with pytest.raises(ValueError, match="observations has 6 rows"):
        Trajectories(traj.observations[:-1], traj.actions, traj.rewards, traj.starts, traj.lengths)
    with pytest.raises(ValueError, match="back to back"):
        Trajectories(traj.observations, traj.actions, traj.rewards, [0, 2], traj.lengths)
    with pytest.raises(ValueError, match="back to back"):
        Trajectories(traj.observations, traj.actions, traj.rewards, [0, 3], [3, 3])
    with pytest.raises(ValueError, match="at least one step"):
        Trajectories(traj.observations, traj.actions, traj.rewards, [0, 0, 3], [0, 3, 4])
    with pytest.raises(ValueError, match=r"episode 1 has arrays of different lengths"):
        Trajectories.from_episodes(
            [{"observations": np.zeros((2, 1)), "actions": np.zeros((2, 1)), "rewards": np.zeros(2)},
             {"observations": np.zeros((3, 1)), "actions": np.zeros((2, 1)), "rewards": np.zeros(2)}]
        )


def test_action_dtypes():
    discrete = Trajectories(np.zeros((3, 2), np.uint8), np.array([0, 3, 1], np.int32), np.zeros(3), [0], [3])
    assert discrete.actions.dtype == np.int64 and discrete.is_discrete and discrete.act_dim == 4
    assert discrete.observations.dtype == np.uint8  # frames are not converted
    with pytest.raises(ValueError, match=r"reshape a 1-D action array to \(N, 1\)"):
        Trajectories(np.zeros((3, 2)), np.zeros(3), np.zeros(3), [0], [3])


def test_concat_keeps_episodes_separate():
    a, b = synthetic_trajectories([2, 5], seed=1), synthetic_trajectories([4], seed=2)
    both = Trajectories.concat(a, b)
    assert both.starts.tolist() == [0, 2, 7] and both.lengths.tolist() == [2, 5, 4]
    np.testing.assert_array_equal(both.observations, np.concatenate([a.observations, b.observations]))
    np.testing.assert_allclose(both.returns_to_go(), np.concatenate([a.returns_to_go(), b.returns_to_go()]))
    with pytest.raises(ValueError, match="different observation shapes"):
        Trajectories.concat(a, synthetic_trajectories([3], obs_dim=5))


# ----- D4RL hdf5 -------------------------------------------------------------------------


def test_hdf5_round_trip_splits_at_terminals_and_timeouts(tmp_path, hopper_episodes):
    path = write_episodes_d4rl(tmp_path / "hopper_random-v2.hdf5", hopper_episodes,
                               metadata={"env_id": "Hopper-v4", "seed": 0})
    traj, metadata = load_d4rl_hdf5(path)
    assert_matches_episodes(traj, hopper_episodes)
    # Boundaries tracked by hand from the rollout: each episode starts where the previous ended.
    expected_starts = np.cumsum([0] + [len(e) for e in hopper_episodes[:-1]])
    assert traj.starts.tolist() == expected_starts.tolist()
    np.testing.assert_allclose(traj.episode_returns, [e.rewards.astype(np.float64).sum() for e in hopper_episodes],
                               rtol=1e-6)
    assert metadata == {"env_id": "Hopper-v4", "seed": 0}
    assert not [p for p in os.listdir(tmp_path) if p != path.name]  # no temporary file left behind


def test_unterminated_tail_is_kept_as_an_episode(tmp_path, hopper_episodes):
    path = write_episodes_d4rl(tmp_path / "tail.hdf5", hopper_episodes, mark_last_end=False)
    traj, _ = load_d4rl_hdf5(path)
    assert_matches_episodes(traj, hopper_episodes)


def test_splitting_by_hand(tmp_path):
    # terminal after step 2, timeout after step 4, then a tail of 2 unflagged steps.
    path = write_d4rl_hdf5(
        tmp_path / "tiny.hdf5", observations=np.arange(7.0)[:, None], actions=np.zeros((7, 1)),
        rewards=np.ones(7), terminals=[0, 0, 1, 0, 0, 0, 0], timeouts=[0, 0, 0, 0, 1, 0, 0],
    )
    traj, _ = load_d4rl_hdf5(path)
    assert traj.starts.tolist() == [0, 3, 5] and traj.lengths.tolist() == [3, 2, 2]
    # A step flagged both terminal and timeout ends one episode, not two.
    path = write_d4rl_hdf5(
        tmp_path / "both.hdf5", observations=np.zeros((4, 1)), actions=np.zeros((4, 1)), rewards=np.ones(4),
        terminals=[0, 1, 0, 1], timeouts=[0, 1, 0, 0],
    )
    assert load_d4rl_hdf5(path)[0].lengths.tolist() == [2, 2]


def test_writer_layout_and_compression(tmp_path, hopper_episodes):
    path = write_episodes_d4rl(tmp_path / "c.hdf5", hopper_episodes, compress=True)
    with h5py.File(path, "r") as f:
        assert f["observations"].dtype == np.float32 and f["observations"].shape[1] == 11
        assert f["actions"].dtype == np.float32 and f["actions"].shape[1] == 3
        assert f["rewards"].dtype == np.float32 and f["rewards"].ndim == 1
        assert f["terminals"].dtype == bool and f["timeouts"].dtype == bool
        assert f["next_observations"].shape == f["observations"].shape
        assert f["observations"].compression == "gzip"
    assert_matches_episodes(load_d4rl_hdf5(path)[0], hopper_episodes)


def test_writer_refuses_bad_input(tmp_path):
    good = dict(observations=np.zeros((3, 2)), actions=np.zeros((3, 1)), rewards=np.zeros(3),
                terminals=np.zeros(3), timeouts=np.zeros(3))
    with pytest.raises(ValueError, match="actions has 2 rows but rewards has 3"):
        write_d4rl_hdf5(tmp_path / "a.hdf5", **{**good, "actions": np.zeros((2, 1))})
    with pytest.raises(ValueError, match="observations has a NaN or inf value at transition 1"):
        write_d4rl_hdf5(tmp_path / "a.hdf5", **{**good, "observations": np.array([[0, 0], [np.nan, 0], [0, 0]])})
    with pytest.raises(TypeError, match=r"metadata\['policy'\]"):
        write_d4rl_hdf5(tmp_path / "a.hdf5", **good, metadata={"policy": {"nested": 1}})
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file


def test_missing_file_error_prints_the_download_command(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_d4rl_hdf5(tmp_path / "hopper_medium_replay-v2.hdf5")
    assert f"python -m decision_mamba.data.download d4rl hopper-medium-replay-v2 --data-dir {tmp_path}" in str(error.value)
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("walker2d-medium-expert-v2", tmp_path)
    message = str(error.value)
    assert "walker2d_medium-v2.hdf5" in message and "walker2d_expert-v2.hdf5" in message
    assert f"python -m decision_mamba.data.download d4rl walker2d-medium-expert-v2 --data-dir {tmp_path}" in message


def test_truncated_file_is_reported_with_a_redownload_hint(tmp_path, hopper_episodes):
    path = write_episodes_d4rl(tmp_path / "hopper_medium-v2.hdf5", hopper_episodes)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match="truncated or corrupt") as error:
        load_d4rl_hdf5(path)
    assert str(path) in str(error.value)
    assert "python -m decision_mamba.data.download d4rl hopper-medium-v2" in str(error.value)


def test_nan_in_file_is_reported(tmp_path, hopper_episodes):
    path = write_episodes_d4rl(tmp_path / "nan.hdf5", hopper_episodes)
    with h5py.File(path, "r+") as f:
        f["rewards"][30] = np.nan
    with pytest.raises(ValueError, match=r"nan.hdf5: rewards contains NaN or inf \(first at transition 30\)"):
        load_d4rl_hdf5(path)


def test_missing_keys_and_mismatched_lengths_are_reported(tmp_path, hopper_episodes):
    path = write_episodes_d4rl(tmp_path / "keys.hdf5", hopper_episodes)
    with h5py.File(path, "r+") as f:
        del f["timeouts"]
    with pytest.raises(ValueError, match=r"lacks the D4RL keys \['timeouts'\]"):
        load_d4rl_hdf5(path)
    path = write_episodes_d4rl(tmp_path / "rows.hdf5", hopper_episodes)
    with h5py.File(path, "r+") as f:
        rewards = f["rewards"][()]
        del f["rewards"]
        f["rewards"] = rewards[:-5]
    with pytest.raises(ValueError, match="different numbers of rows"):
        load_d4rl_hdf5(path)


# ----- load_dataset: names, medium-expert, paths --------------------------------------


def test_medium_expert_concatenates_medium_then_expert(tmp_path, hopper_episodes):
    medium, expert = hopper_episodes[:3], hopper_episodes[3:]
    # The medium file ends without an end flag: its tail must not merge into expert's first episode.
    write_episodes_d4rl(tmp_path / "hopper_medium-v2.hdf5", medium, mark_last_end=False)
    write_episodes_d4rl(tmp_path / "hopper_expert-v2.hdf5", expert)
    traj, metadata = load_dataset("hopper-medium-expert-v2", tmp_path)
    assert_matches_episodes(traj, medium + expert)
    assert metadata["env"] == "hopper" and len(metadata["files"]) == 2
    medium_only, _ = load_dataset("hopper_medium-v2", tmp_path)  # underscore spelling accepted
    assert_matches_episodes(medium_only, medium)
    by_path, _ = load_dataset(tmp_path / "hopper_expert-v2.hdf5")
    assert_matches_episodes(by_path, expert)


def test_unknown_dataset_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a D4RL MuJoCo v2 dataset name.*hopper, halfcheetah, walker2d"):
        load_dataset("ant-medium-v2", tmp_path)


# ----- pickles ------------------------------------------------------------------------


class _PickleBomb:
    """Unpickling this creates a file: proof that a refused pickle was never opened."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_is_refused_unless_allowed(tmp_path, hopper_episodes):
    path = write_episodes_pickle(tmp_path / "hopper-medium-v2.pkl", hopper_episodes)
    with pytest.raises(ValueError, match="allow_pickle=True"):
        load_pickle_trajectories(path)
    with pytest.raises(ValueError, match="arbitrary code"):
        load_dataset(path)
    traj, _ = load_pickle_trajectories(path, allow_pickle=True)
    assert_matches_episodes(traj, hopper_episodes)
    assert_matches_episodes(load_dataset(path, allow_pickle=True)[0], hopper_episodes)


def test_refused_pickle_runs_no_code(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_PickleBomb(marker)))
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_pickle_trajectories(path)
    assert not marker.exists()


def test_pickle_with_wrong_structure_is_reported(tmp_path):
    path = tmp_path / "dict.pkl"
    path.write_bytes(pickle.dumps({"observations": np.zeros((2, 1))}))
    with pytest.raises(ValueError, match="expected a list of episode dicts"):
        load_pickle_trajectories(path, allow_pickle=True)


# ----- Minari -------------------------------------------------------------------------


def test_minari_by_id_and_by_path_equals_the_recording(hopper_recording):
    with minari_datasets_path(hopper_recording.minari_root):
        traj, metadata = load_minari(hopper_recording.minari_id)
        via_spec, _ = load_dataset(f"minari:{hopper_recording.minari_id}")
    assert_matches_episodes(traj, hopper_recording.episodes)
    assert_matches_episodes(via_spec, hopper_recording.episodes)
    assert metadata["dataset_id"] == hopper_recording.minari_id and metadata["env_id"] == "Hopper-v4"
    # A dataset directory works without MINARI_DATASETS_PATH.
    by_path, _ = load_minari(hopper_recording.minari_root / hopper_recording.minari_id)
    assert_matches_episodes(by_path, hopper_recording.episodes)


def test_minari_missing_dataset_prints_the_download_command(tmp_path):
    with minari_datasets_path(tmp_path):
        with pytest.raises(FileNotFoundError, match="python -m decision_mamba.data.download minari mujoco/hopper/medium-v0"):
            load_minari("mujoco/hopper/medium-v0")


# ----- scores ------------------------------------------------------------------------


def test_d4rl_normalized_score_by_hand():
    assert d4rl_normalized_score("hopper-medium-v2", 3234.3) == pytest.approx(100.0)
    assert d4rl_normalized_score("hopper", -20.272305) == pytest.approx(0.0)
    # 100 * (1000 + 280.178953) / (12135 + 280.178953) = 100 * 1280.178953 / 12415.178953 = 10.31140
    assert d4rl_normalized_score("HalfCheetah-v4", 1000.0) == pytest.approx(10.31140, abs=1e-4)
    scores = d4rl_normalized_score("walker2d_medium_replay-v2", np.array([1.629008, 4592.3]))
    np.testing.assert_allclose(scores, [0.0, 100.0], atol=1e-9)
    with pytest.raises(ValueError, match="known environments: halfcheetah, hopper, walker2d"):
        d4rl_normalized_score("ant-medium-v2", 1.0)


def test_atari_normalized_score_by_hand():
    # Paper Table 7 / Table 2: DMamba Breakout raw 70.6 -> 100 * (70.6 - 1.7) / (30.5 - 1.7) = 239.2
    assert atari_normalized_score("Breakout", 70.6) == pytest.approx(239.236, abs=1e-3)
    assert atari_normalized_score("ALE/Pong-v5", 14.6) == pytest.approx(100.0)
    assert atari_normalized_score("qbert", 163.9) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="known games: breakout, pong, qbert, seaquest"):
        atari_normalized_score("MsPacman", 1.0)
