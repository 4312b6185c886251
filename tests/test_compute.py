"""Process-wide settings for speed: compute.keep_freed_memory (glibc's malloc keeps few-MB
blocks in its heap instead of mmap) and the package's OpenMP spin count (decision_mamba/__init__.py)."""

import ast
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROGRAM = """
import numpy as np
from decision_mamba.compute import keep_freed_memory
changed = keep_freed_memory()
block = np.ones(4 * 2**20, dtype=np.uint8)  # 4 MiB: above glibc's default mmap threshold (128 KiB)
address = block.ctypes.data
in_heap = False
with open("/proc/self/maps") as maps:
    for line in maps:
        start, end = (int(x, 16) for x in line.split()[0].split("-"))
        if start <= address < end:
            in_heap = line.rstrip().endswith("[heap]")
print(changed, in_heap)
"""


def run(**env):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environ.pop("DM_KEEP_FREED_MEMORY", None)
    out = subprocess.run([sys.executable, "-c", PROGRAM], env={**environ, **env}, capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    return out == ["True", "True"], out


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_a_large_block_comes_from_the_heap_only_when_asked():
    assert run()[0], "keep_freed_memory should have moved a 4 MiB block from mmap to the heap"
    assert run(DM_KEEP_FREED_MEMORY="0")[1] == ["False", "False"]  # the opt-out: malloc as it was
    assert run(MALLOC_MMAP_THRESHOLD_="131072")[1] == ["False", "False"]  # the user's own setting wins


# ------------------------------------------------------------------ OpenMP spin count
def spin_count_after(program: str, **env) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    return subprocess.run([sys.executable, "-c", program + "; import os; print(os.environ.get('GOMP_SPINCOUNT'))"],
                          env={**environ, **env}, capture_output=True, text=True, check=True, timeout=120,
                          cwd=REPO).stdout.strip()


def test_the_package_shortens_the_openmp_spin_before_torch_loads():
    from decision_mamba import TORCH_GOMP_SPINCOUNT

    assert spin_count_after("import decision_mamba.model") == TORCH_GOMP_SPINCOUNT
    assert spin_count_after("import decision_mamba", GOMP_SPINCOUNT="77") == "77"  # the user's own wins
    assert spin_count_after("import decision_mamba", OMP_WAIT_POLICY="ACTIVE") == "None"
    # once torch (and its libgomp) is loaded, the variable would no longer be read: left alone
    assert spin_count_after("import torch, decision_mamba") == "None"


@pytest.mark.parametrize("script", ["gym/experiment.py", "atari/train_atari.py", "benchmarks/bench.py"])
def test_entry_points_import_the_package_before_torch(script):
    """Else the spin count above never reaches torch's OpenMP runtime."""
    imported = []  # top-level packages, in the order of the script's top-level imports
    for node in ast.parse((REPO / script).read_text()).body:
        if isinstance(node, ast.Import):
            imported += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.append(node.module.split(".")[0])
    torch_at = imported.index("torch") if "torch" in imported else len(imported)  # none: through the package
    assert imported.index("decision_mamba") < torch_at, f"{script} imports torch before decision_mamba"
