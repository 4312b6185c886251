"""D4RL (gym MuJoCo) datasets: the v2 hdf5 layout, DT-style pickles and Minari.

The D4RL v2 hdf5 layout (docs/data.md): one flat array per key, N transitions in total,
  observations       (N, obs_dim) float32
  actions            (N, act_dim) float32
  rewards            (N,)         float32
  terminals          (N,)         bool     the step ended the episode in a terminal state
  timeouts           (N,)         bool     the step ended the episode by the time limit
  next_observations  (N, obs_dim) float32  (optional here)
Episodes are cut after every step whose terminal or timeout flag is set.

Every loader returns (Trajectories, metadata dict). `load_dataset` is the one entry point:
a D4RL name ("hopper-medium-v2"), a file path (.hdf5 / .h5 / .pkl) or "minari:<dataset id>".
Downloaded D4RL files are looked up as {data_dir}/{env}_{dataset}-v2.hdf5, the file names
of the D4RL server (see decision_mamba.data.download).
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from decision_mamba.atomic import atomic_path
from decision_mamba.data.trajectories import Trajectories
from decision_mamba.errors import CorruptFileError, DataError, MissingFileError

from decision_mamba.envs import GYM_ENV_NAMES

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")

D4RL_ENVS = tuple(GYM_ENV_NAMES)  # hopper, halfcheetah, walker2d (one home: envs.py)
FILE_SUFFIXES = (".hdf5", ".h5", ".pkl")
D4RL_DATASETS = ("random", "medium", "expert", "medium-replay", "medium-expert", "full-replay")
DEFAULT_DATA_DIR = Path("data")  # the gym configs' data_dir default
DOWNLOAD_MODULE = "python -m decision_mamba.data.download"


# ----- dataset names -----------------------------------------------------------------


def is_file_dataset(spec: str | os.PathLike) -> bool:
    """Is the config's dataset a file (a path, or a name ending .hdf5 / .h5 / .pkl) rather
    than a D4RL name? The one rule: D4RL names have neither a folder nor a suffix."""
    text = str(spec)
    return "/" in text or os.sep in text or text.lower().endswith(FILE_SUFFIXES)



def parse_d4rl_name(name: str) -> tuple[str, str]:
    """"hopper-medium-replay-v2" (or "hopper_medium_replay-v2", "hopper-medium-replay") -> ("hopper", "medium-replay")."""
    normalized = name.strip().lower().replace("_", "-")
    normalized = re.sub(r"-v2$", "", normalized)
    env, _, dataset = normalized.partition("-")
    if env not in D4RL_ENVS or dataset not in D4RL_DATASETS:
        raise DataError(
            f"{name!r} is not a D4RL MuJoCo v2 dataset name; expected <env>-<dataset>-v2 with env in "
            f"{', '.join(D4RL_ENVS)} and dataset in {', '.join(D4RL_DATASETS)} (e.g. hopper-medium-v2)"
        )
    return env, dataset


def d4rl_file_name(env: str, dataset: str) -> str:
    """Name of the file on the D4RL server, e.g. ("hopper", "medium-replay") -> "hopper_medium_replay-v2.hdf5"."""
    return f"{env}_{dataset.replace('-', '_')}-v2.hdf5"


def d4rl_source_files(name: str) -> list[str]:
    """Files a D4RL dataset is read from. medium-expert is built from medium and expert, as in DT."""
    env, dataset = parse_d4rl_name(name)
    if dataset == "medium-expert":
        return [d4rl_file_name(env, "medium"), d4rl_file_name(env, "expert")]
    return [d4rl_file_name(env, dataset)]


def d4rl_download_command(name: str, data_dir: str | os.PathLike | None = None) -> str:
    env, dataset = parse_d4rl_name(name)
    command = f"{DOWNLOAD_MODULE} d4rl {env}-{dataset}-v2"
    if data_dir is not None:
        command += f" --data-dir {data_dir}"
    return command


def _download_hint(path: Path) -> str:
    """How to get the file: for a D4RL file name the command (to copy), else where data comes from."""
    match = re.fullmatch(r"([a-z0-9]+)_([a-z_]+)-v2\.hdf5", path.name)
    if match:
        try:
            return f"download it with: {d4rl_download_command(f'{match[1]}-{match[2]}-v2', path.parent)}"
        except ValueError:
            pass
    # Not a name D4RL uses: no download brings it; say so rather than print a command with blanks.
    return (f"check the path ({path.name} is no D4RL file name, so no download brings it; D4RL's files come "
            f"with e.g. {d4rl_download_command('hopper-medium-v2', path.parent)}, and "
            f"python tools/generate_dataset.py makes data without one)")


# ----- writer ------------------------------------------------------------------------

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

    # Readers never see a half-written file.
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for key, array in arrays.items():
            if compress:
                f.create_dataset(key, data=array, compression="gzip", shuffle=True)
            else:
                f.create_dataset(key, data=array)
        for key, value in attributes.items():
            f.attrs[key] = value
    return path


# ----- readers -----------------------------------------------------------------------


def _attribute_to_python(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_d4rl_arrays(path: str | os.PathLike, *, next_observations: bool = False
                     ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The flat arrays of a file in the D4RL v2 hdf5 layout, as stored, and its root attributes.

    The one reader of the layout (load_d4rl_hdf5 and data/generate.py read through it).
    next_observations=True adds that array, None when the file has none."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"D4RL dataset file {path} not found"
            + (" (it is a directory)" if path.is_dir() else "")
            + f"; {_download_hint(path)}"
        )
    try:
        with h5py.File(path, "r") as f:
            missing = [key for key in REQUIRED_KEYS if key not in f]
            if missing:
                raise DataError(
                    f"{path} lacks the D4RL keys {missing} (it has {sorted(f.keys())}); "
                    f"a D4RL v2 file needs {list(REQUIRED_KEYS)}"
                )
            arrays = {key: f[key][()] for key in REQUIRED_KEYS}
            if next_observations:
                arrays["next_observations"] = f["next_observations"][()] if "next_observations" in f else None
            metadata = {key: _attribute_to_python(value) for key, value in f.attrs.items()}
    except OSError as error:
        raise CorruptFileError(
            f"cannot read {path} as an hdf5 file ({error}); it is truncated or corrupt. "
            f"Delete it and get it again: {_download_hint(path)}"
        ) from error
    return arrays, metadata


def load_d4rl_hdf5(path: str | os.PathLike, drop_unterminated_tail: bool = False) -> tuple[Trajectories, dict[str, Any]]:
    """Read a file in the D4RL v2 hdf5 layout; episodes end after a terminal or timeout step.

    The steps after the last flagged one (D4RL's files end mid-episode) are kept as a last
    episode, unless drop_unterminated_tail (the release's: DT's converter never saves it).

    Returns the trajectories and the file's root attributes (empty for the original D4RL files).
    """
    path = Path(path)
    arrays, metadata = read_d4rl_arrays(path)

    lengths = {key: len(array) for key, array in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise DataError(f"{path}: the arrays have different numbers of rows {lengths}; the file is corrupt")
    rewards = arrays["rewards"]
    if rewards.ndim == 2 and rewards.shape[1] == 1:
        rewards = rewards[:, 0]  # some converters store (N, 1) rewards
    episode_ended = np.logical_or(arrays["terminals"].reshape(-1), arrays["timeouts"].reshape(-1))
    if drop_unterminated_tail and not episode_ended[-1]:
        flagged = np.flatnonzero(episode_ended)
        if len(flagged) == 0:
            raise ValueError(f"{path}: no step is flagged terminal or timeout, so dropping the unterminated "
                             f"tail leaves nothing; set drop_unterminated_tail=false")
        keep = int(flagged[-1]) + 1
        arrays = {key: array[:keep] for key, array in arrays.items()}
        rewards, episode_ended = rewards[:keep], episode_ended[:keep]
    try:
        trajectories = Trajectories.from_flat(arrays["observations"], arrays["actions"], rewards, episode_ended)
    except ValueError as error:
        raise DataError(f"{path}: {error}") from error
    return trajectories, metadata


def load_pickle_trajectories(
    path: str | os.PathLike, allow_pickle: bool = False
) -> tuple[Trajectories, dict[str, Any]]:
    """Read a Decision-Transformer-style .pkl: a list of episodes, each a dict of arrays
    with observations, actions, rewards (and terminals / dones, next_observations, unused here).

    Unpickling runs code stored in the file, so it is refused unless allow_pickle=True.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"pickle dataset {path} not found; check the config's dataset (a path to a .pkl file)")
    if not allow_pickle:
        raise DataError(
            f"refusing to unpickle {path}: loading a pickle can run arbitrary code. "
            "Pass allow_pickle=True (config: allow_pickle=true) only for files you trust, "
            "or use the D4RL hdf5 file instead."
        )
    with open(path, "rb") as f:
        episodes = pickle.load(f)
    if not isinstance(episodes, (list, tuple)) or not all(isinstance(e, dict) for e in episodes):
        raise DataError(
            f"{path} holds a {type(episodes).__name__}; expected a list of episode dicts "
            "with observations, actions, rewards (the Decision Transformer .pkl format)"
        )
    try:
        trajectories = Trajectories.from_episodes(episodes)
    except ValueError as error:
        raise DataError(f"{path}: {error}") from error
    return trajectories, {}


def flatten_observations(space: Any, observations: Any) -> np.ndarray:
    """A batch of (possibly nested) Dict observations as one float32 array (T, obs_dim).

    The one flattening rule of this project, for the data and (through gymnasium's
    FlattenObservation, which this reproduces: tests/test_suites.py) for the evaluation
    environment alike: the leaves are concatenated in the Dict space's key order, which
    gymnasium sorts (achieved_goal, desired_goal, observation; kitchen's nested goal dicts
    likewise, task by task in sorted order), each leaf flattened row-major. A Box passes through.
    """
    import gymnasium as gym

    if isinstance(space, gym.spaces.Dict):
        parts = [flatten_observations(sub, observations[key]) for key, sub in space.spaces.items()]
        return np.concatenate(parts, axis=1)
    if isinstance(space, gym.spaces.Box):
        array = np.asarray(observations, dtype=np.float32)
        return array.reshape(len(array), -1)
    raise DataError(f"observations of type {type(space).__name__} cannot be flattened; "
                    "only Box and (nested) Dict-of-Box observation spaces are supported")


def load_minari(dataset_id_or_path: str | os.PathLike) -> tuple[Trajectories, dict[str, Any]]:
    """Read a Minari dataset: an id known locally ("mujoco/hopper/medium-v0", looked up under
    MINARI_DATASETS_PATH or ~/.minari/datasets) or the path of a dataset directory.

    Minari stores T+1 observations per episode (the final one included); the last is dropped.
    Dict observations (mazes, kitchen) are flattened by `flatten_observations`. The metadata
    holds the environment to evaluate in (`eval_env_spec`: the dataset's evaluation
    environment, which its reference scores were measured on, else the recording one, as
    JSON) and the reference scores (None when the dataset has none).
    """
    import gymnasium as gym
    import minari  # imported here: minari is slow to import and only this reader needs it

    local = Path(dataset_id_or_path)
    if local.exists():
        # Accept the dataset directory or its data/ directory (metadata.json + main_data.hdf5).
        dataset = minari.MinariDataset(local / "data" if (local / "data").is_dir() else local)
    else:
        dataset_id = str(dataset_id_or_path)
        try:
            dataset = minari.load_dataset(dataset_id)
        except FileNotFoundError as error:
            # minari's own text suggests its API's download=True, which means nothing here
            where = os.environ.get("MINARI_DATASETS_PATH") or "~/.minari/datasets"
            raise MissingFileError(
                f"Minari dataset {dataset_id!r} not found locally (looked under {where}); download it with: "
                f"{DOWNLOAD_MODULE} minari {dataset_id}"
            ) from None

    space = dataset.observation_space
    episodes = []
    for episode in dataset.iterate_episodes():
        observations = flatten_observations(space, episode.observations)
        episodes.append({"observations": observations[:-1], "actions": episode.actions, "rewards": episode.rewards})
    env_spec = dataset.spec.env_spec
    stored = dataset.storage.metadata
    # The evaluation environment minari itself recovers (recover_environment(eval_env=True)), as
    # minari parsed it (it mends specs written by older gymnasium versions); its public way
    # builds the environment, so only where that parsed spec is not found.
    eval_spec = env_spec
    if stored.get("eval_env_spec") is not None:
        eval_spec = getattr(dataset, "_eval_env_spec", None) or dataset.recover_environment(eval_env=True).spec
    metadata = {
        "dataset_id": dataset.spec.dataset_id,
        "env_id": env_spec.id if env_spec is not None else None,
        "eval_env_spec": eval_spec.to_json() if eval_spec is not None else None,
        "ref_min_score": stored.get("ref_min_score"),
        "ref_max_score": stored.get("ref_max_score"),
        "dict_observations": not isinstance(space, gym.spaces.Box),
        "data_path": str(dataset.spec.data_path),
    }
    try:
        trajectories = Trajectories.from_episodes(episodes)
    except ValueError as error:
        raise DataError(f"Minari dataset {dataset.spec.dataset_id}: {error}") from error
    return trajectories, metadata


def load_dataset(
    spec: str | os.PathLike,
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    *,
    allow_pickle: bool = False,
    drop_unterminated_tail: bool = False,
) -> tuple[Trajectories, dict[str, Any]]:
    """One entry point for every gym dataset source (drop_unterminated_tail: hdf5 files only).

    spec is one of
      - a D4RL name: "hopper-medium-v2", "walker2d-medium-replay-v2", ... read from data_dir;
        "<env>-medium-expert-v2" concatenates the medium and expert trajectories (as DT does);
      - a file path ending in .hdf5 / .h5 (D4RL layout) or .pkl (needs allow_pickle=True);
      - "minari:<dataset id or path>", e.g. "minari:mujoco/hopper/medium-v0".
    """
    spec_text = str(spec)
    if spec_text.startswith("minari:"):
        return load_minari(spec_text.removeprefix("minari:"))
    if is_file_dataset(spec_text):
        suffix = Path(spec_text).suffix.lower()
        if suffix in (".hdf5", ".h5"):
            return load_d4rl_hdf5(spec_text, drop_unterminated_tail)
        if suffix == ".pkl":
            return load_pickle_trajectories(spec_text, allow_pickle=allow_pickle)
        raise DataError(f"dataset {spec_text!r} is a path but not a .hdf5 / .h5 (D4RL layout) or .pkl file; "
                        f"for a Minari dataset folder write minari:{spec_text}")

    try:
        file_names = d4rl_source_files(spec_text)
    except ValueError as error:
        raise DataError(
            f"cannot interpret dataset {spec_text!r}: not a .hdf5/.h5/.pkl path, not 'minari:<id>', "
            f"and {error}"
        ) from None
    data_dir = Path(data_dir)
    paths = [data_dir / file_name for file_name in file_names]
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise MissingFileError(
            f"dataset {spec_text} needs {', '.join(map(str, missing))}, not found; download with: "
            f"{d4rl_download_command(spec_text, data_dir)}"
        )
    parts = [load_d4rl_hdf5(path, drop_unterminated_tail) for path in paths]
    trajectories = Trajectories.concat(*(part[0] for part in parts))
    env, dataset = parse_d4rl_name(spec_text)
    metadata = {"dataset": f"{env}-{dataset}-v2", "env": env, "files": [str(path) for path in paths]}
    return trajectories, metadata
