"""gym/experiment.py end to end on the CPU: train, evaluate, get killed, resume."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import finish, kill_when_exists, roll_random_hopper, run_entry_point, write_episodes_d4rl

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.d_model=32", "model.n_layer=2", "train.batch_size=16", "train.context_len=5",
        "train.warmup_steps=50", "train.learning_rate=1e-3", "train.num_iterations=3",
        "train.steps_per_iteration=100", "eval.episodes=2", "eval.targets=[3600,1800]",
        "eval.max_ep_len=60", "run.progress=false", "train.num_threads=1"]


@pytest.fixture(scope="module")
def hopper_file(tmp_path_factory):
    episodes = roll_random_hopper(12, seed=3, max_episode_steps=80)
    path = tmp_path_factory.mktemp("data") / "hopper-random-test.hdf5"
    write_episodes_d4rl(path, episodes)
    return path


def experiment(args):
    return run_entry_point("gym/experiment.py", args)



def test_train_evaluate_kill_resume_matches_an_uninterrupted_run(hopper_file, tmp_path):
    common = ["--config", "configs/gym/hopper-medium.yaml", f"dataset={hopper_file}", *TINY]
    out = finish(experiment([*common, f"run.out_dir={tmp_path / 'a'}", "run.name=run"]))
    assert "normalized score" in out and "uniform random policy" in out
    run_a = tmp_path / "a" / "run"

    proc = experiment([*common, f"run.out_dir={tmp_path / 'b'}", "run.name=run"])
    first_ckpt = tmp_path / "b" / "run" / "checkpoints" / "iter_001.pt"
    kill_when_exists(proc, first_ckpt)
    run_b = tmp_path / "b" / "run"
    assert not (run_b / "summary.json").exists(), "the run finished before it could be killed"
    assert not list((run_b / "checkpoints").glob("*.tmp")), "a half-written checkpoint was left behind"

    finish(experiment([*common, f"run.out_dir={tmp_path / 'b'}", "run.name=run", "--resume"]))

    summary_a = json.loads((run_a / "summary.json").read_text())
    summary_b = json.loads((run_b / "summary.json").read_text())
    assert summary_a["last"] == summary_b["last"] and summary_a["best"] == summary_b["best"]
    assert summary_a["last"]["iteration"] == 3
    assert set(summary_a["last"]["targets"]) == {"3600", "1800"}
    lines = lambda run: [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval"] for r in lines(run_a)] == [r["eval"] for r in lines(run_b)]
    assert [r["train"]["loss_mean"] for r in lines(run_a)] == [r["train"]["loss_mean"] for r in lines(run_b)]
    weights_a = torch.load(run_a / "checkpoints" / "iter_003.pt", weights_only=True)["trainer"]["model"]
    weights_b = torch.load(run_b / "checkpoints" / "iter_003.pt", weights_only=True)["trainer"]["model"]
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    # the training did something: the loss fell
    losses = [r["train"]["loss_mean"] for r in lines(run_a)]
    assert losses[-1] < losses[0]
    # the run directory holds the resolved config
    assert "d_model: 32" in (run_a / "config.yaml").read_text()
    ref = summary_a["reference"]
    assert ref["dataset"]["episodes"] == 12 and np.isfinite(ref["random_policy"]["score_mean"])


def test_missing_dataset_names_the_download_command(tmp_path):
    proc = experiment(["--config", "configs/gym/walker2d-medium.yaml", f"data_dir={tmp_path}", *TINY])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "python -m decision_mamba.data.download d4rl walker2d-medium-v2" in out
    assert not (REPO / "runs" / "walker2d-medium-mamba-s12").exists()


def test_dataset_from_another_environment_is_refused(hopper_file, tmp_path):
    proc = experiment(["--config", "configs/gym/walker2d-medium.yaml", f"dataset={hopper_file}", *TINY,
                       f"run.out_dir={tmp_path}"])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "observation size 11 but Walker2d-v4 has 17" in out
    assert not any(tmp_path.iterdir())
