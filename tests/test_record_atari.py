"""The package's recorder writes real-emulator episodes in dopamine's layout, where the loader finds them."""

from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from atari_helpers import DopamineBuffer, Episode
from decision_mamba.config import AtariConfig, load_config
from decision_mamba.data.atari_replay import load_dqn_replay, read_replay_buffer
from record_atari import record_dataset, record_random_episodes

REPO = Path(__file__).resolve().parents[1]


def test_recorded_buffers_match_dopamines_add_and_load(tmp_path):
    record_dataset("Breakout", tmp_path, buffers=2, transitions=40, seed=5, max_steps=20)
    for k, index in enumerate((48, 49)):
        buffer = read_replay_buffer(tmp_path, "Breakout", index)
        # the same episodes again, through dopamine's add (tests/atari_helpers), as the reference
        reference = DopamineBuffer(capacity=len(buffer.actions))
        episode_count = 0
        while reference.add_count < len(buffer.actions):
            frames, actions, rewards = record_random_episodes(
                "Breakout", 1, seed=5 * 100_003 + k * 1009 + episode_count, min_steps=10, max_steps=20)[0]
            reference.add_episode(Episode(frames, actions, rewards))
            episode_count += 1
        assert reference.add_count == len(buffer.actions)
        assert np.array_equal(buffer.observations, reference.observations)
        assert np.array_equal(buffer.actions, reference.actions)
        assert np.array_equal(buffer.rewards, reference.rewards)
        assert np.array_equal(buffer.terminals, reference.terminals)
        assert sum(len(e) for e in reference.episodes) >= 40
    traj = load_dqn_replay(tmp_path, "Breakout", num_buffers=2, num_steps=30, trajectories_per_buffer=1, seed=0,
                           show_progress=False)
    assert traj.num_transitions >= 30 and set(np.unique(traj.rewards)) <= {-1.0, 0.0, 1.0}


def test_make_run_atari_records_where_the_quickstart_config_reads():
    cfg = load_config(AtariConfig, REPO / "configs/atari/quickstart.yaml")
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("run-atari: install\n")[1].split("\n\n")[0]
    assert f"--out {cfg.data_dir} --buffers {cfg.num_buffers}" in recipe
    assert "configs/atari/quickstart.yaml" in recipe
    assert cfg.num_buffers <= 2 and cfg.train.num_iterations * cfg.train.steps_per_iteration <= 1000  # minutes on a CPU
    assert OmegaConf.load(REPO / "configs/atari/quickstart.yaml").eval.max_ep_len <= 1000
