"""Small DQN-replay buffers recorded from real ALE rollouts, for the Atari tests.

Frames come from the real emulator through tools/record_atari.py, with
dopamine's preprocessing (4-frame skip, max of the last two frames, grayscale, 84x84
INTER_AREA) under a random policy; episodes are
cut short (dopamine also marks an episode cut by its step limit as terminal) to keep
the files small. `DopamineBuffer` replays dopamine's `add` on a circular buffer: 3 zero
transitions before every episode, the write cursor wrapping at the capacity. It also
remembers where each episode landed, which gives the tests an independent answer to
"which episodes are whole inside the first W rows".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from record_atari import record_random_episodes  # tools/ (pyproject: pytest pythonpath)

PADDING = 3  # dopamine's stack_size - 1 zero transitions before every episode


@dataclass(frozen=True, eq=False)
class Episode:
    frames: np.ndarray  # (T, 84, 84) uint8, the frame seen before each action
    actions: np.ndarray  # (T,) int32
    rewards: np.ndarray  # (T,) float32, clipped to [-1, 1]

    def __len__(self) -> int:
        return len(self.actions)

    def key(self) -> bytes:
        """Identifies the episode by content (random actions make every episode distinct)."""
        return self.frames.tobytes() + self.actions.astype(np.int64).tobytes() + self.rewards.tobytes()


def record_episodes(game: str, num_episodes: int, seed: int, min_steps: int = 6, max_steps: int = 30) -> list[Episode]:
    """Random-policy episodes of the real game, each cut after a random number of steps
    (the recorder, tools/record_atari.py)."""
    return [Episode(*episode) for episode in record_random_episodes(game, num_episodes, seed, min_steps, max_steps)]


@dataclass(eq=False)
class DopamineBuffer:
    """Dopamine's circular replay buffer, reduced to `add` (written from its documented behaviour)."""

    capacity: int
    observations: np.ndarray = field(init=False)
    actions: np.ndarray = field(init=False)
    rewards: np.ndarray = field(init=False)
    terminals: np.ndarray = field(init=False)
    add_count: int = 0
    # Global add index of each episode's first padding row and of its last (terminal) row.
    padding_start: list[int] = field(default_factory=list)
    last: list[int] = field(default_factory=list)
    episodes: list[Episode] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Rows never written hold junk (dopamine's np.empty); make it obviously wrong.
        rng = np.random.default_rng(12345)
        self.observations = rng.integers(0, 256, size=(self.capacity, 84, 84), dtype=np.uint8)
        self.actions = rng.integers(0, 3, size=self.capacity).astype(np.int32)
        self.rewards = rng.normal(size=self.capacity).astype(np.float32)
        self.terminals = rng.integers(0, 2, size=self.capacity).astype(np.uint8)

    def _add_row(self, frame: np.ndarray, action: int, reward: float, terminal: int) -> None:
        row = self.add_count % self.capacity
        self.observations[row] = frame
        self.actions[row] = action
        self.rewards[row] = reward
        self.terminals[row] = terminal
        self.add_count += 1

    def add_episode(self, episode: Episode) -> None:
        self.padding_start.append(self.add_count)
        for _ in range(PADDING):
            self._add_row(np.zeros((84, 84), np.uint8), 0, 0.0, 0)
        for t in range(len(episode)):
            self._add_row(episode.frames[t], int(episode.actions[t]), float(episode.rewards[t]), int(t == len(episode) - 1))
        self.last.append(self.add_count - 1)
        self.episodes.append(episode)

    def whole_episodes_in_window(self, window: int) -> list[Episode]:
        """The episodes a correct loader finds whole in rows [0, window), in row order.

        Reasoned on global add indices g (row = g % capacity): an episode is readable if
        every one of its rows survives (g >= add_count - capacity), its rows do not wrap
        around the end of the array and end inside the window, and its start can be seen
        in the rows: it is the very first thing ever added (g = 0), or the row before its
        padding holds the previous episode's terminal (g - 1 survives, and the row before
        is not at the other end of the array).
        """
        oldest = self.add_count - self.capacity  # smallest surviving global index
        found = []
        for episode, pad, last in zip(self.episodes, self.padding_start, self.last):
            if pad < oldest:
                continue
            pad_row, last_row = pad % self.capacity, last % self.capacity
            if pad_row > last_row or last_row >= window:
                continue
            start_visible = pad == 0 or (pad - 1 >= oldest and pad_row > 0)
            if start_visible:
                found.append((pad_row, episode))
        return [episode for _, episode in sorted(found, key=lambda item: item[0])]


def naive_stacks(frames: np.ndarray) -> np.ndarray:
    """The DT layout: for every step, a (4, 84, 84) copy of its last 4 frames, zeros before the start."""
    stacks = np.zeros((len(frames), 4) + frames.shape[1:], dtype=np.uint8)
    for t in range(len(frames)):
        for position in range(4):
            source = t - 3 + position
            if source >= 0:
                stacks[t, position] = frames[source]
    return stacks
