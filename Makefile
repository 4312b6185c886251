# Two commands do all the set-up on a fresh machine:
#   make run    create .venv, install, train DMamba on the bundled hopper data, evaluate;
#               again: prints the finished run's scores, or continues a run stopped by Ctrl-C
#   make test   create .venv, install, run the test suite (make test-fast: the unit tests only)
#   make run-atari  record a small DQN-replay-format dataset from the real emulator, train and evaluate DMamba on it
# On a GPU machine: make install GPU=1 (docs/gpu.md)
#   make gpu-wheels  (with internet) the wheels the GPU check installs, into $(GPU_WHEELS)
#   make gpu-check   (on the GPU machine, no internet) scripts/gpu_check.sh: tests, benchmark, results/gpu-check-*
#   make clean  delete .venv and .pytest_cache; never runs/, data/ or results/ (delete runs by hand)
PYTHON ?= python3
VENV   ?= .venv
# GPU=1: torch 2.10.0, the newest torch that mamba-ssm 2.3.2.post1 publishes prebuilt wheels
# for, then mamba-ssm's kernel. Its setup.py imports torch and downloads the wheel named
# after torch's CUDA major, torch's major.minor, its C++ ABI and the Python version
# (tools/mamba_ssm_wheel.py says which, before pip runs); with no such wheel it compiles
# with nvcc. No build isolation (setup.py needs this torch); the torch pin as a constraint,
# so that pip never swaps torch. MAMBA_KEEP_CUDA_BUILD=TRUE: mamba-ssm's next release
# builds (and fetches) the Mamba-1 kernel only with it. MAMBA_PIP_ARGS=--no-deps for torch
# 2.6-2.8, whose triton mamba-ssm 2.3.2.post1's requirements refuse.
# Without GPU=1: torch 2.13.0, a local CPU wheel on our CI machines. TORCH= overrides both.
GPU    ?=
GPU_TORCH ?= torch==2.10.0
ifneq ($(GPU),)
TORCH  ?= $(GPU_TORCH)
else
TORCH  ?= torch==2.13.0
endif
EXTRAS ?= dev,robotics,tools,tables
comma  := ,
MAMBA_SSM ?= mamba-ssm==2.3.2.post1
MAMBA_PIP_ARGS ?=
PY      = $(VENV)/bin/python
# The GPU check (docs/gpu.md, "The GPU check"). GPU_WHEELS_ARGS e.g. "--python-version 3.12 --no-torch
# --have have.txt"; GPU_CHECK_ARGS e.g. "--quick", "--out DIR", "--build-mamba".
GPU_WHEELS ?= .gpu-wheels
GPU_WHEELS_ARGS ?=
GPU_CHECK_ARGS ?=
# For the tests, idle OpenMP threads sleep instead of spinning: pytest-xdist runs two
# processes on the two cores, and spinning thread pools steal each other's cores (a DT step
# went from 0.27 s to 2.5 s). A single run keeps OpenMP's default: there each of the many
# small torch calls of an evaluation step would wait for sleeping threads to wake (measured,
# 300 quickstart updates and 2 evaluations: evaluating 13-14 s with PASSIVE, 7-8 s without).
test test-fast: export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install run run-atari test test-fast bench gpu-wheels gpu-check clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/torch-pin.txt
	$(PY) -m pip install --quiet -c $(VENV)/torch-pin.txt -e ".[$(EXTRAS)$(if $(GPU),$(comma)gpu)]"
ifneq ($(GPU),)
	-$(PY) tools/mamba_ssm_wheel.py
	MAMBA_KEEP_CUDA_BUILD=TRUE $(PY) -m pip install --no-build-isolation -c $(VENV)/torch-pin.txt $(MAMBA_PIP_ARGS) "$(MAMBA_SSM)"
	$(PY) -c "from decision_mamba.selective_scan import resolve_scan_backend as r; print('scan backend:', r('auto', 'cuda'))"
endif
	touch $@

# --resume: starts the run the first time, continues it after Ctrl-C, and once it has
# finished only prints its scores, so `make run` can be typed again.
run: install
	$(PY) gym/experiment.py --config configs/gym/quickstart.yaml --resume

# No download: ~15 s of recording random play, then ~2 min of training and evaluation on a CPU.
run-atari: install
	$(PY) tools/record_atari.py --game Breakout --out data/dqn_replay_recorded --buffers 2 --transitions 3000
	$(PY) atari/train_atari.py --config configs/atari/quickstart.yaml --resume

test: install
	$(PY) -m pytest -n 2 -q

# The unit tests only, for everyday work (about a minute on 2 cores): no end-to-end runs
# or learning tests (the `slow` marker, tests/conftest.py). `make test` runs everything.
test-fast: install
	$(PY) -m pytest -n 2 -q -m "not slow"

bench: install
	$(PY) -m pip install --quiet -e ".[$(EXTRAS),bench]"  # HF transformers' DT, measured beside ours
	$(PY) benchmarks/bench.py

# GPU_TORCH and its prebuilt mamba-ssm wheel, unless TORCH is given (make gpu-wheels TORCH=...).
gpu-wheels:
	scripts/gpu_check.sh --prepare $(GPU_WHEELS) --torch "$(if $(filter-out file,$(origin TORCH)),$(TORCH),$(GPU_TORCH))" --mamba "$(MAMBA_SSM)" $(GPU_WHEELS_ARGS)

# No install step: the machine has no internet; the wheels (if any) are all it gets.
gpu-check:
	scripts/gpu_check.sh $(wildcard $(GPU_WHEELS)) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
