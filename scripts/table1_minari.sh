#!/usr/bin/env bash
# Table 1 on Minari: DMamba, DT, DC and DS4 on Minari's nine MuJoCo datasets
# mujoco/{halfcheetah,hopper,walker2d}/{simple,medium,expert}-v0 (recorded on the gymnasium -v5
# environments; configs/minari/mujoco-*.yaml), Table 1's seeds and settings under the clean
# protocol, scored with the -v5 reference returns pinned in decision_mamba/scores.py.
# NOT comparable with D4RL's Table 1 or the paper's numbers (other environments, other
# behaviour policies, other references); no DT or DMamba numbers on these datasets are published.
#
#   python -m decision_mamba.data.download minari mujoco/hopper/medium-v0   # each dataset, once
#   scripts/table1_minari.sh --models dmamba dt --slots 2
#   scripts/table1_minari.sh --datasets hopper-medium walker2d-expert --dry-run
#
# Arguments go to `python -m decision_mamba.sweep table1 --suite minari --protocol clean` (filters,
# launcher; key=value overrides for every run after --). Environment: RUNS (default
# runs/table1-minari), OUT (default results/table1-minari), TITLE, NOTE, PYTHON as for
# scripts/table1_gym.sh. HalfCheetah has no pinned expert return yet: its runs stop with the
# command that measures it (docs/results.md).
TABLE=1
SUITE=minari
RUNS="${RUNS:-runs/table1-minari}"
OUT="${OUT:-results/table1-minari}"
for arg in "$@"; do
  if [[ "$arg" == "--smoke" ]]; then
    echo "error: there is no --smoke for Table 1 on Minari (its data must be downloaded); scripts/table1_gym.sh --smoke checks the pipeline" >&2
    exit 2
  fi
done
set -- --suite minari --protocol clean "$@"
source "$(dirname "$0")/_table.sh"
