"""The same seed gives the same numbers, whether numba's kernels were just compiled or loaded
from its cache, and whatever vector width they were compiled for."""

import os
import subprocess
import sys

import llvmlite.binding

PROGRAM = """
from decision_mamba.cpu import configure_process
configure_process()  # as the entry points do: 512-bit vectors where the CPU has them
import hashlib, torch
from decision_mamba.mamba import Mamba
torch.manual_seed(0)
block = Mamba(32)
x = torch.randn(4, 12, 32, requires_grad=True)
y = block(x)
y.square().sum().backward()
digest = hashlib.sha1()
for t in [y.detach(), x.grad] + [p.grad for p in block.parameters()]:
    digest.update(t.numpy().tobytes())

# DMamba's fused recurrent step: one sequence (serial kernel), three (parallel kernel)
from decision_mamba.model import DecisionModel, ModelConfig
torch.set_num_threads(2)
model = DecisionModel(ModelConfig(d_model=32, n_layer=2), (5,), 3, discrete=False).eval()
with torch.no_grad():
    for batch in (1, 3):
        state = model.init_state(batch)
        for t in range(4):
            out, state = model.step(torch.randn(batch, 5), torch.randn(batch, 1), torch.full((batch,), t),
                                    torch.randn(batch, 3) if t else None, state)
            digest.update(out.numpy().tobytes())
print(digest.hexdigest())
from numba.core.registry import cpu_target
print("-prefer-256-bit" in cpu_target.target_context.codegen()._tm_features.split(","))
"""


def run_program(env):
    result = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True,
                            check=True, timeout=600)
    digest, wide_vectors = result.stdout.split()
    return digest, wide_vectors == "True"


def test_fresh_compile_and_cached_kernels_agree_bitwise(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache"), "NUMBA_NUM_THREADS": "2"}
    env.pop("NUMBA_CPU_FEATURES", None)
    env.pop("NUMBA_CPU_NAME", None)
    (first, wide), (second, _) = run_program(env), run_program(env)
    assert any((tmp_path / "numba-cache").rglob("*.nbi")), "the first run should have filled the cache"
    assert first == second
    # configure_process compiles for 512-bit vectors where the CPU has them (decision_mamba/cpu);
    # numba's own tuning on the same CPU (what a NUMBA_CPU_FEATURES of the user's gets) must
    # give the same bits, from kernels of its own in the same cache.
    host_features = llvmlite.binding.get_host_cpu_features()
    assert wide == bool(host_features.get("avx512f")), "512-bit vectors iff the CPU has AVX-512"
    numba_default, wide = run_program({**env, "NUMBA_CPU_FEATURES": host_features.flatten()})
    assert not wide, "a NUMBA_CPU_FEATURES of the user's must be left as it is"
    assert numba_default == first
    # numba files cached kernels by function name and ignores the compile options: the
    # serial and parallel variants of the fused step must have entries of their own, or
    # one would run the other's machine code.
    cached = {path.name.split("-")[0] for path in (tmp_path / "numba-cache").rglob("*.nbi")}
    assert {"step._decision_layers_step_serial", "step._decision_layers_step_parallel"} <= cached
