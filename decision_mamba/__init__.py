"""Decision Mamba: the shared package of the gym and Atari entry points (README)."""

import os
import sys

# After each parallel region, torch's OpenMP threads (GNU libgomp) spin for a while,
# waiting for the next one. Our numba kernels run on threads of their own, and where
# torch's threads fill the cores (its default), the spinning ones take the cores from
# them: with libgomp's default spin count a 2-thread scan kernel in a training step ran
# at 1.15x its 1-thread speed instead of 2x. A shorter spin gives the cores back sooner.
# Measured here (bench.py's training step, batch 64, K 20, width 128, 4 interleaved
# processes each): DMamba 209 -> 194 ms, DT 121 -> 123 ms. libgomp reads the variable once,
# when torch loads it, so this must run before torch is imported; a value of the user's
# own (GOMP_SPINCOUNT or OMP_WAIT_POLICY) is left as it is.
TORCH_GOMP_SPINCOUNT = "10000"
if "torch" not in sys.modules and not {"GOMP_SPINCOUNT", "OMP_WAIT_POLICY"} & os.environ.keys():
    os.environ["GOMP_SPINCOUNT"] = TORCH_GOMP_SPINCOUNT
