#!/usr/bin/env bash
# DMamba, DMamba-2 (Mamba-2 / SSD block, beyond the paper) and DT on the bundled Hopper data,
# under --protocol clean, SEEDS each, at protocol_effect.sh's budget (scripts/_budget.sh); then
# one table (last and best, mean ± std over seeds), the statistics (IQM, P(DMamba > each)) and
# the curves.
#
#   BUDGET=smoke scripts/compare_mixers.sh     # seconds per run: proves the pipeline, measures nothing
#   BUDGET=hour  scripts/compare_mixers.sh     # 9 runs, each as long as protocol_effect.sh's clean ones
#   scripts/compare_mixers.sh --dry-run        # list the runs
#
# Environment: BUDGET (smoke | hour, default smoke), SEEDS (default "12 23 34"), RUNS
# (default runs/compare-mixers-$BUDGET), OUT (default results/compare-mixers-$BUDGET),
# PYTHON (default .venv/bin/python), SLOTS (runs at a time, default 1). Arguments go to the
# `python -m decision_mamba.sweep table1` call (e.g. --dry-run, --wandb offline).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
BUDGET="${BUDGET:-smoke}"
SEEDS="${SEEDS:-12 23 34}"
RUNS="${RUNS:-runs/compare-mixers-$BUDGET}"
OUT="${OUT:-results/compare-mixers-$BUDGET}"
SLOTS="${SLOTS:-1}"
source scripts/_budget.sh  # SETTINGS and DATA, the same as protocol_effect.sh's
PRODUCED_BY="$(printf '%q ' "BUDGET=$BUDGET" "SEEDS=$SEEDS" "RUNS=$RUNS" "OUT=$OUT" "scripts/$(basename "$0")" "$@")"

status=0
# shellcheck disable=SC2086  # SEEDS is a list of words
"$PYTHON" -m decision_mamba.sweep table1 --datasets hopper-medium --models dmamba dmamba2 dt --seeds $SEEDS \
  --protocol clean --out-dir "$RUNS" --slots "$SLOTS" "$@" -- "${DATA[@]}" "${SETTINGS[@]}" || status=$?
# 1: some runs failed (the table lists them as unfinished); anything else: nothing to aggregate.
if [[ $status -ne 0 && $status -ne 1 ]]; then exit $status; fi
for arg in "$@"; do [[ "$arg" == "--dry-run" ]] && exit 0; done

"$PYTHON" -m decision_mamba.aggregate "$RUNS" --table 1 --out "$OUT" --produced-by "${PRODUCED_BY% }" \
  --title "DMamba, DMamba-2 and DT on the bundled Hopper data (data/hopper-medium-v4-gen.hdf5), budget: $BUDGET" \
  --note "The three token mixers under the clean protocol, at the budget of scripts/protocol_effect.sh (its DMamba and DT clean runs are trained alike). DMamba-2 (model.mixer=mamba2, docs/architecture.md) is beyond the paper. Generated data, not D4RL: no paper number applies."
exit $status
