"""The shared trainer and run loop: schedules, optimiser groups, checkpoints, resume, summaries."""

import copy
import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from decision_mamba.config import GymConfig, load_config
from decision_mamba.data.sampler import sample_batch
from decision_mamba.data.trajectories import Trajectories
from decision_mamba.model import DecisionModel
from decision_mamba.checkpoint import load_checkpoint
from decision_mamba.run import best_and_last, parse_args, run_experiment
from decision_mamba.trainer import Trainer, configure_optimizer, linear_warmup, warmup_cosine_tokens
from decision_mamba.video import iteration_video_dir, write_mp4

REPO = Path(__file__).resolve().parents[1]


def tiny_dataset(seed=0, episodes=6, obs_dim=4, act_dim=2):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 15, size=episodes)
    n = int(lengths.sum())
    return Trajectories(
        observations=rng.normal(size=(n, obs_dim)).astype(np.float32),
        actions=rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        rewards=rng.normal(size=n).astype(np.float32),
        starts=np.concatenate([[0], np.cumsum(lengths)[:-1]]),
        lengths=lengths,
    )


def tiny_setup(tmp_path, overrides=()):
    cfg = load_config(GymConfig, None, [
        "model.mixer=conv", "model.d_model=16", "model.n_layer=1", "model.max_ep_len=20",
        "train.batch_size=4", "train.context_len=3", "train.steps_per_iteration=5", "train.num_iterations=3",
        "train.warmup_steps=4", "train.learning_rate=1e-2", f"run.out_dir={tmp_path}", "run.progress=false",
        *overrides])
    torch.manual_seed(cfg.seed)
    traj = tiny_dataset()
    model = DecisionModel(cfg.model, (4,), 2, discrete=False)

    def draw(rng):
        return sample_batch(traj, 4, 3, rng, rtg_scale=10.0, max_ep_len=20, mode="dt-gym")

    trainer = Trainer(model, cfg.train, draw, np.random.default_rng(cfg.seed), torch.device("cpu"))
    held_out = {k: torch.from_numpy(v) for k, v in draw(np.random.default_rng(99)).items()}

    def evaluate(iteration):
        with torch.no_grad():
            loss = float(model.loss(held_out))
        # a score that moves with the weights: higher is better
        return {"1": {"return_mean": -loss, "return_std": 0.0, "length_mean": 1.0,
                      "score_mean": -loss * 100 + iteration, "score_std": 0.0}}

    return cfg, trainer, evaluate


def test_schedules_match_the_dt_formulas():
    assert linear_warmup(0, 10) == pytest.approx(0.1)
    assert linear_warmup(9, 10) == 1.0 and linear_warmup(500, 10) == 1.0
    assert warmup_cosine_tokens(50, 100, 1100) == pytest.approx(0.5)
    assert warmup_cosine_tokens(600, 100, 1100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert warmup_cosine_tokens(1100, 100, 1100) == pytest.approx(0.1)  # floored at 10% (DT Atari)
    assert warmup_cosine_tokens(10**9, 100, 1100) == pytest.approx(0.1)


def test_matmul_only_weight_decay_groups():
    cfg = load_config(GymConfig, None, ["model.mixer=mamba", "model.d_model=16", "model.n_layer=1",
                                        "train.decay_matmul_weights_only=true", "train.weight_decay=0.1"])
    model = DecisionModel(cfg.model, (4,), 2, discrete=False)
    opt = configure_optimizer(model, cfg.train)
    decay = {id(p) for p in opt.param_groups[0]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decay}
    assert "layers.0.mixer.in_proj.weight" in names and "embed_state.weight" in names
    assert not any(n.endswith("bias") for n in names)
    assert not {"layers.0.mixer.A_log", "layers.0.mixer.D", "embed_timestep.weight",
                "layers.0.ln_mixer.weight"} & names
    assert len(decay) + len(opt.param_groups[1]["params"]) == len(list(model.parameters()))


def test_the_fused_optimizer_step_is_adamw_with_the_weight_decay_groups():
    cfg = load_config(GymConfig, None, ["model.mixer=mamba", "model.d_model=16", "model.n_layer=1",
                                        "train.weight_decay=0.1"])
    model = DecisionModel(cfg.model, (4,), 2, discrete=False)
    opt = configure_optimizer(model, cfg.train)
    assert opt.defaults["fused"]
    # The reference: torch's loop implementation of AdamW on a copy, with the same groups.
    twin = copy.deepcopy(model)
    twin_params = dict(twin.named_parameters())
    by_id = {id(p): n for n, p in model.named_parameters()}
    reference = torch.optim.AdamW([{**{k: v for k, v in g.items() if k != "params"},
                                    "params": [twin_params[by_id[id(p)]] for p in g["params"]], "fused": False,
                                    "foreach": False} for g in opt.param_groups])
    for step in range(3):
        for m in (model, twin):
            for i, p in enumerate(m.parameters()):
                p.grad = torch.sin(p.detach() * (step + 1) + i)
        opt.step()
        reference.step()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, twin_params[name], rtol=1e-5, atol=1e-6, msg=name)


def test_resume_after_an_interruption_ends_with_the_same_numbers(tmp_path):
    cfg, trainer, evaluate = tiny_setup(tmp_path / "a")
    full = run_experiment(cfg, trainer, evaluate, run_dir=tmp_path / "a" / "run", group="g")
    full_weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    cfg, trainer, evaluate = tiny_setup(tmp_path / "b")
    calls = {"n": 0}
    draw = trainer.sample_batch

    def dying_draw(rng):
        calls["n"] += 1
        if calls["n"] == 13:  # in the middle of iteration 3
            raise KeyboardInterrupt
        return draw(rng)

    trainer.sample_batch = dying_draw
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, trainer, evaluate, run_dir=tmp_path / "b" / "run", group="g")
    assert not (tmp_path / "b" / "run" / "summary.json").exists()
    # retention (last_and_best): iteration 2 is both the newest and the best (score -18.1 > -21.9)
    assert sorted(p.name for p in (tmp_path / "b" / "run" / "checkpoints").iterdir()) == ["iter_002.pt"]

    # a fresh process: new objects, weights re-initialised differently on purpose
    torch.manual_seed(12345)
    cfg, trainer, evaluate = tiny_setup(tmp_path / "b")
    resumed = run_experiment(cfg, trainer, evaluate, run_dir=tmp_path / "b" / "run", group="g", resume=True)
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, full_weights[k]), k
    assert resumed["last"] == full["last"] and resumed["best"] == full["best"]
    a = (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()
    b = (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()
    strip = lambda line: {k: v for k, v in json.loads(line).items() if k not in ("train", "eval_time_s", "time")}
    assert [strip(x) for x in a] == [strip(x) for x in b]
    assert [json.loads(x)["train"]["loss_mean"] for x in a] == [json.loads(x)["train"]["loss_mean"] for x in b]


def test_run_directory_is_not_overwritten_without_resume(tmp_path):
    cfg, trainer, evaluate = tiny_setup(tmp_path, ["train.num_iterations=1"])
    run_experiment(cfg, trainer, evaluate, run_dir=tmp_path / "run", group="g")
    with pytest.raises(FileExistsError, match="--resume"):
        run_experiment(cfg, trainer, evaluate, run_dir=tmp_path / "run", group="g")


def test_checkpoints_are_plain_data_loadable_with_weights_only(tmp_path):
    cfg, trainer, evaluate = tiny_setup(tmp_path, ["train.num_iterations=1"])
    run_experiment(cfg, trainer, evaluate, run_dir=tmp_path / "run", group="g")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "iter_001.pt")
    assert state["iteration"] == 1 and state["trainer"]["step"] == 5


def test_summary_reports_last_and_best_separately():
    def rec(i, scores):
        return {"iteration": i, "step": i * 10,
                "eval": {str(t): {"score_mean": s} for t, s in zip((1, 2), scores)}}

    records = [rec(1, (10, 30)), rec(2, (50, 5)), {"iteration": 3, "step": 30}, rec(4, (20, 25))]
    out = best_and_last(records)
    assert out["last"]["iteration"] == 4 and out["last"]["score"] == 25
    assert out["best"]["iteration"] == 2 and out["best"]["score"] == 50
    assert out["last"]["target"] == "2" and out["best"]["target"] == "1"  # whose score it is
    assert best_and_last([{"iteration": 1, "step": 1}]) == {"last": None, "best": None}


def test_wandb_offline_logs_the_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg, trainer, evaluate = tiny_setup(tmp_path, ["train.num_iterations=2", "run.wandb=offline"])

    def evaluate_and_film(iteration):  # as the entry points do with eval.video_episodes > 0
        frames = [np.full((16, 16, 3), 40 * t, np.uint8) for t in range(5)]
        write_mp4(iteration_video_dir(tmp_path / "run", iteration) / "target1_episode0.mp4", frames, fps=15)
        return evaluate(iteration)

    run_experiment(cfg, trainer, evaluate_and_film, run_dir=tmp_path / "run", group="table1/hopper/dmamba")
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert len(list(runs[0].rglob("video/target1_episode0*.mp4"))) == 2  # one per evaluation, to upload
    files = list(runs[0].glob("*.wandb"))
    assert files and files[0].stat().st_size > 0
    run_id = (tmp_path / "run" / "wandb_id.txt").read_text().strip()
    assert run_id in runs[0].name


def test_a_warmup_longer_than_the_run_warns_in_one_line(tmp_path, capsys):
    cfg, trainer, evaluate = tiny_setup(tmp_path / "long", ["train.warmup_steps=100"])  # 3 x 5 = 15 updates
    run_experiment(cfg, trainer, evaluate, run_dir=tmp_path / "long" / "run", group="g")
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: the warm-up")]
    assert len(warnings) == 1 and "train.warmup_steps=100" in warnings[0] and "15 updates" in warnings[0]
    # the last of the 15 updates runs at 15/100 of the LR
    assert "stays below 0.0015 (train.learning_rate=0.01)" in warnings[0]
    cfg, trainer, evaluate = tiny_setup(tmp_path / "short")  # warm-up 4 of 15 updates
    run_experiment(cfg, trainer, evaluate, run_dir=tmp_path / "short" / "run", group="g")
    assert "warm-up" not in capsys.readouterr().err


def test_resume_may_come_anywhere_between_the_overrides():
    args = parse_args("d", ["--config", "c.yaml", "seed=1", "--resume", "train.batch_size=2"])
    assert args.resume and args.overrides == ["seed=1", "train.batch_size=2"]


def test_a_run_that_failed_while_starting_blocks_no_corrected_command(tmp_path):
    """A run refused after writing its config (before any metrics or checkpoint) leaves a
    folder that neither a new run nor --resume with another config is refused by."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("model: {scan_backend: cuda}\n")  # what the failed start wrote
    for resume in (False, True):
        cfg, trainer, evaluate = tiny_setup(tmp_path, ["train.num_iterations=1"])
        run_experiment(cfg, trainer, evaluate, run_dir=run_dir, group="g", resume=resume)
        assert json.loads((run_dir / "summary.json").read_text())["last"]["iteration"] == 1
        if not resume:
            (run_dir / "summary.json").unlink()
            (run_dir / "metrics.jsonl").unlink()
            for path in (run_dir / "checkpoints").iterdir():
                path.unlink()


def test_resume_of_a_finished_run_shows_its_scores_and_writes_nothing(tmp_path, capsys):
    cfg, trainer, evaluate = tiny_setup(tmp_path, ["train.num_iterations=2"])
    finished = run_experiment(cfg, trainer, evaluate, run_dir=tmp_path / "run", group="g")
    files = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != ".lock"}
    capsys.readouterr()

    cfg, trainer, evaluate = tiny_setup(tmp_path, ["train.num_iterations=2"])
    trained = []
    trainer.train_step = lambda: trained.append(1)  # must not be called
    again = run_experiment(cfg, trainer, evaluate, run_dir=tmp_path / "run", group="g", resume=True)
    assert again == json.loads(json.dumps(finished)) and not trained
    assert "finished earlier" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != ".lock"} == files


def test_make_run_can_be_typed_twice_and_make_clean_keeps_the_runs():
    """The Makefile's recipes (make -n prints them without running them)."""
    recipes = {}
    for target in ("run", "run-atari", "clean"):
        done = subprocess.run(["make", "-n", "-W", "pyproject.toml", "--no-print-directory", target], cwd=REPO,
                              capture_output=True, text=True, env={**os.environ, "VENV": "/nonexistent-venv"})
        assert done.returncode == 0, done.stderr
        recipes[target] = done.stdout
    assert "gym/experiment.py --config configs/gym/quickstart.yaml --resume" in recipes["run"]
    assert "atari/train_atari.py --config configs/atari/quickstart.yaml --resume" in recipes["run-atari"]
    assert "rm -rf /nonexistent-venv" in recipes["clean"] and "runs" not in recipes["clean"]
