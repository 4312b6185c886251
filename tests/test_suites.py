"""The suite interface (decision_mamba/suites/) and the Minari suite end to end.

The Minari datasets here are recorded with minari's own DataCollector in the real
environments (a few short random episodes, seconds) into pytest's tmp_path, with
MINARI_DATASETS_PATH pointing there (minari's remote is out of reach). Each run goes
through the real entry point (gym/experiment.py main, tiny budget), evaluation included,
and its normalised score is checked against 100 * (R - ref_min) / (ref_max - ref_min)
computed here by hand from the logged returns.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from omegaconf import OmegaConf

from decision_mamba.data.d4rl import flatten_observations, is_file_dataset, load_minari
from decision_mamba.errors import DataError, UserError
from decision_mamba.suites import suite_name_of_dataset, suites
from helpers import minari_datasets_path

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.d_model=16", "model.n_layer=1", "model.n_head=1", "train.batch_size=4", "train.context_len=4",
        "train.warmup_steps=2", "train.num_iterations=1", "train.steps_per_iteration=3", "eval.episodes=2",
        "run.progress=false", "train.num_threads=1", "run.wandb=disabled"]
REF_MIN, REF_MAX = -10.0, 40.0  # reference scores written into the test datasets


def experiment_main():
    """gym/experiment.py's main, loaded by path (the top-level gym/ folder is not a package)."""
    spec = importlib.util.spec_from_file_location("gym_experiment_under_test", REPO / "gym" / "experiment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def record(root: Path, dataset_id: str, env_id: str, *, episodes: int, steps: int, seed: int,
           ref_scores: bool = True, **env_kwargs) -> list[list[dict]]:
    """Roll a uniform random policy in `env_id` under minari's DataCollector and save the dataset.

    Returns the raw observations (before each action) per episode, as the environment gave them."""
    from minari import DataCollector

    env = DataCollector(gym.make(env_id, max_episode_steps=steps, **env_kwargs))
    env.action_space.seed(seed)
    raw = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        seen = []
        while True:
            seen.append(obs)
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                break
        raw.append(seen)
    scores = {"ref_min_score": REF_MIN, "ref_max_score": REF_MAX} if ref_scores else {}
    with minari_datasets_path(root), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "eval_env is None": the recording env is meant
        env.create_dataset(dataset_id=dataset_id, algorithm_name="uniform random policy", author="tests",
                           author_email="tests@example.invalid", code_permalink="tests/test_suites.py",
                           description="random rollouts for the suite tests", **scores)
    env.close()
    return raw


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory):
    return tmp_path_factory.mktemp("minari")


@pytest.fixture(scope="module")
def hopper_v5(minari_root):
    record(minari_root, "test/hopper/random-v5", "Hopper-v5", episodes=6, steps=25, seed=0)
    return "test/hopper/random-v5"


@pytest.fixture(scope="module")
def pointmaze(minari_root):
    pytest.importorskip("gymnasium_robotics", reason="the maze environments are in the robotics extra")
    # dense reward: returns differ from episode to episode, so the default target is a real choice
    raw = record(minari_root, "test/pointmaze/umaze-dense-v0", "PointMaze_UMaze-v3", episodes=4, steps=15, seed=5,
                 reward_type="dense", continuing_task=False)
    return "test/pointmaze/umaze-dense-v0", raw


def hand_score(returns) -> np.ndarray:
    return 100.0 * (np.asarray(returns, dtype=np.float64) - REF_MIN) / (REF_MAX - REF_MIN)


def run(tmp_path: Path, minari_root: Path, dataset: str, *overrides: str) -> Path:
    with minari_datasets_path(minari_root):
        experiment_main()(["--config", str(REPO / "configs" / "minari" / "quickstart.yaml"), f"dataset=minari:{dataset}",
                           *TINY, f"run.out_dir={tmp_path}", "run.name=run", *overrides])
    return tmp_path / "run"


# ----- the registry -------------------------------------------------------------------


def test_the_dataset_prefix_picks_the_suite():
    assert set(suites()) == {"d4rl", "minari", "atari", "tmaze", "positions"}
    assert suite_name_of_dataset("minari:D4RL/antmaze/umaze-v1") == "minari"
    assert suite_name_of_dataset("tmaze:data/tmaze-L10.hdf5") == "tmaze"
    assert suite_name_of_dataset("positions:medium") == "positions"
    assert suite_name_of_dataset("medium") == "d4rl"
    assert suite_name_of_dataset("data/hopper-medium-v4-gen.hdf5") == "d4rl"
    with pytest.raises(UserError, match="names no suite.*minari:"):
        suite_name_of_dataset("d4rl2:hopper")


def test_a_suite_is_one_class_and_one_registry_entry(tmp_path, monkeypatch):
    """A new suite registered in one place is served by the real entry point: data, env, score, name."""
    import dataclasses

    from decision_mamba.suites.d4rl_mujoco import D4RLMuJoCo
    from helpers import roll_random_hopper, write_episodes_d4rl

    class Toy(D4RLMuJoCo):  # D4RL files under a prefix, scored as the raw return / 10
        name, prefix = "toy", "toy"

        def load(self, cfg):
            return super().load(dataclasses.replace(cfg, dataset=cfg.dataset.removeprefix("toy:")))

        def score(self, cfg, env):
            return lambda returns: np.asarray(returns, dtype=np.float64) / 10.0

        def dataset_name(self, cfg):
            return "toy-data"

    monkeypatch.setitem(suites(), "toy", Toy())
    path = write_episodes_d4rl(tmp_path / "toy.hdf5", roll_random_hopper(4, seed=2, max_episode_steps=20))
    experiment_main()(["--config", str(REPO / "configs" / "gym" / "quickstart.yaml"), f"dataset=toy:{path}", *TINY,
                       "eval.max_ep_len=10", f"run.out_dir={tmp_path}"])
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert run_dir.name.startswith("toy-data-dmamba")
    (target,) = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["eval"].values()
    assert target["score_mean"] == pytest.approx(target["return_mean"] / 10.0)


def test_default_targets_of_each_suite(hopper_v5, minari_root):
    from decision_mamba.config import AtariConfig, GymConfig, load_config

    gym_cfg = load_config(GymConfig, overrides=["env=walker2d", "eval.targets=[]"])
    assert suites()["d4rl"].default_targets(gym_cfg, None) == [5000.0]  # the paper's (docs/protocol.md)
    assert suites()["atari"].default_targets(load_config(AtariConfig, overrides=["game=Qbert"]), None) == [14000.0]
    with minari_datasets_path(minari_root):
        traj, _ = load_minari(hopper_v5)
    returns = [float(np.sum(traj.rewards[s:s + n], dtype=np.float64)) for s, n in zip(traj.starts, traj.lengths)]
    assert suites()["minari"].default_targets(gym_cfg, traj) == [pytest.approx(max(returns))]


def test_one_rule_for_file_datasets():
    assert is_file_dataset("data/x.hdf5") and is_file_dataset("x.pkl") and is_file_dataset("runs/folder")
    assert not is_file_dataset("medium-replay") and not is_file_dataset("medium")


# ----- Minari, MuJoCo -------------------------------------------------------------------


def test_minari_hopper_v5_trains_and_evaluates_on_its_recorded_environment(hopper_v5, minari_root, tmp_path):
    run_dir = run(tmp_path, minari_root, hopper_v5, "eval.targets=[30]", "eval.max_ep_len=20")
    identity = json.loads((run_dir / "identity.json").read_text())
    assert identity["env_id"] == "Hopper-v5"  # the dataset's, not the config's env / env_version (hopper, v4)
    assert identity["env"]["ref_min_score"] == REF_MIN and identity["env"]["ref_max_score"] == REF_MAX
    record_ = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    target = record_["eval"]["30"]
    assert target["score_mean"] == pytest.approx(float(np.mean(hand_score(target["return_mean"]))))
    assert target["length_mean"] <= 20
    summary = json.loads((run_dir / "summary.json").read_text())
    with minari_datasets_path(minari_root):
        traj, _ = load_minari(hopper_v5)
    assert summary["reference"]["dataset"]["score_mean"] == pytest.approx(float(np.mean(hand_score(traj.episode_returns))))
    assert summary["dataset_name"] == "test-hopper-random-v5"

    # the checkpoint alone rebuilds the environment and the score: the logged evaluation again
    from decision_mamba.evaluate import main as evaluate_main

    report = evaluate_main([str(run_dir)])
    assert report["env_id"] == "Hopper-v5" and report["targets"] == record_["eval"]


def test_minari_without_reference_scores_is_refused_in_one_line(minari_root, tmp_path):
    record(minari_root, "test/hopper/noref-v0", "Hopper-v5", episodes=2, steps=10, seed=1, ref_scores=False)
    with pytest.raises(DataError, match="no usable reference scores.*ref_min_score=None.*ref_max_score") as error:
        run(tmp_path, minari_root, "test/hopper/noref-v0")
    assert "\n" not in str(error.value)


def test_minari_refuses_the_release_protocol(hopper_v5, minari_root, tmp_path):
    with pytest.raises(UserError, match="protocol=release.*protocol=clean"):
        run(tmp_path, minari_root, hopper_v5, "protocol=release")


# ----- Minari, Dict observations ----------------------------------------------------------


def test_dict_observations_are_flattened_as_gymnasium_flattens_them(pointmaze, minari_root):
    dataset_id, raw = pointmaze
    with minari_datasets_path(minari_root):
        traj, metadata = load_minari(dataset_id)
    assert metadata["dict_observations"]
    space = gym.make("PointMaze_UMaze-v3").observation_space
    # the independent reference: gymnasium's own flatten (what FlattenObservation does at evaluation)
    expected = np.concatenate([[gym.spaces.flatten(space, obs) for obs in episode] for episode in raw])
    np.testing.assert_allclose(traj.observations, expected.astype(np.float32), rtol=0, atol=0)
    assert traj.observations.shape[1] == 2 + 2 + 4  # achieved_goal, desired_goal, observation
    # the order is the sorted keys: the first two columns are achieved_goal
    np.testing.assert_array_equal(traj.observations[0, :2], raw[0][0]["achieved_goal"].astype(np.float32))
    nested = gym.spaces.Dict({"b": gym.spaces.Dict({"y": gym.spaces.Box(0, 1, (1,)), "x": gym.spaces.Box(0, 1, (2,))}),
                              "a": gym.spaces.Box(0, 1, (1,))})
    sample = nested.sample()
    batch = {"a": sample["a"][None], "b": {"x": sample["b"]["x"][None], "y": sample["b"]["y"][None]}}
    np.testing.assert_array_equal(flatten_observations(nested, batch)[0], gym.spaces.flatten(nested, sample))


def test_pointmaze_end_to_end_with_the_data_chosen_target(pointmaze, minari_root, tmp_path):
    dataset_id, _ = pointmaze
    run_dir = run(tmp_path, minari_root, dataset_id, "eval.targets=[]")
    with minari_datasets_path(minari_root):
        import minari

        returns = [float(np.sum(e.rewards)) for e in minari.load_dataset(dataset_id).iterate_episodes()]
    targets = OmegaConf.load(run_dir / "config.yaml").eval.targets
    assert list(targets) == [pytest.approx(max(returns), rel=1e-6)]  # []: the best episode return of the data
    identity = json.loads((run_dir / "identity.json").read_text())
    assert identity["env_id"] == "PointMaze_UMaze-v3"
    assert json.loads(identity["env"]["env_spec"])["kwargs"]["reward_type"] == "dense"  # the recorded kwargs
    evaluation = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["eval"]
    (target,) = evaluation.values()
    assert target["score_mean"] == pytest.approx(float(np.mean(hand_score(target["return_mean"]))))
    assert target["length_mean"] <= 15  # the recorded environment's time limit


def test_the_minari_configs_name_the_issue_s_datasets():
    from decision_mamba.config import GymConfig, load_config

    datasets = {load_config(GymConfig, path).dataset for path in (REPO / "configs" / "minari").glob("*.yaml")}
    wanted = {f"minari:mujoco/{env}/{level}-v0" for env in ("hopper", "halfcheetah", "walker2d")
              for level in ("medium", "expert", "simple")}
    wanted |= {"minari:D4RL/antmaze/umaze-v1", "minari:D4RL/kitchen/complete-v2", "minari:D4RL/pen/human-v2"}
    assert wanted <= datasets
