#!/usr/bin/env bash
# The effect of the release protocol (decision_mamba/protocols.py) on the bundled Hopper
# data: DMamba and DT under --protocol release and --protocol clean, and DMamba under
# clean with only the initialisation switched (model.init=release), SEEDS each; then one
# table (last and best, mean ± std over seeds, one cell per protocol) and its curves.
#
#   BUDGET=smoke scripts/protocol_effect.sh     # ~2 min on 2 CPU cores: proves the pipeline, measures nothing
#   BUDGET=hour  scripts/protocol_effect.sh     # 15 runs; the committed one took 86 min on 2 shared CPU cores (docs/protocol.md)
#   scripts/protocol_effect.sh --dry-run        # list the runs
#
# Environment: BUDGET (smoke | hour, default smoke), SEEDS (default "12 23 34"), RUNS
# (default runs/protocol-effect-$BUDGET), OUT (default results/protocol-effect-$BUDGET),
# PYTHON (default .venv/bin/python), SLOTS (runs at a time, default 1). Arguments go to
# every `python -m decision_mamba.sweep table1` call (e.g. --dry-run, --wandb offline).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
BUDGET="${BUDGET:-smoke}"
SEEDS="${SEEDS:-12 23 34}"
RUNS="${RUNS:-runs/protocol-effect-$BUDGET}"
OUT="${OUT:-results/protocol-effect-$BUDGET}"
SLOTS="${SLOTS:-1}"

# The budget: everything but the protocol switches, identical for every run (shared with
# scripts/compare_mixers.sh).
source scripts/_budget.sh
PRODUCED_BY="$(printf '%q ' "BUDGET=$BUDGET" "SEEDS=$SEEDS" "RUNS=$RUNS" "OUT=$OUT" "scripts/$(basename "$0")" "$@")"

sweep() {  # sweep PROTOCOL MODELS... -- EXTRA OVERRIDES...
  local protocol="$1"; shift
  local models=(); while [[ $# -gt 0 && "$1" != "--" ]]; do models+=("$1"); shift; done; shift || true
  # shellcheck disable=SC2086  # SEEDS is a list of words
  "$PYTHON" -m decision_mamba.sweep table1 --datasets hopper-medium --models "${models[@]}" --seeds $SEEDS \
    --protocol "$protocol" --out-dir "$RUNS" --slots "$SLOTS" "${ARGS[@]}" -- "${DATA[@]}" "${SETTINGS[@]}" "$@"
}
ARGS=("$@")
status=0
sweep release dmamba dt -- || status=$?
sweep clean dmamba dt -- || status=$?
sweep clean dmamba -- model.init=release || status=$?
if [[ $status -eq 2 ]]; then exit 2; fi
for arg in "$@"; do [[ "$arg" == "--dry-run" ]] && exit 0; done

"$PYTHON" -m decision_mamba.aggregate "$RUNS" --table 1 --out "$OUT" --produced-by "${PRODUCED_BY% }" \
  --title "Protocol effect on the bundled Hopper data (data/hopper-medium-v4-gen.hdf5), budget: $BUDGET" \
  --note "DMamba and DT under the release protocol (the authors' code, which produced the paper's numbers) and the clean one, and DMamba under clean with only model.init=release. Generated data, not D4RL: no paper number applies."
exit $status
