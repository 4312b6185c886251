# Two commands do all the set-up on a fresh machine:
#   make run    create .venv, install, train DMamba on the bundled hopper data, evaluate
#   make test   create .venv, install, run the test suite
# On a GPU machine: make run EXTRAS=dev,cuda  (PyPI's torch==2.13.0 wheel for Linux is a CUDA build)
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
EXTRAS ?= dev
PY      = $(VENV)/bin/python
# Idle OpenMP threads sleep instead of spinning: on a shared or busy CPU, spinning torch
# and numba thread pools steal each other's cores (a DT step went from 0.27 s to 2.5 s).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install run test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

run: install
	$(PY) gym/experiment.py --config configs/gym/quickstart.yaml

test: install
	$(PY) -m pytest -n 2 -q

bench: install
	$(PY) benchmarks/bench.py

clean:
	rm -rf $(VENV) runs
