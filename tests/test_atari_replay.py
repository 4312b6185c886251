"""DQN-replay reader / writer, FrameStackStore and the DT loader, on buffers recorded
from the real emulator (tests/atari_helpers.py)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from decision_mamba.data.atari_replay import (
    FrameStackStore,
    ReplayFileError,
    load_dqn_replay,
    read_replay_buffer,
    replay_file,
)
from dqn_replay_writer import add_episode_padding, write_replay_buffer
from atari_helpers import DopamineBuffer, Episode, naive_stacks, record_episodes

GAME = "Breakout"


@pytest.fixture(scope="module")
def episodes() -> list[Episode]:
    return record_episodes(GAME, num_episodes=40, seed=0)


@pytest.fixture(scope="module")
def buffers(episodes: list[Episode]) -> list[DopamineBuffer]:
    """Three buffers covering dopamine's three states: partly filled, filled exactly once, wrapped."""
    partly = DopamineBuffer(capacity=400)
    for episode in episodes[:12]:
        partly.add_episode(episode)
    exact = DopamineBuffer(capacity=sum(len(e) + 3 for e in episodes[12:24]))
    for episode in episodes[12:24]:
        exact.add_episode(episode)
    wrapped = DopamineBuffer(capacity=180)
    for episode in episodes[24:]:
        wrapped.add_episode(episode)
    assert partly.add_count < partly.capacity and exact.add_count == exact.capacity
    assert wrapped.add_count > wrapped.capacity and 0 < wrapped.add_count % wrapped.capacity < 180
    return [partly, exact, wrapped]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, buffers: list[DopamineBuffer]) -> Path:
    root = tmp_path_factory.mktemp("dqn_replay")
    for index, buffer in enumerate(buffers):
        write_replay_buffer(root, GAME, index, buffer.observations, buffer.actions, buffer.rewards,
                            buffer.terminals, add_count=buffer.add_count)
    return root


def copy_root(root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "replay"
    shutil.copytree(root, copy)
    return copy


def identify(traj, lookup: dict[bytes, tuple[int, int]]) -> list[tuple[int, int]]:
    """(buffer, position in that buffer's whole-episode list) of every loaded episode, checking its content."""
    found = []
    for start, length in zip(traj.starts, traj.lengths):
        steps = np.arange(start, start + length)
        stacks = traj.observations[steps]  # (T, 4, 84, 84)
        episode = Episode(stacks[:, -1], traj.actions[steps].astype(np.int32), traj.rewards[steps])
        assert episode.key() in lookup, "a loaded episode is not one of the recorded whole episodes"
        np.testing.assert_array_equal(stacks, naive_stacks(episode.frames))
        found.append(lookup[episode.key()])
    return found


def whole_episode_lookup(buffers: list[DopamineBuffer], window: int) -> tuple[dict, list[list[Episode]]]:
    per_buffer = [buffer.whole_episodes_in_window(window) for buffer in buffers]
    lookup = {e.key(): (b, i) for b, eps in enumerate(per_buffer) for i, e in enumerate(eps)}
    return lookup, per_buffer


# ----- writer / reader ------------------------------------------------------------------


def test_writer_produces_the_dqn_replay_layout_and_reader_round_trips(root: Path, buffers: list[DopamineBuffer]) -> None:
    directory = root / GAME / "1" / "replay_logs"
    names = sorted(p.name for p in directory.iterdir())
    expected = sorted(
        f"{prefix}_ckpt.{n}.gz"
        for n in range(3)
        for prefix in ("$store$_observation", "$store$_action", "$store$_reward", "$store$_terminal",
                       "add_count", "invalid_range")
    )
    assert names == expected  # no temporary files left behind either
    wrapped = buffers[2]
    # Independent reader: numpy's own np.load on the decompressed stream.
    with gzip.open(directory / "$store$_action_ckpt.2.gz") as f:
        actions = np.load(f, allow_pickle=False)
    assert actions.dtype == np.int32
    np.testing.assert_array_equal(actions, wrapped.actions)

    read = read_replay_buffer(root, GAME, 2)
    assert read.observations.dtype == np.uint8 and read.observations.shape == (180, 84, 84)
    assert read.rewards.dtype == np.float32 and read.terminals.dtype == np.uint8
    np.testing.assert_array_equal(read.observations, wrapped.observations)
    np.testing.assert_array_equal(read.rewards, wrapped.rewards)
    np.testing.assert_array_equal(read.terminals, wrapped.terminals)
    assert read.add_count == wrapped.add_count
    cursor = wrapped.add_count % 180  # dopamine: rows cursor-1 .. cursor+3 are invalid
    np.testing.assert_array_equal(read.invalid_range, [(cursor - 1 + i) % 180 for i in range(5)])

    partial = read_replay_buffer(root, GAME, 0, max_rows=50)
    np.testing.assert_array_equal(partial.observations, buffers[0].observations[:50])


def test_add_episode_padding_matches_dopamine_add(episodes: list[Episode]) -> None:
    buffer = DopamineBuffer(capacity=sum(len(e) + 3 for e in episodes[:5]))
    for episode in episodes[:5]:
        buffer.add_episode(episode)
    flat = [np.concatenate([getattr(e, name) for e in episodes[:5]]) for name in ("frames", "actions", "rewards")]
    terminals = np.concatenate([np.arange(len(e)) == len(e) - 1 for e in episodes[:5]]).astype(np.uint8)
    padded = add_episode_padding(flat[0], flat[1], flat[2], terminals)
    for ours, theirs in zip(padded, (buffer.observations, buffer.actions, buffer.rewards, buffer.terminals)):
        np.testing.assert_array_equal(ours, theirs)


# ----- FrameStackStore ------------------------------------------------------------------


def test_frame_stack_store_equals_the_four_copies_layout(episodes: list[Episode]) -> None:
    chosen = episodes[:6]
    frames = np.concatenate([e.frames for e in chosen])
    lengths = np.array([len(e) for e in chosen])
    store = FrameStackStore.from_episodes(frames, lengths)
    reference = np.concatenate([naive_stacks(e.frames) for e in chosen])  # (N, 4, 84, 84)
    assert store.shape == reference.shape and len(store) == len(reference)
    np.testing.assert_array_equal(store[np.arange(len(store))], reference)
    # Every episode's first stack is three zero frames then its own first frame: never the previous episode.
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    assert not store[starts][:, :3].any()
    # (B, K) indices, negative indices and slices, as the sampler and users index.
    rng = np.random.default_rng(0)
    index = rng.integers(-len(store), len(store), size=(5, 7))
    np.testing.assert_array_equal(store[index], reference[index])
    np.testing.assert_array_equal(store[3:11:2], reference[3:11:2])
    np.testing.assert_array_equal(store[4], reference[4])


def test_frame_stack_store_with_shared_frames() -> None:
    # Two transitions may share frames (general layout): stacks follow newest_frame / num_previous.
    frames = np.arange(1, 6, dtype=np.uint8)[:, None, None] * np.ones((1, 84, 84), np.uint8)  # frame i filled with i+1
    store = FrameStackStore(frames, newest_frame=np.array([4, 4, 2]), num_previous=np.array([3, 1, 2]))
    values = store[np.arange(3)][:, :, 0, 0]  # (3, 4) one pixel of each stacked frame
    np.testing.assert_array_equal(values, [[2, 3, 4, 5], [0, 0, 4, 5], [0, 1, 2, 3]])


def test_frame_stack_store_rejects_bad_indices_and_conversion() -> None:
    store = FrameStackStore.from_episodes(np.zeros((5, 84, 84), np.uint8), np.array([2, 3]))
    with pytest.raises(IndexError, match="out of range"):
        store[np.array([5])]
    with pytest.raises(IndexError, match="integer"):
        store[np.array([0.5])]
    with pytest.raises(TypeError, match="index it"):
        np.asarray(store)
    with pytest.raises(ValueError, match="reach before frame 0"):
        FrameStackStore(np.zeros((5, 84, 84), np.uint8), np.array([1]), np.array([2]))


# ----- the DT loader --------------------------------------------------------------------


@pytest.mark.parametrize("window", [10_000, 150])
def test_loader_reads_whole_episodes_in_reads_of_exactly_trajectories_per_buffer(
    root: Path, buffers: list[DopamineBuffer], window: int
) -> None:
    per_read = 2
    lookup, per_buffer = whole_episode_lookup(buffers, window)
    assert all(len(eps) >= per_read for eps in per_buffer)
    # Everything that fits in whole reads: the loader must take all of it, and nothing of a partial read.
    takeable = [eps[: len(eps) // per_read * per_read] for eps in per_buffer]
    num_steps = sum(len(e) for eps in takeable for e in eps)
    traj = load_dqn_replay(root, GAME, num_buffers=3, max_buffer_index=2, num_steps=num_steps,
                           trajectories_per_buffer=per_read, seed=7, buffer_capacity=window, show_progress=False)
    assert traj.actions.dtype == np.int64 and traj.rewards.dtype == np.float32
    found = identify(traj, lookup)
    assert sorted(found) == sorted((b, i) for b, eps in enumerate(takeable) for i in range(len(eps)))
    # Reads: per_read consecutive episodes of one buffer, each read continuing where the last one stopped.
    next_position = [0, 0, 0]
    for read in range(0, len(found), per_read):
        chunk = found[read:read + per_read]
        buffer = chunk[0][0]
        assert chunk == [(buffer, next_position[buffer] + k) for k in range(per_read)]
        next_position[buffer] += per_read


def test_loader_stops_once_num_steps_is_reached(root: Path, buffers: list[DopamineBuffer]) -> None:
    lookup, _ = whole_episode_lookup(buffers, 10_000)
    per_read, num_steps = 3, 120
    traj = load_dqn_replay(root, GAME, num_buffers=3, max_buffer_index=2, num_steps=num_steps,
                           trajectories_per_buffer=per_read, seed=1, show_progress=False)
    assert traj.num_episodes % per_read == 0
    last_read = traj.lengths[-per_read:].sum()
    # Documented: at least num_steps, and the last read is the one that crossed it.
    assert traj.num_transitions >= num_steps > traj.num_transitions - last_read
    identify(traj, lookup)
    # The timesteps restart at 0 on each episode's first real frame (padding rows dropped).
    np.testing.assert_array_equal(traj.timesteps()[traj.starts], 0)


def test_loader_is_deterministic_for_a_seed(root: Path) -> None:
    def load(seed: int):
        return load_dqn_replay(root, GAME, num_buffers=3, max_buffer_index=2, num_steps=150,
                               trajectories_per_buffer=2, seed=seed, show_progress=False)

    first, again = load(3), load(3)
    np.testing.assert_array_equal(first.lengths, again.lengths)
    np.testing.assert_array_equal(first.actions, again.actions)
    np.testing.assert_array_equal(first.observations.frames, again.observations.frames)
    others = [load(seed) for seed in (4, 5, 6)]
    assert any(not np.array_equal(o.actions[:100], first.actions[:100]) for o in others)


def test_loader_uses_only_the_last_num_buffers(root: Path, buffers: list[DopamineBuffer]) -> None:
    lookup, _ = whole_episode_lookup(buffers, 10_000)
    traj = load_dqn_replay(root, GAME, num_buffers=2, max_buffer_index=2, num_steps=100,
                           trajectories_per_buffer=2, seed=0, show_progress=False)
    assert {buffer for buffer, _ in identify(traj, lookup)} <= {1, 2}


def test_loader_raises_when_the_buffers_run_out(root: Path) -> None:
    with pytest.raises(ValueError, match="lower num_steps"):
        load_dqn_replay(root, GAME, num_buffers=3, max_buffer_index=2, num_steps=100_000,
                        trajectories_per_buffer=2, seed=0, show_progress=False)


# ----- bad input ------------------------------------------------------------------------


def test_missing_file_is_named_with_the_layout_and_download_command(root: Path, tmp_path: Path) -> None:
    copy = copy_root(root, tmp_path)
    missing = replay_file(copy, GAME, "reward", 1)
    missing.unlink()
    with pytest.raises(ReplayFileError) as error:
        load_dqn_replay(copy, GAME, num_buffers=3, max_buffer_index=2, num_steps=10, seed=0, show_progress=False)
    message = str(error.value)
    assert str(missing) in message and "replay_logs" in message
    assert f"python -m decision_mamba.data.download dqn-replay {GAME} --data-dir {copy}" in message


def _write_raw(path: Path, array: np.ndarray, allow_pickle: bool = False) -> None:
    with gzip.open(path, "wb") as f:
        np.save(f, array, allow_pickle=allow_pickle)


def test_wrong_dtype_and_shape_are_named(root: Path, tmp_path: Path, buffers: list[DopamineBuffer]) -> None:
    copy = copy_root(root, tmp_path)
    action_file = replay_file(copy, GAME, "action", 0)
    _write_raw(action_file, buffers[0].actions.astype(np.int64))
    with pytest.raises(ReplayFileError, match="expected dtype int32, found int64") as error:
        read_replay_buffer(copy, GAME, 0)
    assert str(action_file) in str(error.value)

    observation_file = replay_file(copy, GAME, "observation", 1)
    _write_raw(observation_file, buffers[1].observations[:, :, :80])
    with pytest.raises(ReplayFileError, match=r"expected an array of shape \(C, 84, 84\), found \(\d+, 84, 80\)") as error:
        load_dqn_replay(copy, GAME, num_buffers=1, max_buffer_index=1, num_steps=10, seed=0, show_progress=False)
    assert str(observation_file) in str(error.value)

    terminal_file = replay_file(copy, GAME, "terminal", 2)
    _write_raw(terminal_file, buffers[2].terminals[:-1])
    with pytest.raises(ReplayFileError, match="has 179 rows but the observation file has 180") as error:
        load_dqn_replay(copy, GAME, num_buffers=1, max_buffer_index=2, num_steps=10, seed=0, show_progress=False)
    assert str(terminal_file) in str(error.value)


def test_pickled_arrays_are_never_loaded(root: Path, tmp_path: Path) -> None:
    copy = copy_root(root, tmp_path)
    reward_file = replay_file(copy, GAME, "reward", 0)
    _write_raw(reward_file, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ReplayFileError, match="pickled object array") as error:
        read_replay_buffer(copy, GAME, 0)
    assert str(reward_file) in str(error.value)


@pytest.mark.parametrize("name", ["observation", "terminal"])
def test_truncated_gzip_is_named(root: Path, tmp_path: Path, name: str) -> None:
    copy = copy_root(root, tmp_path)
    path = replay_file(copy, GAME, name, 1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReplayFileError, match="truncated") as error:
        load_dqn_replay(copy, GAME, num_buffers=1, max_buffer_index=1, num_steps=200,
                        trajectories_per_buffer=1, seed=0, show_progress=False)
    assert str(path) in str(error.value)


def test_not_a_gzip_file_is_named(root: Path, tmp_path: Path) -> None:
    copy = copy_root(root, tmp_path)
    path = replay_file(copy, GAME, "action", 1)
    path.write_bytes(b"<html>403 Forbidden</html>")
    with pytest.raises(ReplayFileError, match="truncated or corrupt") as error:
        read_replay_buffer(copy, GAME, 1)
    assert str(path) in str(error.value)


def test_files_without_dopamine_padding_are_rejected(tmp_path: Path, episodes: list[Episode]) -> None:
    chosen = episodes[:4]
    terminals = np.concatenate([np.arange(len(e)) == len(e) - 1 for e in chosen]).astype(np.uint8)
    actions = np.concatenate([e.actions for e in chosen])
    actions[np.concatenate([[0], np.flatnonzero(terminals[:-1]) + 1])] = 1  # real first actions, no padding rows
    write_replay_buffer(tmp_path, GAME, 0, np.concatenate([e.frames for e in chosen]), actions,
                        np.concatenate([e.rewards for e in chosen]), terminals)
    with pytest.raises(ReplayFileError, match="add_episode_padding"):
        load_dqn_replay(tmp_path, GAME, num_buffers=1, max_buffer_index=0, num_steps=10, seed=0, show_progress=False)


def test_bad_arguments_are_explained(root: Path) -> None:
    with pytest.raises(ValueError, match="num_buffers=4 buffers cannot end at max_buffer_index=2"):
        load_dqn_replay(root, GAME, num_buffers=4, max_buffer_index=2, seed=0)
    with pytest.raises(ValueError, match="trajectories_per_buffer must be a positive integer"):
        load_dqn_replay(root, GAME, num_buffers=3, max_buffer_index=2, trajectories_per_buffer=0, seed=0)
    with pytest.raises(ValueError, match=r"observations must be uint8 of shape \(C, 84, 84\)"):
        write_replay_buffer(root, GAME, 9, np.zeros((3, 84, 84), np.float32), [0, 0, 0], [0, 0, 0], [0, 0, 1])


# ----- gzip CRC and length: damage outside the rows the loader needs is caught too ----------


def _stored_root(tmp_path: Path, buffers: list[DopamineBuffer]) -> Path:
    """Buffer 0 written by the writer with compresslevel=0: the frames lie in the file byte for byte,
    so a flipped byte changes a pixel instead of breaking the deflate stream (only the CRC can tell)."""
    root = tmp_path / "stored"
    buffer = buffers[0]
    write_replay_buffer(root, GAME, 0, buffer.observations, buffer.actions, buffer.rewards, buffer.terminals,
                        add_count=buffer.add_count, compresslevel=0)
    return root


def _load_one_buffer(root: Path, **kwargs):
    return load_dqn_replay(root, GAME, num_buffers=1, max_buffer_index=0, num_steps=10,
                           trajectories_per_buffer=1, seed=0, show_progress=False, **kwargs)


@pytest.mark.parametrize("where", ["first frames", "last frames", "crc trailer"])
def test_a_flipped_byte_fails_the_crc_check_naming_the_file(tmp_path: Path, buffers: list[DopamineBuffer],
                                                            where: str) -> None:
    root = _stored_root(tmp_path, buffers)
    path = replay_file(root, GAME, "observation", 0)
    data = bytearray(path.read_bytes())
    intact = _load_one_buffer(root, verify_checksums=True)
    # "first frames": inside the rows the loader reads; "last frames": in rows it does not need
    # (the loader stops early); "crc trailer": the CRC-32 itself (8th to 5th byte from the end).
    offset = {"first frames": len(data) // 8, "last frames": len(data) - 100, "crc trailer": len(data) - 6}[where]
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ReplayFileError, match="truncated or corrupt.*CRC check failed") as error:
        _load_one_buffer(root)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    if where != "first frames":  # the documented switch skips the observation files' check
        skipped = _load_one_buffer(root, verify_checksums=False)
        np.testing.assert_array_equal(skipped.observations.frames, intact.observations.frames)


@pytest.mark.parametrize("name", ["observation", "action", "add_count"])
def test_a_cut_off_gzip_trailer_is_caught(tmp_path: Path, buffers: list[DopamineBuffer], name: str) -> None:
    root = _stored_root(tmp_path, buffers)
    path = replay_file(root, GAME, name, 0)
    path.write_bytes(path.read_bytes()[:-4])  # every row is there; gzip's length field is not
    with pytest.raises(ReplayFileError, match="truncated or corrupt") as error:
        _load_one_buffer(root)
    assert str(path) in str(error.value)


def test_bytes_after_the_array_are_refused(tmp_path: Path, buffers: list[DopamineBuffer]) -> None:
    root = _stored_root(tmp_path, buffers)
    path = replay_file(root, GAME, "reward", 0)
    with gzip.open(path, "wb") as f:  # a valid gzip stream (CRC fine) holding more than the array
        np.save(f, buffers[0].rewards.astype(np.float32))
        f.write(b"extra")
    with pytest.raises(ReplayFileError, match="data follows the .npy array") as error:
        read_replay_buffer(root, GAME, 0)
    assert str(path) in str(error.value)


def test_missing_files_hint_names_config_keys_only(root: Path, tmp_path: Path) -> None:
    copy = copy_root(root, tmp_path)
    replay_file(copy, GAME, "terminal", 0).unlink()
    with pytest.raises(ReplayFileError) as error:
        load_dqn_replay(copy, GAME, num_buffers=3, max_buffer_index=2, num_steps=10, seed=0, show_progress=False)
    message = str(error.value)
    assert "max_buffer_index" not in message and "\n" not in message
    assert "set num_buffers=2 to read only buffers 1..2" in message
