#!/usr/bin/env bash
# Install the lowest versions pyproject.toml allows into a fresh virtual environment and
# run a fast subset of the tests there: the declared lower bounds must be versions that
# work together.
#
#   scripts/check_min_deps.sh                      # torch at its floor from the package index
#   TORCH=/path/to/torch-2.13.0+cpu-....whl scripts/check_min_deps.sh
#   scripts/check_min_deps.sh --suite 2.6.0        # the whole suite at that torch (below)
#
# --suite VERSION: a virtual environment (VENV, default /tmp/dm-torch-VERSION, kept) with
# torch==VERSION, then this checkout installed editable with its dev and robotics extras,
# torch held at VERSION; pip check; then the whole suite as `make test` runs it. PyPI's
# Linux torch wheels are CUDA builds of several GB that run on the CPU (pip caches them).
# --existing VERSION: an environment as a GPU user has it, torch==VERSION and mamba-ssm
# (its Python side: no nvcc here), then plain `pip install -e ".[dev]"` and ".[gpu]", no
# constraint: torch and mamba-ssm must be unchanged and pip check clean.
# Last runs (2026-12-06, Python 3.11.7, Linux x86_64, 2 cores): see docs/gpu.md, "Tested torch".
# Every `name>=X` of [project] dependencies and of the dev extra becomes `name==X`; the
# packages those need come at whatever version pip picks. torch is installed apart, as
# TORCH says (default torch==<its floor>): PyPI's Linux torch wheels are multi-GB CUDA
# builds, so a machine may rather point TORCH at a local CPU wheel of the same version.
#
# Last run (2026-12-03, Python 3.11.7, Linux x86_64, 2 cores):
#   TORCH=/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl scripts/check_min_deps.sh
#   -> pip check: no broken requirements; torch 2.13.0+cpu, numpy 1.24.1, gymnasium 1.1.0,
#      ale-py 0.10.0, minari 0.5.2, stable-baselines3 2.6.0 (mujoco 4.0.1 as pip picked it),
#      PyYAML 6.0.1; the default TESTS: 153 passed in 47 s.
# Floors this check raised (pyproject says why): numpy 1.24 -> 1.24.1, minari 0.5 -> 0.5.2,
# setuptools (dev) 64 -> 77.0.3. torch's floor, 2.6, is checked by --suite 2.6.0.
# Environment: PYTHON (default python3), KEEP=1 keeps the venv (its path is printed),
# TESTS (default: the subset below).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

if [[ "${1:-}" == "--suite" ]]; then
    [[ -n "${2:-}" ]] || { echo "check_min_deps: --suite needs a torch version, e.g. --suite 2.6.0" >&2; exit 2; }
    VERSION="$2" VENV="${VENV:-${TMPDIR:-/tmp}/dm-torch-$2}"
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet "torch==$VERSION"
    echo "torch==$VERSION" > "$VENV/torch-pin.txt"
    "$VENV/bin/pip" install --quiet -c "$VENV/torch-pin.txt" -e ".[dev,robotics]"
    "$VENV/bin/pip" check
    "$VENV/bin/python" -c "import importlib.metadata as m; print(*(f'{p}=={m.version(p)}' for p in ['torch', 'numpy', 'stable-baselines3', 'gymnasium', 'mujoco']))"
    # PYTHON: the table scripts the tests run default to .venv/bin/python, absent here.
    PYTHON="$VENV/bin/python" OMP_WAIT_POLICY=PASSIVE "$VENV/bin/python" -m pytest -n "${JOBS:-2}" -q -p no:cacheprovider
    exit
fi
if [[ "${1:-}" == "--existing" ]]; then
    [[ -n "${2:-}" ]] || { echo "check_min_deps: --existing needs a torch version, e.g. --existing 2.10.0" >&2; exit 2; }
    VENV="${VENV:-${TMPDIR:-/tmp}/dm-existing-$2}" MAMBA_SSM="$(sed -n 's/^MAMBA_SSM *?= *//p' Makefile)"
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip setuptools wheel
    "$VENV/bin/pip" install --quiet "torch==$2"
    MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE "$VENV/bin/pip" install --quiet --no-build-isolation "$MAMBA_SSM"
    versions() { "$VENV/bin/python" -c "import importlib.metadata as m; print(*(f'{p}=={m.version(p)}' for p in ['torch', 'mamba-ssm', 'triton']))"; }
    before="$(versions)"
    echo "before: $before"
    "$VENV/bin/pip" install --quiet -e ".[dev]"
    "$VENV/bin/pip" install --quiet -e ".[gpu]"
    after="$(versions)"
    echo "after pip install -e \".[dev]\" and -e \".[gpu]\": $after"
    "$VENV/bin/pip" check
    [[ "$before" == "$after" ]] || { echo "check_min_deps: pip changed torch or mamba-ssm" >&2; exit 1; }
    echo "check_min_deps: torch $2 and mamba-ssm left as they were; pip check clean"
    exit
fi
TESTS="${TESTS:-tests/test_config.py tests/test_d4rl_data.py tests/test_evaluation.py tests/test_atari_env.py tests/test_atari_replay.py tests/test_aggregate.py tests/test_download.py tests/test_sampler.py tests/test_generate.py tests/test_video.py}"
VENV="$(mktemp -d "${TMPDIR:-/tmp}/dm-min-deps.XXXXXX")"
if [[ "${KEEP:-0}" != 1 ]]; then trap 'rm -rf "$VENV"' EXIT; fi

# The pins, read from pyproject.toml (the one home of the bounds).
PINS="$VENV/pins.txt"
"$PYTHON" - "$PINS" <<'PY'
import re, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
pins = []
extras = project["optional-dependencies"]
for requirement in project["dependencies"] + extras["dev"] + extras["tools"] + extras["tables"]:
    name, bound = re.fullmatch(r"([A-Za-z0-9_.\-\[\],]+)\s*>=\s*([0-9][0-9.]*)", requirement).groups()
    pins.append(f"{name}=={bound}")
torch = [p for p in pins if p.startswith("torch==")]
open(sys.argv[1], "w").write("\n".join(p for p in pins if p not in torch) + "\n")
open(sys.argv[1] + ".torch", "w").write(torch[0])
print("lowest versions:", " ".join(pins))
PY
TORCH="${TORCH:-$(cat "$PINS.torch")}"

"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet --prefer-binary "$TORCH" -r "$PINS"
"$VENV/bin/pip" check
"$VENV/bin/python" -c "import importlib.metadata as m; print(*(f'{p}=={m.version(p)}' for p in ['torch', 'numpy', 'gymnasium', 'ale-py', 'minari', 'stable-baselines3', 'mujoco']))"
# This checkout on the path rather than installed: nothing is written into it.
PYTHONPATH="$PWD" OMP_WAIT_POLICY=PASSIVE "$VENV/bin/python" -m pytest -x -q -p no:cacheprovider $TESTS
echo "check_min_deps: the lowest versions pass ($TESTS)"
