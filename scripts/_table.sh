# Shared body of scripts/table<N>_*.sh, sourced with TABLE set ($0 and "$@" are the
# caller's): launch the table's runs through the sweep, then aggregate them into
# results/table<N>.{md,csv,png}.
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
