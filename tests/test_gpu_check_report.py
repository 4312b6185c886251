"""scripts/gpu_check_report.py: the GPU check's requirements and its report, from real pytest output."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check_report", REPO / "scripts" / "gpu_check_report.py")
gpu_check_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check_report)


def test_requirements_are_pyproject_s_with_their_bounds():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    reqs = gpu_check_report.requirements(with_mamba=False)
    names = [re.match(r"[A-Za-z0-9_.\-]+", r).group(0).lower() for r in reqs]
    assert sorted(names) == sorted(gpu_check_report.CHECK_PACKAGES)
    assert all(r in declared for r in reqs)  # the very strings, bounds and extras included
    assert "gymnasium[mujoco]" in " ".join(reqs)  # the benchmark's Hopper needs MuJoCo
    assert gpu_check_report.requirements(with_mamba=True)[len(reqs):] == project["optional-dependencies"]["gpu"]


def test_report_counts_real_pytest_outcomes_and_fails_on_a_failed_test(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "def test_ok(): pass\n"
        "def test_bad(): assert 1 == 2, 'one is not two'\n"
        "def test_skipped(): pytest.skip('no CUDA device here')\n")
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                    f"--junitxml={work / 'junit.xml'}", str(tmp_path / "test_sample.py")], cwd=tmp_path,
                   capture_output=True, text=True)
    (work / "info.json").write_text(json.dumps({"host": "box", "device": "cuda", "versions": {"torch": "9.9"},
                                                "scan_backend_auto": "parallel", "scan_backend_reason": "why not"}))
    (work / "phases.tsv").write_text("info\t1.5\t0\ntests\t700.0\t1\n")
    prefix = tmp_path / "out" / "gpu-check-box"
    assert gpu_check_report.report(work, prefix) == 1
    result = json.loads(prefix.with_suffix(".json").read_text())
    assert result["tests"]["counts"] == {"passed": 1, "failed": 1, "skipped": 1, "error": 0}
    assert not result["ok"] and not result["within_budget"] and result["seconds"] == 701.5
    text = prefix.with_suffix(".md").read_text()
    assert text.startswith("# GPU check on box: FAILED")
    assert "no CUDA device here" in text and "one is not two" in text and "parallel: why not" in text
    assert "OVER the 10-minute budget" in text and "wrote no results" in text  # no bench.json / bench.md
