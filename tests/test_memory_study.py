"""The memory study (docs/memory.md): its run list, the T-Maze data the sweep makes, the
aggregator's study table on hand-made run folders, and scripts/memory_study.sh's dry run."""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import h5py
import matplotlib.image
import pytest

from decision_mamba import aggregate, sweep
from decision_mamba.config import to_yaml
from decision_mamba.errors import cli_main
from helpers import write_run_folder

REPO = Path(__file__).resolve().parents[1]

# The study as docs/memory.md defines it, written out here, not read from decision_mamba.sweep.
LENGTHS = [10, 30, 100, 300, 1000]
MIXERS = {"dmamba": "mamba", "dt": "attention", "dc": "conv", "ds4": "s4"}
SEEDS = [12, 23, 34]
BATCH = 16  # whole episodes per update, at every length


def test_the_study_lists_lengths_x_models_x_seeds_with_whole_episode_contexts():
    runs = sweep.study_runs("memory")
    tmaze = [r for r in runs if r.dataset.startswith("tmaze-")]
    assert len(tmaze) == len(LENGTHS) * len(MIXERS) * len(SEEDS) == 60
    assert len({r.name for r in runs}) == len(runs), "run names must be unique"
    for run in tmaze:
        length = int(run.dataset.removeprefix("tmaze-L"))
        cfg = run.resolved_config()
        assert cfg.dataset == f"tmaze:data/generated/memory-study/tmaze-L{length}.hdf5"
        assert cfg.train.context_len == cfg.model.max_ep_len == cfg.eval.max_ep_len == length + 2
        assert cfg.train.batch_size == BATCH
        assert cfg.train.window_start == "episode" and cfg.protocol == "clean"
        # all four mixers have a recurrent step (DT's is its KV cache): each acts as it was trained
        assert cfg.eval.mode == "recurrent" and cfg.model.mixer == MIXERS[run.model]
        assert run.name == f"tmaze-L{length}-{run.model}-clean-s{run.seed}"
        assert run.group == f"memory/tmaze-L{length}/{run.model}/clean"
        assert run.out_dir == "runs/memory-study" and run.config == "configs/memory/tmaze-study.yaml"
    assert sorted({(r.dataset, r.model, r.seed) for r in tmaze}) == sorted(
        (f"tmaze-L{length}", model, seed) for length in LENGTHS for model in MIXERS for seed in SEEDS)

    hopper = [r for r in runs if not r.dataset.startswith("tmaze-")]
    assert sorted({(r.model, r.variant) for r in hopper}) == [("dmamba", "episode"), ("dmamba", "k20"),
                                                               ("dt", "episode"), ("dt", "k20")]
    assert len(hopper) == 4 * len(SEEDS)
    for run in hopper:
        cfg = run.resolved_config()
        assert cfg.dataset == "positions:data/hopper-medium-v4-gen.hdf5"
        if run.variant == "episode":
            assert (cfg.train.context_len, cfg.train.window_start, cfg.eval.mode) == (1000, "episode", "recurrent")
        else:
            assert (cfg.train.context_len, cfg.train.window_start, cfg.eval.mode) == (20, "random", "window")
        assert run.name == f"hopper-medium-v4-gen-P-{run.model}-{run.variant}-clean-s{run.seed}"
        assert run.group == f"memory/hopper-medium-v4-gen-P/{run.model}-{run.variant}/clean"


def test_filters_and_pass_through_overrides_win_over_the_studys_settings():
    runs = sweep.study_runs("memory", datasets=["tmaze-L300"], models=["dt"], seeds=[5],
                            overrides=["train.batch_size=7", "eval.episodes=3"], out_dir="elsewhere")
    assert [r.name for r in runs] == ["tmaze-L300-dt-clean-s5"]
    cfg = runs[0].resolved_config()
    assert (cfg.train.batch_size, cfg.eval.episodes, cfg.train.context_len) == (7, 3, 302)
    assert runs[0].out_dir == "elsewhere"


@pytest.mark.parametrize("call, message", [
    (lambda: sweep.study_runs("memory", datasets=["tmaze-L20"]), "no dataset ['tmaze-L20']"),
    (lambda: sweep.study_runs("memory", models=["dmamba2"]), "no model ['dmamba2']"),
    (lambda: sweep.study_runs("memory", overrides=["seed=3"]), "use --seeds instead"),
    (lambda: sweep.study_runs("nothing"), "no study 'nothing'"),
])
def test_study_requests_it_cannot_honour_are_one_line_errors(call, message):
    with pytest.raises(sweep.SweepError) as error:
        call()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_sweeps_smoke_flag_points_a_study_to_its_script(capsys):
    assert cli_main(sweep.main, ["memory", "--smoke", "--dry-run"]) == 2
    assert "BUDGET=smoke scripts/memory_study.sh" in capsys.readouterr().err


def test_the_sweep_makes_the_missing_tmaze_data_with_the_studys_shares(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the study's data folder is relative to where the sweep runs
    runs = sweep.study_runs("memory", datasets=["tmaze-L10"], models=["dmamba", "dt"], seeds=[12])
    path = Path("data/generated/memory-study/tmaze-L10.hdf5")
    assert sweep.study_data(runs) == {path: 10}
    # a file given on purpose is the user's: the sweep neither makes nor checks it
    own = sweep.study_runs("memory", datasets=["tmaze-L10"], models=["dt"], overrides=["dataset=tmaze:mine.hdf5"])
    assert sweep.study_data(own) == {}

    sweep.make_study_data(runs)
    with h5py.File(path, "r") as f:
        assert (int(f.attrs["corridor_length"]), int(f.attrs["episodes"])) == (10, 1000)
        assert (float(f.attrs["random_move_prob"]), float(f.attrs["wrong_choice_prob"])) == (0.0, 0.1)
        # no random moves: every episode walks the corridor (L + 1 steps) and chooses, 1 in 10 wrongly
        # (1000 draws: the success rate is 0.9 within 3.3 standard deviations, 0.0095 each)
        assert len(f["rewards"]) == 1000 * 11 and 0.868 < float(f.attrs["behaviour_success_rate"]) < 0.932
    assert list(path.parent.iterdir()) == [path]  # the hidden partial file was renamed

    with h5py.File(path, "a") as f:
        f.attrs["wrong_choice_prob"] = 0.3
    with pytest.raises(sweep.SweepError, match="not the study's"):
        sweep.make_study_data(runs)


def _dry_run(tmp_path: Path, **env: str) -> tuple[str, list[tuple[str, dict[str, str]]]]:
    """scripts/memory_study.sh --dry-run with these settings: its output, and each run's config
    file and key=value settings."""
    env = {**os.environ, "RUNS": str(tmp_path / "runs"), "OUT": str(tmp_path / "out"), "PYTHON": sys.executable,
           **env}
    done = subprocess.run(["bash", str(REPO / "scripts" / "memory_study.sh"), "--dry-run"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    commands = [shlex.split(line) for line in done.stdout.splitlines() if line and not line.startswith("#")]
    return done.stdout, [(c[c.index("--config") + 1], dict(w.split("=", 1) for w in c if "=" in w)) for c in commands]


def test_the_scripts_dry_run_lists_the_parts_and_dt_at_its_lengths(tmp_path):
    stdout, runs = _dry_run(tmp_path, BUDGET="cpu", PARTS="tmaze hopper-p", DT_LENGTHS="10 30")
    settings = [s for _, s in runs]
    found = sorted((s["run.name"].rsplit("-clean-", 1)[0]) for s in settings)
    cpu_lengths = [length for length in LENGTHS if length != 1000]  # the cpu budget's default: L = 1000 on request
    expected = sorted([f"tmaze-L{length}-{model}" for length in cpu_lengths for model in ("dmamba", "dc", "ds4")]
                      + [f"tmaze-L{length}-dt" for length in (10, 30)]
                      + [f"hopper-medium-v4-gen-P-{m}-{v}" for m in ("dmamba", "dt") for v in ("k20", "episode")]) * 3
    assert found == sorted(expected)
    for s in settings:
        assert s["run.out_dir"] == str(tmp_path / "runs") and s["train.num_threads"] == "1"
        tmaze = s["run.name"].startswith("tmaze-")
        assert s["train.num_iterations"] == "2" and s["train.steps_per_iteration"] == ("500" if tmaze else "100")
        if tmaze:
            assert s["train.batch_size"] == "16" and s["eval.episodes"] == "48"
        if "-episode-" in s["run.name"]:
            assert s["train.batch_size"] == "4"  # the budget's, after the config's 16
    if not (REPO / "data" / "generated" / "memory-study" / "tmaze-L300.hdf5").is_file():  # not made yet
        assert "makes first: python tools/make_tmaze_data.py --length 300" in stdout
    assert f"aggregate {tmp_path / 'runs'} --study memory" in stdout


def test_the_gpu_budget_runs_ten_thousand_updates_and_hopper_p_at_its_configs_budgets(tmp_path):
    _, listed = _dry_run(tmp_path, BUDGET="gpu", PARTS="tmaze hopper-p", LENGTHS="1000", MODELS="dmamba dt")
    runs = {settings["run.name"]: (config, settings) for config, settings in listed}
    assert len(runs) == 2 * 3 + 4 * 3  # T-Maze L = 1000: DMamba and DT; Hopper-P: both at K = 20 and episodes
    for name, (config, s) in runs.items():
        assert "train.num_threads" not in s  # a GPU run keeps torch's threads
        if name.startswith("tmaze-"):
            assert (s["train.num_iterations"], s["train.steps_per_iteration"], s["eval.episodes"]) == ("10", "1000", "100")
            assert (s["train.context_len"], s["train.batch_size"]) == ("1002", "16")
        else:  # the configs' own budgets: no override of the model, the updates or the evaluation
            budget = {"model.d_model", "model.n_layer", "train.batch_size", "train.num_iterations",
                      "train.steps_per_iteration", "train.warmup_steps", "eval.episodes"}
            assert not budget & s.keys(), s
            assert config.endswith("hopper-P-medium-episode.yaml" if "-episode-" in name else "hopper-P-medium.yaml")


# ------------------------------------------------------------------ the aggregator
def _hand_made_study_run(root: Path, run: sweep.Run, curve: list[float], finished: bool = True) -> None:
    """A run folder of the study, as decision_mamba.run writes it, whose evaluations scored `curve`."""
    cfg = run.resolved_config()
    cfg.run.wandb_group = run.group
    write_run_folder(root / run.name, to_yaml(cfg), [{"1.0": {"score_mean": score}} for score in curve],
                     finished=finished)


def test_the_study_table_of_hand_made_runs(tmp_path):
    root = tmp_path / "runs"
    runs = {(r.dataset, r.model, r.variant, r.seed): r for r in sweep.study_runs("memory", out_dir=str(root))}
    curves = {  # (row, model, seed): the evaluations
        ("tmaze-L10", "dmamba", 12): [50.0, 100.0], ("tmaze-L10", "dmamba", 23): [100.0, 90.0],
        ("tmaze-L10", "dmamba", 34): [60.0, 80.0],
        ("tmaze-L10", "dt", 12): [40.0, 25.0],
        ("tmaze-L30", "dmamba", 12): [50.0, 50.0], ("tmaze-L30", "dmamba", 23): [50.0, 70.0],
        ("tmaze-L30", "dmamba", 34): [40.0, 60.0],
        ("tmaze-L30", "dt", 12): [50.0, 55.0], ("tmaze-L30", "dt", 23): [45.0, 50.0],
        ("tmaze-L30", "dt", 34): [50.0, 45.0],
    }
    for (row, model, seed), curve in curves.items():
        _hand_made_study_run(root, runs[(row, model, "", seed)], curve)
    _hand_made_study_run(root, runs[("tmaze-L100", "dc", "", 12)], [50.0], finished=False)
    _hand_made_study_run(root, runs[("hopper-P-medium", "dmamba", "k20", 12)], [30.0, 35.0])
    _hand_made_study_run(root, runs[("hopper-P-medium", "dt", "episode", 23)], [20.0, 10.0])
    prefix = tmp_path / "out" / "memory"
    assert aggregate.main([str(root), "--study", "memory", "--out", str(prefix)]) == 0

    markdown = Path(f"{prefix}.md").read_text()
    lines = markdown.splitlines()
    assert lines[0] == "# Memory study: T-Maze success rate against corridor length, and Hopper-P (not a paper table)"

    def table(heading: str) -> list[str]:
        start = lines.index(heading) + 2
        return lines[start:start + 2 + (len(LENGTHS) if "T-Maze" in heading else 2)]

    last = table("### T-Maze: success rate (%), last evaluation (protocol clean)")
    assert last[0] == "| Corridor length L | DMamba | DT | DC | DS4 |"
    # by hand: L10 DMamba last 100 90 80 -> 90 ± 8.2 (np.std: sqrt(200/3)); DT one seed 25
    assert last[2] == "| 10 | 90.0 ± 8.2 | 25.0 (1 seed) | not run | not run |"
    # L30 DMamba last 50 70 60 -> 60 ± 8.2; DT 55 50 45 -> 50 ± 4.1
    assert last[3] == "| 30 | 60.0 ± 8.2 | 50.0 ± 4.1 | not run | not run |"
    assert last[4] == "| 100 | not run | not run | unfinished | not run |"
    assert last[6] == "| 1000 | not run | not run | not run | not run |"
    best = table("### T-Maze: success rate (%), best evaluation (protocol clean)")
    # best: L10 DMamba 100 100 80 -> 93.3 ± 9.4; DT 40
    assert best[2] == "| 10 | 93.3 ± 9.4 | 40.0 (1 seed) | not run | not run |"
    hopper = table("### Hopper-P (positions only): D4RL normalized score, last evaluation (protocol clean)")
    assert hopper[0] == "| Context | DMamba | DT |"
    assert hopper[2] == "| K = 20 (DT's random windows) | 35.0 (1 seed) | not run |"
    assert hopper[3].endswith("| not run | 10.0 (1 seed) |")
    assert "Not a paper table" in markdown and "not this study's" not in markdown

    cells = [r for r in csv.DictReader(open(f"{prefix}.csv")) if r["dataset"] == "tmaze-L10" and r["model"] == "dmamba"]
    assert [r["seed"] for r in cells] == ["", "12", "23", "34"]
    assert [float(r["last_mean"]) for r in cells] == [90.0, 100.0, 90.0, 80.0] and cells[0]["length"] == "10.0"
    # the statistics pool the T-Maze lengths only: DMamba's mean last score over L10 and L30's 6 runs
    stats = {(r["score"], r["statistic"], r["model"], r["versus"]): r for r in csv.DictReader(open(f"{prefix}-stats.csv"))}
    assert float(stats[("last", "mean", "dmamba", "")]["value"]) == pytest.approx((270 + 180) / 6)
    assert stats[("last", "mean", "dmamba", "")]["datasets"] == "2"
    # P(DMamba > DT), averaged over the lengths: L10, DT's one seed 25 against 100 90 80 -> 1; L30, 50 70 60
    # against 55 50 45: 50 beats 45 and ties 50 (1.5), 70 and 60 beat all three -> (1.5 + 3 + 3) / 9
    assert float(stats[("last", "P(improvement)", "dmamba", "dt")]["value"]) == pytest.approx((1 + 7.5 / 9) / 2)
    index = {r["run"]: r for r in csv.DictReader(open(f"{prefix}-runs.csv"))}
    assert len(index) == len(curves) + 3 and index["tmaze-L100-dc-clean-s12"]["status"].startswith("unfinished")
    for name in ("lengths", "tmaze-L10", "tmaze-L30", "hopper-medium-v4-gen-P-k20", "intervals"):
        assert matplotlib.image.imread(tmp_path / "out" / f"memory-{name}.png").ndim == 3
    curve_order = [line.split("]")[0][2:] for line in lines if line.startswith("![")]
    assert curve_order[0] == "lengths"
    assert curve_order.index("tmaze-L10") < curve_order.index("tmaze-L30") < curve_order.index("tmaze-L100")


def test_a_table_folder_is_no_study(tmp_path, capsys):
    root = tmp_path / "runs"
    (root / "a-run").mkdir(parents=True)
    (root / "a-run" / "config.yaml").write_text("run:\n  wandb_group: table1/hopper-medium/dmamba/release\n")
    assert cli_main(aggregate.main, [str(root), "--study", "memory", "--out", str(tmp_path / "x")]) == 2
    assert "no run directories of the memory study" in capsys.readouterr().err
