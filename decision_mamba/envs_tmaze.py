"""The passive T-Maze (Ni et al. 2023, "When do transformers shine in RL?"): a memory task.

The agent starts at cell 0 of a corridor of length L and sees a cue there, at step 0 only:
+1 (the goal is up) or -1 (down). It must walk L cells forward to the junction and there
choose up or down; the episode ends with reward 1 if the choice matches the cue, else 0.
Every other observation is the same for both cues, so success needs the cue remembered
over L + 1 steps: a policy that ignores it succeeds half the time.

observation  Box(3,) float32: [cue (+1 / -1 at step 0, else 0), position x / L, 1 at the junction]
action       Box(-1, 1, (4,)): the move is the argmax, FORWARD, BACKWARD, UP, DOWN; a one-hot
             vector is the move itself (continuous, so the gym trainer's MSE head serves it)
dynamics     forward / backward move one cell (not past 0 or L); up / down in the corridor and
             forward at the junction stay put; up / down at the junction end the episode
reward       1 for the right choice, 0 otherwise, given only at that last step. No per-step
             penalty: Ni et al. add one to help online exploration; offline, it would mix the
             wasted steps of the behaviour policy into the return, and the return to condition
             on would no longer say only "chose right" (here the return IS the success)
time limit   L + 2 steps (truncated, reward 0): the oracle needs L + 1, one step of slack

Registered with gymnasium, when `register_tmaze()` is called, as TMAZE_ID with the kwarg
corridor_length. `ScriptedTMazePolicy` is the behaviour policy of the offline data
(tools/make_tmaze_data.py): the oracle, with a share of random moves and of wrong choices.
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym
import numpy as np

TMAZE_ID = "decision_mamba/TMaze-v0"
FORWARD, BACKWARD, UP, DOWN = range(4)
NUM_MOVES = 4


def one_hot(move: int) -> np.ndarray:
    action = np.zeros(NUM_MOVES, dtype=np.float32)
    action[move] = 1.0
    return action


def time_limit(corridor_length: int) -> int:
    return corridor_length + 2


class TMaze(gym.Env):
    metadata = {"render_modes": [], "render_fps": 4}

    def __init__(self, corridor_length: int = 10):
        if corridor_length < 1:
            raise ValueError(f"corridor_length must be at least 1, got {corridor_length}")
        self.corridor_length = corridor_length
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(NUM_MOVES,), dtype=np.float32)
        self.cue = 1
        self.x = 0
        self.t = 0

    def _obs(self) -> np.ndarray:
        cue = float(self.cue) if self.t == 0 else 0.0
        return np.array([cue, self.x / self.corridor_length, float(self.x == self.corridor_length)], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.cue = int(self.np_random.choice([-1, 1]))
        self.x, self.t = 0, 0
        return self._obs(), {"cue": self.cue}

    def step(self, action):
        move = int(np.argmax(np.asarray(action)))
        at_junction = self.x == self.corridor_length
        reward, terminated = 0.0, False
        if at_junction and move in (UP, DOWN):
            terminated = True
            reward = float((move == UP) == (self.cue == 1))
        elif move == FORWARD:
            self.x = min(self.x + 1, self.corridor_length)
        elif move == BACKWARD:
            self.x = max(self.x - 1, 0)
        self.t += 1
        truncated = not terminated and self.t >= time_limit(self.corridor_length)
        info = {"cue": self.cue, "success": terminated and reward == 1.0}
        return self._obs(), reward, terminated, truncated, info


@functools.cache
def register_tmaze() -> str:
    """Register TMAZE_ID with gymnasium (once); returns the id."""
    if TMAZE_ID not in gym.registry:
        gym.register(TMAZE_ID, entry_point=TMaze)
    return TMAZE_ID


class ScriptedTMazePolicy:
    """The oracle (forward along the corridor, then the cue's side), made imperfect on purpose.

    random_move_prob: at each corridor step, a uniformly random move instead of forward
    (a wasted step; with more than one the episode may run out of time).
    wrong_choice_prob: at the junction, the side opposite the cue.
    Both 0: the oracle, which succeeds in L + 1 steps. The policy reads the cue from the
    first observation of the episode (call reset with it), so it needs no access to the env.
    """

    def __init__(self, random_move_prob: float = 0.0, wrong_choice_prob: float = 0.0, seed: int = 0):
        for name, p in (("random_move_prob", random_move_prob), ("wrong_choice_prob", wrong_choice_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        self.random_move_prob, self.wrong_choice_prob = random_move_prob, wrong_choice_prob
        self.rng = np.random.default_rng(seed)
        self.cue = 0
        self.choose_wrong = False

    def reset(self, first_obs: np.ndarray) -> None:
        self.cue = int(np.sign(first_obs[0]))
        self.choose_wrong = bool(self.rng.random() < self.wrong_choice_prob)

    def act(self, obs: np.ndarray) -> np.ndarray:
        if obs[2] == 1.0:  # at the junction
            up = (self.cue == 1) != self.choose_wrong
            return one_hot(UP if up else DOWN)
        if self.rng.random() < self.random_move_prob:
            return one_hot(int(self.rng.integers(NUM_MOVES)))
        return one_hot(FORWARD)
