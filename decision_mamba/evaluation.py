"""Batched return-conditioned evaluation, shared by gym and Atari.

All episodes of one evaluation (every target return x every episode) run at once in
one gymnasium vector environment, with one batched model call per environment step.
Evaluation dominates the wall time of DT-style codebases that step one episode at a
time (REFERENCE §6); batching is the cure.

Two ways to choose an action (`mode`):
  window     the DT protocol: re-run the model on the last K timesteps, left-padded
             exactly as in training (decision_mamba.data.sampler's convention); with
             short_prefix="unpadded" (eval.atari_short_prefix) the first K - 1 steps see
             only the t + 1 steps so far, unpadded, as the release's (DT's) Atari evaluation;
  recurrent  carry every mixer's recurrent state from the start of the episode and feed
             only the new tokens (O(1) per step for Mamba). The model then conditions on
             the whole episode rather than on K steps; see the README.

The return-to-go starts at the target and is decremented by each reward (paper §3,
"Training & inference"); gym scales it by 1/rtg_scale like the training data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from decision_mamba.model import DecisionModel


class ReturnToGo:
    """The per-episode return still to collect: R_0 = target, R_{t+1} = R_t - r_t."""

    def __init__(self, targets: np.ndarray):
        self.values = np.asarray(targets, dtype=np.float64).copy()  # (E,)

    def update(self, rewards: np.ndarray) -> None:
        self.values -= rewards


@dataclass
class EpisodeStats:
    returns: np.ndarray  # (E,) undiscounted episode returns
    lengths: np.ndarray  # (E,) episode lengths in environment steps
    targets: np.ndarray  # (E,) the target return each episode was conditioned on

    def for_target(self, target: float) -> EpisodeStats:
        keep = self.targets == target
        return EpisodeStats(self.returns[keep], self.lengths[keep], self.targets[keep])


class _History:
    """The last K timesteps of every episode, stored in a rolling window on the model's device."""

    def __init__(self, num_envs: int, context_len: int, state_shape: tuple[int, ...], state_dtype: torch.dtype,
                 act_shape: tuple[int, ...], act_dtype: torch.dtype, device: torch.device):
        E, K = num_envs, context_len
        self.K = K
        self.states = torch.zeros((E, K, *state_shape), dtype=state_dtype, device=device)
        self.actions = torch.zeros((E, K, *act_shape), dtype=act_dtype, device=device)
        self.returns_to_go = torch.zeros((E, K, 1), dtype=torch.float32, device=device)
        self.timesteps = torch.zeros((E, K), dtype=torch.int64, device=device)
        self.mask = torch.zeros((E, K), dtype=torch.bool, device=device)

    def push(self, state: torch.Tensor, return_to_go: torch.Tensor, timestep: torch.Tensor) -> None:
        """Shift left by one timestep; the new one gets a zero action placeholder (causal: unseen)."""
        for buf in (self.states, self.actions, self.returns_to_go, self.timesteps, self.mask):
            buf[:, :-1] = buf[:, 1:].clone()
        self.states[:, -1] = state
        self.actions[:, -1] = 0
        self.returns_to_go[:, -1] = return_to_go
        self.timesteps[:, -1] = timestep
        self.mask[:, -1] = True

    def set_last_action(self, action: torch.Tensor) -> None:
        self.actions[:, -1] = action


@torch.no_grad()
def evaluate_batched(
    model: DecisionModel,
    envs: gym.vector.VectorEnv,
    targets: np.ndarray,
    *,
    context_len: int,
    rtg_scale: float,
    max_ep_len: int,
    seed: int,
    mode: str = "window",
    state_mean: np.ndarray | None = None,
    state_std: np.ndarray | None = None,
    sample_actions: bool = False,
    short_prefix: str = "padded",
    progress: bool = False,
) -> EpisodeStats:
    """Run one episode in each sub-environment of `envs`, conditioned on targets[i].

    envs must not auto-reset (gymnasium AutoresetMode.DISABLED): a finished episode's
    sub-environment is reset and stepped on with its results ignored, so that all
    episodes advance in lock-step with one model call per step.
    """
    if mode not in ("window", "recurrent"):
        raise ValueError(f"mode must be 'window' or 'recurrent', got {mode!r}")
    if short_prefix not in ("padded", "unpadded"):
        raise ValueError(f"short_prefix must be 'padded' or 'unpadded', got {short_prefix!r}")
    E = envs.num_envs
    targets = np.asarray(targets, dtype=np.float64)
    if targets.shape != (E,):
        raise ValueError(f"targets must have one entry per sub-environment ({E}), got shape {targets.shape}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)

    obs, _ = envs.reset(seed=seed)
    state_dtype = torch.uint8 if obs.dtype == np.uint8 else torch.float32
    if state_mean is not None:
        state_mean_t = torch.as_tensor(state_mean, dtype=torch.float32, device=device)
        state_std_t = torch.as_tensor(state_std, dtype=torch.float32, device=device)

    def prepare(observation: np.ndarray) -> torch.Tensor:
        s = torch.as_tensor(observation, device=device)
        s = s.to(state_dtype)
        if state_mean is not None:
            s = (s - state_mean_t) / state_std_t
        return s

    act_shape: tuple[int, ...] = () if model.discrete else (model.act_dim,)
    act_dtype = torch.int64 if model.discrete else torch.float32
    rtg = ReturnToGo(targets)
    returns = np.zeros(E)
    lengths = np.zeros(E, dtype=np.int64)
    active = np.ones(E, dtype=bool)
    history = _History(E, context_len, tuple(obs.shape[1:]), state_dtype, act_shape, act_dtype, device)
    recurrent_state = model.init_state(E, device=device) if mode == "recurrent" else None
    # timestep_embedding=global_position: the release's evaluation gives the whole window the
    # global embedding of the current step (training: of the window's first step).
    global_position = getattr(model, "embed_position", None) is not None
    prev_action: torch.Tensor | None = None

    bar = tqdm(total=max_ep_len, desc=f"eval {E} episodes", disable=not progress, leave=False,
               dynamic_ncols=True, mininterval=2.0)
    for t in range(max_ep_len):
        state = prepare(obs)
        rtg_t = torch.as_tensor(rtg.values / rtg_scale, dtype=torch.float32, device=device).unsqueeze(-1)
        timestep = torch.full((E,), min(t, model.cfg.max_ep_len - 1), dtype=torch.int64, device=device)
        if mode == "window":
            history.push(state, rtg_t, timestep)
            # every episode is at step t (lock-step), so an unpadded prefix has one length for all
            n = min(t + 1, context_len) if short_prefix == "unpadded" else context_len
            extra = {"global_timestep": timestep} if global_position else {}
            out = model(history.states[:, -n:], history.actions[:, -n:], history.returns_to_go[:, -n:],
                        history.timesteps[:, -n:], history.mask[:, -n:], **extra)[:, -1]
        else:
            out, recurrent_state = model.step(state, rtg_t, timestep, prev_action, recurrent_state)

        if model.discrete:
            if sample_actions:
                action = torch.multinomial(torch.softmax(out.float(), dim=-1), 1, generator=generator)[:, 0]
            else:
                action = out.argmax(dim=-1)
        else:
            action = out.float()
        if mode == "window":
            history.set_last_action(action)
        prev_action = action

        obs, reward = _step_lockstep(envs, action.cpu().numpy(), active, returns, lengths)
        rtg.update(reward)
        bar.update(1)
        if not active.any():
            break
    bar.close()
    model.train(was_training)
    return EpisodeStats(returns=returns, lengths=lengths, targets=targets)


def _step_lockstep(envs: gym.vector.VectorEnv, actions: np.ndarray, active: np.ndarray, returns: np.ndarray,
                   lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step every sub-environment; count rewards of active episodes only (updated in place).

    A sub-environment whose episode just ended is reset straight away (gymnasium will not
    step a finished one) and from then on only keeps the batch rectangular.
    """
    obs, reward, terminated, truncated, _ = envs.step(actions)
    reward = np.where(active, reward, 0.0)
    returns += reward
    lengths += active
    done = terminated | truncated
    active &= ~done
    if done.any():
        obs_reset, _ = envs.reset(options={"reset_mask": done})
        obs = np.where(done.reshape(-1, *([1] * (obs.ndim - 1))), obs_reset, obs)
    return obs, reward


def evaluate_random_policy(envs: gym.vector.VectorEnv, *, max_ep_len: int, seed: int) -> EpisodeStats:
    """The uniform random policy in the same environments: the floor of every score."""
    envs.action_space.seed(seed)
    envs.reset(seed=seed)
    returns = np.zeros(envs.num_envs)
    lengths = np.zeros(envs.num_envs, dtype=np.int64)
    active = np.ones(envs.num_envs, dtype=bool)
    for _ in range(max_ep_len):
        _step_lockstep(envs, envs.action_space.sample(), active, returns, lengths)
        if not active.any():
            break
    return EpisodeStats(returns=returns, lengths=lengths, targets=np.full(envs.num_envs, np.nan))


def summarize(stats: EpisodeStats, normalize: Callable[[np.ndarray], np.ndarray]) -> dict[str, dict[str, float]]:
    """Per target: return mean/std, episode length mean, normalized score mean/std."""
    summary = {}
    for target in np.unique(stats.targets):
        s = stats.for_target(target)
        score = normalize(s.returns)
        summary[f"{target:g}"] = {
            "return_mean": float(s.returns.mean()),
            "return_std": float(s.returns.std()),
            "length_mean": float(s.lengths.mean()),
            "score_mean": float(np.mean(score)),
            "score_std": float(np.std(score)),
        }
    return summary
