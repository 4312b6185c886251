"""What a run writes about itself: run_info.json, the per-step curve, the banner and eval lines."""

import json
import subprocess
from pathlib import Path

import pytest
import torch

from decision_mamba.model import ModelConfig
from decision_mamba.run import run_experiment
from decision_mamba.runlog import RUN_INFO_FILE, STEPS_FILE, scan_backend
from test_run import tiny_setup

REPO = Path(__file__).resolve().parents[1]


def recording(trainer):
    """Wrap train_step to keep each update's own statistics (the reference for the log)."""
    seen = []
    step = trainer.train_step

    def train_step():
        tokens = trainer.tokens
        stats = step()
        seen.append((trainer.step, stats, trainer.tokens - tokens))
        return stats

    trainer.train_step = train_step
    return seen


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_step_log_holds_window_means_every_n_steps_and_at_iteration_ends(tmp_path):
    cfg, trainer, evaluate = tiny_setup(tmp_path, ["run.log_every=2"])  # 3 iterations x 5 steps
    seen = recording(trainer)
    run_experiment(cfg, trainer, evaluate, run_dir=tmp_path / "run", group="g")
    log = read_jsonl(tmp_path / "run" / STEPS_FILE)
    # windows end at multiples of 2 and at each iteration's end (5, 10, 15)
    ends = [2, 4, 5, 6, 8, 10, 12, 14, 15]
    assert [r["step"] for r in log] == ends
    starts = [1] + [e + 1 for e in ends[:-1]]
    for record, first, last in zip(log, starts, ends):
        window = [s for step, s, _ in seen if first <= step <= last]
        assert record["loss"] == pytest.approx(sum(s.loss for s in window) / len(window))
        assert record["lr"] == pytest.approx(sum(s.lr for s in window) / len(window))
        assert record["grad_norm"] == pytest.approx(sum(s.grad_norm for s in window) / len(window))
        assert record["grad_norm_max"] == pytest.approx(max(s.grad_norm for s in window))
        tokens = sum(t for step, _, t in seen if first <= step <= last)
        assert record["tokens_per_s"] == pytest.approx(record["steps_per_s"] * tokens / len(window))
        assert record["steps_per_s"] > 0
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    norms = [s.grad_norm for _, s, _ in seen]
    assert [m["train"]["grad_norm_mean"] for m in metrics] == pytest.approx(
        [sum(norms[i:i + 5]) / 5 for i in (0, 5, 10)])
    assert all(m["train"]["steps_per_s"] > 0 and m["eval_time_s"] >= 0 for m in metrics)


def test_run_info_records_commit_packages_and_device(tmp_path):
    cfg, trainer, evaluate = tiny_setup(tmp_path, ["train.num_iterations=1"])
    run_experiment(cfg, trainer, evaluate, run_dir=tmp_path / "run", group="g", data="tiny: 6 episodes")
    info = json.loads((tmp_path / "run" / RUN_INFO_FILE).read_text())
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert info["git"]["commit"] == head.stdout.strip()
    # The installed version; PyPI's CUDA builds add a local label (+cu128) to torch.__version__ only.
    assert torch.__version__.split("+")[0] == info["packages"]["torch"].split("+")[0]
    assert info["device"].startswith("cpu (")
    assert info["scan_backend"] is None  # conv has no scan
    assert info["num_parameters"] == sum(p.numel() for p in trainer.model.parameters())
    assert info["data"] == "tiny: 6 episodes"


def test_scan_backend_follows_the_auto_rule():
    cpu = torch.device("cpu")
    assert scan_backend(ModelConfig(mixer="mamba"), cpu) == "fused"
    assert scan_backend(ModelConfig(mixer="mamba", scan_backend="reference"), cpu) == "reference"
    assert scan_backend(ModelConfig(mixer="attention"), cpu) is None


def test_resume_appends_to_run_info_and_truncates_the_step_log(tmp_path):
    cfg, trainer, evaluate = tiny_setup(tmp_path / "a", ["run.log_every=2"])
    run_experiment(cfg, trainer, evaluate, run_dir=tmp_path / "a" / "run", group="g")

    cfg, trainer, evaluate = tiny_setup(tmp_path / "b", ["run.log_every=2"])
    draw, calls = trainer.sample_batch, {"n": 0}

    def dying_draw(rng):
        calls["n"] += 1
        if calls["n"] == 14:  # after the step-12 line of iteration 3 was written
            raise KeyboardInterrupt
        return draw(rng)

    trainer.sample_batch = dying_draw
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, trainer, evaluate, run_dir=tmp_path / "b" / "run", group="g")
    assert read_jsonl(tmp_path / "b" / "run" / STEPS_FILE)[-1]["step"] == 12
    cfg, trainer, evaluate = tiny_setup(tmp_path / "b", ["run.log_every=2"])
    run_experiment(cfg, trainer, evaluate, run_dir=tmp_path / "b" / "run", group="g", resume=True)

    def curve(run):
        return [(r["step"], r["loss"], r["grad_norm"]) for r in read_jsonl(tmp_path / run / "run" / STEPS_FILE)]

    assert curve("b") == curve("a")
    info = json.loads((tmp_path / "b" / "run" / RUN_INFO_FILE).read_text())
    assert len(info["resumes"]) == 1 and info["resumes"][0]["packages"] == info["packages"]


def test_terminal_shows_banner_and_timed_eval_lines_per_target(tmp_path, capsys):
    cfg, trainer, evaluate = tiny_setup(tmp_path, ["train.num_iterations=2"])
    run_experiment(cfg, trainer, evaluate, run_dir=tmp_path / "run", group="g", data="tiny data")
    out = capsys.readouterr().out
    assert f"run directory: {tmp_path / 'run'}" in out
    assert "device: cpu (" in out and "data: tiny data" in out and "M parameters" in out
    evals = [line for line in out.splitlines() if line.startswith("[iter ")]
    assert len(evals) == 2
    assert all("steps/s" in line and "eval " in line and "target 1: return" in line for line in evals)
    assert evals[1].startswith("[iter 2/2 step 10]")


def test_wall_time_per_update_batch_draw_and_evaluation_step(tmp_path):
    cfg, trainer, evaluate = tiny_setup(tmp_path, ["eval.episodes=4"])  # 3 iterations x 5 updates
    seen = recording(trainer)
    slow = evaluate

    def evaluate_with_steps(iteration):  # 2 targets x 4 episodes of mean length 3 and 5: 32 steps
        result = slow(iteration)["1"]
        return {"1": {**result, "length_mean": 3.0}, "2": {**result, "length_mean": 5.0}}

    summary = run_experiment(cfg, trainer, evaluate_with_steps, run_dir=tmp_path / "run", group="g")
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    for i, record in enumerate(metrics):
        window = [s for step, s, _ in seen if 5 * i < step <= 5 * i + 5]
        assert record["time"]["update_s"] == pytest.approx(record["train"]["time_s"] / 5)
        assert record["time"]["sample_s"] == pytest.approx(sum(s.sample_s for s in window) / 5)
        assert 0 < record["time"]["sample_s"] < record["time"]["update_s"]
        assert record["time"]["eval_step_s"] == pytest.approx(record["eval_time_s"] / 32)
    elapsed = [r["time"]["elapsed_s"] for r in metrics]
    # the run's wall-clock: at least its updates and evaluations, growing every iteration
    spent = [sum(r["train"]["time_s"] + r["eval_time_s"] for r in metrics[:i + 1]) for i in range(3)]
    assert all(e >= s for e, s in zip(elapsed, spent)) and elapsed == sorted(elapsed)
    assert summary["time_s"]["wall"] == elapsed[-1] and summary["wandb_url"] is None
