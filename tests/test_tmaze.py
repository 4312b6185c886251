"""The passive T-Maze (decision_mamba/envs_tmaze.py), its offline data (tools/make_tmaze_data.py)
and its suite through gym/experiment.py."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from decision_mamba.data.d4rl import load_dataset
from decision_mamba.envs_tmaze import DOWN, FORWARD, TMAZE_ID, UP, ScriptedTMazePolicy, TMaze, one_hot, register_tmaze
from helpers import finish, load_script, run_entry_point


def play(env, policy, seed):
    """(observations, rewards, terminated, truncated) of one episode of `policy(obs, t)`."""
    obs, _ = env.reset(seed=seed)
    observations, rewards = [obs], []
    t, terminated, truncated = 0, False, False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, _ = env.step(policy(observations, t))
        observations.append(obs)
        rewards.append(reward)
        t += 1
    return observations, rewards, terminated, truncated


def test_the_oracle_succeeds_on_every_seed_in_L_plus_1_steps():
    for length in (1, 3, 8):
        env = TMaze(length)
        oracle = ScriptedTMazePolicy()
        for seed in range(40):
            obs, _ = env.reset(seed=seed)
            oracle.reset(obs)
            _, rewards, terminated, _ = play(env, lambda history, t: oracle.act(history[-1]), seed)
            assert terminated and rewards[-1] == 1.0 and len(rewards) == length + 1, (length, seed)


def test_both_cues_occur_and_are_seen_at_step_0_only():
    env = TMaze(4)
    cues = []
    for seed in range(20):
        observations, *_ = play(env, lambda history, t: one_hot(FORWARD) if t < 4 else one_hot(UP), seed)
        cues.append(observations[0][0])
        assert all(o[0] == 0.0 for o in observations[1:])
    assert set(cues) == {-1.0, 1.0}


def test_a_policy_that_ignores_the_cue_succeeds_half_the_time():
    # Always up at the junction: it wins exactly when the cue says up, drawn with p = 1/2.
    length, episodes = 3, 600
    env = TMaze(length)
    wins = sum(play(env, lambda h, t: one_hot(FORWARD) if t < length else one_hot(UP), seed)[1][-1]
               for seed in range(episodes))
    interval = binomtest(int(wins), episodes).proportion_ci(confidence_level=0.999)
    assert interval.low < 0.5 < interval.high and 0.4 < wins / episodes < 0.6, wins


def test_the_reward_arrives_only_at_the_end():
    env = TMaze(5)
    rng = np.random.default_rng(0)
    rewarded = 0
    for seed in range(60):
        _, rewards, terminated, truncated = play(env, lambda h, t: rng.uniform(-1, 1, 4).astype(np.float32), seed)
        assert all(r == 0.0 for r in rewards[:-1])
        assert len(rewards) <= 5 + 2 and (terminated or len(rewards) == 7)
        rewarded += rewards[-1] == 1.0
    # the wrong side at the junction ends the episode with 0
    observations, rewards, terminated, _ = play(
        env, lambda h, t: one_hot(FORWARD) if t < 5 else one_hot(DOWN if h[0][0] == 1 else UP), 0)
    assert terminated and rewards == [0.0] * 6


def test_the_dataset_replays_in_the_environment(tmp_path):
    path = tmp_path / "tmaze-L4.hdf5"
    make_data = load_script("tools/make_tmaze_data.py")
    make_data.main(["--length", "4", "--episodes", "40", "--random-move", "0.3", "--wrong-choice", "0.3",
                    "--seed", "7", "--out", str(path)])
    traj, metadata = load_dataset(path)
    assert metadata["corridor_length"] == 4 and traj.num_episodes == 40
    assert 0 < traj.episode_returns.mean() < 1  # both outcomes are in the data
    register_tmaze()
    env = gym.make(TMAZE_ID, corridor_length=4)
    for episode, (start, length) in enumerate(zip(traj.starts, traj.lengths)):
        obs, _ = env.reset(seed=7 + episode)
        for i in range(start, start + length):
            np.testing.assert_array_equal(obs, traj.observations[i])
            obs, reward, terminated, truncated, _ = env.step(traj.actions[i])
            assert reward == traj.rewards[i]
        assert terminated or truncated


def test_a_tiny_training_run_finishes(tmp_path):
    data = tmp_path / "tmaze-L3.hdf5"
    load_script("tools/make_tmaze_data.py").main(["--length", "3", "--episodes", "60", "--out", str(data)])
    out = finish(run_entry_point("gym/experiment.py", [
        "--config", "configs/memory/tmaze-L10.yaml", f"dataset=tmaze:{data}", "model.d_model=16",
        "model.n_layer=1", "train.batch_size=8", "train.num_iterations=1", "train.steps_per_iteration=5",
        "eval.episodes=4", "run.progress=false", "train.num_threads=1", f"run.out_dir={tmp_path}",
        "run.name=run"]))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dataset_name"] == "tmaze-L3" and "normalized score" in out
    assert summary["last"]["score"] in {0.0, 25.0, 50.0, 75.0, 100.0}  # success of 4 episodes, in percent


def test_a_missing_dataset_names_the_command_that_makes_it(tmp_path):
    proc = run_entry_point("gym/experiment.py", ["--config", "configs/memory/tmaze-L10.yaml",
                                                 f"dataset=tmaze:{tmp_path}/none.hdf5", "run.progress=false"])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "tools/make_tmaze_data.py" in out


def test_the_probe_reads_the_move_at_each_episodes_junction():
    probe = load_script("tools/tmaze_probe.py")
    batch = probe.oracle_batch(5, np.zeros(3, np.float32), np.ones(3, np.float32))
    # the oracle's episodes: L + 1 = 6 steps in windows of K = 7, both cues
    assert batch["mask"].sum(dim=1).tolist() == [6] * probe.TEST_EPISODES
    ups = batch["actions"][:, 5, UP].mean()
    assert 0.3 < ups < 0.7 and (batch["states"][:, 0, 0].sign() == batch["actions"][:, 5, UP] * 2 - 1).all()
    assert probe.junction_accuracy(lambda b: b["actions"], batch) == 1.0
    swapped = lambda b: b["actions"][..., [FORWARD, 1, DOWN, UP]]  # noqa: E731  up and down exchanged
    assert probe.junction_accuracy(swapped, batch) == 0.0
    # a model that always says up is right where the cue says up
    always_up = lambda b: torch.nn.functional.one_hot(torch.full(b["mask"].shape, UP), 4).float()  # noqa: E731
    assert probe.junction_accuracy(always_up, batch) == pytest.approx(float(ups))


def test_the_probe_trains_what_a_study_run_of_the_same_seed_trains(tmp_path):
    data = tmp_path / "tmaze-L3.hdf5"
    load_script("tools/make_tmaze_data.py").main(["--length", "3", "--episodes", "40", "--wrong-choice", "0.1",
                                                   "--out", str(data)])
    small = ["model.d_model=16", "model.n_layer=1", "seed=23"]
    rows = load_script("tools/tmaze_probe.py").main([str(data), "--updates", "6", "--every", "3", "--", *small])
    assert [update for update, _, _ in rows] == [3, 6]
    # the study's run of that length and seed, through the entry point (whole episodes, K = L + 2 = 5)
    finish(run_entry_point("gym/experiment.py", [
        "--config", "configs/memory/tmaze-study.yaml", f"dataset=tmaze:{data}", "model.max_ep_len=5",
        "train.context_len=5", "eval.max_ep_len=5", "train.batch_size=16", "train.num_threads=1", *small,
        "train.num_iterations=2", "train.steps_per_iteration=3", "eval.episodes=2", "run.progress=false",
        f"run.out_dir={tmp_path}", "run.name=run"]))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [record["train"]["loss_mean"] * (3 + 1) for record in records]  # per junction, as the probe prints
    assert [loss for _, loss, _ in rows] == pytest.approx(logged, rel=1e-12, abs=0)
