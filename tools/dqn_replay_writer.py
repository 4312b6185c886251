"""The DQN-replay writer: buffers in dopamine's exact checkpoint layout (atari_replay.py).

The project only reads DQN-replay data (data/atari_replay.py, the Decision Transformer
training set); this module writes it, for `python tools/record_atari.py`
(a small dataset recorded from the real emulator, `make run-atari`) and for the tests and
benchmarks, which build buffers whose every row is known. The layout and the padding
conventions it follows are described in atari_replay.py's docstring.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from decision_mamba.atomic import atomic_path
from decision_mamba.data.atari_replay import (FRAME_SHAPE, PADDING_ROWS, STACK_SIZE, STORE_ARRAYS, STORE_SPECS,
                                              UPDATE_HORIZON, replay_dir, replay_file)

__all__ = ["write_replay_buffer", "add_episode_padding"]


def _save_npy_gz_atomic(path: Path, array: np.ndarray, compresslevel: int) -> None:
    # Write next to the target, then rename: a crash never leaves a half-written file
    # under the final name (the reader would take it for a truncated download).
    with atomic_path(path) as tmp, open(tmp, "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=compresslevel) as gz:
        np.save(gz, array, allow_pickle=False)


def write_replay_buffer(
    root: str | os.PathLike,
    game: str,
    index: int,
    observations: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    terminals: np.ndarray,
    *,
    add_count: int | None = None,
    compresslevel: int = 6,
) -> Path:
    """Write one checkpoint in the exact DQN-replay layout; returns its directory.

    The arrays are written as given, row for row (use `add_episode_padding` first to get
    dopamine's 3 zero transitions before every episode). add_count defaults to the
    number of rows (a buffer filled once, from empty); a larger value places dopamine's
    write cursor at add_count % C. Each file is written atomically.
    """
    observations = np.asarray(observations)
    if observations.dtype != np.uint8 or observations.ndim != 3 or observations.shape[1:] != FRAME_SHAPE:
        raise ValueError(
            f"observations must be uint8 of shape (C, 84, 84), got {observations.dtype} {observations.shape}"
        )
    num_rows = len(observations)
    store = {"observation": np.ascontiguousarray(observations)}
    for name, values in (("action", actions), ("reward", rewards), ("terminal", terminals)):
        values = np.asarray(values)
        if values.shape != (num_rows,):
            raise ValueError(f"{name}s must have shape ({num_rows},) to match the observations, got {values.shape}")
        store[name] = values.astype(STORE_SPECS[name][0])
        if name != "reward" and not np.array_equal(store[name], values):  # integer columns must convert exactly
            raise ValueError(f"{name}s do not fit dopamine's dtype {STORE_SPECS[name][0]} without change")
    if (store["action"] < 0).any() or not np.isin(store["terminal"], (0, 1)).all():
        raise ValueError("actions must be non-negative and terminals 0 or 1")
    add_count = num_rows if add_count is None else int(add_count)
    if add_count < 0:
        raise ValueError(f"add_count must be a non-negative number of added rows, got {add_count}")
    # Dopamine's invalid range: the update_horizon rows before the cursor and the
    # stack_size rows from it on (modulo the capacity).
    cursor = add_count % num_rows if num_rows else 0
    invalid_range = np.array(
        [(cursor - UPDATE_HORIZON + i) % max(num_rows, 1) for i in range(STACK_SIZE + UPDATE_HORIZON)], dtype=np.int64
    )
    directory = replay_dir(root, game)
    directory.mkdir(parents=True, exist_ok=True)
    for name in STORE_ARRAYS:
        _save_npy_gz_atomic(replay_file(root, game, name, index), store[name], compresslevel)
    _save_npy_gz_atomic(replay_file(root, game, "add_count", index), np.array(add_count, dtype=np.int64), compresslevel)
    _save_npy_gz_atomic(replay_file(root, game, "invalid_range", index), invalid_range, compresslevel)
    return directory


def add_episode_padding(
    observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray, terminals: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Insert dopamine's 3 zero transitions before every episode of a flat recording.

    Episodes end after each terminal; the rows are returned in the order dopamine's
    `add` stores them in an empty buffer (the dtypes of the inputs are kept).
    """
    terminals = np.asarray(terminals)
    num_rows = len(terminals)
    episode_starts = np.concatenate([[0], np.flatnonzero(terminals[:-1]) + 1]) if num_rows else np.zeros(0, np.int64)
    # Every row moves down by PADDING_ROWS for each episode that starts at or before it.
    shift = PADDING_ROWS * np.cumsum(np.isin(np.arange(num_rows), episode_starts))
    destination = np.arange(num_rows) + shift
    total = num_rows + PADDING_ROWS * len(episode_starts)
    padded = []
    for values in (observations, actions, rewards, terminals):
        values = np.asarray(values)
        out = np.zeros((total,) + values.shape[1:], dtype=values.dtype)
        out[destination] = values
        padded.append(out)
    return padded[0], padded[1], padded[2], padded[3]
