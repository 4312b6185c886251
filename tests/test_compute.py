"""Process-wide settings: made by one explicit call, decision_mamba.cpu.configure_process, that
the entry points make before torch loads; never by importing the package."""

import ast
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# What configure_process may set, and the user's own settings it must leave alone.
SETTINGS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "NUMBA_THREADING_LAYER", "NUMBA_CPU_FEATURES", "NUMBA_CPU_NAME",
            "NUMBA_ENABLE_AVX", "DM_KEEP_FREED_MEMORY")


def clean_env(**env) -> dict:
    """This process's environment without any of the settings (conftest made them), plus `env`."""
    environ = {k: v for k, v in os.environ.items() if k not in SETTINGS and not k.startswith("MALLOC_")}
    return {**environ, **env}


def run(program: str, **env) -> str:
    return subprocess.run([sys.executable, "-c", program], env=clean_env(**env), capture_output=True, text=True,
                          check=True, timeout=300, cwd=REPO).stdout.strip()


# A 4 MiB block is above glibc's default mmap threshold (128 KiB): it comes from the heap
# only when malloc was told to keep freed blocks.
BLOCK_IN_HEAP = """
def block_in_heap():
    import numpy as np
    block = np.ones(4 * 2**20, dtype=np.uint8)
    address = block.ctypes.data
    with open("/proc/self/maps") as maps:
        for line in maps:
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            if start <= address < end:
                return line.rstrip().endswith("[heap]")
    return False
"""

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")


@glibc
def test_configure_process_makes_large_blocks_come_from_the_heap_unless_the_user_says_no():
    program = BLOCK_IN_HEAP + ("from decision_mamba.cpu import configure_process\n"
                               "print('mallopt' in configure_process(), block_in_heap())")
    assert run(program) == "True True"
    assert run(program, DM_KEEP_FREED_MEMORY="0") == "False False"  # the opt-out: malloc as it was
    assert run(program, MALLOC_MMAP_THRESHOLD_="131072") == "False False"  # the user's own setting wins


def spin_count_after(program: str, **env) -> str:
    return run(program + "; import os; print(os.environ.get('GOMP_SPINCOUNT'))", **env)


CONFIGURE = "from decision_mamba.cpu import configure_process; configure_process()"


def test_configure_process_shortens_the_openmp_spin_before_torch_loads():
    from decision_mamba.cpu import GOMP_SPINCOUNT

    assert spin_count_after(CONFIGURE + "; import decision_mamba.model") == GOMP_SPINCOUNT
    assert spin_count_after(CONFIGURE, GOMP_SPINCOUNT="77") == "77"  # the user's own wins
    assert spin_count_after(CONFIGURE, OMP_WAIT_POLICY="ACTIVE") == "None"
    # once torch (and its libgomp) is loaded, the variable would no longer be read: left alone
    assert spin_count_after("import torch; " + CONFIGURE) == "None"


NUMBA_SETTINGS = """
import llvmlite.binding
from decision_mamba.cpu import configure_process
configure_process()
import numba
from numba.core.registry import cpu_target
tm_features = cpu_target.target_context.codegen()._tm_features.split(",")
print(numba.config.THREADING_LAYER, "-prefer-256-bit" in tm_features,
      bool(llvmlite.binding.get_host_cpu_features().get("avx512f")))
"""


def test_configure_process_sets_numba_s_threading_layer_and_vector_width_unless_the_user_did():
    layer, wide, avx512 = run(NUMBA_SETTINGS).split()
    assert layer == "workqueue"
    assert wide == avx512, "512-bit vectors exactly where the CPU has AVX-512"
    layer, wide, _ = run(NUMBA_SETTINGS, NUMBA_THREADING_LAYER="omp", NUMBA_CPU_FEATURES="+64bit,+sse2").split()
    assert (layer, wide) == ("omp", "False")


def test_the_documented_fact_importing_the_model_sets_no_spin_count():
    assert spin_count_after("import os, decision_mamba.model") == "None"


IMPORT_EVERYTHING = BLOCK_IN_HEAP + """
import importlib, importlib.util, os, pkgutil, sys
import numba
try:  # OpenCV (which the Atari wrappers load) sets LD_LIBRARY_PATH itself: a library's doing, not ours
    import cv2
except ImportError:
    pass
assert not any(name.startswith("decision_mamba") for name in sys.modules)
before = (dict(os.environ), numba.config.THREADING_LAYER, numba.config.CPU_FEATURES)
path = importlib.util.find_spec("decision_mamba").submodule_search_locations  # (finds, does not import)
names = ["decision_mamba"] + sorted(info.name for info in pkgutil.walk_packages(path, "decision_mamba."))
for name in names:
    importlib.import_module(name)
after = (dict(os.environ), numba.config.THREADING_LAYER, numba.config.CPU_FEATURES)
changed = sorted(set(before[0].items()) ^ set(after[0].items()))
print(len(names), "decision_mamba.cpu.step" in names, "decision_mamba.evaluate" in names,
      changed, before[1:] == after[1:], block_in_heap())
"""


def test_importing_every_module_of_the_package_changes_nothing_global():
    """No environment variable, no numba setting, no allocator setting; in a fresh process."""
    out = run(IMPORT_EVERYTHING)
    count, has_kernels, has_evaluate, rest = out.split(" ", 3)
    assert int(count) > 20 and has_kernels == "True" and has_evaluate == "True", out
    expected_heap = "False" if platform.libc_ver()[0] == "glibc" else rest.rsplit(" ", 1)[1]
    assert rest == f"[] True {expected_heap}", f"importing the package changed process-wide state: {out}"


def test_the_model_loads_numba_only_when_a_cpu_fast_path_runs():
    program = ("import sys, torch; from decision_mamba.model import DecisionModel, ModelConfig\n"
               "model = DecisionModel(ModelConfig(d_model=8, n_layer=1, scan_backend='reference'), (3,), 2,"
               " discrete=False)\n"
               "model(torch.zeros(1, 2, 3), torch.zeros(1, 2, 2), torch.zeros(1, 2, 1), torch.zeros(1, 2, dtype=torch.long))\n"
               "print('numba' in sys.modules, end=' ')\n"
               "model.cfg.scan_backend = 'auto'\n"
               "for layer in model.layers: layer.mixer.scan_backend = 'auto'\n"
               "model(torch.zeros(1, 2, 3), torch.zeros(1, 2, 2), torch.zeros(1, 2, 1), torch.zeros(1, 2, dtype=torch.long))\n"
               "print('numba' in sys.modules)")
    assert run(program) == "False True"


ENTRY_POINTS = ["gym/experiment.py", "atari/train_atari.py", "decision_mamba/evaluate.py", "benchmarks/bench.py",
                "benchmarks/bench_scan.py", "benchmarks/bench_gpu.py"]


def _calls_configure_process(node: ast.stmt) -> bool:
    return any(isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) == "configure_process"
               for n in ast.walk(node))


def _imported(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module:
        return [node.module]
    return []


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_entry_points_configure_the_process_before_torch_loads(script):
    """Else the spin count never reaches torch's OpenMP runtime, and nothing else sets it."""
    for node in ast.parse((REPO / script).read_text()).body:
        if _calls_configure_process(node):
            return
        for name in _imported(node):
            assert name.split(".")[0] != "torch", f"{script} imports torch before configure_process()"
            assert not (name.startswith("decision_mamba.") and not name.startswith("decision_mamba.cpu")), \
                f"{script} imports {name} (which loads torch) before configure_process()"
    pytest.fail(f"{script} never calls decision_mamba.cpu.configure_process() at its top level")
