"""Generate D4RL-style MuJoCo datasets locally, with the real simulators (docs/data.md).

The D4RL servers are unreachable here, so we follow the D4RL recipe ourselves:

  1. train SAC online (stable-baselines3 with its default SAC settings),
     evaluating the deterministic policy every `checkpoint_interval` environment steps;
  2. "medium"        = rollouts of the policy snapshot at the first evaluation whose mean
                       return reaches `medium_fraction` (default 1/3) of the D4RL expert
                       return (hopper 3234.3, halfcheetah 12135.0, walker2d 4592.3);
     "medium-replay" = the SAC replay buffer up to that snapshot (every transition SAC
                       collected, including its uniform-random warm-up);
     "expert"        = rollouts of the final policy (after `sac_steps` steps);
     "medium-expert" = medium followed by expert (as D4RL, DT and DMamba build it);
     "random"        = uniform random actions.
     Rollouts sample from the stochastic SAC policy, as D4RL did.

Every dataset is written in the D4RL hdf5 layout by `decision_mamba.data.d4rl.write_d4rl_hdf5`
as `{env}-{dataset}-{version}-gen.hdf5` (e.g. `hopper-medium-v4-gen.hdf5`) in the output
folder, with the recipe and the behaviour policy's return / normalized score in the root
attributes; optionally also as a Minari dataset.

Flags follow D4RL, i.e. old gym's TimeLimit: terminal = the env's `terminated`; timeout =
`truncated and not terminated` (old gym set TimeLimit.truncated only when the episode was
not already over; SB3's replay buffer records the same). Every dataset holds whole episodes
only: rollouts run until at least `transitions` steps have been recorded and stop at the end
of an episode, and medium-replay drops the episode SAC was in the middle of at the snapshot.

Resuming. The output folder holds `progress.json` (the commit point) and SAC checkpoints in
`sac/step-XXXXXXXXX/` (networks and optimizers, replay buffer, and every RNG and simulator
state SAC's next step depends on). Re-running the same command continues from the last
checkpoint, and the result is bitwise the same as an uninterrupted run (tests/test_generate.py
checks this). Finished datasets are not regenerated. Nothing here is unpickled: checkpoints
are read with torch.load(weights_only=True), np.load(allow_pickle=False) and json.

    python tools/generate_dataset.py --env Hopper-v4 --out data/generated/hopper-v4 \
        --seed 0 --sac-steps 320000 --transitions 50000     # data/README.md has the bundled run

A tool outside the package: it needs stable-baselines3, the `tools` extra (make install
installs it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import stable_baselines3
import torch
from gymnasium.wrappers import TimeLimit
from stable_baselines3 import SAC
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv
from tqdm import tqdm

from decision_mamba.atomic import write_text_atomic
from decision_mamba.data.d4rl import read_d4rl_arrays, write_d4rl_hdf5
from decision_mamba.data.trajectories import Trajectories
from decision_mamba.envs import GYM_ENV_NAMES, gym_env_id
from decision_mamba.errors import UserError, cli_main
from decision_mamba.scores import D4RL_REFERENCE_RETURNS, d4rl_normalized_score

# Gymnasium id -> D4RL environment name (the key of the D4RL reference returns): Hopper-v4 -> hopper, ...
SUPPORTED_ENVS: dict[str, str] = {gym_env_id(env, version): env for version in ("v4", "v5") for env in GYM_ENV_NAMES}
DATASETS = ("random", "medium", "medium-replay", "expert", "medium-expert")
# What each dataset needs from SAC training (random needs none).
_NEEDS_MEDIUM = {"medium", "medium-replay", "medium-expert"}
_NEEDS_FINAL = {"expert", "medium-expert"}

PROGRESS_FILE = "progress.json"
CHECKPOINT_DIR = "sac"
FORMAT_VERSION = 1


class GenerateError(UserError, RuntimeError):
    """A problem the user can fix (bad option, unwritable folder, medium level not reached)."""


@dataclass(frozen=True)
class GenerateConfig:
    """Everything that defines a generation run. Defaults follow D4RL (1M steps, 1M transitions)."""

    env_id: str
    out_dir: Path
    seed: int = 0
    sac_steps: int = 1_000_000
    checkpoint_interval: int = 10_000  # evaluate and checkpoint every this many env steps
    eval_episodes: int = 10
    medium_fraction: float = 1 / 3
    medium_step: int | None = None  # force the medium snapshot at this checkpoint step
    transitions: int = 1_000_000  # minimum per rollout dataset (whole episodes are kept)
    random_transitions: int | None = None  # the random dataset's size, if not `transitions`
    datasets: tuple[str, ...] = DATASETS
    # SAC: stable-baselines3 defaults, which are the rlkit values D4RL used
    # (lr 3e-4, batch 256, tau 0.005, gamma 0.99, two 256-unit layers, automatic entropy).
    learning_starts: int = 10_000  # uniform random actions before the first update
    buffer_size: int = 1_000_000
    learning_rate: float = 3e-4
    batch_size: int = 256
    next_observations: bool = True  # also store next_observations (as D4RL does)
    compress: bool = True  # gzip the hdf5 arrays
    minari: bool = False  # also write Minari datasets to out_dir/minari
    progress_bar: bool = True

    def training_identity(self) -> dict[str, Any]:
        """The settings a SAC checkpoint depends on; a resumed run must not change them.
        sac_steps may grow between runs (training continues), everything else is fixed."""
        return {
            "env_id": self.env_id,
            "seed": self.seed,
            "checkpoint_interval": self.checkpoint_interval,
            "eval_episodes": self.eval_episodes,
            "medium_fraction": self.medium_fraction,
            "medium_step": self.medium_step,
            "learning_starts": self.learning_starts,
            "buffer_size": self.buffer_size,
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
        }


# ----- names and validation ----------------------------------------------------------


def dataset_file_name(env_id: str, dataset: str) -> str:
    """("Hopper-v4", "medium-replay") -> "hopper-medium-replay-v4-gen.hdf5"."""
    env_name, version = SUPPORTED_ENVS[env_id], env_id.rsplit("-", 1)[1]
    return f"{env_name}-{dataset}-{version}-gen.hdf5"


def minari_dataset_id(env_id: str, dataset: str) -> str:
    """("Hopper-v4", "medium") -> "dmamba-gen/hopper-v4/medium-v0"."""
    env_name, version = SUPPORTED_ENVS[env_id], env_id.rsplit("-", 1)[1]
    return f"dmamba-gen/{env_name}-{version}/{dataset}-v0"


def medium_threshold(env_id: str, fraction: float) -> float:
    """Evaluation return that makes a SAC snapshot "medium": fraction * D4RL expert return."""
    return fraction * D4RL_REFERENCE_RETURNS[SUPPORTED_ENVS[env_id]][1]


def _validate(config: GenerateConfig) -> None:
    if config.env_id not in SUPPORTED_ENVS:
        raise GenerateError(
            f"unknown environment {config.env_id!r}; supported: {', '.join(SUPPORTED_ENVS)} "
            "(the D4RL MuJoCo tasks, whose reference returns define the medium level)"
        )
    unknown = [name for name in config.datasets if name not in DATASETS]
    if unknown or not config.datasets:
        raise GenerateError(f"unknown dataset(s) {unknown or '(none given)'}; choose from {', '.join(DATASETS)}")
    for name in ("sac_steps", "checkpoint_interval", "eval_episodes", "transitions", "buffer_size", "batch_size"):
        if getattr(config, name) <= 0:
            raise GenerateError(f"--{name.replace('_', '-')} must be positive, got {getattr(config, name)}")
    if config.random_transitions is not None and config.random_transitions <= 0:
        raise GenerateError(f"--random-transitions must be positive, got {config.random_transitions}")
    if config.learning_starts < 0:
        raise GenerateError(f"--learning-starts must be >= 0, got {config.learning_starts}")
    if config.sac_steps % config.checkpoint_interval:
        # Evaluations happen on a fixed grid of steps, so that an interrupted and resumed
        # run evaluates (and picks its medium snapshot) exactly where an uninterrupted one does.
        raise GenerateError(
            f"--sac-steps {config.sac_steps} is not a multiple of --checkpoint-interval "
            f"{config.checkpoint_interval}; round one of them"
        )
    if not 0 < config.medium_fraction <= 1:
        raise GenerateError(f"--medium-fraction must be in (0, 1], got {config.medium_fraction}")
    if config.medium_step is not None and (
        config.medium_step <= 0 or config.medium_step % config.checkpoint_interval
    ):
        raise GenerateError(
            f"--medium-step {config.medium_step} must be a positive multiple of --checkpoint-interval "
            f"{config.checkpoint_interval} (snapshots are taken at checkpoints)"
        )


def _prepare_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as error:
        raise GenerateError(
            f"cannot write to the output folder {str(out_dir)!r} ({error.strerror or error}); "
            "pass a writable --out"
        ) from error


@contextlib.contextmanager
def _exclusive_lock(out_dir: Path) -> Iterator[None]:
    # Two processes resuming the same folder would overwrite each other's checkpoints.
    with open(out_dir / ".lock", "w") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise GenerateError(f"another generate process is using {str(out_dir)!r}; wait for it to finish") from error
        yield


# ----- atomic files ------------------------------------------------------------------


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


# ----- transitions -------------------------------------------------------------------


@dataclass
class Transitions:
    """A dataset in the flat D4RL layout as write_d4rl_hdf5 writes it; always whole episodes
    (the last row ends one). Its episodes are the shared container's (Trajectories)."""

    observations: np.ndarray  # (N, obs_dim) float32
    actions: np.ndarray  # (N, act_dim) float32
    rewards: np.ndarray  # (N,) float32
    next_observations: np.ndarray | None  # (N, obs_dim) float32; None if the file has none
    terminals: np.ndarray  # (N,) bool
    timeouts: np.ndarray  # (N,) bool

    def __len__(self) -> int:
        return len(self.rewards)

    def trajectories(self) -> Trajectories:
        return Trajectories.from_flat(self.observations, self.actions, self.rewards, self.terminals | self.timeouts)

    def episode_bounds(self) -> list[tuple[int, int]]:
        traj = self.trajectories()
        return list(zip(traj.starts.tolist(), (traj.starts + traj.lengths).tolist()))

    def episode_returns(self) -> np.ndarray:
        return self.trajectories().episode_returns  # summed in float64

    @staticmethod
    def concatenate(parts: list[Transitions]) -> Transitions:
        def join(name: str) -> np.ndarray | None:
            arrays = [getattr(part, name) for part in parts]
            return None if any(array is None for array in arrays) else np.concatenate(arrays)

        return Transitions(**{field.name: join(field.name) for field in dataclasses.fields(Transitions)})


def _read_transitions(path: Path) -> Transitions:
    """Read back one of our own files (medium-expert is built from the medium and expert files)."""
    return Transitions(**read_d4rl_arrays(path, next_observations=True)[0])


# ----- environments ------------------------------------------------------------------


def _make_env(env_id: str) -> gym.Env:
    with warnings.catch_warnings():
        # The -v4 tasks are the deliberate choice (docs/data.md: the D4RL models on the
        # maintained mujoco bindings); gymnasium's "out of date" notice is expected.
        warnings.filterwarnings("ignore", message=".*is out of date.*")
        return gym.make(env_id)


def _find_wrapper(env: gym.Env, wrapper_type: type) -> Any:
    while not isinstance(env, wrapper_type):
        if not hasattr(env, "env"):
            raise TypeError(f"no {wrapper_type.__name__} wrapper around {env}")
        env = env.env
    return env


def _derived_seed(seed: int, purpose: str) -> int:
    """An independent 32-bit seed per use (evaluation, each dataset), fixed by (seed, purpose)."""
    return int(np.random.SeedSequence([seed, zlib.crc32(purpose.encode())]).generate_state(1)[0])


def rollout(
    env: gym.Env,
    act: Callable[[np.ndarray], np.ndarray],
    min_transitions: int,
    seed: int,
    desc: str = "rollouts",
    progress_bar: bool = False,
) -> Transitions:
    """Run whole episodes with act(observation) -> action until >= min_transitions steps."""
    max_steps = env.spec.max_episode_steps if env.spec and env.spec.max_episode_steps else 1000
    capacity = min_transitions + max_steps  # the episode that crosses the budget is kept whole
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    observations = np.empty((capacity, obs_dim), np.float32)
    next_observations = np.empty((capacity, obs_dim), np.float32)
    actions = np.empty((capacity, act_dim), np.float32)
    rewards = np.empty(capacity, np.float32)
    terminals = np.zeros(capacity, bool)
    timeouts = np.zeros(capacity, bool)

    obs, _ = env.reset(seed=seed)  # later resets continue the env's RNG: still deterministic
    n = 0
    with tqdm(total=min_transitions, desc=desc, disable=not progress_bar, **_tqdm_style()) as bar:
        while True:
            action = np.asarray(act(obs), dtype=np.float32)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            observations[n], actions[n], rewards[n], next_observations[n] = obs, action, reward, next_obs
            terminals[n] = terminated
            timeouts[n] = truncated and not terminated  # D4RL / old-gym convention, see module doc
            n += 1
            bar.update(1)
            if terminated or truncated:
                if n >= min_transitions:
                    break
                obs, _ = env.reset()
            else:
                obs = next_obs
    return Transitions(observations[:n], actions[:n], rewards[:n], next_observations[:n], terminals[:n], timeouts[:n])


def _tqdm_style() -> dict[str, Any]:
    # In a log file (nohup) a bar redrawn ten times a second is noise: redraw every 30 s.
    interactive = sys.stderr.isatty()
    return {"mininterval": 0.5 if interactive else 30.0, "dynamic_ncols": interactive}


# ----- SAC ---------------------------------------------------------------------------


def _make_agent(config: GenerateConfig) -> tuple[SAC, Monitor]:
    """A fresh SB3 SAC (seeded) on a Monitor-wrapped env inside a one-env DummyVecEnv."""
    monitor = Monitor(_make_env(config.env_id))
    vec_env = DummyVecEnv([lambda: monitor])
    agent = SAC(
        "MlpPolicy",
        vec_env,
        learning_rate=config.learning_rate,
        buffer_size=config.buffer_size,
        learning_starts=config.learning_starts,
        batch_size=config.batch_size,
        seed=config.seed,
        device="cpu",
        verbose=0,
    )
    # Without a logger of its own, SB3 makes a /tmp/SB3-<date> folder at every learn();
    # ours writes progress.json itself, so SB3's logger writes nowhere.
    agent.set_logger(Logger(folder=None, output_formats=[]))
    return agent, monitor


def _save_checkpoint(agent: SAC, monitor: Monitor, directory: Path) -> None:
    """Everything SAC's next step depends on, into a new directory (renamed in at the end)."""
    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=parent))
    try:
        # Networks, target networks, the three Adam optimizers and the entropy coefficient.
        torch.save(
            {"params": agent.get_parameters(), "log_ent_coef": agent.log_ent_coef.detach().clone()},
            tmp_dir / "agent.pt",
        )

        buffer = agent.replay_buffer
        filled = buffer.buffer_size if buffer.full else buffer.pos
        np.savez(
            tmp_dir / "replay_buffer.npz",
            observations=buffer.observations[:filled, 0],  # (filled, obs_dim), one env
            next_observations=buffer.next_observations[:filled, 0],
            actions=buffer.actions[:filled, 0],  # scaled to [-1, 1] by SB3
            rewards=buffer.rewards[:filled, 0],
            dones=buffer.dones[:filled, 0],  # terminated or truncated
            timeouts=buffer.timeouts[:filled, 0],  # truncated and not terminated
            pos=np.int64(buffer.pos),
            full=np.bool_(buffer.full),
        )

        sim = monitor.unwrapped  # the MujocoEnv: .model, .data, .np_random
        sim_state = np.empty(mujoco.mj_stateSize(sim.model, mujoco.mjtState.mjSTATE_INTEGRATION))
        mujoco.mj_getState(sim.model, sim.data, sim_state, mujoco.mjtState.mjSTATE_INTEGRATION)
        np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
        py_version, py_internal, py_gauss = random.getstate()
        resume = {
            "num_timesteps": agent.num_timesteps,
            "n_updates": agent._n_updates,
            "episode_num": agent._episode_num,
            "last_obs": agent._last_obs.tolist(),  # json keeps float64 exactly (shortest repr)
            "last_episode_starts": agent._last_episode_starts.tolist(),
            "mujoco_state": sim_state.tolist(),
            "elapsed_steps": _find_wrapper(monitor, TimeLimit)._elapsed_steps,
            "monitor_rewards": list(monitor.rewards),
            "env_rng": sim.np_random.bit_generator.state,
            "action_space_rng": agent.action_space.np_random.bit_generator.state,
            # SAC samples actions with torch's RNG and replay batches with numpy's global RNG.
            "torch_rng": torch.get_rng_state().tolist(),
            "numpy_rng": [np_name, np_keys.tolist(), np_pos, np_has_gauss, np_gauss],
            "python_rng": [py_version, list(py_internal), py_gauss],
        }
        (tmp_dir / "resume.json").write_text(json.dumps(resume))
        if directory.exists():  # a stale directory from an interrupted run, never the committed one
            shutil.rmtree(directory)
        os.replace(tmp_dir, directory)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def _restore_checkpoint(agent: SAC, monitor: Monitor, directory: Path) -> None:
    """Inverse of _save_checkpoint on a freshly made agent."""
    saved = torch.load(directory / "agent.pt", map_location="cpu", weights_only=True)
    agent.set_parameters(saved["params"], exact_match=True)
    with torch.no_grad():
        agent.log_ent_coef.copy_(saved["log_ent_coef"])  # in place: the optimizer holds this tensor

    with np.load(directory / "replay_buffer.npz", allow_pickle=False) as data:
        buffer = agent.replay_buffer
        filled = len(data["rewards"])
        for key in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
            getattr(buffer, key)[:filled, 0] = data[key]
        buffer.pos, buffer.full = int(data["pos"]), bool(data["full"])

    resume = json.loads((directory / "resume.json").read_text())
    # The wrappers insist on a reset before the first step; then the simulator, time limit
    # and RNGs are overwritten with the saved ones, so the reset itself leaves no trace.
    agent.env.reset()
    sim = monitor.unwrapped  # the MujocoEnv: .model, .data, .np_random
    mujoco.mj_setState(sim.model, sim.data, np.array(resume["mujoco_state"]), mujoco.mjtState.mjSTATE_INTEGRATION)
    mujoco.mj_forward(sim.model, sim.data)
    _find_wrapper(monitor, TimeLimit)._elapsed_steps = resume["elapsed_steps"]
    monitor.rewards = list(resume["monitor_rewards"])
    sim.np_random.bit_generator.state = resume["env_rng"]
    agent.action_space.np_random.bit_generator.state = resume["action_space_rng"]

    agent.num_timesteps = resume["num_timesteps"]
    agent._n_updates = resume["n_updates"]
    agent._episode_num = resume["episode_num"]
    agent._last_obs = np.array(resume["last_obs"], dtype=agent.observation_space.dtype)
    agent._last_episode_starts = np.array(resume["last_episode_starts"], dtype=bool)

    torch.set_rng_state(torch.tensor(resume["torch_rng"], dtype=torch.uint8))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = resume["numpy_rng"]
    np.random.set_state((np_name, np.array(np_keys, dtype=np.uint32), np_pos, np_has_gauss, np_gauss))
    py_version, py_internal, py_gauss = resume["python_rng"]
    random.setstate((py_version, tuple(py_internal), py_gauss))


def _load_policy(config: GenerateConfig, directory: Path) -> SAC:
    """A SAC agent whose policy is the one saved in a checkpoint (for rollouts)."""
    agent, _ = _make_agent(dataclasses.replace(config, buffer_size=1))  # no replay buffer needed
    saved = torch.load(directory / "agent.pt", map_location="cpu", weights_only=True)
    agent.policy.load_state_dict(saved["params"]["policy"])
    return agent


def evaluate_policy(agent: SAC, env_id: str, episodes: int, seed: int) -> list[float]:
    """Returns of the deterministic policy (the mean action), one fresh seeded env per call."""
    env = _make_env(env_id)
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            action, _ = agent.predict(obs, deterministic=True)  # no sampling: no RNG consumed
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def _checkpoint_name(step: int) -> str:
    return f"step-{step:09d}"


class _StepProgress(BaseCallback):
    """Advances a tqdm bar by one per environment step (SB3's own bar needs `rich`)."""

    def __init__(self, bar: tqdm) -> None:
        super().__init__()
        self.bar = bar

    def _on_step(self) -> bool:
        self.bar.update(1)
        return True


def train_sac(config: GenerateConfig, progress: dict[str, Any], save_progress: Callable[[], None]) -> None:
    """Train (or continue training) SAC up to config.sac_steps; evaluate and checkpoint on the grid."""
    steps = progress["sac"]["steps"]
    if steps >= config.sac_steps:
        return
    out_dir, sac_state = config.out_dir, progress["sac"]
    threshold = medium_threshold(config.env_id, config.medium_fraction)
    eval_seed = _derived_seed(config.seed, "evaluation")

    agent, monitor = _make_agent(config)
    if sac_state["checkpoint"] is not None:
        _restore_checkpoint(agent, monitor, out_dir / CHECKPOINT_DIR / sac_state["checkpoint"])
        print(f"resuming SAC from step {steps} ({out_dir / CHECKPOINT_DIR / sac_state['checkpoint']})")

    with tqdm(total=config.sac_steps, initial=steps, desc="SAC", unit="step",
              disable=not config.progress_bar, **_tqdm_style()) as bar:
        callback = _StepProgress(bar)
        while steps < config.sac_steps:
            started = time.perf_counter()
            agent.learn(config.checkpoint_interval, callback=callback, reset_num_timesteps=False)
            steps = agent.num_timesteps
            returns = evaluate_policy(agent, config.env_id, config.eval_episodes, eval_seed)
            mean_return = float(np.mean(returns))
            sac_state["evaluations"].append([steps, mean_return, float(np.std(returns))])
            reached = (steps == config.medium_step) if config.medium_step is not None else mean_return >= threshold
            if sac_state["medium_step"] is None and reached:
                sac_state["medium_step"] = steps
                sac_state["medium_eval_return"] = mean_return
                tqdm.write(f"medium snapshot at step {steps}: eval return {mean_return:.1f} (threshold {threshold:.1f})")

            # Commit order: checkpoint directory, then progress.json, then prune. A crash at
            # any point leaves progress.json naming a complete checkpoint.
            name = _checkpoint_name(steps)
            _save_checkpoint(agent, monitor, out_dir / CHECKPOINT_DIR / name)
            sac_state["steps"], sac_state["checkpoint"] = steps, name
            sac_state["wall_time_seconds"] += time.perf_counter() - started
            save_progress()
            _prune_checkpoints(out_dir / CHECKPOINT_DIR, keep={name, _medium_checkpoint(sac_state)})
            bar.set_postfix(eval_return=f"{mean_return:.0f}", medium_step=sac_state["medium_step"])


def _medium_checkpoint(sac_state: dict[str, Any]) -> str | None:
    step = sac_state["medium_step"]
    return None if step is None else _checkpoint_name(step)


def _prune_checkpoints(directory: Path, keep: set[str | None]) -> None:
    # Only the latest checkpoint (to resume) and the medium snapshot (policy and replay
    # buffer for medium / medium-replay) are needed.
    for path in directory.iterdir():
        if path.is_dir() and path.name not in keep:
            shutil.rmtree(path)


# ----- datasets ----------------------------------------------------------------------


def _sac_rollouts(config: GenerateConfig, checkpoint: Path, dataset: str, seed: int) -> Transitions:
    agent = _load_policy(config, checkpoint)
    with torch.random.fork_rng(devices=[]):  # the policy samples with torch's global RNG
        torch.manual_seed(seed)
        return rollout(
            _make_env(config.env_id),
            lambda obs: agent.predict(obs, deterministic=False)[0],
            config.transitions,
            seed,
            desc=dataset,
            progress_bar=config.progress_bar,
        )


def _random_rollouts(config: GenerateConfig, seed: int) -> Transitions:
    env = _make_env(config.env_id)
    env.action_space.seed(seed)
    transitions = config.random_transitions or config.transitions
    return rollout(env, lambda obs: env.action_space.sample(), transitions, seed,
                   desc="random", progress_bar=config.progress_bar)


def _replay_transitions(checkpoint: Path, action_space: gym.spaces.Box) -> Transitions:
    """The replay buffer of a checkpoint, in collection order, without the unfinished episode."""
    with np.load(checkpoint / "replay_buffer.npz", allow_pickle=False) as data:
        if bool(data["full"]):
            raise GenerateError(
                "the replay buffer wrapped around before the medium snapshot, so medium-replay "
                "would miss its oldest transitions; use a larger --buffer-size"
            )
        dones, timeouts = data["dones"].astype(bool), data["timeouts"].astype(bool)
        length = int(np.flatnonzero(dones)[-1]) + 1 if dones.any() else 0
        # SB3 stores actions scaled to [-1, 1]; D4RL stores the actions sent to the env.
        low, high = action_space.low, action_space.high
        actions = low + 0.5 * (data["actions"][:length] + 1.0) * (high - low)
        return Transitions(
            observations=data["observations"][:length].astype(np.float32),
            actions=actions.astype(np.float32),
            rewards=data["rewards"][:length].astype(np.float32),
            next_observations=data["next_observations"][:length].astype(np.float32),
            terminals=dones[:length] & ~timeouts[:length],
            timeouts=timeouts[:length],
        )


def _dataset_recipe(config: GenerateConfig, sac_state: dict[str, Any], dataset: str) -> dict[str, Any]:
    """What a dataset file is made from; a file whose recorded recipe matches is not rebuilt."""
    recipe: dict[str, Any] = {
        "seed": config.seed,
        "next_observations": config.next_observations,
        "compress": config.compress,
    }
    if dataset == "random":
        recipe["transitions"] = config.random_transitions or config.transitions
    if dataset in ("medium", "expert", "medium-expert"):
        recipe["transitions"] = config.transitions
    if dataset in _NEEDS_MEDIUM:
        recipe["medium_step"] = sac_state["medium_step"]
    if dataset in _NEEDS_FINAL:
        recipe["expert_step"] = sac_state["steps"]
    if dataset != "random":
        recipe["training"] = config.training_identity()
    return recipe


def _build_dataset(config: GenerateConfig, sac_state: dict[str, Any], dataset: str) -> tuple[Transitions, dict[str, Any]]:
    sac_dir = config.out_dir / CHECKPOINT_DIR
    medium_dir = sac_dir / _checkpoint_name(sac_state["medium_step"]) if sac_state["medium_step"] else None
    final_dir = sac_dir / _checkpoint_name(sac_state["steps"])
    # env_seed: the seed of the first env.reset; later resets continue the env's RNG, so the
    # recorded actions replayed from that seed reproduce the dataset (tests/test_generate.py).
    rollout_seed = _derived_seed(config.seed, dataset)
    info: dict[str, Any] = {}
    if dataset == "random":
        data = _random_rollouts(config, rollout_seed)
        info.update(behaviour="uniform random actions", sac_steps_at_snapshot=0, env_seed=rollout_seed)
    elif dataset == "medium":
        data = _sac_rollouts(config, medium_dir, dataset, rollout_seed)
        info.update(behaviour="stochastic SAC policy at the medium snapshot", env_seed=rollout_seed,
                    sac_steps_at_snapshot=sac_state["medium_step"], policy_eval_return=sac_state["medium_eval_return"])
    elif dataset == "medium-replay":
        data = _replay_transitions(medium_dir, _make_env(config.env_id).action_space)
        # SB3 seeds the training env with the run's seed.
        info.update(behaviour="SAC replay buffer up to the medium snapshot", env_seed=config.seed,
                    sac_steps_at_snapshot=sac_state["medium_step"])
    elif dataset == "expert":
        data = _sac_rollouts(config, final_dir, dataset, rollout_seed)
        info.update(behaviour="stochastic SAC policy after the last training step", env_seed=rollout_seed,
                    sac_steps_at_snapshot=sac_state["steps"], policy_eval_return=sac_state["evaluations"][-1][1])
    elif dataset == "medium-expert":
        parts = [_read_transitions(config.out_dir / dataset_file_name(config.env_id, name)) for name in ("medium", "expert")]
        data = Transitions.concatenate(parts)
        info.update(behaviour="medium dataset followed by expert dataset",
                    sac_steps_at_snapshot=sac_state["steps"], medium_sac_steps=sac_state["medium_step"])
    else:
        raise AssertionError(dataset)
    return data, info


def _metadata(config: GenerateConfig, dataset: str, data: Transitions, info: dict[str, Any]) -> dict[str, Any]:
    env_name = SUPPORTED_ENVS[config.env_id]
    returns = data.episode_returns()
    mean_return = float(returns.mean())
    return {
        "env_id": config.env_id,
        "env_name": env_name,
        "env_version": config.env_id.rsplit("-", 1)[1],
        "dataset": dataset,
        "generator": "decision_mamba.data.generate",  # its name when the bundled data was made; kept, so files match
        "generator_format_version": FORMAT_VERSION,
        "seed": config.seed,
        **info,
        "medium_fraction": config.medium_fraction,
        "medium_threshold_return": medium_threshold(config.env_id, config.medium_fraction),
        "num_transitions": len(data),
        "num_episodes": len(returns),
        "behaviour_return_mean": mean_return,
        "behaviour_return_std": float(returns.std()),
        "behaviour_normalized_score": float(d4rl_normalized_score(env_name, mean_return)),
        "flags": "terminal = terminated; timeout = truncated and not terminated (D4RL / old gym)",
        "versions": f"gymnasium {gym.__version__}, mujoco {mujoco.__version__}, "
        f"stable-baselines3 {stable_baselines3.__version__}, torch {torch.__version__}",
    }


def _write_minari(config: GenerateConfig, dataset: str, data: Transitions) -> Path:
    """Write the dataset with minari.create_dataset_from_buffers into out_dir/minari/<id>."""
    import minari
    from minari.data_collector import EpisodeBuffer

    if data.next_observations is None:
        raise GenerateError("Minari episodes need the final observations; do not combine --minari with --no-next-observations")
    dataset_id = minari_dataset_id(config.env_id, dataset)
    episodes = [
        EpisodeBuffer(
            id=index,
            # Minari stores T + 1 observations per episode: the T states and the final one.
            observations=np.concatenate([data.observations[start:end], data.next_observations[end - 1:end]]),
            actions=data.actions[start:end],
            rewards=data.rewards[start:end],
            terminations=data.terminals[start:end],
            truncations=data.timeouts[start:end],
        )
        for index, (start, end) in enumerate(data.episode_bounds())
    ]
    root = config.out_dir / "minari"
    target = root / dataset_id
    root.mkdir(exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=".minari.", dir=config.out_dir))
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(tmp_root)  # minari's only way to choose the folder
    random_return, expert_return = D4RL_REFERENCE_RETURNS[SUPPORTED_ENVS[config.env_id]]
    try:
        with warnings.catch_warnings():
            # minari asks for an author, e-mail, permalink and eval env, which a local run has not got.
            warnings.filterwarnings("ignore", category=UserWarning, module="minari")
            warnings.filterwarnings("ignore", message=".*is out of date.*")
            minari.create_dataset_from_buffers(
                dataset_id,
                episodes,
                env=config.env_id,
                algorithm_name=f"decision_mamba.data.generate ({dataset}, SB3 SAC)",
                ref_min_score=random_return,
                ref_max_score=expert_return,
                description=f"D4RL-style {dataset} dataset generated locally; see data/README.md",
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp_root / dataset_id, target)
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous
        shutil.rmtree(tmp_root, ignore_errors=True)
    return target


# ----- entry points ------------------------------------------------------------------


def _load_progress(config: GenerateConfig) -> dict[str, Any]:
    path = config.out_dir / PROGRESS_FILE
    identity = config.training_identity()
    if not path.exists():
        return {
            "format_version": FORMAT_VERSION,
            "training": identity,
            "sac": {"steps": 0, "checkpoint": None, "evaluations": [], "medium_step": None,
                    "medium_eval_return": None, "wall_time_seconds": 0.0},
            "datasets": {},
        }
    progress = json.loads(path.read_text())
    if progress.get("format_version") != FORMAT_VERSION:
        raise GenerateError(f"{path} was written by another version of the generator; use a new --out")
    changed = {key: (progress["training"].get(key), value) for key, value in identity.items() if progress["training"].get(key) != value}
    if changed:
        details = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changed.items())
        raise GenerateError(
            f"{config.out_dir} holds a run with other settings ({details}); "
            "re-run with the original settings to resume, or use a new --out"
        )
    if progress["sac"]["steps"] > config.sac_steps:
        raise GenerateError(
            f"{config.out_dir} already holds SAC trained for {progress['sac']['steps']} steps, more than "
            f"--sac-steps {config.sac_steps}; pass --sac-steps {progress['sac']['steps']} (or more) or use a new --out"
        )
    return progress


@contextlib.contextmanager
def _preserved_global_state() -> Iterator[None]:
    """SB3 seeds the global python / numpy / torch RNGs; give the caller its own back."""
    threads = torch.get_num_threads()
    numpy_state, python_state = np.random.get_state(), random.getstate()
    torch.set_num_threads(1)  # small networks: one thread is as fast, and leaves the other cores free
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(threads)
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def generate(config: GenerateConfig) -> dict[str, Path]:
    """Train / resume SAC as needed and write the requested datasets; returns {dataset: path}."""
    _validate(config)
    out_dir = config.out_dir
    _prepare_out_dir(out_dir)
    wanted = set(config.datasets)
    if "medium-expert" in wanted:
        wanted |= {"medium", "expert"}  # its ingredients, written first and read back
    order = [name for name in DATASETS if name in wanted]
    order.sort(key=lambda name: name == "medium-expert")

    with _preserved_global_state(), _exclusive_lock(out_dir):
        progress = _load_progress(config)

        def save_progress() -> None:
            _write_json(out_dir / PROGRESS_FILE, progress)

        save_progress()
        if wanted & (_NEEDS_MEDIUM | _NEEDS_FINAL):
            train_sac(config, progress, save_progress)
        sac_state = progress["sac"]

        written: dict[str, Path] = {}
        skipped_medium = []
        for dataset in order:
            if dataset in _NEEDS_MEDIUM and sac_state["medium_step"] is None:
                skipped_medium.append(dataset)
                continue
            path = out_dir / dataset_file_name(config.env_id, dataset)
            recipe = _dataset_recipe(config, sac_state, dataset)
            if path.exists() and progress["datasets"].get(dataset) == recipe:
                print(f"{path.name}: up to date, not regenerated")
                written[dataset] = path
                continue
            data, info = _build_dataset(config, sac_state, dataset)
            metadata = _metadata(config, dataset, data, info)
            write_d4rl_hdf5(
                path,
                observations=data.observations,
                actions=data.actions,
                rewards=data.rewards,
                terminals=data.terminals,
                timeouts=data.timeouts,
                next_observations=data.next_observations if config.next_observations else None,
                metadata=metadata,
                compress=config.compress,
            )
            if config.minari:
                _write_minari(config, dataset, data)
            progress["datasets"][dataset] = recipe
            save_progress()
            written[dataset] = path
            print(
                f"{path.name}: {metadata['num_transitions']} transitions, {metadata['num_episodes']} episodes, "
                f"return {metadata['behaviour_return_mean']:.1f}, "
                f"normalized score {metadata['behaviour_normalized_score']:.1f}"
            )

    if skipped_medium and config.medium_step is not None:
        raise GenerateError(
            f"--medium-step {config.medium_step} is beyond --sac-steps {config.sac_steps}, so "
            f"{', '.join(skipped_medium)} could not be written; re-run with --sac-steps >= {config.medium_step} (training resumes)"
        )
    if skipped_medium:
        best = max((evaluation[1] for evaluation in sac_state["evaluations"]), default=float("nan"))
        raise GenerateError(
            f"SAC never reached the medium level ({medium_threshold(config.env_id, config.medium_fraction):.1f} = "
            f"{config.medium_fraction:.3g} x expert return; best evaluation {best:.1f}) within {config.sac_steps} steps, "
            f"so {', '.join(skipped_medium)} could not be written; re-run with a larger --sac-steps "
            "(training resumes) or a smaller --medium-fraction (in a new --out)"
        )
    return written


def _parse_fraction(text: str) -> float:
    # Accept "1/3" as well as "0.333".
    numerator, _, denominator = text.partition("/")
    try:
        return float(numerator) / float(denominator) if denominator else float(numerator)
    except (ValueError, ZeroDivisionError) as error:
        raise argparse.ArgumentTypeError(f"expected a number or a fraction like 1/3, got {text!r}") from error


def _parse_datasets(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in DATASETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown dataset(s) {unknown or text!r}; choose from {', '.join(DATASETS)}")
    return names


# Measured for the bundled hopper data (data/README.md): SAC ran at 30-72 environment steps/s
# on one core of a shared 2-core machine; writing the datasets took about a minute.
EXPECTED_TIME = (
    "expected time: SAC runs at about 30-70 environment steps/s on one CPU core (data/README.md), so the "
    "default --sac-steps {steps:,} takes {hours_fast:.0f}-{hours_slow:.0f} hours; the bundled hopper data "
    "used --sac-steps 320000 (94 min). A try-out at the same rate: --sac-steps 20000 --medium-step 10000 "
    "--transitions 5000 (5-11 minutes)."
)


class _DefaultsFormatter(argparse.HelpFormatter):
    """Appends '(default: X)' to each option that has a default worth showing."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = not any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS))  # 0 is shown
        if shown and "%(default)" not in text:
            default = ",".join(action.default) if isinstance(action.default, tuple) else "%(default)s"
            text += f" (default: {default})"
        return text


def build_parser() -> argparse.ArgumentParser:
    defaults = GenerateConfig(env_id="Hopper-v4", out_dir=Path("."))
    parser = argparse.ArgumentParser(
        prog="python tools/generate_dataset.py",
        description="Generate D4RL-style datasets (random, medium, medium-replay, expert, medium-expert) "
        "by training SAC on a gymnasium MuJoCo task. Re-running the same command resumes.",
        epilog=EXPECTED_TIME.format(steps=defaults.sac_steps, hours_fast=defaults.sac_steps / 70 / 3600,
                                    hours_slow=defaults.sac_steps / 30 / 3600),
        formatter_class=_DefaultsFormatter,
    )
    parser.add_argument("--env", required=True, help=f"gymnasium id: {', '.join(SUPPORTED_ENVS)}")
    parser.add_argument("--out", required=True, type=Path, help="output folder (datasets, SAC checkpoints, progress.json)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seeds SAC, the rollouts and the environments")
    parser.add_argument("--sac-steps", type=int, default=defaults.sac_steps, help="SAC environment steps in total; the expert is the final policy")
    parser.add_argument("--checkpoint-interval", type=int, default=defaults.checkpoint_interval, help="evaluate and checkpoint every N steps")
    parser.add_argument("--eval-episodes", type=int, default=defaults.eval_episodes, help="episodes per SAC evaluation")
    parser.add_argument("--medium-fraction", type=_parse_fraction, default=defaults.medium_fraction,
                        help="medium = first checkpoint whose eval return >= this fraction of the D4RL expert return")
    parser.add_argument("--medium-step", type=int, default=None, help="take the medium snapshot at this checkpoint step instead")
    parser.add_argument("--transitions", type=int, default=defaults.transitions, help="minimum transitions per rollout dataset (whole episodes)")
    parser.add_argument("--random-transitions", type=int, default=None, help="size of the random dataset (default: --transitions)")
    parser.add_argument("--datasets", type=_parse_datasets, default=defaults.datasets, help=f"comma-separated subset of {','.join(DATASETS)}")
    parser.add_argument("--learning-starts", type=int, default=defaults.learning_starts, help="uniform-random SAC steps before the first update")
    parser.add_argument("--buffer-size", type=int, default=defaults.buffer_size, help="SAC replay buffer capacity")
    parser.add_argument("--no-next-observations", action="store_true", help="omit next_observations (smaller files)")
    parser.add_argument("--no-compress", action="store_true", help="store the hdf5 arrays without gzip")
    parser.add_argument("--minari", action="store_true", help="also write Minari datasets to OUT/minari")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = GenerateConfig(
        env_id=args.env,
        out_dir=args.out,
        seed=args.seed,
        sac_steps=args.sac_steps,
        checkpoint_interval=args.checkpoint_interval,
        eval_episodes=args.eval_episodes,
        medium_fraction=args.medium_fraction,
        medium_step=args.medium_step,
        transitions=args.transitions,
        random_transitions=args.random_transitions,
        datasets=args.datasets,
        learning_starts=args.learning_starts,
        buffer_size=args.buffer_size,
        next_observations=not args.no_next_observations,
        compress=not args.no_compress,
        minari=args.minari,
        progress_bar=not args.no_progress,
    )
    paths = generate(config)  # a GenerateError is a UserError: cli_main prints it
    for dataset, path in paths.items():
        print(f"{dataset}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(main))
