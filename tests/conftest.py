"""Shared pytest fixtures. Data makers live in tests/helpers.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from decision_mamba.cpu import configure_process

configure_process()  # as the entry points do, before torch loads: the speed they run at

import numba  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import RecordedEpisode, roll_random_hopper

pytest_plugins = ["tmp_guard"]  # temporary and cache folders under pytest's; /tmp watched

# `make test` runs two pytest workers on two cores: one thread each for torch and numba.
# Oversubscribed, their spinning thread pools make small steps ten times slower.
torch.set_num_threads(1)
numba.set_num_threads(1)


@dataclass
class HopperRecording:
    episodes: list[RecordedEpisode]  # the ground truth, step by step
    minari_root: Path  # MINARI_DATASETS_PATH holding the same episodes
    minari_id: str


@pytest.fixture(scope="session")
def hopper_recording(tmp_path_factory) -> HopperRecording:
    """Six random-policy Hopper-v4 episodes (time limit 40 steps), also saved with minari.

    Seed 0 gives a mix of episodes that end by falling and by the time limit; the fixture
    checks it so that tests relying on both kinds of episode end cannot silently lose one.
    """
    minari_root = tmp_path_factory.mktemp("minari")
    minari_id = "test/hopper/random-v0"
    episodes = roll_random_hopper(6, seed=0, max_episode_steps=40, minari_root=minari_root, minari_id=minari_id)
    assert any(e.terminated for e in episodes) and any(e.truncated for e in episodes)
    assert not any(e.terminated and e.truncated for e in episodes)
    return HopperRecording(episodes=episodes, minari_root=minari_root, minari_id=minari_id)


@pytest.fixture(scope="session")
def hopper_episodes(hopper_recording) -> list[RecordedEpisode]:
    return hopper_recording.episodes
