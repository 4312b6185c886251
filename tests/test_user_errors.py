"""User errors at the real entry points: one line on stderr, exit status 2, no traceback
(DM_DEBUG=1 shows it); and datasets checked against the environment they claim."""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from decision_mamba.config import AtariConfig, GymConfig, to_dict
from decision_mamba.data.d4rl import load_dataset, write_d4rl_hdf5
from decision_mamba.data.identity import check_dataset_env
from decision_mamba.errors import DataError
from helpers import write_episodes_d4rl

REPO = Path(__file__).resolve().parents[1]
GYM = ["gym/experiment.py", "--config", "configs/gym/hopper-medium.yaml"]
ATARI = ["atari/train_atari.py", "--config", "configs/atari/breakout.yaml"]
QUICK = ["eval.episodes=1", "eval.targets=[3600]", "eval.max_ep_len=5", "train.num_iterations=1",
         "train.steps_per_iteration=1", "model.d_model=8", "model.n_layer=1", "model.n_head=1",
         "run.progress=false", "train.num_threads=1"]


def run_cli(args: list[str], cwd: Path = REPO, debug: bool = False) -> subprocess.CompletedProcess:
    """`python ARGS` as a user would type it, with this checkout's package first on the path."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    env.pop("DM_DEBUG", None)
    if debug:
        env["DM_DEBUG"] = "1"
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _fake_d4rl(path: Path, obs_dim: int, act_dim: int, metadata: dict | None = None, n: int = 40) -> Path:
    rng = np.random.default_rng(0)
    ends = np.zeros(n, bool)
    ends[[19, n - 1]] = True
    return write_d4rl_hdf5(path, observations=rng.normal(size=(n, obs_dim)), actions=rng.uniform(-1, 1, (n, act_dim)),
                           rewards=rng.normal(size=n), terminals=np.zeros(n, bool), timeouts=ends, metadata=metadata)


@pytest.fixture(scope="module")
def data(tmp_path_factory, hopper_episodes) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {
        "hopper": write_episodes_d4rl(root / "hopper-plain.hdf5", hopper_episodes),  # no env_id: sizes only
        # what our generator writes for Walker2d (17 observations, 6 actions, like HalfCheetah)
        "walker2d-v4": _fake_d4rl(root / "walker2d-gen.hdf5", 17, 6, {"env_id": "Walker2d-v4", "env_version": "v4"}),
        "hopper-v5": _fake_d4rl(root / "hopper-v5-gen.hdf5", 11, 3, {"env_id": "Hopper-v5", "env_version": "v5"}),
    }


# ----- the dataset's claimed environment ----------------------------------------------------


def test_metadata_naming_another_environment_or_version_is_refused(data, hopper_recording):
    _, walker = load_dataset(data["walker2d-v4"])
    with pytest.raises(DataError, match=r"recorded on Walker2d-v4 .* on HalfCheetah-v4: set env .*allow_env_mismatch=true"):
        check_dataset_env(walker, "HalfCheetah-v4", source="walker2d-gen.hdf5")
    check_dataset_env(walker, "Walker2d-v4", source="walker2d-gen.hdf5")  # the right one passes
    with pytest.raises(DataError, match="recorded on Walker2d-v4 .* on Walker2d-v5: set env_version=v4"):
        check_dataset_env(walker, "Walker2d-v5", source="walker2d-gen.hdf5")
    _, hopper_v5 = load_dataset(data["hopper-v5"])
    with pytest.raises(DataError, match="set env_version=v5"):
        check_dataset_env(hopper_v5, "Hopper-v4", source="hopper-v5-gen.hdf5")
    # Minari: the env_spec of the dataset (recorded on Hopper-v4 by the fixture)
    _, minari = load_dataset(f"minari:{hopper_recording.minari_root / hopper_recording.minari_id}")
    assert minari["env_id"] == "Hopper-v4"
    check_dataset_env(minari, "Hopper-v4", source="minari")
    with pytest.raises(DataError, match="recorded on Hopper-v4 .* on Hopper-v5: set env_version=v4"):
        check_dataset_env(minari, "Hopper-v5", source="minari")
    # no env_id in the file (the D4RL files): nothing to compare, the sizes are checked later
    _, plain = load_dataset(data["hopper"])
    check_dataset_env(plain, "Walker2d-v4", source="hopper-plain.hdf5")


def test_the_override_turns_the_refusal_into_a_warning(data, capsys):
    _, walker = load_dataset(data["walker2d-v4"])
    check_dataset_env(walker, "HalfCheetah-v4", source="w.hdf5", allow_mismatch=True)
    assert "warning: dataset w.hdf5 was recorded on Walker2d-v4" in capsys.readouterr().err


def test_walker2d_data_is_not_trained_as_halfcheetah(data, tmp_path):
    args = [*GYM, "env=halfcheetah", f"dataset={data['walker2d-v4']}", *QUICK, f"run.out_dir={tmp_path}"]
    assert_one_line_error(run_cli(args), "recorded on Walker2d-v4", "HalfCheetah-v4", "allow_env_mismatch=true")
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
    # the user who knows better: trains and evaluates, with a warning
    done = run_cli([*args, "allow_env_mismatch=true"])
    assert done.returncode == 0, done.stderr
    assert "warning: dataset" in done.stderr and "normalized score" in done.stdout


def test_minari_data_without_reference_scores_is_refused(hopper_recording, tmp_path):
    # A Minari dataset is evaluated on its own env_spec (Hopper-v4 here, whatever env_version
    # says: tests/test_suites.py) and scored by its reference scores, which this one lacks.
    spec = f"minari:{hopper_recording.minari_root / hopper_recording.minari_id}"
    assert_one_line_error(run_cli([*GYM, f"dataset={spec}", "env_version=v5", *QUICK, f"run.out_dir={tmp_path}"]),
                          "test/hopper/random-v0 has no usable reference scores", "ref_max_score")


# ----- one line, status 2, at every entry point ---------------------------------------------


def _existing_run(tmp_path: Path) -> Path:
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    (tmp_path / "runs" / "taken" / "metrics.jsonl").write_text("")
    return tmp_path / "runs"


def _pickle(tmp_path: Path) -> Path:
    (tmp_path / "x.pkl").write_bytes(b"never unpickled")
    return tmp_path / "x.pkl"


# (arguments given the data files and a scratch folder, fragments the one line must hold)
CASES = {
    "gym: missing data file": (lambda d, t: [*GYM, f"dataset={t / 'nope.hdf5'}"], ["nope.hdf5 not found", "download"]),
    "gym: missing D4RL file": (lambda d, t: [*GYM, f"data_dir={t}"],
                               ["hopper_medium-v2.hdf5", "decision_mamba.data.download d4rl hopper-medium-v2"]),
    "gym: misspelt override": (lambda d, t: [*GYM, "train.learnin_rate=1"], ["learnin_rate", "learning_rate"]),
    "gym: wrong sizes": (lambda d, t: [*GYM, "env=walker2d", f"dataset={d['hopper']}", *QUICK],
                         ["observation size 11", "Walker2d-v4 has 17"]),
    "gym: pickle refused": (lambda d, t: [*GYM, f"dataset={_pickle(t)}"], ["x.pkl", "allow_pickle=true"]),
    "gym: run directory taken": (lambda d, t: [*GYM, f"dataset={d['hopper']}", *QUICK,
                                               f"run.out_dir={_existing_run(t)}", "run.name=taken"], ["--resume"]),
    "atari: missing replay files": (lambda d, t: [*ATARI, f"data_dir={t}", "num_buffers=2"],
                                    ["$store$_observation_ckpt.48.gz", "download dqn-replay"]),
    "atari: unknown game": (lambda d, t: [*ATARI, "game=Breakot"], ["unknown Atari game 'Breakot'", "Breakout"]),
    "sweep: unknown model": (lambda d, t: ["-m", "decision_mamba.sweep", "table2", "--dry-run", "--models", "ds4",
                                           "--out-dir", str(t)], ["table 2 has no model ['ds4']"]),
    "aggregate: no runs": (lambda d, t: ["-m", "decision_mamba.aggregate", str(t / "none"), "--table", "1",
                                         "--out", str(t / "t")], ["does not exist"]),
    "download: bad name": (lambda d, t: ["-m", "decision_mamba.data.download", "d4rl", "hopper-mediocre-v2",
                                         "--data-dir", str(t)], ["not a D4RL MuJoCo v2 dataset name"]),
    "generate: unknown env": (lambda d, t: [str(REPO / "tools" / "generate_dataset.py"), "--env", "Ant-v4", "--out", str(t)],
                              ["unknown environment 'Ant-v4'"]),
}


@pytest.fixture(scope="module")
def outcomes(data, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Every case run at once (each is a fresh interpreter: mostly import time)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = {case: pool.submit(run_cli, make_args(data, tmp_path_factory.mktemp("case")))
                   for case, (make_args, _) in CASES.items()}
        return {case: future.result() for case, future in futures.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_user_errors_are_one_line_with_status_2(case, outcomes):
    assert_one_line_error(outcomes[case], *CASES[case][1])


def test_hints_name_only_config_keys(outcomes):
    """A `key=value` a hint suggests is a key of the config (the Atari hint once named
    max_buffer_index, which is none); the Atari one suggests num_buffers when some buffers do."""
    keys = {key for schema in (GymConfig, AtariConfig) for key in _flat_keys(to_dict(schema()))}
    for case, done in outcomes.items():
        if case.startswith(("gym:", "atari:")) and case != "gym: misspelt override":  # that one quotes the typo
            suggested = re.findall(r"(?<![\w$./-])([a-z_]+(?:\.[a-z_]+)*)=", done.stderr)
            assert set(suggested) <= keys, (case, done.stderr)
    assert "max_buffer_index" not in outcomes["atari: missing replay files"].stderr


def _flat_keys(d: dict, prefix: str = "") -> set[str]:
    return set().union(*(_flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
                         for k, v in d.items()))


def test_debug_switch_shows_the_traceback(tmp_path):
    done = run_cli([*GYM, f"dataset={tmp_path / 'nope.hdf5'}"], debug=True)
    assert done.returncode == 1 and "Traceback" in done.stderr and "MissingFileError" in done.stderr
