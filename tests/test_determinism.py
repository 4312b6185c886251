"""The same seed gives the same numbers, whether numba's kernels were just compiled or loaded from its cache."""

import os
import subprocess
import sys

PROGRAM = """
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
print(digest.hexdigest())
"""


def test_fresh_compile_and_cached_kernels_agree_bitwise(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache"), "NUMBA_NUM_THREADS": "1"}
    digests = [subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True,
                              check=True, timeout=600).stdout.strip() for _ in range(2)]
    assert any((tmp_path / "numba-cache").rglob("*.nbi")), "the first run should have filled the cache"
    assert digests[0] == digests[1]
