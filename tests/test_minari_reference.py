"""Minari's mujoco/*-v0 datasets, scored with the -v5 references pinned in decision_mamba/scores.py.

The datasets here are recorded with minari's own DataCollector on the real -v5 environments,
under the ids of Minari's datasets and, like them, without reference scores in their metadata."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from decision_mamba.errors import DataError
from decision_mamba.scores import main as scores_main
from decision_mamba.scores import random_policy_returns
from decision_mamba.suites.minari import Minari
from helpers import minari_datasets_path
from test_suites import record


def load(root, dataset_id):
    with minari_datasets_path(root):
        return Minari().load(SimpleNamespace(dataset=f"minari:{dataset_id}"))


def test_a_recorded_hopper_episode_is_scored_with_the_pinned_constants(tmp_path):
    record(tmp_path, "mujoco/hopper/medium-v0", "Hopper-v5", episodes=3, steps=20, seed=4, ref_scores=False)
    import minari

    data = load(tmp_path, "mujoco/hopper/medium-v0")
    with minari_datasets_path(tmp_path):  # the recorded episode, read by minari itself
        episode = next(minari.load_dataset("mujoco/hopper/medium-v0").iterate_episodes())
    episode_return = float(np.sum(episode.rewards, dtype=np.float64))
    # by hand: the random policy's 17.039865 (measured here) and the expert dataset's 4098.2 (its card)
    by_hand = 100.0 * (episode_return - 17.039865) / (4098.2 - 17.039865)
    score = Minari().score(None, data.env)
    assert score(episode_return) == pytest.approx(by_hand, rel=1e-12)
    assert data.env["env_id"] == "Hopper-v5" and "not comparable with D4RL" in data.env["reference"]


def test_an_env_without_a_pinned_expert_return_is_refused_naming_the_command(tmp_path):
    record(tmp_path, "mujoco/halfcheetah/simple-v0", "HalfCheetah-v5", episodes=1, steps=5, seed=0, ref_scores=False)
    with pytest.raises(DataError, match=r"python -m decision_mamba.scores dataset mujoco/halfcheetah/expert-v0"):
        load(tmp_path, "mujoco/halfcheetah/simple-v0")


@pytest.mark.parametrize("env_id, pinned", [("Hopper-v5", 17.039865), ("Walker2d-v5", 1.928287)])
def test_the_pinned_random_returns_are_what_the_command_measures(env_id, pinned, capsys):
    assert random_policy_returns(env_id, 100).mean() == pytest.approx(pinned, abs=5e-6)
    assert scores_main(["random", env_id, "--episodes", "2"]) == 0
    assert f"{env_id}: uniformly random actions, 2 episodes" in capsys.readouterr().out


def test_the_sweep_runs_table1_on_the_nine_minari_datasets_under_the_clean_protocol():
    from decision_mamba import sweep

    runs = sweep.table_runs(1, suite="minari", protocol="clean", models=["dmamba"], seeds=[12])
    assert [r.config for r in runs] == [f"configs/minari/mujoco-{env}-{level}.yaml" for level in ("simple", "medium", "expert")
                                        for env in ("halfcheetah", "hopper", "walker2d")]
    assert all("protocol=clean" in r.overrides for r in runs) and runs[0].out_dir == "runs/table1-minari"
    assert runs[4].group == "table1/mujoco-hopper-medium-v0/dmamba/clean"  # the aggregator's cells
    for refused in ({"protocol": "release"}, {"protocol": "clean", "smoke": True}):
        with pytest.raises(sweep.SweepError, match="minari is Table 1's, under --protocol clean"):
            sweep.table_runs(1, suite="minari", **refused)
