"""Vectorised sampling of K-step training windows from Trajectories.

One call draws a whole batch with array operations: an (B, K) matrix of flat transition
indices is built once and every modality is gathered with it. No per-sample Python loop.

Two sampling schemes, both from the Decision Transformer code:

  "dt-gym"   (DT gym get_batch) an episode with probability proportional to its length, a
             start uniform in [0, len - 1], then up to K steps; a window that runs past the
             episode's end is shorter and LEFT-padded. Drawing the episode by length and then
             the start uniformly is the same as drawing the start uniformly among all N
             transitions, which is how it is done here.
  "dt-atari" (DT Atari dataset) a transition drawn uniformly among all N; the window
             [idx, idx + K) is shifted left to end at the episode's end if it would cross it.
             An episode shorter than K cannot fill the window: it is left-padded.
  "episode"  (ours, train.window_start=episode) the episode that holds a transition drawn
             uniformly among all N (so, by length, as dt-gym), from its FIRST step, up to K
             steps. The real steps are LEFT-aligned, padding after them: a causal model's
             output at step t then depends on steps 0..t only, as the recurrent step's does
             at evaluation (eval.mode=recurrent), so the policy evaluated is the one trained.
             With K at least the longest episode, every window is a whole episode.

Padding convention (project-wide, identical in training and inference; docs/protocol.md):
padded positions hold 0 in states (after normalisation), actions, returns_to_go and
timesteps, and mask is False there. DT pads states before normalising and actions with -10;
we deliberately do not, because Mamba has no attention mask and sees the pad values.
`padding="release"` reproduces the release's gym get_batch instead (train.padding=release):
padded states hold the normalised zero (0 - mean) / std, padded actions -10; the rest is
the same (0 returns-to-go and timesteps, mask False).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from decision_mamba.data.trajectories import Trajectories

SamplingMode = Literal["dt-gym", "dt-atari", "episode"]
SAMPLING_MODES: tuple[str, ...] = ("dt-gym", "dt-atari", "episode")
PADDINGS: tuple[str, ...] = ("masked", "release")
RELEASE_ACTION_PAD = -10.0  # the release's (and DT's) gym action padding


def state_normalization(traj: Trajectories, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std (+ eps, as in DT) of every observation in the dataset."""
    if not isinstance(traj.observations, np.ndarray):
        raise TypeError("state_normalization needs observations stored as a numpy array")
    observations = traj.observations.astype(np.float64)  # float64: 1e6 rows sum without drift
    mean = observations.mean(axis=0)
    std = observations.std(axis=0) + eps
    return mean.astype(np.float32), std.astype(np.float32)


def draw_window_ends(
    traj: Trajectories, batch_size: int, K: int, rng: np.random.Generator, mode: str = "dt-gym"
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a batch of windows; returns (first, end), each (B,) int64 flat indices.

    The window's real steps are [first, end), at most K of them, all inside one episode.
    This is the only random part of sample_batch, exposed so that tests can replay the draws.
    """
    if mode not in SAMPLING_MODES:
        raise ValueError(f"unknown sampling mode {mode!r}; choose one of {', '.join(SAMPLING_MODES)}")
    if batch_size <= 0 or K <= 0:
        raise ValueError(f"batch_size and K must be positive, got batch_size={batch_size}, K={K}")
    index = rng.integers(0, traj.num_transitions, size=batch_size)  # (B,) uniform over transitions
    return window_ends(traj, index, K, mode)


def window_ends(traj: Trajectories, index: np.ndarray, K: int, mode: str = "dt-gym") -> tuple[np.ndarray, np.ndarray]:
    """The windows (first, end) that start (dt-gym) or are anchored (dt-atari) at the flat indices `index`,
    or (episode) that start at the first step of their episodes."""
    if mode not in SAMPLING_MODES:
        raise ValueError(f"unknown sampling mode {mode!r}; choose one of {', '.join(SAMPLING_MODES)}")
    index = np.asarray(index, dtype=np.int64)
    episode = traj.episode_index()[index]  # (B,)
    episode_start = traj.starts[episode]
    episode_end = episode_start + traj.lengths[episode]
    if mode == "dt-gym":
        # Start at the drawn step and run for K steps or until the episode ends.
        first = index
        end = np.minimum(index + K, episode_end)
    elif mode == "episode":
        # The drawn step's episode, from its first step.
        first = episode_start
        end = np.minimum(episode_start + K, episode_end)
    else:
        # End K steps after the drawn step, or at the episode's end; start K steps before
        # that end, but not before the episode's start.
        end = np.minimum(index + K, episode_end)
        first = np.maximum(end - K, episode_start)
    return first, end


def sample_batch(
    traj: Trajectories,
    batch_size: int,
    K: int,
    rng: np.random.Generator,
    *,
    state_mean: np.ndarray | None = None,
    state_std: np.ndarray | None = None,
    rtg_scale: float = 1.0,
    max_ep_len: int = 1000,
    mode: str = "dt-gym",
    padding: str = "masked",
) -> dict[str, np.ndarray]:
    """A batch of B windows of K steps, real steps right-aligned (left padding; mode "episode":
    left-aligned, padding on the right).

    Returns numpy arrays:
      states        (B, K, *obs_shape)  float32 (obs - mean) / std; raw dtype if mean/std are None
      actions       (B, K, act_dim) float32, or (B, K) int64 for discrete actions
      returns_to_go (B, K, 1) float32, undiscounted return from the step on, / rtg_scale
      timesteps     (B, K) int64, step within the episode, clipped to max_ep_len - 1
      mask          (B, K) bool, True at real steps
    """
    if (state_mean is None) != (state_std is None):
        raise ValueError("pass both state_mean and state_std, or neither")
    if rtg_scale <= 0 or max_ep_len <= 0:
        raise ValueError(f"rtg_scale and max_ep_len must be positive, got {rtg_scale}, {max_ep_len}")
    if state_mean is not None:
        state_mean = np.asarray(state_mean, dtype=np.float32)
        state_std = np.asarray(state_std, dtype=np.float32)
        obs_shape = traj.obs_shape
        for name, value in (("state_mean", state_mean), ("state_std", state_std)):
            try:
                fits = np.broadcast_shapes(value.shape, obs_shape) == obs_shape
            except ValueError:
                fits = False
            if not fits:
                raise ValueError(f"{name} has shape {value.shape}, which does not fit observations of shape {obs_shape}")
        if (state_std <= 0).any():
            raise ValueError("state_std must be positive everywhere (state_normalization adds 1e-6 for this)")
    first, end = draw_window_ends(traj, batch_size, K, rng, mode)
    return gather_windows(
        traj, first, end, K,
        state_mean=state_mean, state_std=state_std, rtg_scale=rtg_scale, max_ep_len=max_ep_len,
        padding=padding, align="left" if mode == "episode" else "right",
    )


def gather_windows(
    traj: Trajectories,
    first: np.ndarray,
    end: np.ndarray,
    K: int,
    *,
    state_mean: np.ndarray | None = None,
    state_std: np.ndarray | None = None,
    rtg_scale: float = 1.0,
    max_ep_len: int = 1000,
    padding: str = "masked",
    align: str = "right",
) -> dict[str, np.ndarray]:
    """Gather the windows [first, end) into (B, K, ...) arrays, real steps at the right end
    (align="right", padding before them) or at the left end (align="left"); see sample_batch."""
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
    if align not in ("right", "left"):
        raise ValueError(f"align must be right or left, got {align!r}")
    if padding == "release" and traj.is_discrete:
        raise ValueError("padding='release' is the gym release's (actions padded with -10); it needs continuous actions")
    num_real = end - first  # (B,) in [1, K]
    positions = np.arange(K)  # (K,)
    if align == "right":
        # Position p of a row holds step end - K + p; positions before K - num_real are padding.
        index = end[:, None] - K + positions[None, :]  # (B, K)
        mask = positions[None, :] >= (K - num_real)[:, None]  # (B, K)
    else:
        # Position p holds step first + p; positions from num_real on are padding.
        index = first[:, None] + positions[None, :]
        mask = positions[None, :] < num_real[:, None]
    index = np.where(mask, index, first[:, None])  # padding reads a valid row, zeroed below

    states = traj.observations[index]  # (B, K, *obs_shape)
    if state_mean is not None:
        states = (states - state_mean) / state_std
        states = states.astype(np.float32, copy=False)
    actions = traj.actions[index]  # (B, K, act_dim) or (B, K)
    returns_to_go = traj.returns_to_go()[index] / np.float32(rtg_scale)  # (B, K)
    timesteps = np.minimum(traj.timesteps()[index], max_ep_len - 1)  # (B, K)

    # Zero every padded position (the gathers above copied, so this writes no shared data).
    pad = ~mask
    states[pad] = 0
    actions[pad] = 0
    if padding == "release":
        # The release pads raw states with 0 before normalising, and actions with -10.
        if state_mean is not None:
            states[pad] = ((0 - state_mean) / state_std).astype(states.dtype)
        actions[pad] = RELEASE_ACTION_PAD
    returns_to_go[pad] = 0
    timesteps[pad] = 0
    return {
        "states": states,
        "actions": actions,
        "returns_to_go": returns_to_go[..., None].astype(np.float32, copy=False),  # (B, K, 1)
        "timesteps": timesteps,
        "mask": mask,
    }
