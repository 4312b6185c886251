"""`python -m decision_mamba.evaluate` on a real short gym run: it reproduces the logged
evaluation from the checkpoint alone; and the entry point's --resume refusal is one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import finish, roll_random_hopper, run_entry_point, write_episodes_d4rl

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.d_model=16", "model.n_layer=1", "train.batch_size=8", "train.context_len=4",
        "train.warmup_steps=10", "train.learning_rate=1e-3", "train.num_iterations=3",
        "train.steps_per_iteration=20", "eval.episodes=2", "eval.targets=[3600,1800]",
        "eval.max_ep_len=40", "run.progress=false", "train.num_threads=1"]


@pytest.fixture(scope="module")
def gym_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    data = write_episodes_d4rl(root / "hopper-random-test.hdf5", roll_random_hopper(8, seed=5, max_episode_steps=50))
    args = ["--config", "configs/gym/hopper-medium.yaml", f"dataset={data}", *TINY,
            f"run.out_dir={root}", "run.name=run"]
    finish(run_entry_point("gym/experiment.py", args))
    return root / "run", args


def evaluate(*args):
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "decision_mamba.evaluate", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def logged(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_evaluate_reproduces_the_logged_evaluations(gym_run, tmp_path):
    run_dir, _ = gym_run
    records = logged(run_dir)
    # the best by hand: highest score over targets, the earliest of equals
    best = max(records, key=lambda r: (max(t["score_mean"] for t in r["eval"].values()), -r["iteration"]))
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert kept == sorted({f"iter_{best['iteration']:03d}.pt", "iter_003.pt"})  # retention: newest and best

    done = evaluate(run_dir, "--json", tmp_path / "last.json")
    assert done.returncode == 0, done.stderr
    last = json.loads((tmp_path / "last.json").read_text())
    assert last["iteration"] == 3 and last["targets"] == records[-1]["eval"]  # exactly, every float
    assert "3600" in done.stdout and "1800" in done.stdout and "normalized score" in done.stdout

    done = evaluate(run_dir, "--which", "best", "--json", tmp_path / "best.json")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "best.json").read_text())["targets"] == best["eval"]

    # another protocol, from the file: one episode per target, another seed
    done = evaluate(run_dir / "checkpoints" / "iter_003.pt", "--episodes", "1", "--targets", "900",
                    "--seed", "7", "--json", tmp_path / "other.json", "--video", tmp_path / "video")
    assert done.returncode == 0, done.stderr
    other = json.loads((tmp_path / "other.json").read_text())
    assert other["seed"] == 7 and list(other["targets"]) == ["900"] and other["targets"]["900"]["return_std"] == 0.0
    # --video: the one episode, rendered headless (EGL), a frame after the reset and after each step
    from decision_mamba.video import read_mp4

    assert other["videos"] == [str(tmp_path / "video" / "target900_episode0.mp4")]
    frames, _ = read_mp4(other["videos"][0])
    assert len(frames) == other["targets"]["900"]["length_mean"] + 1 and frames.std() > 1.0
    assert other["code"]["package"] == "0.1.0" and other["env_id"] == "Hopper-v4"


def test_evaluate_names_a_damaged_checkpoint_in_one_line(gym_run, tmp_path):
    run_dir, _ = gym_run
    damaged = tmp_path / "iter_003.pt"
    damaged.write_bytes((run_dir / "checkpoints" / "iter_003.pt").read_bytes()[:5000])
    done = evaluate(damaged)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"error: checkpoint {damaged} is damaged or not a checkpoint of this project (")
    assert "weights_only" not in line


def test_resume_with_another_config_exits_2_in_one_line_and_writes_nothing(gym_run):
    run_dir, args = gym_run
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    proc = run_entry_point("gym/experiment.py", [*args, "train.learning_rate=2e-3", "model.d_model=32", "--resume"])
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    assert out.strip().splitlines()[-1] == (
        f"error: --resume of {run_dir} with a different setup (model.d_model: 16 -> 32; "
        f"train.learning_rate: 0.001 -> 0.002); run it as it was started or start a new run (another run.name); "
        f"to resume anyway, if you know the change is safe: run.resume_allow_changes=[model.d_model,train.learning_rate]")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
