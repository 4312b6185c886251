"""Batched return-conditioned evaluation, shared by gym and Atari: the loop and its glue.

All episodes of one evaluation (every target return x every episode) run at once in
one gymnasium vector environment, with one batched model call per environment step.
Evaluation dominates the wall time of DT-style codebases that step one episode at a
time (docs/protocol.md); batching is the cure.

Two ways to choose an action (`mode`):
  window     the DT protocol: re-run the model on the last K timesteps, left-padded
             exactly as in training (decision_mamba.data.sampler's convention); with
             short_prefix="unpadded" (eval.atari_short_prefix) the first K - 1 steps see
             only the t + 1 steps so far, unpadded, as the release's (DT's) Atari evaluation;
  recurrent  carry every mixer's recurrent state from the start of the episode and feed
             only the new tokens (O(1) per step for Mamba). The model then conditions on
             the whole episode rather than on K steps; see docs/protocol.md.

With `overlap` (eval.overlap) the simulators and the model take turns in two halves of
the batch: while the model chooses one half's actions in a worker thread, this thread
steps the other half's simulators (MuJoCo and the ALE release the GIL), so the model's
time hides behind the simulator's.

The return-to-go starts at the target and is decremented by each reward (paper §3,
"Training & inference"); gym scales it by 1/rtg_scale like the training data.

Around the loop, the glue every evaluation shares: a run's targets (the suite's default
when the config gives none), its seed per iteration, its environments, its summary per
target, and the evaluation of a saved checkpoint. Training (gym/experiment.py,
atari/train_atari.py) and `python -m decision_mamba.evaluate` call the same functions, so
a checkpoint re-evaluated with the run's settings gives the logged numbers.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numba
import numpy as np
import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm.auto import tqdm

from decision_mamba.checkpoint import CheckpointError, load_checkpoint
from decision_mamba.config import OVERLAP_CHOICES, AtariConfig, ConfigError, GymConfig, validate
from decision_mamba.errors import UserError
from decision_mamba.model import DecisionModel
from decision_mamba.naming import paper_name
from decision_mamba.suites import Suite, suite_of
from decision_mamba.trainer import resolve_device
from decision_mamba.video import iteration_video_dir, record_episodes, recorded_indices


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
    # wall seconds: "simulator" (resets and steps), "model" (choosing actions), "total"; with
    # overlap the first two run at the same time and add up to more than the total
    seconds: dict[str, float] = field(default_factory=dict)

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


def overlaps_simulator(overlap: str, mode: str, device: torch.device) -> bool:
    """Whether an evaluation steps one half of its episodes' simulators while the model acts
    for the other half (eval.overlap). auto: only where it was measured to pay, the recurrent
    step on the CPU (docs/benchmarks.md); the K-window there needs every core for the model."""
    if overlap not in OVERLAP_CHOICES:
        raise ValueError(f"overlap must be one of {', '.join(OVERLAP_CHOICES)}, got {overlap!r}")
    if overlap == "auto":
        return mode == "recurrent" and device.type == "cpu"
    return overlap == "on"


class _Episodes:
    """A group of an evaluation's episodes in lock-step: their simulators (a vector
    environment), returns-to-go, returns and lengths, and the model's memory of them (the
    K-step history or the recurrent state). `act` runs the model, `step` the simulators: the
    two touch nothing in common, so one group can act while another steps."""

    def __init__(self, model: DecisionModel, envs: gym.vector.VectorEnv, targets: np.ndarray, seed: int, *,
                 mode: str, context_len: int, rtg_scale: float, state_mean: np.ndarray | None,
                 state_std: np.ndarray | None, sample_actions: bool, short_prefix: str,
                 generator: torch.Generator):
        self.model, self.envs, self.mode, self.context_len = model, envs, mode, context_len
        self.rtg_scale, self.sample_actions, self.short_prefix = rtg_scale, sample_actions, short_prefix
        self.generator = generator
        self.device = next(model.parameters()).device
        E = envs.num_envs
        self.obs, _ = envs.reset(seed=seed)  # sub-environment i gets seed + i
        self.state_dtype = torch.uint8 if self.obs.dtype == np.uint8 else torch.float32
        self.normalisation = None if state_mean is None else (
            torch.as_tensor(state_mean, dtype=torch.float32, device=self.device),
            torch.as_tensor(state_std, dtype=torch.float32, device=self.device))
        act_shape: tuple[int, ...] = () if model.discrete else (model.act_dim,)
        act_dtype = torch.int64 if model.discrete else torch.float32
        self.rtg = ReturnToGo(targets)
        self.returns = np.zeros(E)
        self.lengths = np.zeros(E, dtype=np.int64)
        self.active = np.ones(E, dtype=bool)
        self.history = _History(E, context_len, tuple(self.obs.shape[1:]), self.state_dtype, act_shape, act_dtype,
                                self.device)
        self.recurrent_state = model.init_state(E, device=self.device) if mode == "recurrent" else None
        # timestep_embedding=global_position: the release's evaluation gives the whole window the
        # global embedding of the current step (training: of the window's first step).
        self.global_position = getattr(model, "embed_position", None) is not None
        self.prev_action: torch.Tensor | None = None

    @torch.no_grad()  # no_grad is per thread: act may run in a worker thread
    def act(self, t: int) -> np.ndarray:
        """The model's actions at step t, from the observations of the last `step`."""
        model, E = self.model, self.envs.num_envs
        state = torch.as_tensor(self.obs, device=self.device).to(self.state_dtype)
        if self.normalisation is not None:
            state = (state - self.normalisation[0]) / self.normalisation[1]
        rtg_t = torch.as_tensor(self.rtg.values / self.rtg_scale, dtype=torch.float32,
                                device=self.device).unsqueeze(-1)
        timestep = torch.full((E,), min(t, model.cfg.max_ep_len - 1), dtype=torch.int64, device=self.device)
        if self.mode == "window":
            self.history.push(state, rtg_t, timestep)
            # every episode is at step t (lock-step), so an unpadded prefix has one length for all
            n = min(t + 1, self.context_len) if self.short_prefix == "unpadded" else self.context_len
            h = self.history
            extra = {"global_timestep": timestep} if self.global_position else {}
            out = model(h.states[:, -n:], h.actions[:, -n:], h.returns_to_go[:, -n:], h.timesteps[:, -n:],
                        h.mask[:, -n:], **extra)[:, -1]
        else:
            out, self.recurrent_state = model.step(state, rtg_t, timestep, self.prev_action, self.recurrent_state)
        if model.discrete:
            if self.sample_actions:
                action = torch.multinomial(torch.softmax(out.float(), dim=-1), 1, generator=self.generator)[:, 0]
            else:
                action = out.argmax(dim=-1)
        else:
            action = out.float()
        if self.mode == "window":
            self.history.set_last_action(action)
        self.prev_action = action
        return action.cpu().numpy()

    def step(self, actions: np.ndarray) -> None:
        self.obs, reward = _step_lockstep(self.envs, actions, self.active, self.returns, self.lengths)
        self.rtg.update(reward)


class _RunNow:
    """An executor that runs each call at once, in this thread: the loop without overlap."""

    def submit(self, fn: Callable, *args: Any) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future

    def __enter__(self) -> _RunNow:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


@contextmanager
def _model_worker() -> Iterator[ThreadPoolExecutor]:
    """One thread for the model while this one steps the simulators (which so stay in the
    thread that made them: OpenGL contexts for videos are per thread). The model keeps the
    caller's torch and numba thread counts: on some CPUs (seen on AMD EPYC) torch's kernels
    round differently at another thread count, and the overlap must not change a number."""
    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()

    def same_threads() -> None:
        # Both counts are per calling thread underneath (OpenMP's, which torch's BLAS reads,
        # and numba's): a new thread would start at the machine's defaults.
        torch.set_num_threads(torch_threads)
        numba.set_num_threads(numba_threads)

    with ThreadPoolExecutor(1, thread_name_prefix="eval-model", initializer=same_threads) as worker:
        yield worker


def _halves(envs: gym.vector.VectorEnv) -> list[gym.vector.VectorEnv]:
    """Two vector environments over the first and second half of `envs`' sub-environments
    (the same objects: stepping a half steps them)."""
    half = envs.num_envs // 2
    return [gym.vector.SyncVectorEnv([lambda env=env: env for env in envs.envs[part]],
                                     autoreset_mode=envs.autoreset_mode)
            for part in (slice(0, half), slice(half, envs.num_envs))]


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
    overlap: str = "off",
    progress: bool = False,
) -> EpisodeStats:
    """Run one episode in each sub-environment of `envs`, conditioned on targets[i].

    envs must not auto-reset (gymnasium AutoresetMode.DISABLED): a finished episode's
    sub-environment is reset and stepped on with its results ignored, so that all
    episodes advance in lock-step with one model call per step.

    overlap (overlaps_simulator; a SyncVectorEnv of two or more): the episodes run in two
    halves, the model choosing one half's actions in a worker thread while this thread
    steps the other half's simulators. The same policy and thread counts; the numbers equal
    those of the two halves evaluated one after the other (the batch size changes low bits).
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
    split = overlaps_simulator(overlap, mode, device) and isinstance(envs, gym.vector.SyncVectorEnv) and E >= 2
    parts = _halves(envs) if split else [envs]
    was_training = model.training
    model.eval()
    clock = {"simulator": 0.0, "model": 0.0}
    start = time.perf_counter()
    generator = torch.Generator(device=device).manual_seed(seed)
    groups, first = [], 0
    for part in parts:
        groups.append(_Episodes(model, part, targets[first:first + part.num_envs], seed + first, mode=mode,
                                context_len=context_len, rtg_scale=rtg_scale, state_mean=state_mean,
                                state_std=state_std, sample_actions=sample_actions, short_prefix=short_prefix,
                                generator=generator))
        first += part.num_envs
    clock["simulator"] = time.perf_counter() - start  # the resets

    def timed(key: str, fn: Callable, *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            clock[key] += time.perf_counter() - t0

    def act(t: int, g: int) -> Future:
        return executor.submit(timed, "model", groups[g].act, t)

    def next_other(t: int, g: int) -> tuple[int, int] | None:
        """The next (step, group) of the pipeline's order that is another, still active group."""
        for k in range(1, len(groups)):
            if groups[(g + k) % len(groups)].active.any():
                return t + (g + k) // len(groups), (g + k) % len(groups)
        return None

    # The pipeline: group g + 1 acts (in the worker) while group g steps; once the other
    # groups are done, or without overlap (one group, no worker), acting and stepping alternate.
    bar = tqdm(total=max_ep_len, desc=f"eval {E} episodes", disable=not progress, leave=False,
               dynamic_ncols=True, mininterval=2.0)
    try:
        with _model_worker() if split else _RunNow() as executor:
            t, g = 0, 0
            pending = act(t, g)
            while True:
                actions = pending.result()
                following = next_other(t, g)
                if following is not None and following[0] < max_ep_len:
                    pending = act(*following)
                timed("simulator", groups[g].step, actions)
                bar.update(t + 1 - bar.n)
                if following is None:
                    following = (t + 1, g)
                    if following[0] >= max_ep_len or not groups[g].active.any():
                        break
                    pending = act(*following)
                elif following[0] >= max_ep_len:
                    break
                t, g = following
        bar.total = bar.n  # every episode ended before max_ep_len: the bar ends full, not at e.g. 378/1000
        bar.refresh()
    finally:
        bar.close()
        model.train(was_training)
    return EpisodeStats(returns=np.concatenate([g.returns for g in groups]),
                        lengths=np.concatenate([g.lengths for g in groups]), targets=targets,
                        seconds={**clock, "total": time.perf_counter() - start})


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


# ============================================================== the glue of a run's evaluations
def resolve_targets(cfg: GymConfig | AtariConfig, suite: Suite, trajectories: Any) -> None:
    """eval.targets: [] -> the suite's default targets, written into cfg, so that config.yaml,
    --resume and `python -m decision_mamba.evaluate` all see the targets the run evaluated."""
    if not cfg.eval.targets:
        cfg.eval.targets = [float(x) for x in suite.default_targets(cfg, trajectories)]
        print(f"eval.targets: [] -> {cfg.eval.targets} (the {suite.name} suite's default)")


def evaluation_seed(seed: int, iteration: int) -> int:
    """The seed of the evaluation after `iteration`: fixed per (seed, iteration), so a resumed
    run and the checkpoint command replay exactly the episodes the uninterrupted run played."""
    return seed * 1000 + iteration


def check_evaluation(cfg: GymConfig | AtariConfig, model: DecisionModel) -> None:
    """Refuse, before the run starts, an evaluation the model cannot run."""
    if cfg.eval.mode == "recurrent" and not model.recurrent:
        raise UserError(f"eval.mode=recurrent needs a mixer with a recurrent step; {cfg.model.mixer} has none "
                        f"(no init_state and step): use eval.mode=window")
    if cfg.train.window_start == "episode" and cfg.eval.mode == "window" and model.recurrent:
        raise UserError(f"train.window_start=episode trains {cfg.model.mixer} on windows from an episode's start; "
                        f"evaluate it with eval.mode=recurrent (the policy trained), not window (other windows, "
                        f"padded before the steps)")


def evaluation_envs(cfg: GymConfig | AtariConfig, env: dict, obs_dim: int | None = None,
                    act_dim: int | None = None) -> gym.vector.VectorEnv:
    """The vector environment evaluate_policy steps: one sub-environment per (target, episode),
    the first cfg.eval.video_episodes of each target filmed. env: the suite's description
    (suites.SuiteData.env); obs_dim / act_dim: the data's sizes, checked against the env's."""
    record = recorded_indices(len(cfg.eval.targets), cfg.eval.episodes, cfg.eval.video_episodes)
    return suite_of(cfg).make_envs(cfg, env, max(1, cfg.eval.episodes * len(cfg.eval.targets)),
                                   obs_dim=obs_dim, act_dim=act_dim, record=record)


def evaluate_policy(cfg: GymConfig | AtariConfig, model: DecisionModel, envs: gym.vector.VectorEnv, seed: int,
                    state_mean: np.ndarray | None = None, state_std: np.ndarray | None = None,
                    progress: bool = False, env: dict | None = None, video_dir: Path | None = None,
                    videos: list[Path] | None = None) -> dict[str, dict[str, float]]:
    """One evaluation (every target x cfg.eval.episodes, batched) -> summarize()'s per-target dict.

    env: the suite's description of the environment (suites.SuiteData.env), for its score.
    video_dir: write there an MP4 of each episode played by a filmed sub-environment of
    `envs` (video.recorded_indices), named target<R>_episode<k>.mp4, and append their paths to `videos`."""
    targets = np.repeat(np.asarray(cfg.eval.targets, dtype=np.float64), cfg.eval.episodes)

    def video_name(i: int) -> str:  # sub-environment i plays episode i % episodes of targets[i]
        return f"target{targets[i]:g}_episode{i % cfg.eval.episodes}"

    with record_episodes(envs, video_dir, video_name) as written:
        stats = evaluate_batched(model, envs, targets, context_len=cfg.train.context_len,
                                 rtg_scale=cfg.train.rtg_scale, max_ep_len=cfg.eval.max_ep_len, seed=seed,
                                 mode=cfg.eval.mode, state_mean=state_mean, state_std=state_std,
                                 sample_actions=cfg.eval.sample_actions,  # ignored when continuous
                                 short_prefix=cfg.eval.atari_short_prefix, overlap=cfg.eval.overlap,
                                 progress=progress)
    if videos is not None:
        videos.extend(written)
    return summarize(stats, suite_of(cfg).score(cfg, env or {}))


def evaluate_after(cfg: GymConfig | AtariConfig, model: DecisionModel, envs: gym.vector.VectorEnv, env: dict,
                   state_mean: np.ndarray | None = None, state_std: np.ndarray | None = None,
                   run_dir: Path | None = None) -> Callable[[int], dict]:
    """The entry points' evaluate(iteration): evaluate_policy with the evaluation seed of that
    iteration, filming cfg.eval.video_episodes per target into run_dir/videos/iter_NNN."""
    check_evaluation(cfg, model)

    def evaluate(iteration: int) -> dict:  # the same call as evaluate_checkpoint's
        video_dir = iteration_video_dir(run_dir, iteration) if cfg.eval.video_episodes and run_dir else None
        return evaluate_policy(cfg, model, envs, evaluation_seed(cfg.seed, iteration), state_mean, state_std,
                               progress=cfg.run.progress, env=env, video_dir=video_dir)

    return evaluate


# ============================================================== a saved checkpoint's evaluation
SCHEMAS = {"gym": GymConfig, "atari": AtariConfig}


def config_from_checkpoint(state: dict, path: Path, overrides: list[str]) -> GymConfig | AtariConfig:
    """The run's config stored in checkpoint `path`, with `key=value` overrides."""
    identity = state.get("identity") or {}
    schema = SCHEMAS.get(identity.get("experiment"))
    if schema is None or "config" not in state:
        raise CheckpointError(f"{path} is not self-contained (no config or identity: written by "
                              f"run_experiment without an identity); it cannot be evaluated alone")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(state["config"]),
                                 OmegaConf.from_dotlist(overrides))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid evaluation settings for {path}: {err}") from None
    validate(cfg)
    return cfg


def use_run_threads(threads: dict[str, int]) -> None:
    """The run's thread counts: reductions, hence the last bits, depend on them."""
    torch.set_num_threads(int(threads["torch"]))
    if int(threads["numba"]) <= numba.config.NUMBA_NUM_THREADS:
        numba.set_num_threads(int(threads["numba"]))
    else:
        print(f"warning: the run used {threads['numba']} numba threads, this process has at most "
              f"{numba.config.NUMBA_NUM_THREADS} (NUMBA_NUM_THREADS); the last bits may differ", file=sys.stderr)


def evaluate_checkpoint(path: Path, *, episodes: int | None = None, targets: Sequence[float] | None = None,
                        mode: str | None = None, seed: int | None = None, device: str | None = None,
                        video: Path | None = None, video_episodes: int | None = None) -> dict:
    """Rebuild the policy of checkpoint `path` and evaluate it; returns the JSON report.

    A checkpoint is self-contained (checkpoint.py): the config, the state normalisation and
    the environment (the suite's description, identity["env"]) come from the file, not from
    the data. With the run's settings and the default seed (evaluation_seed of the
    checkpoint's iteration) and thread counts, the returns are those the run logged.
    video: a folder for MP4s of the first `video_episodes` episodes of each target (default:
    the run's eval.video_episodes, at least 1)."""
    state = load_checkpoint(path)
    overrides = [f"eval.episodes={episodes}"] if episodes is not None else []
    if targets is not None:
        overrides.append(f"eval.targets=[{','.join(repr(float(t)) for t in targets)}]")
    if mode is not None:
        overrides.append(f"eval.mode={mode}")
    if video is None:  # training may have filmed; this command films only with --video
        overrides.append("eval.video_episodes=0")
    elif video_episodes is not None:
        overrides.append(f"eval.video_episodes={video_episodes}")
    cfg = config_from_checkpoint(state, path, overrides)
    if video is not None:
        cfg.eval.video_episodes = max(1, cfg.eval.video_episodes)
    identity = state["identity"]
    use_run_threads(identity["threads"])  # run_experiment adds them to every checkpoint's identity
    torch_device = resolve_device(device or cfg.train.device)
    model = DecisionModel(cfg.model, tuple(identity["obs_shape"]), identity["act_dim"], identity["discrete"],
                          context_len=cfg.train.context_len)
    if isinstance(cfg, GymConfig):  # as gym/experiment.py builds it
        model.zero_padded_tokens = cfg.train.padding == "masked"
    check_evaluation(cfg, model)
    model.load_state_dict(state["trainer"]["model"])
    model.to(torch_device)
    normalization = {}
    if identity["state_mean"] is not None:  # None: the run did not normalise states (Atari)
        normalization = {"state_mean": np.asarray(identity["state_mean"], dtype=np.float32),
                         "state_std": np.asarray(identity["state_std"], dtype=np.float32)}
    seed = evaluation_seed(cfg.seed, state["iteration"]) if seed is None else seed
    env = identity.get("env") or {"env_id": identity["env_id"]}  # run_identity keeps more than the id only if there is more
    envs = evaluation_envs(cfg, env, obs_dim=identity["obs_shape"][0], act_dim=identity["act_dim"])
    videos: list[Path] = []
    try:
        results = evaluate_policy(cfg, model, envs, seed, **normalization, progress=cfg.run.progress,
                                  env=env, video_dir=video, videos=videos)
    finally:
        envs.close()
    return {"checkpoint": str(path), "iteration": int(state["iteration"]), "step": int(state["trainer"]["step"]),
            "model": paper_name(cfg.model.mixer), "env_id": identity["env_id"],
            "seed": seed, "mode": cfg.eval.mode, "episodes_per_target": cfg.eval.episodes,
            "targets": results, "code": identity["code"], "threads": identity["threads"],
            "videos": [str(p) for p in videos]}
