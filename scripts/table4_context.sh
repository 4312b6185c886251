#!/usr/bin/env bash
# Table 4 of the paper: DMamba with context length K = 10, 30, 40, 60 on Breakout and
# Qbert, seeds 123 231 312 (24 runs), then the table and the plots.
#
#   scripts/table4_context.sh --variants k10 k60 --launcher slurm --partition gpu
#
# Arguments go to `python -m decision_mamba.sweep table4`; environment: RUNS, OUT, TITLE,
# NOTE, PYTHON as in scripts/table1_gym.sh.
TABLE=4
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
RUNS="${RUNS:-runs/table${TABLE}}"
OUT="${OUT:-results/table${TABLE}}"
PRODUCED_BY="$(printf '%q ' "RUNS=$RUNS" "OUT=$OUT" "scripts/$(basename "$0")" "$@")"

status=0
"$PYTHON" -m decision_mamba.sweep "table${TABLE}" --out-dir "$RUNS" "$@" || status=$?
if [[ $status -eq 2 ]]; then exit 2; fi  # a usage error: nothing was launched

# A dry run launched nothing, and SLURM jobs finish later: aggregate those by hand.
for arg in "$@"; do
  [[ "$arg" == "--" ]] && break
  if [[ "$arg" == "--dry-run" || "$arg" == "slurm" || "$arg" == "--launcher=slurm" ]]; then
    echo "# when the runs have finished: $PYTHON -m decision_mamba.aggregate $RUNS --table $TABLE --out $OUT"
    exit 0
  fi
done
# Also after failed runs: the table lists them as unfinished.
"$PYTHON" -m decision_mamba.aggregate "$RUNS" --table "$TABLE" --out "$OUT" \
  --produced-by "${PRODUCED_BY% }" ${TITLE:+--title "$TITLE"} ${NOTE:+--note "$NOTE"}
exit $status
