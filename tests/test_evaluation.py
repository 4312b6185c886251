"""Batched evaluation in the real MuJoCo simulator, checked against one-at-a-time replays."""

import os
import subprocess
import sys
import threading

import gymnasium as gym
import numba
import numpy as np
import pytest
import torch

from decision_mamba.envs import gym_env_id, make_gym_vector_env
from decision_mamba.evaluation import ReturnToGo, evaluate_batched, overlaps_simulator, summarize
from decision_mamba.model import DecisionModel, ModelConfig
from decision_mamba.scores import d4rl_normalized_score

MAX_STEPS = 25
MEAN = np.linspace(-0.5, 0.5, 11).astype(np.float32)
STD = np.linspace(0.5, 2.0, 11).astype(np.float32)


def hopper_model(mixer="mamba", seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(mixer=mixer, d_model=32, n_layer=2, dropout=0.1, max_ep_len=100, s4_d_state=8)
    return DecisionModel(cfg, (11,), 3, discrete=False)


def run(model, targets, mode="window", K=5, seed=7, overlap="off", max_steps=MAX_STEPS):
    envs = make_gym_vector_env("Hopper-v4", num_envs=len(targets), max_episode_steps=max_steps)
    try:
        return evaluate_batched(model, envs, np.asarray(targets, dtype=float), context_len=K, rtg_scale=100.0,
                                max_ep_len=max_steps, seed=seed, mode=mode, state_mean=MEAN, state_std=STD,
                                overlap=overlap)
    finally:
        envs.close()


def test_batched_episodes_equal_episodes_run_one_at_a_time():
    model = hopper_model()
    targets = [3600.0, 1800.0, 3600.0, 500.0]
    batched = run(model, targets)
    for i, target in enumerate(targets):
        # a vector env seeds sub-environment i with seed + i
        alone = run(model, [target], seed=7 + i)
        np.testing.assert_allclose(batched.returns[i], alone.returns[0], rtol=1e-5)
        assert batched.lengths[i] == alone.lengths[0]
    assert len(set(np.round(batched.returns, 6))) > 1  # the episodes are not all the same
    assert model.training  # the caller's mode is restored


def test_the_progress_bar_ends_full_when_every_episode_ends_early(monkeypatch):
    """An untrained policy falls over within tens of steps of the 1000 allowed: the bar must end
    at n == total (the steps the longest episode took), not stop part-way at e.g. 38/1000."""
    from decision_mamba import evaluation

    closed = []

    class RecordingBar(evaluation.tqdm):
        def close(self):
            closed.append((self.n, self.total))
            super().close()

    monkeypatch.setattr(evaluation, "tqdm", RecordingBar)
    envs = make_gym_vector_env("Hopper-v4", num_envs=2, max_episode_steps=1000)
    try:
        stats = evaluate_batched(hopper_model(), envs, np.array([3600.0, 1800.0]), context_len=5, rtg_scale=100.0,
                                 max_ep_len=1000, seed=7, state_mean=MEAN, state_std=STD, progress=True)
    finally:
        envs.close()
    assert stats.lengths.max() < 1000  # the case under test: every episode ended early
    longest = int(stats.lengths.max())
    assert closed and set(closed) == {(longest, longest)}  # (n, total) whenever it is closed


def test_window_and_recurrent_agree_when_the_window_covers_the_episode():
    model = hopper_model()
    targets = [3600.0, 1000.0]
    window = run(model, targets, mode="window", K=MAX_STEPS)
    recurrent = run(model, targets, mode="recurrent", K=MAX_STEPS)
    np.testing.assert_allclose(window.returns, recurrent.returns, rtol=1e-4)
    np.testing.assert_array_equal(window.lengths, recurrent.lengths)
    # and a short window really is a different policy
    short = run(model, targets, mode="window", K=2)
    assert not np.allclose(short.returns, window.returns)


@pytest.fixture
def busy_cores():
    """Every core kept busy by another process for the test's duration."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


@pytest.mark.parametrize("load", ["quiet", "busy"])
@pytest.mark.parametrize("mode", ["window", "recurrent"])
def test_overlapped_evaluation_equals_its_two_halves_run_in_turn(mode, load, request):
    # 5 episodes: halves of 2 and 3. 200 steps: Hopper falls at different steps, so one half
    # runs on alone after the other is done. The bits must not depend on the machine's load
    # (nor, through the thread counts, on the CPU: the test once failed only on AMD).
    if load == "busy":
        request.getfixturevalue("busy_cores")
    model = hopper_model()
    targets = [3600.0, 1800.0, 900.0, 3600.0, 500.0]
    overlapped = run(model, targets, mode=mode, overlap="on", max_steps=200)
    first = run(model, targets[:2], mode=mode, max_steps=200)
    second = run(model, targets[2:], mode=mode, seed=7 + 2, max_steps=200)
    np.testing.assert_array_equal(overlapped.returns, np.concatenate([first.returns, second.returns]))
    np.testing.assert_array_equal(overlapped.lengths, np.concatenate([first.lengths, second.lengths]))
    assert len(set(overlapped.lengths)) > 1 and overlapped.lengths.max() < 200  # episodes end at different steps
    assert overlapped.seconds["model"] > 0 and overlapped.seconds["simulator"] > 0


def test_overlap_runs_the_model_in_a_worker_and_the_simulators_here():
    model, envs = hopper_model(), make_gym_vector_env("Hopper-v4", num_envs=4, max_episode_steps=MAX_STEPS)
    model_threads, simulator_threads = set(), set()
    step, env_step = model.step, envs.envs[0].step
    envs.envs[0].step = lambda action: simulator_threads.add(threading.get_ident()) or env_step(action)
    counts = set()
    model.step = lambda *args: (model_threads.add(threading.get_ident()),
                                counts.add((torch.get_num_threads(), numba.get_num_threads())))[0] or step(*args)
    before = (torch.get_num_threads(), numba.get_num_threads())
    threads = (2, min(2, numba.config.NUMBA_NUM_THREADS))  # not conftest's 1 and 1: a new thread's default
    torch.set_num_threads(threads[0])
    numba.set_num_threads(threads[1])
    try:
        evaluate_batched(model, envs, np.full(4, 3600.0), context_len=5, rtg_scale=100.0, max_ep_len=MAX_STEPS,
                         seed=0, mode="recurrent", overlap="auto")
        after = (torch.get_num_threads(), numba.get_num_threads())
    finally:
        envs.close()
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])
    assert simulator_threads == {threading.get_ident()}
    assert len(model_threads) == 1 and threading.get_ident() not in model_threads
    # the worker runs the model at this thread's counts, and this thread's are left as they were
    assert counts == {threads}
    assert after == threads


def test_overlap_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert overlaps_simulator("auto", "recurrent", cpu) and not overlaps_simulator("auto", "window", cpu)
    assert not overlaps_simulator("auto", "recurrent", cuda)
    assert overlaps_simulator("on", "window", cuda) and not overlaps_simulator("off", "recurrent", cpu)
    with pytest.raises(ValueError, match="auto, on, off"):
        overlaps_simulator("yes", "window", cpu)


class RecordingModel(torch.nn.Module):
    """Wraps a model and keeps what the evaluation fed it at the newest position."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.cfg, self.discrete, self.act_dim = model.cfg, model.discrete, model.act_dim
        self.calls = []

    def forward(self, states, actions, rtg, timesteps, mask):
        out = self.model(states, actions, rtg, timesteps, mask)
        self.calls.append({"state": states[:, -1].clone(), "rtg": rtg[:, -1, 0].clone(),
                           "t": timesteps[:, -1].clone(), "mask": mask.clone(), "action": out[:, -1].clone()})
        return out


def test_inputs_follow_the_return_to_go_and_normalisation_protocol():
    model = RecordingModel(hopper_model().eval())
    target = 900.0
    stats = run(model, [target], K=4)
    # Replay the recorded actions in a fresh environment seeded the same way.
    env = gym.make("Hopper-v4", max_episode_steps=MAX_STEPS)
    obs, _ = env.reset(seed=7)
    remaining = target
    for t, call in enumerate(model.calls):
        np.testing.assert_allclose(call["state"][0].numpy(), (obs - MEAN) / STD, rtol=1e-5, atol=1e-6)
        assert call["rtg"][0].item() == pytest.approx(remaining / 100.0, rel=1e-5)
        assert call["t"][0].item() == t
        assert call["mask"][0].tolist() == [i >= 4 - min(t + 1, 4) for i in range(4)]  # left padding
        obs, reward, terminated, truncated, _ = env.step(call["action"][0].numpy())
        remaining -= reward
        if terminated or truncated:
            break
    assert len(model.calls) == stats.lengths[0]
    assert stats.returns[0] == pytest.approx(target - remaining, rel=1e-6)


def test_return_to_go_bookkeeping():
    rtg = ReturnToGo(np.array([10.0, 5.0]))
    rtg.update(np.array([1.0, -2.0]))
    rtg.update(np.array([0.5, 0.0]))
    np.testing.assert_allclose(rtg.values, [8.5, 7.0])


def test_summary_per_target_uses_the_d4rl_normalisation():
    from decision_mamba.evaluation import EpisodeStats

    stats = EpisodeStats(returns=np.array([100.0, 300.0, 1000.0]), lengths=np.array([10, 20, 30]),
                         targets=np.array([1.0, 1.0, 2.0]))
    s = summarize(stats, lambda r: d4rl_normalized_score("hopper", r))
    assert s["1"]["return_mean"] == 200.0 and s["1"]["length_mean"] == 15.0
    expected = 100 * (np.array([100.0, 300.0]) + 20.272305) / (3234.3 + 20.272305)
    assert s["1"]["score_mean"] == pytest.approx(expected.mean())
    assert s["2"]["score_std"] == 0.0


def test_env_factory_checks_the_dataset_against_the_environment():
    assert gym_env_id("walker2d", "v5") == "Walker2d-v5"
    with pytest.raises(ValueError, match="hopper, halfcheetah"):
        gym_env_id("ant", "v4")
    with pytest.raises(ValueError, match="observation size 17.*Hopper-v4.*11"):
        make_gym_vector_env("Hopper-v4", num_envs=1, max_episode_steps=10, dataset_obs_dim=17, dataset_act_dim=3)
    with pytest.raises(ValueError, match="action size 6.*Hopper-v4.*3"):
        make_gym_vector_env("Hopper-v4", num_envs=1, max_episode_steps=10, dataset_obs_dim=11, dataset_act_dim=6)
