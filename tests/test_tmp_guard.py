"""The guard of tests/tmp_guard.py: caches and temporary files go under pytest's folder,
and a write under /tmp outside it is caught."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numba
import pytest

from tmp_guard import REAL_TMP, kernel_cache, stray_writes

REPO = Path(__file__).resolve().parents[1]


def test_temporary_and_cache_folders_are_under_pytests_folder(tmp_path: Path) -> None:
    basetemp = tmp_path.parents[1].resolve()  # tmp_path = <basetemp>/<test>0
    for folder in (tempfile.gettempdir(), os.environ["TMPDIR"], os.environ["TORCHINDUCTOR_CACHE_DIR"],
                   os.environ["TRITON_CACHE_DIR"]):
        assert Path(folder).resolve().is_relative_to(basetemp), folder
    # numba's kernels: a cache kept between sessions, named by the kernels' source (below)
    assert numba.config.CACHE_DIR == os.environ["NUMBA_CACHE_DIR"] == str(kernel_cache(REPO))
    # torch's inductor reads its folder from the environment; a subprocess inherits TMPDIR.
    from torch._inductor.runtime.cache_dir_utils import cache_dir
    assert Path(cache_dir()).resolve().is_relative_to(basetemp)
    child = subprocess.run([sys.executable, "-c", "import tempfile; print(tempfile.gettempdir())"],
                           capture_output=True, text=True, check=True)
    assert Path(child.stdout.strip()).resolve().is_relative_to(basetemp)


def test_a_write_under_tmp_outside_pytests_folder_is_caught(tmp_path: Path) -> None:
    (tmp_path / "fine.txt").write_text("under tmp_path")
    os.mkdir(tmp_path / "fine")
    assert stray_writes() == []
    # The audit event comes before the open, so a path in a missing folder is caught
    # without anything being made in /tmp.
    target = REAL_TMP / "dm-tmp-guard-no-such-folder" / "stray.txt"
    with pytest.raises(FileNotFoundError):
        open(target, "w")
    with pytest.raises(FileNotFoundError):
        os.mkdir(target)
    caught = list(stray_writes())
    stray_writes().clear()  # or this test would fail at its teardown, as any other would
    assert caught == [f"open {target}", f"os.mkdir {target}"]
    with pytest.raises(FileNotFoundError):  # reading is not writing
        open(REAL_TMP / "dm-tmp-guard-no-such-file", "rb")
    assert stray_writes() == []


def test_mujoco_warnings_write_no_log_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    import gymnasium as gym
    with warnings.catch_warnings(record=True):  # MuJoCo 4 warns of HalfCheetah's settotalmass
        gym.make("HalfCheetah-v4").close()
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()


def test_the_kernel_cache_is_new_when_any_kernel_file_changes(tmp_path: Path) -> None:
    cpu = tmp_path / "decision_mamba" / "cpu"
    cpu.mkdir(parents=True)
    for source in (REPO / "decision_mamba" / "cpu").glob("*.py"):
        (cpu / source.name).write_bytes(source.read_bytes())
    same = kernel_cache(tmp_path)
    assert same.name == kernel_cache(REPO).name and same.parent == tmp_path / ".pytest_cache"
    scan = cpu / "scan.py"
    scan.write_bytes(scan.read_bytes() + b"\n")  # a kernel that others call: numba's own index misses this
    edited = kernel_cache(tmp_path).name
    assert edited != same.name
    (cpu / "extra.py").write_text("")  # a new kernel file
    assert kernel_cache(tmp_path).name not in (same.name, edited)
