"""Test data makers: real Hopper rollouts written in the D4RL and Minari formats, and
small synthetic Trajectories."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

from decision_mamba.data.d4rl import write_d4rl_hdf5
from decision_mamba.data.trajectories import Trajectories


@dataclass
class RecordedEpisode:
    """One episode exactly as the simulator produced it (observations before each action)."""

    observations: np.ndarray  # (T, 11) float32
    next_observations: np.ndarray  # (T, 11) float32
    actions: np.ndarray  # (T, 3) float32
    rewards: np.ndarray  # (T,) float32
    terminated: bool  # ended by the environment (the hopper fell)
    truncated: bool  # ended by the time limit

    def __len__(self) -> int:
        return len(self.rewards)


@contextmanager
def minari_datasets_path(root: Path):
    """Point minari at `root` for the duration of the block."""
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def roll_random_hopper(
    num_episodes: int,
    *,
    seed: int = 0,
    max_episode_steps: int = 40,
    minari_root: Path | None = None,
    minari_id: str = "test/hopper/random-v0",
) -> list[RecordedEpisode]:
    """Roll a uniform random policy in gymnasium Hopper-v4 and record every step.

    With a small max_episode_steps some episodes end by falling (terminated) and others by
    the time limit (truncated). With minari_root, the same steps are also recorded with
    minari's DataCollector and saved as the Minari dataset `minari_id` under minari_root.
    """
    env = gym.make("Hopper-v4", max_episode_steps=max_episode_steps)
    if minari_root is not None:
        from minari import DataCollector

        env = DataCollector(env)
    rng = np.random.default_rng(seed)
    episodes = []
    for episode_number in range(num_episodes):
        observation, _ = env.reset(seed=seed * 1000 + episode_number)
        steps: dict[str, list] = {"observations": [], "next_observations": [], "actions": [], "rewards": []}
        while True:
            action = rng.uniform(-1.0, 1.0, size=3).astype(np.float32)
            next_observation, reward, terminated, truncated, _ = env.step(action)
            steps["observations"].append(observation)
            steps["next_observations"].append(next_observation)
            steps["actions"].append(action)
            steps["rewards"].append(reward)
            observation = next_observation
            if terminated or truncated:
                break
        episodes.append(
            RecordedEpisode(
                observations=np.asarray(steps["observations"], dtype=np.float32),
                next_observations=np.asarray(steps["next_observations"], dtype=np.float32),
                actions=np.asarray(steps["actions"], dtype=np.float32),
                rewards=np.asarray(steps["rewards"], dtype=np.float32),
                terminated=bool(terminated),
                truncated=bool(truncated),
            )
        )
    if minari_root is not None:
        with minari_datasets_path(minari_root):
            env.create_dataset(
                dataset_id=minari_id,
                eval_env="Hopper-v4",
                algorithm_name="uniform random policy",
                author="decision-mamba tests",
                author_email="tests@example.invalid",
                code_permalink="tests/helpers.py",
                description="Random Hopper-v4 rollouts for the data loader tests",
            )
    env.close()
    return episodes


def write_episodes_d4rl(
    path: Path,
    episodes: list[RecordedEpisode],
    *,
    mark_last_end: bool = True,
    **kwargs,
) -> Path:
    """Write recorded episodes in the D4RL hdf5 layout: terminals / timeouts set at each
    episode's last step. mark_last_end=False leaves the final episode without an end flag
    (a recording cut short, as at the end of some D4RL files)."""
    terminals = np.concatenate([np.eye(1, len(e), len(e) - 1)[0] * e.terminated for e in episodes]).astype(bool)
    timeouts = np.concatenate([np.eye(1, len(e), len(e) - 1)[0] * e.truncated for e in episodes]).astype(bool)
    if not mark_last_end:
        terminals[-1] = timeouts[-1] = False
    return write_d4rl_hdf5(
        path,
        observations=np.concatenate([e.observations for e in episodes]),
        actions=np.concatenate([e.actions for e in episodes]),
        rewards=np.concatenate([e.rewards for e in episodes]),
        terminals=terminals,
        timeouts=timeouts,
        next_observations=np.concatenate([e.next_observations for e in episodes]),
        **kwargs,
    )


def write_episodes_pickle(path: Path, episodes: list[RecordedEpisode]) -> Path:
    """Write the Decision Transformer .pkl format: a list of per-episode dicts."""
    paths = [
        {
            "observations": e.observations,
            "next_observations": e.next_observations,
            "actions": e.actions,
            "rewards": e.rewards,
            "terminals": np.eye(1, len(e), len(e) - 1)[0].astype(bool) & e.terminated,
        }
        for e in episodes
    ]
    with open(path, "wb") as f:
        pickle.dump(paths, f)
    return path


def synthetic_trajectories(
    lengths: list[int], *, obs_dim: int = 4, act_dim: int = 2, seed: int = 0
) -> Trajectories:
    """Random continuous-action trajectories with the given episode lengths."""
    rng = np.random.default_rng(seed)
    n = int(sum(lengths))
    lengths_array = np.asarray(lengths, dtype=np.int64)
    return Trajectories(
        observations=rng.normal(3.0, 2.0, size=(n, obs_dim)).astype(np.float32),
        actions=rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        rewards=rng.normal(1.0, 1.0, size=n).astype(np.float32),
        starts=np.concatenate([[0], np.cumsum(lengths_array)[:-1]]),
        lengths=lengths_array,
    )


def run_entry_point(script: str, args: list[str]):
    """Start gym/experiment.py or atari/train_atari.py in a subprocess, one thread, output captured."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, str(repo / script), *args], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout: float = 600) -> str:
    """Wait for a run started by run_entry_point; it must succeed. Returns its output."""
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def kill_when_exists(proc, path: Path, timeout: float = 600) -> None:
    """SIGKILL the process as soon as `path` appears (e.g. its first checkpoint): a hard crash."""
    import signal
    import time

    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


RUN_FOLDER_ITERATION_S = 60.0  # each iteration of a write_run_folder run takes a minute of wall-clock


def write_run_folder(run_dir: Path, config_yaml: str, evaluations: list[dict], finished: bool = True) -> None:
    """A run folder with the files decision_mamba.run writes, for the aggregator: one metrics
    record per iteration (steps 10, 20, ...), each evaluating the targets of `evaluations`
    ({target: {"score_mean": ...}}); a run's score is its best target's, as in scores.run_score.
    finished: also summary.json, whose last and best are those scores."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(config_yaml)
    (run_dir / "identity.json").write_text(json.dumps({"data_fingerprint": "0123456789abcdef"}))
    (run_dir / "run_info.json").write_text(json.dumps({"device": "cpu (1 threads)", "git": {"commit": None}}))
    records = [{"iteration": i, "step": 10 * i, "eval": targets,
                "time": {"update_s": 0.01, "sample_s": 0.001, "eval_step_s": 0.002,
                         "elapsed_s": RUN_FOLDER_ITERATION_S * i}}
               for i, targets in enumerate(evaluations, 1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if finished:
        views = [{"iteration": r["iteration"], "step": r["step"],
                  "score": max(t["score_mean"] for t in r["eval"].values())} for r in records]
        (run_dir / "summary.json").write_text(json.dumps({"last": views[-1],
                                                          "best": max(views, key=lambda v: v["score"])}))


def load_script(path: str):
    """A script of the repository (tools/..., gym/...), which is no package, imported as a module."""
    file = Path(__file__).resolve().parents[1] / path
    spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
