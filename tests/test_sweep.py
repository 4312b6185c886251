"""The sweep: run lists of Tables 1-4 (through the table scripts' dry runs), filters and
errors, resubmission, and real launches through the local launcher, submitit's
LocalExecutor and (with stand-in sbatch/srun programs) submitit's SLURM executor."""

from __future__ import annotations

import itertools
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from submitit.core.utils import DelayedSubmission

from decision_mamba import naming, sweep
from decision_mamba.errors import cli_main
from decision_mamba.model import DecisionModel
from helpers import write_episodes_d4rl

REPO = Path(__file__).resolve().parents[1]

# The tables as the paper defines them (its Tables 1-4, and the seeds of the authors'
# release: docs/protocol.md), written out independently of decision_mamba.sweep.
GYM_9 = [f"{env}-{kind}" for kind in ("medium", "medium-replay", "medium-expert")
         for env in ("halfcheetah", "hopper", "walker2d")]
MIXERS = {"dmamba": "mamba", "dt": "attention", "dc": "conv", "ds4": "s4"}
PAPER_GYM_SEEDS = [12, 23, 34, 45, 51]
PAPER_ATARI_SEEDS = [123, 231, 312]

# Settings small enough for a run to take seconds on a CPU.
TINY = ["model.d_model=16", "model.n_layer=1", "model.n_head=1", "train.batch_size=4", "train.context_len=4",
        "train.steps_per_iteration=3", "train.num_iterations=2", "train.warmup_steps=2", "eval.episodes=1",
        "eval.max_ep_len=15", "train.num_threads=1"]


def dry_run_script(script: str, runs_dir: Path, *args: str) -> list[list[str]]:
    """Run scripts/<script> --dry-run and return its command lines, split into words."""
    env = {**os.environ, "RUNS": str(runs_dir), "OUT": str(runs_dir / "out")}
    done = subprocess.run(["bash", str(REPO / "scripts" / script), "--dry-run", *args], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [shlex.split(line) for line in done.stdout.splitlines() if line and not line.startswith("#")]


def overrides_of(words: list[str]) -> dict[str, str]:
    return dict(w.split("=", 1) for w in words if "=" in w)


def config_of(words: list[str]) -> str:
    return words[words.index("--config") + 1]


def check_common(commands: list[list[str]], table: int, runs_dir: Path, entry: str) -> None:
    names = [overrides_of(c)["run.name"] for c in commands]
    assert len(set(names)) == len(names), "run names must be unique"
    for c in commands:
        o = overrides_of(c)
        assert c[1] == entry and o["run.out_dir"] == str(runs_dir)
        assert o["run.wandb_group"].startswith(f"table{table}/")
        assert "--resume" not in c


def test_table1_script_lists_9_datasets_x_4_models_x_5_seeds(tmp_path):
    commands = dry_run_script("table1_gym.sh", tmp_path)
    check_common(commands, 1, tmp_path, "gym/experiment.py")
    found = sorted((config_of(c), overrides_of(c)["model.mixer"], int(overrides_of(c)["seed"]),
                    overrides_of(c)["run.wandb_group"]) for c in commands)
    expected = sorted((f"configs/gym/{d}.yaml", MIXERS[m], s, f"table1/{d}/{m}/release")
                      for d, m, s in itertools.product(GYM_9, MIXERS, PAPER_GYM_SEEDS))
    assert len(commands) == 180 and found == expected


def test_table2_script_lists_4_games_x_3_models_x_3_seeds(tmp_path):
    commands = dry_run_script("table2_atari.sh", tmp_path)
    check_common(commands, 2, tmp_path, "atari/train_atari.py")
    found = sorted((config_of(c), overrides_of(c)["model.mixer"], int(overrides_of(c)["seed"]),
                    overrides_of(c)["run.wandb_group"]) for c in commands)
    expected = sorted((f"configs/atari/{g}.yaml", MIXERS[m], s, f"table2/{g}/{m}/release")
                      for g, m, s in itertools.product(["breakout", "qbert", "pong", "seaquest"],
                                                       ["dmamba", "dt", "dc"], PAPER_ATARI_SEEDS))
    assert len(commands) == 36 and found == expected


def test_table3_script_lists_the_ablation_variants(tmp_path):
    commands = dry_run_script("table3_ablation.sh", tmp_path)
    check_common(commands, 3, tmp_path, "gym/experiment.py")
    found = []
    for c in commands:
        o = overrides_of(c)
        assert o["model.mixer"] == "mamba"
        # default: nothing changed; RC: no channel MLP; RC & 2L: no MLP and 2 x 3 layers (Table 5)
        variant = {(None, None): "default", ("false", None): "rc", ("false", "6"): "rc-2l"}[
            (o.get("model.channel_mlp"), o.get("model.n_layer"))]
        found.append((config_of(c), variant, int(o["seed"]), o["run.wandb_group"]))
    expected = [(f"configs/gym/{d}.yaml", v, s, f"table3/{d}/dmamba-{v}/release")
                for d, v, s in itertools.product(["halfcheetah-medium", "hopper-medium", "walker2d-medium"],
                                                 ["default", "rc", "rc-2l"], PAPER_GYM_SEEDS)]
    assert len(commands) == 45 and sorted(found) == sorted(expected)


def test_table4_script_lists_the_context_lengths(tmp_path):
    commands = dry_run_script("table4_context.sh", tmp_path)
    check_common(commands, 4, tmp_path, "atari/train_atari.py")
    found = []
    for c in commands:
        o = overrides_of(c)
        assert o["model.mixer"] == "mamba"
        game = o["run.wandb_group"].split("/")[1]
        # every K runs Table 2's config of its game, with K from one override (as Table 3's variants)
        assert config_of(c) == f"configs/atari/{game}.yaml"
        k = int(o["train.context_len"])
        found.append((game, k, int(o["seed"]), o["run.wandb_group"]))
    expected = [(g, k, s, f"table4/{g}/dmamba-k{k}/release")
                for g, k, s in itertools.product(["breakout", "qbert"], [10, 30, 40, 60], PAPER_ATARI_SEEDS)]
    assert len(commands) == 24 and sorted(found) == sorted(expected)
    # the run trains with the K of its row, whatever the YAML says
    [run] = sweep.table_runs(4, datasets=["qbert"], variants=["k60"], seeds=[123])
    assert run.resolved_config().train.context_len == 60
    assert OmegaConf.load(REPO / run.config).train.context_len == 30  # Table 2's K


def test_table1_script_runs_dmamba2_beside_the_papers_models_when_asked(tmp_path):
    """DMamba-2 is in no paper table: never run by default (the 180-run test above), run on request."""
    commands = dry_run_script("table1_gym.sh", tmp_path, "--models", "dmamba", "dmamba2", "dt")
    check_common(commands, 1, tmp_path, "gym/experiment.py")
    found = sorted((config_of(c), overrides_of(c)["model.mixer"], int(overrides_of(c)["seed"]),
                    overrides_of(c)["run.wandb_group"]) for c in commands)
    models = {"dmamba": "mamba", "dmamba2": "mamba2", "dt": "attention"}
    expected = sorted((f"configs/gym/{d}.yaml", models[m], s, f"table1/{d}/{m}/release")
                      for d, m, s in itertools.product(GYM_9, models, PAPER_GYM_SEEDS))
    assert len(commands) == 135 and found == expected


def test_compare_mixers_runs_three_models_at_protocol_effects_budget(tmp_path, monkeypatch):
    """scripts/compare_mixers.sh: DMamba, DMamba-2 and DT under clean, 3 seeds; its DMamba and DT runs
    are trained exactly as protocol_effect.sh's clean ones (one budget, scripts/_budget.sh)."""
    monkeypatch.setenv("BUDGET", "hour")
    compared = dry_run_script("compare_mixers.sh", tmp_path / "compare")
    assert sorted((overrides_of(c)["model.mixer"], overrides_of(c)["seed"]) for c in compared) == sorted(
        itertools.product(["mamba", "mamba2", "attention"], ["12", "23", "34"]))
    protocol_effect = dry_run_script("protocol_effect.sh", tmp_path / "effect")

    def settings(commands, protocol):
        return {overrides_of(c)["run.name"]: {k: v for k, v in overrides_of(c).items() if k != "run.out_dir"}
                for c in commands if overrides_of(c)["protocol"] == protocol}

    clean = settings(protocol_effect, "clean")
    shared = {name: o for name, o in settings(compared, "clean").items() if o["model.mixer"] != "mamba2"}
    assert len(shared) == 6 and all(clean[name] == o for name, o in shared.items())
    for c in compared:
        o = overrides_of(c)
        assert o["dataset"] == "data/hopper-medium-v4-gen.hdf5" and o["train.steps_per_iteration"] == "300"


@pytest.mark.parametrize("table, variants", [
    (3, {"default": (None, None), "rc": ("false", None), "rc-2l": ("false", "6")}),
    (4, {f"k{k}": k for k in (10, 30, 40, 60)}),
])
def test_ablation_and_context_variants_apply_to_dmamba2(table, variants):
    """Table 3's variants switch DMamba-2's block as they do DMamba's; Table 4's K is its context."""
    runs = sweep.table_runs(table, models=["dmamba2"], seeds=[12])
    datasets = ["halfcheetah-medium", "hopper-medium", "walker2d-medium"] if table == 3 else ["breakout", "qbert"]
    assert sorted((r.dataset, r.variant) for r in runs) == sorted(itertools.product(datasets, variants))
    for run in runs:
        o = overrides_of(list(run.overrides))
        assert o["model.mixer"] == "mamba2" and o["run.wandb_group"] == f"table{table}/{run.dataset}/dmamba2-{run.variant}/release"
        cfg = run.resolved_config()
        if table == 3:
            assert (o.get("model.channel_mlp"), o.get("model.n_layer")) == variants[run.variant]
            model = DecisionModel(cfg.model, (11,), 3, discrete=False)
            assert len(model.layers) == (6 if run.variant == "rc-2l" else 3)
            assert all((layer.mlp is None) == (run.variant != "default") for layer in model.layers)
            assert all(type(layer.mixer).__name__ == "Mamba2" for layer in model.layers)
        else:
            assert cfg.train.context_len == variants[run.variant]


def test_release_protocol_gives_dmamba2_the_releases_init_where_it_applies():
    """The release never had a Mamba-2 block; --protocol release applies its GPT-2 init rule as the
    release's GPT2Model would to one (docs/protocol.md): every Linear N(0, 0.02), while dt_bias, A_log,
    D and conv1d, no Linear, keep mamba-ssm's init (so dt is not reset as DMamba's dt_proj.bias is)."""
    built = {}
    for protocol in ("release", "clean"):
        [run] = sweep.table_runs(1, models=["dmamba2"], datasets=["hopper-medium"], seeds=[12], protocol=protocol)
        cfg = run.resolved_config()
        assert cfg.model.init == ("release" if protocol == "release" else "mamba")
        torch.manual_seed(0)
        built[protocol] = DecisionModel(cfg.model, (11,), 3, discrete=False).layers[0].mixer
    release, clean = built["release"], built["clean"]
    d_model = release.in_proj.in_features
    # nn.Linear's own init, kept by clean: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), std 1/sqrt(3 fan_in)
    assert clean.in_proj.weight.std().item() == pytest.approx((3 * d_model) ** -0.5, rel=0.05)
    assert release.in_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert release.out_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    for name in ("dt_bias", "A_log", "D", "conv1d.weight", "conv1d.bias", "norm.weight"):
        torch.testing.assert_close(release.get_parameter(name), clean.get_parameter(name), rtol=0, atol=0)
    dt = torch.nn.functional.softplus(release.dt_bias)
    assert 0.001 <= dt.min() and dt.max() <= 0.1 + 1e-6  # mamba-ssm's log-uniform dt, not softplus(0)


def test_filters_and_pass_through_overrides(tmp_path, capsys):
    code = sweep.main(["table1", "--dry-run", "--out-dir", str(tmp_path), "--models", "dc", "dmamba", "--wandb", "offline",
                       "--datasets", "walker2d-medium-replay", "--seeds", "7", "--", "train.num_iterations=1",
                       "data_dir=elsewhere"])
    assert code == 0
    commands = [shlex.split(line) for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert [(overrides_of(c)["model.mixer"], overrides_of(c)["seed"]) for c in commands] == [("mamba", "7"),
                                                                                            ("conv", "7")]
    for c in commands:
        assert c[-2:] == ["train.num_iterations=1", "data_dir=elsewhere"]  # last, so they win
        assert config_of(c) == "configs/gym/walker2d-medium-replay.yaml"
        assert overrides_of(c)["run.wandb"] == "offline"


@pytest.mark.parametrize("argv, message", [
    (["table2", "--models", "ds4"], "table 2 has no model ['ds4']; choose from ['dmamba', 'dt', 'dc'], or beyond "
                                    "the paper ['dmamba2']"),
    (["table1", "--datasets", "hopper-expert"], "table 1 has no dataset ['hopper-expert']"),
    (["table1", "--variants", "rc"], "table 1 has no variants"),
    (["table1", "--", "seed=3"], "use --seeds"),
    (["table1", "--", "protocol=clean"], "use --protocol"),
    (["table3", "--", "model.channel_mlp=false"], "use --variants"),
    (["table1", "--", "train.num_iterations"], "must look like key=value"),
    (["table1", "--", "train.num_iteratons=1"], "num_iteratons"),
])
def test_bad_requests_are_refused_with_the_reason(tmp_path, capsys, argv, message):
    assert cli_main(sweep.main, [*argv[:1], "--dry-run", "--out-dir", str(tmp_path), *argv[1:]]) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------- launching
@pytest.fixture(scope="module")
def hopper_file(tmp_path_factory, hopper_episodes) -> Path:
    return write_episodes_d4rl(tmp_path_factory.mktemp("data") / "hopper-random-test.hdf5", hopper_episodes)


def tiny_sweep_args(out_dir: Path, hopper_file: Path, *flags: str, overrides: tuple[str, ...] = ()) -> list[str]:
    """Table 1's protocol on DC, hopper-medium, seeds 12 and 23, tiny settings, on the test data."""
    return ["table1", "--out-dir", str(out_dir), "--models", "dc", "--datasets", "hopper-medium",
            "--seeds", "12", "23", *flags, "--", f"dataset={hopper_file}", *TINY, *overrides]


def run_sweep(args: list[str], capsys) -> tuple[int, str, str]:
    """python -m decision_mamba.sweep ARGS, in this process (the runs are still subprocesses)."""
    code = cli_main(sweep.main, args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_local_launcher_runs_two_at_a_time_then_skips_resumes_and_refuses(tmp_path, hopper_file, capsys):
    out = tmp_path / "runs"
    code, stdout, stderr = run_sweep(tiny_sweep_args(out, hopper_file, "--slots", "2"), capsys)
    assert code == 0, stdout + stderr
    for seed in (12, 23):
        run_dir = out / f"hopper-random-test-dc-release-s{seed}"
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["last"]["iteration"] == 2 and summary["steps"] == 6
        assert (out / "logs" / f"{run_dir.name}.log").read_text().startswith("$ ")  # the command, then its output
    record = json.loads((out / "sweeps.jsonl").read_text().splitlines()[-1])
    assert record["launcher"] == "local"
    assert sorted(record["launched"]) == ["hopper-random-test-dc-release-s12", "hopper-random-test-dc-release-s23"]

    # Re-launching: finished runs are skipped ...
    code, stdout, _ = run_sweep(tiny_sweep_args(out, hopper_file, "--dry-run"), capsys)
    assert code == 0 and "2 done and skipped" in stdout
    assert [line for line in stdout.splitlines() if not line.startswith("#")] == []
    # ... a run without its summary (killed after its last checkpoint) is resumed ...
    (out / "hopper-random-test-dc-release-s23" / "summary.json").unlink()
    code, stdout, _ = run_sweep(tiny_sweep_args(out, hopper_file, "--dry-run"), capsys)
    commands = [shlex.split(line) for line in stdout.splitlines() if not line.startswith("#")]
    assert len(commands) == 1 and commands[0][-1] == "--resume"
    assert overrides_of(commands[0])["run.name"] == "hopper-random-test-dc-release-s23"
    # ... and other settings in the same run directories are an error, not a silent skip.
    code, _, stderr = run_sweep(tiny_sweep_args(out, hopper_file, "--dry-run",
                                                overrides=("train.num_iterations=3",)), capsys)
    assert code == 2 and "train.num_iterations: 2 in the run directory, 3 now" in stderr
    # Resuming for real finishes the run from its checkpoint.
    code, stdout, stderr = run_sweep(tiny_sweep_args(out, hopper_file), capsys)
    assert code == 0, stdout + stderr
    assert "resumed" in (out / "logs" / "hopper-random-test-dc-release-s23.log").read_text()
    assert json.loads((out / "hopper-random-test-dc-release-s23" / "summary.json").read_text())["steps"] == 6


def test_submitit_local_executor_runs_one_slot_at_a_time(tmp_path, hopper_file, capsys):
    out = tmp_path / "runs"
    code, stdout, stderr = run_sweep(tiny_sweep_args(out, hopper_file, "--launcher", "submitit-local",
                                                     "--slots", "1"), capsys)
    assert code == 0, stdout + stderr
    first, second = out / "hopper-random-test-dc-release-s12", out / "hopper-random-test-dc-release-s23"
    for run_dir in (first, second):
        assert json.loads((run_dir / "summary.json").read_text())["last"]["iteration"] == 2
    # one slot: the second run was started only after the first had written its summary
    assert (first / "summary.json").stat().st_mtime <= (second / "config.yaml").stat().st_mtime
    assert list((out / "submitit").glob("*_log.out")), "submitit keeps each job's log"


def test_slurm_launcher_submits_one_job_array(tmp_path, monkeypatch):
    # Stand-ins for the SLURM programs: submitit checks that srun exists and calls sbatch.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/usr/bin/env bash\nexit 0\n")
    (bin_dir / "sbatch").write_text(f"#!/usr/bin/env bash\ncp \"$1\" {tmp_path}/sbatch-file.sh\n"
                                    "echo 'Submitted batch job 4242'\n")
    for program in ("srun", "sbatch"):
        (bin_dir / program).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)

    code = sweep.main(["table2", "--launcher", "slurm", "--models", "dmamba", "--datasets", "pong",
                       "--partition", "gpu", "--gpus-per-node", "1", "--time", "600", "--array-parallelism", "2",
                       "--cpus-per-task", "8", "--", "eval.episodes=2"])
    assert code == 0
    sbatch = (tmp_path / "sbatch-file.sh").read_text()
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --time=600", "#SBATCH --cpus-per-task=8", "#SBATCH --job-name=dmamba-table2"):
        assert line in sbatch
    # each array task unpickles one run of the table
    jobs = [DelayedSubmission.load(p).function for p in sorted((tmp_path / "runs/table2/submitit").glob("*.pkl"))]
    assert sorted(job.run.seed for job in jobs) == PAPER_ATARI_SEEDS
    assert all(job.run.config == "configs/atari/pong.yaml" and job.run.overrides[-1] == "eval.episodes=2"
               for job in jobs)


def test_slots_get_their_own_gpu_or_a_share_of_the_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    assert sweep._slot_env(1, 4, []) == {"OMP_NUM_THREADS": "2", "NUMBA_NUM_THREADS": "2"}
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice is kept
    assert sweep._slot_env(0, 4, []) == {"NUMBA_NUM_THREADS": "2"}
    # GPUs: slot i on GPU i, round robin when there are more slots than GPUs
    assert [sweep._slot_env(slot, 3, [0, 1]) for slot in range(3)] == [
        {"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}, {"CUDA_VISIBLE_DEVICES": "0"}]


# ---------------------------------------------------------- failures are not hidden
def run_script(script: str, runs_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "RUNS": str(runs_dir), "OUT": str(runs_dir / "out"), **env}
    return subprocess.run(["bash", str(REPO / "scripts" / script), *args], env=environment,
                          capture_output=True, text=True, timeout=120)


def test_table_script_fails_when_the_interpreter_is_missing(tmp_path):
    done = run_script("table1_gym.sh", tmp_path / "runs", "--dry-run", PYTHON=str(tmp_path / "no-python"))
    assert done.returncode == 127 and "no Python interpreter" in done.stderr


def test_table_script_out_dir_is_where_the_aggregator_looks(tmp_path):
    chosen = tmp_path / "elsewhere"
    done = run_script("table1_gym.sh", tmp_path / "runs", "--dry-run", "--models", "dc", "--seeds", "12",
                      "--out-dir", str(chosen))
    assert done.returncode == 0, done.stderr
    commands = [shlex.split(line) for line in done.stdout.splitlines() if line and not line.startswith("#")]
    assert commands and all(overrides_of(c)["run.out_dir"] == str(chosen) for c in commands)
    hint = [line for line in done.stdout.splitlines() if "decision_mamba.aggregate" in line]
    assert hint and f"aggregate {chosen} --table 1" in hint[0]


def test_failed_slurm_submission_fails_the_script_and_records_nothing(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/usr/bin/env bash\nexit 0\n")
    (bin_dir / "sbatch").write_text("#!/usr/bin/env bash\necho 'sbatch: error: invalid partition specified: gpu' >&2\n"
                                    "exit 1\n")
    for program in ("srun", "sbatch"):
        (bin_dir / program).chmod(0o755)
    runs = tmp_path / "runs"
    done = run_script("table2_atari.sh", runs, "--launcher", "slurm", "--models", "dmamba", "--datasets", "pong",
                      "--partition", "gpu", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "SLURM submission failed" in done.stderr and "Traceback" not in done.stderr
    records = (runs / "sweeps.jsonl").read_text().splitlines() if (runs / "sweeps.jsonl").exists() else []
    assert not any(json.loads(line)["launched"] for line in records)


def test_a_run_log_is_written_as_the_run_goes(tmp_path):
    # A stand-in entry point: prints a line, then looks for it in its own log file while still running.
    entry = tmp_path / "entry.py"
    entry.write_text("import sys, pathlib\nprint('started')\nlog = pathlib.Path(sys.argv[-1])\n"
                     "pathlib.Path(sys.argv[-2]).write_text(str('started' in log.read_text()))\n")
    log, seen = tmp_path / "logs" / "run.log", tmp_path / "seen.txt"
    run = sweep.Run(table=1, dataset="hopper-medium", model="dc", variant="", seed=12, entry_point=str(entry),
                    config="configs/gym/hopper-medium.yaml", overrides=(str(seen), str(log)),
                    out_dir=str(tmp_path / "runs"), name="run")
    job = sweep.RunJob(run, cwd=str(tmp_path), log_path=str(log))
    with pytest.raises(RuntimeError, match="exited without writing"):
        job()
    assert seen.read_text() == "True", "the run's output reached its log only when it exited"


def test_table_script_smoke_runs_the_protocol_into_its_own_folders(tmp_path):
    """`scripts/table1_gym.sh --smoke` end to end, from a copy of scripts/ in tmp_path (the script works
    where it lies): a real tiny run on the generated Hopper data, aggregated; the real table's folders
    (a finished run planted in runs/table1) are left as they were."""
    import csv
    import shutil
    import sys

    (tmp_path / "scripts").mkdir()
    for name in ("_table.sh", "table1_gym.sh"):
        shutil.copy(REPO / "scripts" / name, tmp_path / "scripts" / name)
    real = tmp_path / "runs" / "table1" / "hopper-medium-dmamba-release-s12"
    real.mkdir(parents=True)
    (real / "summary.json").write_text("{}")
    before = {p: p.read_bytes() for p in (tmp_path / "runs" / "table1").rglob("*") if p.is_file()}
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "NUMBA_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("RUNS", None), env.pop("OUT", None), env.pop("TITLE", None)
    done = subprocess.run(["bash", str(tmp_path / "scripts" / "table1_gym.sh"), "--smoke", "--models", "dmamba",
                           "--seeds", "12"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr

    run_dir = tmp_path / "runs" / "smoke" / "table1" / "hopper-medium-v4-gen-dmamba-release-s12"
    summary = json.loads((run_dir / "summary.json").read_text())
    config = OmegaConf.load(run_dir / "config.yaml")
    assert summary["steps"] == 20 and config.train.num_iterations == 2 and config.protocol == "release"
    assert config.dataset.endswith("data/hopper-medium-v4-gen.hdf5") and config.run.wandb_project == "decision-mamba-smoke"
    assert {p: p.read_bytes() for p in (tmp_path / "runs" / "table1").rglob("*") if p.is_file()} == before
    assert not list((tmp_path / "results").glob("table1*"))  # the real table's results neither

    results = tmp_path / "results" / "smoke"
    markdown = (results / "table1.md").read_text()
    assert markdown.startswith("# Table 1, smoke test: the protocol at a tiny budget") and "hopper-medium-v4-gen.hdf5" in markdown
    rows = [r for r in csv.DictReader(open(results / "table1.csv")) if r["dataset"] == "hopper-medium-v4-gen"]
    assert [(r["model"], r["seed"], r["seeds_done"]) for r in rows] == [("dmamba", "", "1"), ("dmamba", "12", "1")]
    assert float(rows[1]["last_mean"]) == summary["last"]["score"]
    assert (results / "table1-hopper-medium-v4-gen.svg").is_file()
    # beside the table: its protocol and cost, the statistics, the profiles and the run index
    assert "## Protocol" in markdown and "## Cost" in markdown and "## Aggregate statistics" in markdown
    assert (results / "table1-stats.csv").is_file() and (results / "table1-profiles.svg").is_file()
    assert [r["run"] for r in csv.DictReader(open(results / "table1-runs.csv"))] == [run_dir.name]


def test_smoke_never_writes_into_the_real_table_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli_main(sweep.main, ["table3", "--smoke", "--out-dir", "runs/table3", "--dry-run"]) == 2
    assert "--smoke never writes into the real table's runs/table3" in capsys.readouterr().err
    assert cli_main(sweep.main, ["table1", "--smoke", "--datasets", "walker2d-medium", "--dry-run"]) == 2
    assert "generated" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_atari_smoke_records_a_dataset_the_runs_can_load(tmp_path):
    from decision_mamba.data.atari_replay import load_dqn_replay

    runs = sweep.table_runs(4, out_dir=str(tmp_path / "smoke" / "table4"), smoke=True)
    # every K of Table 4 on Breakout, the first three seeds, all on the recorded data
    assert sorted({(r.variant, r.seed) for r in runs}) == [(k, s) for k in ("k10", "k30", "k40", "k60")
                                                           for s in (123, 231, 312)]
    cfg = runs[0].resolved_config()
    assert naming.run_tags(cfg) == ["data:dqn-replay", "protocol:release", "smoke"]  # never mistaken for DQN's data
    assert cfg.data_dir == str(tmp_path / "smoke" / "dqn_replay_recorded") and cfg.train.num_iterations == 2
    sweep.record_smoke_data(runs)
    assert sorted(p.name for p in (tmp_path / "smoke" / "dqn_replay_recorded").iterdir()) == ["Breakout"]
    traj = load_dqn_replay(cfg.data_dir, cfg.game, num_buffers=cfg.num_buffers, num_steps=cfg.num_steps,
                           trajectories_per_buffer=cfg.trajectories_per_buffer, seed=cfg.seed)
    assert traj.num_transitions >= cfg.num_steps
    mtimes = [p.stat().st_mtime_ns for p in (tmp_path / "smoke" / "dqn_replay_recorded").rglob("*")]
    sweep.record_smoke_data(runs)  # recorded once, then reused
    assert [p.stat().st_mtime_ns for p in (tmp_path / "smoke" / "dqn_replay_recorded").rglob("*")] == mtimes


def test_a_run_log_shows_progress_while_the_run_goes(tmp_path, monkeypatch):
    """A sweep run's output reaches its log file as it is printed, not when the run exits
    (Python block-buffers stdout into a file)."""
    import concurrent.futures
    import time

    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    go, run_dir = tmp_path / "go", tmp_path / "runs" / "r"
    entry = tmp_path / "entry.py"  # stands in for gym/experiment.py: prints, then waits to be let go
    entry.write_text(f"""if True:
        import pathlib, time
        print("MARK: iteration 1 done")
        deadline = time.time() + 120
        while not pathlib.Path({str(go)!r}).exists() and time.time() < deadline:
            time.sleep(0.05)
        pathlib.Path({str(run_dir)!r}).mkdir(parents=True)
        (pathlib.Path({str(run_dir)!r}) / "summary.json").write_text("{{}}")
    """)
    run = sweep.Run(table=1, dataset="hopper-medium", model="dmamba", variant="", seed=0, entry_point=str(entry),
                    config=str(entry), overrides=(), out_dir=str(run_dir.parent), name=run_dir.name)
    log = tmp_path / "logs" / "r.log"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        finished = pool.submit(sweep.RunJob(run, cwd=str(tmp_path), log_path=str(log)))
        deadline = time.time() + 30
        while "MARK:" not in (log.read_text() if log.exists() else "") and time.time() < deadline:
            time.sleep(0.05)
        shown_while_running = log.read_text()
        go.touch()
        assert finished.result(timeout=120) == str(run_dir / "summary.json")
    assert "MARK: iteration 1 done" in shown_while_running


@pytest.mark.skipif(torch.cuda.is_available(), reason="train.device=cuda runs here")
def test_a_failed_run_shows_its_own_error_line_and_the_count(tmp_path, hopper_file, capsys):
    out = tmp_path / "runs"
    code, stdout, stderr = run_sweep(tiny_sweep_args(out, hopper_file, overrides=("train.device=cuda",)), capsys)
    assert code == 1, stdout + stderr
    failed = [line for line in stdout.splitlines() if " FAILED " in line]
    assert len(failed) == 2 and all(line.startswith(("[1/2] FAILED", "[2/2] FAILED")) for line in failed), stdout
    # the run's own one line, from its log, not "returned non-zero exit status 2"
    assert all("error: train.device=cuda" in line and "no CUDA device" in line for line in failed), stdout
    assert "non-zero exit status" not in stdout
    assert "[1/2] start" in stdout and "[2/2] start" in stdout and "so far)" in stdout


def test_missing_data_stops_the_sweep_before_it_launches_and_dry_run_names_it(tmp_path, capsys):
    args = ["table1", "--out-dir", str(tmp_path / "runs"), "--models", "dc", "--datasets", "hopper-medium-replay",
            "--seeds", "12", "--", f"data_dir={tmp_path}"]
    code, stdout, stderr = run_sweep([*args[:1], "--dry-run", *args[1:]], capsys)
    assert code == 0 and len([line for line in stdout.splitlines() if not line.startswith("#")]) == 1
    assert "warning: these runs would not start here" in stderr and "hopper_medium_replay-v2.hdf5" in stderr
    code, stdout, stderr = run_sweep(args, capsys)
    assert code == 2 and stderr.startswith("error: nothing launched") and "d4rl hopper-medium-replay-v2" in stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("slots", ["0", "-2"])
def test_slots_below_one_are_refused(tmp_path, capsys, slots):
    code, _, stderr = run_sweep(["table1", "--dry-run", "--slots", slots, "--out-dir", str(tmp_path)], capsys)
    assert code == 2 and f"--slots must be at least 1 (runs at a time), got {slots}" in stderr
