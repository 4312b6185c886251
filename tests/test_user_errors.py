"""User errors at the real entry points: one line on stderr, exit status 2, no traceback
(DM_DEBUG=1 shows it); and datasets checked against the environment they claim."""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

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
         "run.progress=false", "train.num_threads=1", "train.warmup_steps=1"]


def run_cli(args: list[str], cwd: Path = REPO, debug: bool = False, env: dict[str, str] | None = None,
            prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`python ARGS` as a user would type it, with this checkout's package first on the path
    (`env`: more variables; `prefix`: a command that runs python, e.g. in a mount namespace)."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1",
                   "PYTHONWARNINGS": "ignore", **(env or {})}
    environment.pop("DM_DEBUG", None)
    if debug:
        environment["DM_DEBUG"] = "1"
    return subprocess.run([*prefix, sys.executable, *args], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=300)


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
    (tmp_path / "runs" / "taken" / "metrics.jsonl").write_text('{"iteration": 1}\n')  # a run that has begun
    return tmp_path / "runs"


def _a_file(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("")
    return tmp_path / "a-file"


def _earlier_video(tmp_path: Path) -> Path:
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "target3600_episode0.mp4").write_bytes(b"")
    return tmp_path / "videos"


def _pickle(tmp_path: Path) -> Path:
    (tmp_path / "x.pkl").write_bytes(b"never unpickled")
    return tmp_path / "x.pkl"


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
SWEEP_ONE = ["-m", "decision_mamba.sweep", "table1", "--models", "dc", "--datasets", "hopper-medium", "--seeds", "12"]

# (arguments given the data files and a scratch folder, fragments the one line must hold[, variables])
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
    "gym: CUDA scan on the CPU": (lambda d, t: [*GYM, f"dataset={d['hopper']}", *QUICK, "model.scan_backend=cuda",
                                                "train.device=cpu", f"run.out_dir={t}"],
                                  ["model.scan_backend=cuda cannot run on cpu", "model.scan_backend=auto"]),
    "gym: CUDA device without a GPU": (lambda d, t: [*GYM, f"dataset={d['hopper']}", *QUICK, "train.device=cuda",
                                                     f"run.out_dir={t}"], ["train.device=cuda", "no CUDA device"]),
    "gym: negative thread count": (lambda d, t: [*GYM, *QUICK, "train.num_threads=-1"],
                                   ["train.num_threads must be 0", "got -1"]),
    "gym: NUMBA_NUM_THREADS=0": (lambda d, t: [*GYM, f"dataset={d['hopper']}", *QUICK, f"run.out_dir={t}"],
                                 ["NUMBA_NUM_THREADS=0 is not a positive number"], {"NUMBA_NUM_THREADS": "0"}),
    "atari: NUMBA_NUM_THREADS=0": (lambda d, t: [*ATARI, f"run.out_dir={t}"],
                                   ["NUMBA_NUM_THREADS=0 is not a positive number"], {"NUMBA_NUM_THREADS": "0"}),
    "gym: bad MUJOCO_GL": (lambda d, t: [*GYM, f"dataset={d['hopper']}", *QUICK, f"run.out_dir={t}"],
                           ["MUJOCO_GL=bogus", "egl"], {"MUJOCO_GL": "bogus"}),
    "gym: no renderer for videos": (lambda d, t: [*GYM, f"dataset={d['hopper']}", *QUICK, "eval.video_episodes=1",
                                                  f"run.out_dir={t}"], ["could not render", "eval.video_episodes=0"],
                                    # EGL's loader finds no driver: importing works, drawing fails
                                    {"MUJOCO_GL": "egl", "__EGL_VENDOR_LIBRARY_FILENAMES": "/nonexistent.json"}),
    "gym: minari folder that is no dataset": (lambda d, t: [*GYM, f"dataset=minari:{t}", *QUICK],
                                              ["is no Minari dataset", "data/metadata.json"]),
    "gym: run folder under a file": (lambda d, t: [*GYM, f"dataset={d['hopper']}", *QUICK,
                                                   f"run.out_dir={_a_file(t)}/runs"], ["is a file, not a folder"]),
    "evaluate: --json under a file": (lambda d, t: ["-m", "decision_mamba.evaluate", str(t / "no-run"), "--json",
                                                    str(_a_file(t) / "eval.json")], ["a-file is a file"]),
    "evaluate: --video over earlier videos": (lambda d, t: ["-m", "decision_mamba.evaluate", str(t / "no-run"),
                                                            "--video", str(_earlier_video(t))],
                                              ["already holds 1 video", "choose another folder"]),
    "sweep: --slots 0": (lambda d, t: [*SWEEP_ONE, "--slots", "0", "--out-dir", str(t)], ["--slots must be at least 1"]),
    "sweep: missing data": (lambda d, t: [*SWEEP_ONE, "--out-dir", str(t / "runs"), "--", f"data_dir={t}"],
                            ["nothing launched", "hopper_medium-v2.hdf5",
                             "decision_mamba.data.download d4rl hopper-medium-v2"]),
}
NEEDS_NO_GPU = {"gym: CUDA scan on the CPU", "gym: CUDA device without a GPU"}


@pytest.fixture(scope="module")
def outcomes(data, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Every case run at once (each is a fresh interpreter: mostly import time)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        folders = {case: tmp_path_factory.mktemp("case") for case in CASES}
        futures = {case: pool.submit(run_cli, make_args(data, folders[case]), env=(extra or [None])[0])
                   for case, (make_args, _, *extra) in CASES.items()}
        return {case: (future.result(), folders[case]) for case, future in futures.items()}


@pytest.mark.parametrize("case", [pytest.param(case, marks=NO_GPU) if case in NEEDS_NO_GPU else case
                                  for case in CASES])
def test_user_errors_are_one_line_with_status_2(case, outcomes):
    done, folder = outcomes[case]
    assert_one_line_error(done, *CASES[case][1])
    if case.startswith("gym:"):  # refused before anything was written: no run folder blocks the corrected command
        assert not [p for p in folder.rglob("*") if p.is_file() and p.name not in ("a-file", "x.pkl")
                    and "runs/taken" not in str(p)], case


def test_hints_name_only_config_keys(outcomes):
    """A `key=value` a hint suggests is a key of the config (the Atari hint once named
    max_buffer_index, which is none); the Atari one suggests num_buffers when some buffers do."""
    keys = {key for schema in (GymConfig, AtariConfig) for key in _flat_keys(to_dict(schema()))}
    for case, (done, _) in outcomes.items():
        if case.startswith(("gym:", "atari:")) and case != "gym: misspelt override":  # that one quotes the typo
            suggested = re.findall(r"(?<![\w$./-])([a-z_]+(?:\.[a-z_]+)*)=", done.stderr)
            assert set(suggested) <= keys, (case, done.stderr)
    assert "max_buffer_index" not in outcomes["atari: missing replay files"][0].stderr


def _flat_keys(d: dict, prefix: str = "") -> set[str]:
    return set().union(*(_flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
                         for k, v in d.items()))


def test_debug_switch_shows_the_traceback(tmp_path):
    done = run_cli([*GYM, f"dataset={tmp_path / 'nope.hdf5'}"], debug=True)
    assert done.returncode == 1 and "Traceback" in done.stderr and "MissingFileError" in done.stderr


# ----- the machine: a full disk, a read-only folder ---------------------------------------------


def _can_mount() -> bool:
    """Whether this user may mount a tmpfs in a mount namespace of its own (root, or user namespaces)."""
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"],
                          capture_output=True).returncode == 0


CAN_MOUNT = _can_mount()


def in_own_tmpfs(folder: Path, options: str) -> tuple[str, ...]:
    """A run_cli prefix: python runs with a fresh tmpfs (mount `options`) on `folder`, seen by it alone."""
    return ("unshare", "-m", "sh", "-c", 'mount -t tmpfs -o "$1" tmpfs "$0" && shift && exec "$@"',
            str(folder), options)


@pytest.mark.skipif(not CAN_MOUNT, reason="cannot mount a small file system here (needs root or user namespaces)")
def test_a_full_disk_during_a_checkpoint_write_is_one_line(data, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    # 256 KiB hold the config, the metrics and the logs, but not a checkpoint of a width-128 model (MBs)
    done = run_cli([*GYM, f"dataset={data['hopper']}", *QUICK, "model.d_model=128", "model.n_layer=2",
                    f"run.out_dir={disk}"], prefix=in_own_tmpfs(disk, "size=256k"))
    assert_one_line_error(done, "no space left on the device while writing", "iter_001.pt", "--resume")


def test_a_read_only_run_folder_is_refused_before_the_data_is_read(data, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    args = [*GYM, f"dataset={data['hopper']}", *QUICK, f"run.out_dir={folder / 'runs'}"]
    if CAN_MOUNT:
        done = run_cli(args, prefix=in_own_tmpfs(folder, "size=64k,ro"))
        assert_one_line_error(done, f"cannot write the run directory {folder / 'runs'}", "read-only file system")
    elif os.geteuid() != 0:  # root writes into any folder: only a read-only mount stops it
        folder.chmod(0o555)
        assert_one_line_error(run_cli(args), f"cannot write the run directory {folder / 'runs'}", "no write permission")
    else:
        pytest.skip("root cannot be refused by permissions, and no mount namespace here")
