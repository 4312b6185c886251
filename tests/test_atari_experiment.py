"""atari/train_atari.py end to end on the CPU, on DQN-replay files recorded from the real emulator."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from atari_helpers import DopamineBuffer, record_episodes
from helpers import finish, kill_when_exists, run_entry_point
from dqn_replay_writer import write_replay_buffer

TINY = ["model.d_model=32", "model.n_layer=1", "model.n_head=2", "train.batch_size=8", "train.context_len=4",
        "train.steps_per_iteration=15", "train.num_iterations=3", "train.warmup_tokens=100",
        "num_buffers=2", "num_steps=60", "trajectories_per_buffer=2", "eval.episodes=2", "eval.max_ep_len=40",
        "run.progress=false", "train.num_threads=1"]


@pytest.fixture(scope="module")
def replay_root(tmp_path_factory):
    """Buffers 48 and 49 (the last two of 50, which num_buffers=2 draws from) of Breakout."""
    episodes = record_episodes("Breakout", num_episodes=16, seed=1, min_steps=8, max_steps=20)
    root = tmp_path_factory.mktemp("dqn_replay")
    for index, part in ((48, episodes[:8]), (49, episodes[8:])):
        buffer = DopamineBuffer(capacity=sum(len(e) + 3 for e in part) + 5)
        for episode in part:
            buffer.add_episode(episode)
        write_replay_buffer(root, "Breakout", index, buffer.observations, buffer.actions, buffer.rewards,
                            buffer.terminals, add_count=buffer.add_count)
    return root


def experiment(args):
    return run_entry_point("atari/train_atari.py", args)


def evaluate_command(*args):
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "decision_mamba.evaluate", *map(str, args)], env=env,
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)



@pytest.mark.parametrize("mixer", ["mamba", "attention"])
def test_train_evaluate_kill_resume(replay_root, tmp_path, mixer):
    common = ["--config", "configs/atari/breakout.yaml", f"data_dir={replay_root}", f"model.mixer={mixer}", *TINY]
    out = finish(experiment([*common, f"run.out_dir={tmp_path / 'a'}", "run.name=run"]))
    assert "gamer-normalized score" in out

    proc = experiment([*common, f"run.out_dir={tmp_path / 'b'}", "run.name=run"])
    first = tmp_path / "b" / "run" / "checkpoints" / "iter_001.pt"
    kill_when_exists(proc, first)
    assert not (tmp_path / "b" / "run" / "summary.json").exists()
    finish(experiment([*common, f"run.out_dir={tmp_path / 'b'}", "run.name=run", "--resume"]))

    a = json.loads((tmp_path / "a" / "run" / "summary.json").read_text())
    b = json.loads((tmp_path / "b" / "run" / "summary.json").read_text())
    assert a["last"] == b["last"] and a["best"] == b["best"] and a["steps"] == 45
    wa = torch.load(tmp_path / "a" / "run" / "checkpoints" / "iter_003.pt", weights_only=True)["trainer"]
    wb = torch.load(tmp_path / "b" / "run" / "checkpoints" / "iter_003.pt", weights_only=True)["trainer"]
    assert all(torch.equal(wa["model"][k], wb["model"][k]) for k in wa["model"])
    assert wa["tokens"] == 45 * 8 * 4  # DT counts one token per action target
    records = [json.loads(x) for x in (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["train"]["loss_mean"] < records[0]["train"]["loss_mean"]
    assert a["dataset"]["transitions"] >= 60
    # the checkpoint alone reproduces the logged evaluation (sampled actions included)
    done = evaluate_command(tmp_path / "a" / "run", "--json", tmp_path / "eval.json")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "eval.json").read_text())["targets"] == records[-1]["eval"]


def test_missing_replay_files_are_named(tmp_path):
    proc = experiment(["--config", "configs/atari/breakout.yaml", f"data_dir={tmp_path}", *TINY,
                       f"run.out_dir={tmp_path / 'runs'}"])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "$store$_observation_ckpt" in out and "Breakout" in out
    assert not (tmp_path / "runs").exists()


def test_release_protocol_trains_and_its_checkpoint_reproduces_the_evaluation(replay_root, tmp_path):
    """protocol=release end to end: the global-position embedding's extra table is in the
    checkpoint, the evaluate command rebuilds it (context_len) and replays the unpadded
    short-prefix evaluation exactly."""
    tiny = [a for a in TINY if not a.startswith(("train.num_iterations", "train.steps_per_iteration"))]
    args = ["--config", "configs/atari/breakout.yaml", f"data_dir={replay_root}", "protocol=release", *tiny,
            "train.num_iterations=1", "train.steps_per_iteration=5", f"run.out_dir={tmp_path}", "run.name=run"]
    finish(experiment(args))
    state = torch.load(tmp_path / "run" / "checkpoints" / "iter_001.pt", weights_only=True)
    assert tuple(state["trainer"]["model"]["embed_position.weight"].shape) == (3 * 4, 32)  # 3K rows
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    done = evaluate_command(tmp_path / "run", "--json", tmp_path / "eval.json")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "eval.json").read_text())["targets"] == records[-1]["eval"]
    refused = evaluate_command(tmp_path / "run", "--mode", "recurrent")
    assert refused.returncode == 2 and "use eval.mode=window" in refused.stderr


def test_training_films_each_evaluation_and_evaluate_video_films_the_same_episode(replay_root, tmp_path):
    from decision_mamba.video import read_mp4

    args = ["--config", "configs/atari/breakout.yaml", f"data_dir={replay_root}", *TINY, "train.num_iterations=2",
            "eval.video_episodes=1", f"run.out_dir={tmp_path}", "run.name=run"]
    finish(experiment(args))
    run_dir = tmp_path / "run"
    for iteration in (1, 2):  # the first of the 2 episodes of the one target, at each evaluation
        assert [p.name for p in (run_dir / "videos" / f"iter_00{iteration}").iterdir()] == ["target90_episode0.mp4"]

    done = evaluate_command(run_dir, "--video", tmp_path / "again", "--json", tmp_path / "eval.json")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "eval.json").read_text())
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert report["targets"] == records[-1]["eval"]  # filming changed no number
    assert report["videos"] == [str(tmp_path / "again" / "target90_episode0.mp4")]
    trained, _ = read_mp4(run_dir / "videos" / "iter_002" / "target90_episode0.mp4")
    again, _ = read_mp4(tmp_path / "again" / "target90_episode0.mp4")
    assert trained.shape == again.shape and (trained == again).all()  # the same episode, frame for frame
