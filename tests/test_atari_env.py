"""The Atari evaluation environment (DT protocol, docs/protocol.md), checked against a
step-by-step reference written directly on the raw emulator (ale_py.ALEInterface)."""

from __future__ import annotations

import cv2
import gymnasium as gym
import numpy as np
import pytest
from ale_py import ALEInterface, LoggerMode, roms

from decision_mamba.envs import (
    DQN_REPLAY_NUM_ACTIONS,
    atari_env_id,
    make_atari_env,
    make_atari_vector_env,
    num_actions,
)


def reference_observations(rom: str, num_noops: int, actions: list[int]) -> tuple[list[np.ndarray], list[float]]:
    """The protocol by hand: sticky actions off, minimal action set, `num_noops` single
    no-op frames, then each action for 4 frames with the max of the last two grayscale
    screens, resized to 84x84 (INTER_AREA, as dopamine), stacked 4 deep from zeros.

    Every act() passes the paddle strength 1.0 that ale-py's gym env passes: the one-argument
    act() of ale-py 0.10.0 and 0.10.1 moves the paddles of Breakout and Pong differently
    (from 0.10.2 on, and in 0.9, act(a) and act(a, 1.0) give the same frames)."""
    ale = ALEInterface()
    ale.setLoggerMode(LoggerMode.Error)
    ale.setFloat("repeat_action_probability", 0.0)
    ale.loadROM(roms.get_rom_path(rom))
    action_set = ale.getMinimalActionSet()
    ale.reset_game()
    for _ in range(num_noops):
        ale.act(action_set[0], 1.0)

    def preprocess(screen: np.ndarray) -> np.ndarray:
        return cv2.resize(screen, (84, 84), interpolation=cv2.INTER_AREA)

    stack = [np.zeros((84, 84), np.uint8)] * 3 + [preprocess(ale.getScreenGrayscale())]
    observations, rewards = [np.stack(stack)], []
    for action in actions:
        reward, screens = 0.0, []
        for frame in range(4):
            reward += ale.act(action_set[action], 1.0)
            if ale.game_over():
                break
            if frame >= 2:
                screens.append(ale.getScreenGrayscale())
        pooled = np.maximum(screens[0], screens[1]) if len(screens) == 2 else ale.getScreenGrayscale()
        stack = stack[1:] + [preprocess(pooled)]
        observations.append(np.stack(stack))
        rewards.append(reward)
        if ale.game_over():
            break
    return observations, rewards


@pytest.mark.parametrize("game, rom", [("Breakout", "breakout"), ("Pong", "pong")])
def test_observations_match_the_reference_protocol(game: str, rom: str) -> None:
    env = make_atari_env(game, seed=3)
    obs, info = env.reset()
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    assert env.observation_space.shape == (4, 84, 84) and env.observation_space.dtype == np.uint8
    assert 0 <= info["noops"] < 30 and info["episode_frame_number"] == info["noops"]
    actions = list(np.random.default_rng(0).integers(env.action_space.n, size=150))
    expected_obs, expected_rewards = reference_observations(rom, info["noops"], actions)
    np.testing.assert_array_equal(obs, expected_obs[0])
    assert not obs[:3].any() and obs[3].any()  # the stack starts from zeros
    for t, action in enumerate(actions):
        obs, reward, terminated, truncated, _ = env.step(int(action))
        np.testing.assert_array_equal(obs, expected_obs[t + 1], err_msg=f"step {t}")
        assert reward == expected_rewards[t]
        if terminated or truncated:
            break
    assert env.unwrapped.ale.getFloat("repeat_action_probability") == 0.0


def test_same_seed_same_actions_same_observations() -> None:
    envs = [make_atari_env("Breakout", seed=11) for _ in range(2)]
    first = [env.reset()[0] for env in envs]
    np.testing.assert_array_equal(first[0], first[1])
    rng = np.random.default_rng(1)
    for _ in range(200):
        action = int(rng.integers(4))
        a, b = (env.step(action) for env in envs)
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1:4] == b[1:4]
        if a[2] or a[3]:
            break


def test_noop_count_comes_from_the_seed() -> None:
    env = make_atari_env("Pong", seed=5)
    counts = [env.reset()[1]["noops"] for _ in range(10)]
    again = make_atari_env("Pong", seed=5)
    assert [again.reset()[1]["noops"] for _ in range(10)] == counts  # a seed fixes the whole sequence
    assert all(0 <= c <= 29 for c in counts) and len(set(counts)) >= 4
    # DT's random.randrange(30), drawn from the emulator env's generator right after
    # reset(seed): compare with the first draw of a plain ALE env reset with that seed.
    plain = gym.make("ALE/Pong-v5")
    for seed in (0, 1, 2):
        plain.reset(seed=seed)
        assert env.reset(seed=seed)[1]["noops"] == plain.unwrapped.np_random.integers(0, 30)


def test_a_lost_life_does_not_end_the_episode() -> None:
    env = make_atari_env("Breakout", seed=0)
    _, info = env.reset()
    lives, lost_lives = info["lives"], 0
    rng = np.random.default_rng(0)
    for _ in range(3000):
        _, _, terminated, truncated, info = env.step(int(rng.integers(4)))
        if info["lives"] < lives:
            lost_lives += 1
            lives = info["lives"]
            if lives > 0:
                assert not terminated
        if terminated or truncated:
            break
    assert lost_lives >= 2 and terminated and info["lives"] == 0


def test_episode_is_truncated_after_max_episode_frames() -> None:
    env = make_atari_env("Pong", seed=0, max_episode_frames=200)
    noops = env.reset()[1]["noops"]
    steps = 0
    while True:
        _, _, terminated, truncated, info = env.step(0)
        steps += 1
        if terminated or truncated:
            break
    # The no-op frames count towards the limit; then 4 frames per step.
    assert truncated and not terminated
    assert info["episode_frame_number"] == 200 and steps == -(-(200 - noops) // 4)


@pytest.mark.parametrize("game", sorted(DQN_REPLAY_NUM_ACTIONS))
def test_action_sets_match_the_replay_data(game: str) -> None:
    assert num_actions(game) == DQN_REPLAY_NUM_ACTIONS[game]
    env = make_atari_env(game, seed=0)
    assert env.action_space.n == DQN_REPLAY_NUM_ACTIONS[game]
    env.close()


def test_game_names() -> None:
    assert atari_env_id("Breakout") == "ALE/Breakout-v5"
    assert atari_env_id("ms_pacman") == "ALE/MsPacman-v5"
    with pytest.raises(ValueError, match="unknown Atari game 'Breakot'.*Breakout"):
        make_atari_env("Breakot", seed=0)


def test_vector_env_sub_environments_equal_single_environments() -> None:
    vector = make_atari_vector_env("Breakout", num_envs=2, seed=4)
    singles = [make_atari_env("Breakout", seed=4 + i) for i in range(2)]
    obs, _ = vector.reset()
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    np.testing.assert_array_equal(obs, np.stack([env.reset()[0] for env in singles]))
    rng = np.random.default_rng(2)
    for _ in range(60):
        actions = rng.integers(4, size=2)
        obs, rewards, terminated, truncated, _ = vector.step(actions)
        results = [env.step(int(a)) for env, a in zip(singles, actions)]
        np.testing.assert_array_equal(obs, np.stack([r[0] for r in results]))
        np.testing.assert_array_equal(rewards, [r[1] for r in results])
        np.testing.assert_array_equal(terminated, [r[2] for r in results])
        if (terminated | truncated).any():
            break
