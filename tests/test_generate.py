"""Tests for tools/generate_dataset.py: tiny end-to-end runs on the real Hopper-v4.

The independent references: a fresh Hopper-v4 replaying a dataset's recorded actions from its
recorded env seed must reproduce the recorded observations, rewards and flags exactly; the
returns and normalized scores are recomputed here from the raw arrays and D4RL's reference
returns (docs/data.md); a run interrupted after its first checkpoint and resumed must equal
an uninterrupted run bit for bit.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import tempfile
import warnings
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest

from decision_mamba.errors import cli_main
from generate_dataset import (
    DATASETS,
    GenerateConfig,
    GenerateError,
    build_parser,
    dataset_file_name,
    generate,
    main,
    rollout,
    _make_agent,
)

HOPPER_RANDOM, HOPPER_EXPERT = -20.272305, 3234.3  # D4RL's reference returns (docs/data.md)
OBS_DIM, ACT_DIM = 11, 3

# Tiny budgets: 600 SAC steps, uniform random warm-up for the first 300 and then 300 gradient
# updates; checkpoints at 200 (mid warm-up), 400 and 600; the medium snapshot forced at 400
# (a real policy gets nowhere near 1/3 of the expert return this fast).
TINY = dict(
    env_id="Hopper-v4",
    seed=3,
    sac_steps=600,
    checkpoint_interval=200,
    eval_episodes=1,
    medium_step=400,
    transitions=300,
    random_transitions=150,
    learning_starts=300,
    buffer_size=10_000,
    batch_size=64,
    progress_bar=False,
)


def tiny_config(out_dir: Path, **changes) -> GenerateConfig:
    return GenerateConfig(out_dir=out_dir, **{**TINY, **changes})


def read(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    with h5py.File(path, "r") as f:
        return {key: f[key][()] for key in f.keys()}, dict(f.attrs)


def episode_slices(terminals: np.ndarray, timeouts: np.ndarray) -> list[slice]:
    ends = np.flatnonzero(terminals | timeouts) + 1
    return [slice(start, end) for start, end in zip(np.r_[0, ends[:-1]], ends)]


def make_hopper(**kwargs) -> gym.Env:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is out of date.*")
        return gym.make("Hopper-v4", **kwargs)


def replay(arrays: dict[str, np.ndarray], env_seed: int, env: gym.Env | None = None) -> None:
    """Re-simulate a dataset's actions in a fresh env and compare everything recorded."""
    env = env or make_hopper()
    obs, _ = env.reset(seed=env_seed)
    for episode in episode_slices(arrays["terminals"], arrays["timeouts"]):
        for t in range(episode.start, episode.stop):
            np.testing.assert_array_equal(arrays["observations"][t], obs.astype(np.float32), err_msg=f"row {t}")
            obs, reward, terminated, truncated, _ = env.step(arrays["actions"][t])
            assert arrays["rewards"][t] == np.float32(reward), f"row {t}"
            assert arrays["terminals"][t] == terminated, f"row {t}"
            assert arrays["timeouts"][t] == (truncated and not terminated), f"row {t}"
            if "next_observations" in arrays:
                np.testing.assert_array_equal(arrays["next_observations"][t], obs.astype(np.float32))
        assert terminated or truncated, f"episode {episode} ends before the env says so"
        obs, _ = env.reset()


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """One uninterrupted run producing every dataset."""
    out = tmp_path_factory.mktemp("full")
    generate(tiny_config(out))
    return out


def test_d4rl_layout_and_dtypes(full_run):
    for dataset in DATASETS:
        arrays, attrs = read(full_run / dataset_file_name("Hopper-v4", dataset))
        n = len(arrays["rewards"])
        assert n == attrs["num_transitions"] > 0
        assert arrays["observations"].dtype == np.float32 and arrays["observations"].shape == (n, OBS_DIM)
        assert arrays["next_observations"].dtype == np.float32 and arrays["next_observations"].shape == (n, OBS_DIM)
        assert arrays["actions"].dtype == np.float32 and arrays["actions"].shape == (n, ACT_DIM)
        assert arrays["rewards"].dtype == np.float32 and arrays["rewards"].shape == (n,)
        assert arrays["terminals"].dtype == bool and arrays["timeouts"].dtype == bool
        assert attrs["env_id"] == "Hopper-v4" and attrs["dataset"] == dataset and attrs["seed"] == 3


def test_episodes_are_whole_and_flags_follow_d4rl(full_run):
    for dataset in DATASETS:
        arrays, attrs = read(full_run / dataset_file_name("Hopper-v4", dataset))
        terminals, timeouts = arrays["terminals"], arrays["timeouts"]
        assert terminals[-1] or timeouts[-1], f"{dataset} ends in the middle of an episode"
        assert not (terminals & timeouts).any()
        episodes = episode_slices(terminals, timeouts)
        assert len(episodes) == attrs["num_episodes"]
        for episode in episodes:
            length = episode.stop - episode.start
            assert length <= 1000
            assert not timeouts[episode.stop - 1] or length == 1000  # a timeout only at the time limit
        # Within an episode, each next observation is the following row's observation.
        for episode in episodes:
            np.testing.assert_array_equal(
                arrays["next_observations"][episode][:-1], arrays["observations"][episode][1:]
            )


def test_rollouts_replay_exactly_in_a_fresh_env(full_run):
    # medium / expert / random: rollouts from env_seed; medium-replay: SAC's own training env,
    # which SB3 seeds with the run's seed. This also checks that medium-replay's actions are
    # the ones the env received (SB3 stores them rescaled to [-1, 1]).
    for dataset in ("random", "medium", "medium-replay", "expert"):
        arrays, attrs = read(full_run / dataset_file_name("Hopper-v4", dataset))
        replay(arrays, int(attrs["env_seed"]))


def test_medium_replay_is_the_replay_buffer_up_to_the_snapshot(full_run):
    arrays, attrs = read(full_run / dataset_file_name("Hopper-v4", "medium-replay"))
    assert attrs["sac_steps_at_snapshot"] == 400
    # 400 steps were collected (300 uniform warm-up, then SAC's policy); only the episode that
    # was still running at the snapshot is left out. test_rollouts_replay_exactly... checks the
    # rows are that stream from its start.
    assert 300 < len(arrays["rewards"]) <= 400


def test_timeouts_recorded_at_the_time_limit():
    # The tiny runs never last 1000 steps, so check the time-limit flag on a 25-step limit:
    # zero torque keeps the hopper standing for longer than that.
    env = make_hopper(max_episode_steps=25)
    data = rollout(env, lambda obs: np.zeros(ACT_DIM, np.float32), min_transitions=60, seed=11)
    assert len(data) == 75
    expected_timeouts = np.zeros(75, bool)
    expected_timeouts[[24, 49, 74]] = True
    np.testing.assert_array_equal(data.timeouts, expected_timeouts)
    assert not data.terminals.any()
    arrays = {field.name: getattr(data, field.name) for field in dataclasses.fields(data)}
    replay(arrays, 11, make_hopper(max_episode_steps=25))


def test_medium_expert_is_medium_then_expert(full_run):
    medium, _ = read(full_run / dataset_file_name("Hopper-v4", "medium"))
    expert, _ = read(full_run / dataset_file_name("Hopper-v4", "expert"))
    both, attrs = read(full_run / dataset_file_name("Hopper-v4", "medium-expert"))
    assert set(both) == set(medium)
    for key in both:
        np.testing.assert_array_equal(both[key], np.concatenate([medium[key], expert[key]]))
    assert attrs["num_transitions"] == len(medium["rewards"]) + len(expert["rewards"])


def test_metadata_returns_and_scores(full_run):
    progress = json.loads((full_run / "progress.json").read_text())
    for dataset in DATASETS:
        arrays, attrs = read(full_run / dataset_file_name("Hopper-v4", dataset))
        returns = [arrays["rewards"][episode].astype(np.float64).sum()
                   for episode in episode_slices(arrays["terminals"], arrays["timeouts"])]
        assert attrs["behaviour_return_mean"] == pytest.approx(np.mean(returns), rel=1e-12)
        expected_score = 100 * (np.mean(returns) - HOPPER_RANDOM) / (HOPPER_EXPERT - HOPPER_RANDOM)
        assert attrs["behaviour_normalized_score"] == pytest.approx(expected_score, rel=1e-9)
        assert attrs["medium_threshold_return"] == pytest.approx(HOPPER_EXPERT / 3)
    assert read(full_run / "hopper-medium-v4-gen.hdf5")[1]["sac_steps_at_snapshot"] == 400
    expert_attrs = read(full_run / "hopper-expert-v4-gen.hdf5")[1]
    assert expert_attrs["sac_steps_at_snapshot"] == 600
    assert expert_attrs["policy_eval_return"] == progress["sac"]["evaluations"][-1][1]
    assert [evaluation[0] for evaluation in progress["sac"]["evaluations"]] == [200, 400, 600]
    # Rollout datasets hold whole episodes: at least the budget, at most one episode more.
    assert 300 <= attrs_of(full_run, "medium")["num_transitions"] < 300 + 1000
    assert 150 <= attrs_of(full_run, "random")["num_transitions"] < 150 + 1000


def attrs_of(out: Path, dataset: str) -> dict:
    return read(out / dataset_file_name("Hopper-v4", dataset))[1]


def test_random_actions_are_uniform_within_bounds(full_run):
    actions = read(full_run / "hopper-random-v4-gen.hdf5")[0]["actions"]
    assert actions.min() >= -1.0 and actions.max() <= 1.0
    # Uniform on [-1, 1]: mean 0, std 1/sqrt(3) ~ 0.577 (150+ samples per dimension).
    assert np.abs(actions.mean(axis=0)).max() < 0.15
    assert np.allclose(actions.std(axis=0), 1 / np.sqrt(3), atol=0.08)


def test_resume_after_a_checkpoint_equals_an_uninterrupted_run(full_run, tmp_path):
    # "Interrupt" twice: after the checkpoint at 200 (in the random warm-up), after the one at
    # 400 (SAC updating), then run the full command. Resuming restores the networks, optimizers,
    # replay buffer, simulator state, time limit and RNGs; without any one of them the
    # continuation (and the datasets) would differ.
    generate(tiny_config(tmp_path, sac_steps=200, datasets=("random",)))
    assert not (tmp_path / "sac").exists()  # random needs no SAC
    generate(tiny_config(tmp_path, sac_steps=200, datasets=("expert",)))
    assert (tmp_path / "sac" / "step-000000200" / "agent.pt").exists()
    first = generate(tiny_config(tmp_path, sac_steps=400, datasets=("medium",)))
    medium_inode = first["medium"].stat().st_ino
    generate(tiny_config(tmp_path))

    for dataset in DATASETS:
        name = dataset_file_name("Hopper-v4", dataset)
        resumed, resumed_attrs = read(tmp_path / name)
        straight, straight_attrs = read(full_run / name)
        assert resumed.keys() == straight.keys()
        for key in straight:
            np.testing.assert_array_equal(resumed[key], straight[key], err_msg=f"{dataset}/{key}")
        assert resumed_attrs.keys() == straight_attrs.keys()
        for key, value in straight_attrs.items():
            assert resumed_attrs[key] == value, f"{dataset} attribute {key}"
    progress = [json.loads((out / "progress.json").read_text())["sac"] for out in (tmp_path, full_run)]
    assert progress[0]["evaluations"] == progress[1]["evaluations"]
    # The medium file from the first run was kept, not rewritten.
    assert (tmp_path / "hopper-medium-v4-gen.hdf5").stat().st_ino == medium_inode
    # Only the medium snapshot and the latest checkpoint remain.
    assert sorted(p.name for p in (tmp_path / "sac").iterdir()) == ["step-000000400", "step-000000600"]


def test_medium_snapshot_is_the_first_evaluation_over_the_threshold(full_run, tmp_path):
    evaluations = json.loads((full_run / "progress.json").read_text())["sac"]["evaluations"]
    returns = [mean_return for _, mean_return, _ in evaluations]
    # The first checkpoint that beats all earlier ones; a threshold just under its return
    # (and above every earlier one) must select it.
    first_best = next((i for i in range(1, len(returns)) if returns[i] > max(returns[:i])), None)
    assert first_best is not None, f"precondition: some later evaluation improves, got {returns}"
    fraction = (max(returns[:first_best]) + returns[first_best]) / 2 / HOPPER_EXPERT
    generate(tiny_config(tmp_path, medium_step=None, medium_fraction=fraction, datasets=("medium",)))
    progress = json.loads((tmp_path / "progress.json").read_text())["sac"]
    assert progress["evaluations"][: first_best + 1] == evaluations[: first_best + 1]  # same training
    expected_step = evaluations[first_best][0]
    assert progress["medium_step"] == expected_step
    assert attrs_of(tmp_path, "medium")["sac_steps_at_snapshot"] == expected_step


def test_medium_never_reached_is_a_clear_error(tmp_path):
    config = tiny_config(tmp_path, sac_steps=200, medium_step=None, datasets=("medium", "random"))
    with pytest.raises(GenerateError, match="never reached the medium level.*--sac-steps"):
        generate(config)
    assert (tmp_path / "hopper-random-v4-gen.hdf5").exists()  # what could be written was written
    assert not (tmp_path / "hopper-medium-v4-gen.hdf5").exists()


def test_changed_settings_on_resume_are_refused(tmp_path):
    generate(tiny_config(tmp_path, datasets=("random",)))  # no SAC, but the settings are recorded
    with pytest.raises(GenerateError, match=r"other settings \(seed: 3 -> 4\)"):
        generate(tiny_config(tmp_path, seed=4, datasets=("random",)))


def test_bad_input_errors(tmp_path, capsys):
    with pytest.raises(GenerateError, match=r"unknown environment 'Hopper-v9'.*Hopper-v4.*HalfCheetah-v4.*Walker2d-v4"):
        generate(tiny_config(tmp_path, env_id="Hopper-v9"))
    assert cli_main(main, ["--env", "Ant-v4", "--out", str(tmp_path)]) == 2
    assert "unknown environment 'Ant-v4'; supported: Hopper-v4" in capsys.readouterr().err

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(GenerateError, match="cannot write to the output folder.*writable --out"):
        generate(tiny_config(blocker / "out"))

    with pytest.raises(GenerateError, match="not a multiple of --checkpoint-interval"):
        generate(tiny_config(tmp_path, sac_steps=500))
    with pytest.raises(GenerateError, match="--medium-step 250 must be a positive multiple"):
        generate(tiny_config(tmp_path, medium_step=250))
    with pytest.raises(GenerateError, match="--medium-step 800 is beyond --sac-steps 600.*re-run"):
        generate(tiny_config(tmp_path, medium_step=800, datasets=("medium",)))
    with pytest.raises(SystemExit):
        main(["--env", "Hopper-v4", "--out", str(tmp_path), "--datasets", "medium,replay"])
    assert "unknown dataset(s) ['replay']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--env", "Hopper-v4", "--out", str(tmp_path), "--medium-fraction", "one third"])
    assert "expected a number or a fraction like 1/3" in capsys.readouterr().err
    args = build_parser().parse_args(["--env", "Hopper-v4", "--out", "x", "--medium-fraction", "1/3"])
    assert args.medium_fraction == 1 / 3


def test_a_second_process_on_the_same_folder_is_refused(tmp_path):
    with open(tmp_path / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running generator holds it
        with pytest.raises(GenerateError, match="another generate process is using"):
            generate(tiny_config(tmp_path, datasets=("random",)))


def test_minari_export_matches_the_hdf5(tmp_path, monkeypatch):
    minari = pytest.importorskip("minari")
    generate(tiny_config(tmp_path, datasets=("random",), minari=True))
    arrays, _ = read(tmp_path / "hopper-random-v4-gen.hdf5")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    dataset = minari.load_dataset("dmamba-gen/hopper-v4/random-v0")
    episodes = list(dataset.iterate_episodes())
    slices = episode_slices(arrays["terminals"], arrays["timeouts"])
    assert len(episodes) == len(slices)
    for episode, rows in zip(episodes, slices):
        np.testing.assert_array_equal(episode.observations[:-1], arrays["observations"][rows])
        np.testing.assert_array_equal(episode.observations[-1], arrays["next_observations"][rows][-1])
        np.testing.assert_array_equal(episode.actions, arrays["actions"][rows])
        np.testing.assert_array_equal(episode.rewards, arrays["rewards"][rows])
        np.testing.assert_array_equal(episode.terminations, arrays["terminals"][rows])


def test_sac_training_writes_nothing_outside_its_output_folder(tmp_path, monkeypatch):
    # SB3 without a logger of its own makes tempfile.gettempdir()/SB3-<date> at every learn().
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.delenv("SB3_LOGDIR", raising=False)
    agent, _ = _make_agent(tiny_config(tmp_path / "out"))
    agent.learn(5)
    assert [p.name for p in temp.iterdir() if p.name.startswith("SB3")] == []
