"""The in-memory offline RL dataset shared by the gym (D4RL) and Atari pipelines.

All transitions live in flat arrays, episode after episode:

    flat index   0 1 2 3 | 4 5 | 6 7 8        starts  = [0, 4, 6]
    episode      0 0 0 0 | 1 1 | 2 2 2        lengths = [4, 2, 3]

Episodes are stored in order and back to back (starts[e + 1] = starts[e] + lengths[e],
sum(lengths) = N), which lets every per-episode quantity (returns-to-go, timesteps)
be computed with cumulative sums instead of a Python loop over episodes.

`observations` is either an (N, *obs_shape) array or any object that answers
`observations[idx]` for an int64 index array `idx` of any shape with an array of shape
idx.shape + obs_shape (the Atari pipeline plugs a frame-stacking store in here, so the
stacked frames never need to be materialised).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np


def first_nonfinite_row(array: np.ndarray) -> int | None:
    """Index of the first row holding a NaN or inf, None if every value is finite."""
    if array.dtype.kind not in "fc":
        return None  # integer / bool arrays cannot hold NaN or inf
    finite = np.isfinite(array)
    if finite.all():
        return None
    finite_rows = finite.reshape(len(array), -1).all(axis=1)
    return int(np.flatnonzero(~finite_rows)[0])


def _check_finite(name: str, array: np.ndarray) -> None:
    bad = first_nonfinite_row(array)
    if bad is not None:
        raise ValueError(
            f"{name} contains NaN or inf (first at transition {bad}); "
            "the dataset is corrupt or was written from a diverged policy: re-create or re-download it"
        )


def _as_actions(actions: Any) -> np.ndarray:
    # Continuous actions: (N, act_dim) float32. Discrete actions: (N,) int64.
    actions = np.asarray(actions)
    if actions.dtype.kind in "iu":
        if actions.ndim != 1:
            raise ValueError(f"discrete actions must have shape (N,), got {actions.shape}")
        return actions.astype(np.int64, copy=False)
    if actions.dtype.kind == "f":
        if actions.ndim != 2:
            raise ValueError(
                f"continuous actions must have shape (N, act_dim), got {actions.shape} "
                "(reshape a 1-D action array to (N, 1))"
            )
        return actions.astype(np.float32, copy=False)
    raise ValueError(f"actions must be float (continuous) or integer (discrete), got dtype {actions.dtype}")


@dataclass(eq=False)  # element-wise array comparison has no single truth value
class Trajectories:
    """Episodes of (observation, action, reward), stored flat; see the module docstring."""

    observations: Any  # (N, *obs_shape) ndarray, or a fancy-indexable store
    actions: np.ndarray  # (N, act_dim) float32 or (N,) int64
    rewards: np.ndarray  # (N,) float32
    starts: np.ndarray  # (E,) int64, flat index of each episode's first step
    lengths: np.ndarray  # (E,) int64, number of steps of each episode
    # Derived arrays, computed on first use. The dataset is treated as immutable.
    _cache: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.observations, np.ndarray) and self.observations.dtype.kind == "f":
            self.observations = self.observations.astype(np.float32, copy=False)
        self.actions = _as_actions(self.actions)
        self.rewards = np.asarray(self.rewards, dtype=np.float32)
        self.starts = np.asarray(self.starts, dtype=np.int64)
        self.lengths = np.asarray(self.lengths, dtype=np.int64)
        self._validate()

    def _validate(self) -> None:
        if self.rewards.ndim != 1:
            raise ValueError(f"rewards must have shape (N,), got {self.rewards.shape}")
        n = len(self.rewards)
        if len(self.actions) != n:
            raise ValueError(f"actions has {len(self.actions)} rows but rewards has {n}; they must match")
        if hasattr(self.observations, "__len__") and len(self.observations) != n:
            raise ValueError(f"observations has {len(self.observations)} rows but rewards has {n}; they must match")
        if self.starts.ndim != 1 or self.starts.shape != self.lengths.shape:
            raise ValueError(
                f"starts and lengths must be 1-D arrays of the same length, got shapes "
                f"{self.starts.shape} and {self.lengths.shape}"
            )
        if len(self.lengths) == 0 or n == 0:
            raise ValueError("the dataset holds no transitions")
        if (self.lengths <= 0).any():
            bad = int(np.flatnonzero(self.lengths <= 0)[0])
            raise ValueError(f"episode {bad} has length {self.lengths[bad]}; every episode needs at least one step")
        expected_starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        if not np.array_equal(self.starts, expected_starts) or self.lengths.sum() != n:
            raise ValueError(
                "episodes must be stored in order and back to back: starts must be "
                f"[0, cumsum(lengths)[:-1]] and sum(lengths) = N = {n} "
                f"(got sum(lengths) = {int(self.lengths.sum())})"
            )
        if isinstance(self.observations, np.ndarray):
            _check_finite("observations", self.observations)
        _check_finite("actions", self.actions)
        _check_finite("rewards", self.rewards)

    def __repr__(self) -> str:
        actions = f"{self.actions.dtype} {self.actions.shape[1:]}"
        return (
            f"Trajectories(episodes={self.num_episodes}, transitions={self.num_transitions}, "
            f"obs_shape={self.obs_shape}, actions={actions})"
        )

    # ----- sizes ---------------------------------------------------------------------

    @property
    def num_episodes(self) -> int:
        return len(self.lengths)

    @property
    def num_transitions(self) -> int:
        return len(self.rewards)

    @property
    def obs_shape(self) -> tuple[int, ...]:
        if isinstance(self.observations, np.ndarray):
            return tuple(self.observations.shape[1:])
        return tuple(self.observations[np.zeros(1, dtype=np.int64)].shape[1:])

    @property
    def is_discrete(self) -> bool:
        return self.actions.ndim == 1

    @property
    def act_dim(self) -> int:
        """Size of a continuous action; for discrete actions, 1 + the largest action id."""
        return int(self.actions.max()) + 1 if self.is_discrete else self.actions.shape[1]

    # ----- derived per-step quantities -----------------------------------------------

    def _cached(self, key: str, compute) -> np.ndarray:
        if key not in self._cache:
            array = compute()
            array.flags.writeable = False  # shared by every caller: nobody may modify it
            self._cache[key] = array
        return self._cache[key]

    @property
    def episode_ends(self) -> np.ndarray:
        """(E,) int64, one past the flat index of each episode's last step."""
        return self.starts + self.lengths

    @property
    def episode_returns(self) -> np.ndarray:
        """(E,) float64, undiscounted return of each episode."""
        return self._cached("episode_returns", lambda: np.add.reduceat(self.rewards.astype(np.float64), self.starts))

    def episode_index(self) -> np.ndarray:
        """(N,) int64, the episode each transition belongs to."""
        return self._cached("episode_index", lambda: np.repeat(np.arange(self.num_episodes), self.lengths))

    def timesteps(self) -> np.ndarray:
        """(N,) int64, step within the episode (0 at each episode's first step)."""
        return self._cached(
            "timesteps", lambda: np.arange(self.num_transitions) - np.repeat(self.starts, self.lengths)
        )

    def returns_to_go(self) -> np.ndarray:
        """(N,) float32, undiscounted sum of rewards from each step to its episode's end."""

        def compute() -> np.ndarray:
            # With c = cumsum(r) (float64, so 1e6 summed rewards lose nothing):
            #   rtg[i] = sum(r[i:end]) = c[end - 1] - c[i] + r[i].
            rewards = self.rewards.astype(np.float64)
            cumulative = np.cumsum(rewards)
            episode_total_until = np.repeat(cumulative[self.episode_ends - 1], self.lengths)
            return (episode_total_until - cumulative + rewards).astype(np.float32)

        return self._cached("returns_to_go", compute)

    def episode(self, index: int) -> dict[str, np.ndarray]:
        """Observations, actions and rewards of one episode (observations need an ndarray store)."""
        if not -self.num_episodes <= index < self.num_episodes:
            raise IndexError(f"episode {index} out of range for {self.num_episodes} episodes")
        begin = int(self.starts[index])
        steps = slice(begin, begin + int(self.lengths[index]))
        observations = self.observations[np.arange(steps.start, steps.stop)]
        return {"observations": observations, "actions": self.actions[steps], "rewards": self.rewards[steps]}

    # ----- construction --------------------------------------------------------------

    @classmethod
    def from_episodes(cls, episodes: Sequence[Mapping[str, Any]]) -> "Trajectories":
        """Build from a list of episodes, each a dict with observations, actions, rewards (T rows each)."""
        if len(episodes) == 0:
            raise ValueError("from_episodes needs at least one episode, got an empty list")
        for i, episode in enumerate(episodes):
            missing = [key for key in ("observations", "actions", "rewards") if key not in episode]
            if missing:
                raise ValueError(f"episode {i} lacks {missing}; it has keys {sorted(episode)}")
            lengths = {key: len(episode[key]) for key in ("observations", "actions", "rewards")}
            if len(set(lengths.values())) != 1:
                raise ValueError(f"episode {i} has arrays of different lengths: {lengths}")
        lengths = np.array([len(episode["rewards"]) for episode in episodes], dtype=np.int64)
        return cls(
            observations=np.concatenate([np.asarray(e["observations"]) for e in episodes]),
            actions=np.concatenate([np.asarray(e["actions"]) for e in episodes]),
            rewards=np.concatenate([np.asarray(e["rewards"]).reshape(-1) for e in episodes]),
            starts=np.concatenate([[0], np.cumsum(lengths)[:-1]]),
            lengths=lengths,
        )

    @classmethod
    def concat(cls, *parts: "Trajectories") -> "Trajectories":
        """The episodes of every part, in order (e.g. medium then expert for medium-expert)."""
        if not parts:
            raise ValueError("concat needs at least one Trajectories")
        if not all(isinstance(p.observations, np.ndarray) for p in parts):
            raise TypeError("concat needs observations stored as numpy arrays, not custom stores")
        shapes = {p.obs_shape for p in parts}
        action_kinds = {(p.actions.dtype, p.actions.shape[1:]) for p in parts}
        if len(shapes) != 1 or len(action_kinds) != 1:
            raise ValueError(
                f"cannot concatenate datasets with different observation shapes {sorted(shapes)} "
                f"or action dtypes / shapes {sorted(map(str, action_kinds))}"
            )
        lengths = np.concatenate([p.lengths for p in parts])
        return cls(
            observations=np.concatenate([p.observations for p in parts]),
            actions=np.concatenate([p.actions for p in parts]),
            rewards=np.concatenate([p.rewards for p in parts]),
            starts=np.concatenate([[0], np.cumsum(lengths)[:-1]]),
            lengths=lengths,
        )

    @classmethod
    def from_flat(
        cls, observations: Any, actions: Any, rewards: Any, episode_ended: np.ndarray
    ) -> "Trajectories":
        """Split flat arrays into episodes after every step where episode_ended is True.

        A final stretch of steps without an end flag (a recording cut short) is kept as
        the last episode.
        """
        episode_ended = np.asarray(episode_ended, dtype=bool).reshape(-1)
        n = len(episode_ended)
        if n == 0:
            raise ValueError("the dataset holds no transitions")
        if len(rewards) != n:
            raise ValueError(f"rewards has {len(rewards)} rows but the episode-end flags have {n}; they must match")
        ends = np.flatnonzero(episode_ended) + 1  # one past each episode's last step
        if len(ends) == 0 or ends[-1] != n:
            ends = np.append(ends, n)
        starts = np.concatenate([[0], ends[:-1]])
        return cls(observations=observations, actions=actions, rewards=rewards, starts=starts, lengths=ends - starts)
