"""compute.keep_freed_memory: glibc's malloc keeps few-MB blocks in its heap instead of mmap."""

import os
import platform
import subprocess
import sys

import pytest

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
