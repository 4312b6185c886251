"""D4RL (gym MuJoCo) datasets: the v2 hdf5 layout, DT-style pickles and Minari.

The D4RL v2 hdf5 layout (REFERENCE §4): one flat array per key, N transitions in total,
  observations       (N, obs_dim) float32
  actions            (N, act_dim) float32
  rewards            (N,)         float32
  terminals          (N,)         bool     the step ended the episode in a terminal state
  timeouts           (N,)         bool     the step ended the episode by the time limit
  next_observations  (N, obs_dim) float32  (optional here)
Episodes are cut after every step whose terminal or timeout flag is set.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")

_METADATA_SCALARS = (str, bytes, bool, int, float, np.generic)


def _check_metadata_value(key: str, value: Any) -> Any:
    # hdf5 attributes hold strings, numbers and numeric arrays; anything else
    # (None, dicts, objects) would fail deep inside h5py with an unhelpful message.
    if isinstance(value, _METADATA_SCALARS):
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        array = np.asarray(value)
        if array.dtype.kind in "biuf":
            return array
    raise TypeError(
        f"metadata[{key!r}] = {value!r} cannot be stored as an hdf5 attribute; "
        "use a string, a number or a list / array of numbers"
    )


def write_d4rl_hdf5(
    path: str | os.PathLike,
    *,
    observations: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    terminals: np.ndarray,
    timeouts: np.ndarray,
    next_observations: np.ndarray | None = None,
    metadata: dict[str, Any] | None = None,
    compress: bool = False,
) -> Path:
    """Write a dataset in the D4RL v2 hdf5 layout, atomically; returns the path.

    metadata goes into the root attributes (e.g. env_id, seed, behaviour policy return).
    compress=True stores every array gzip-compressed (smaller, slower to write and read).
    """
    path = Path(path)
    arrays: dict[str, np.ndarray] = {
        "observations": np.asarray(observations, dtype=np.float32),
        "actions": np.asarray(actions, dtype=np.float32),
        "rewards": np.asarray(rewards, dtype=np.float32),
        "terminals": np.asarray(terminals, dtype=bool),
        "timeouts": np.asarray(timeouts, dtype=bool),
    }
    if next_observations is not None:
        arrays["next_observations"] = np.asarray(next_observations, dtype=np.float32)

    num_transitions = len(arrays["rewards"])
    expected_ndim = {"observations": 2, "actions": 2, "next_observations": 2,
                     "rewards": 1, "terminals": 1, "timeouts": 1}
    for key, array in arrays.items():
        if array.ndim != expected_ndim[key]:
            raise ValueError(
                f"{key} must have {expected_ndim[key]} dimension(s) in the D4RL layout, "
                f"got shape {array.shape}"
            )
        if len(array) != num_transitions:
            raise ValueError(
                f"{key} has {len(array)} rows but rewards has {num_transitions}; "
                "every array needs one row per transition"
            )
    if "next_observations" in arrays and arrays["next_observations"].shape != arrays["observations"].shape:
        raise ValueError(
            f"next_observations has shape {arrays['next_observations'].shape}, "
            f"observations {arrays['observations'].shape}; they must match"
        )
    for key in ("observations", "actions", "rewards", "next_observations"):
        if key in arrays and not np.isfinite(arrays[key]).all():
            bad = int(np.flatnonzero(~np.isfinite(arrays[key].reshape(num_transitions, -1)).all(axis=1))[0])
            raise ValueError(f"{key} has a NaN or inf value at transition {bad}; refusing to write it")
    attributes = {key: _check_metadata_value(key, value) for key, value in (metadata or {}).items()}

    path.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the destination, then os.replace: readers never see a half-written file.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp_name, "w") as f:
            for key, array in arrays.items():
                if compress:
                    f.create_dataset(key, data=array, compression="gzip", shuffle=True)
                else:
                    f.create_dataset(key, data=array)
            for key, value in attributes.items():
                f.attrs[key] = value
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path
