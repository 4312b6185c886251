# Shared body of scripts/table<N>_*.sh, sourced with TABLE set ($0 and "$@" are the
# caller's): launch the table's runs through the sweep, then aggregate them into
# results/table<N>.{md,csv,png,svg}. With --smoke: the table's protocol at a tiny budget on
# generated / recorded data (decision_mamba/sweep.py), into runs/smoke/table<N> and
# results/smoke/table<N>, never the real table's folders.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
SMOKE=""
for arg in "$@"; do
  [[ "$arg" == "--" ]] && break
  if [[ "$arg" == "--smoke" ]]; then SMOKE=1; fi
done
if [[ -n "$SMOKE" ]]; then
  RUNS="${RUNS:-runs/smoke/table${TABLE}}"
  OUT="${OUT:-results/smoke/table${TABLE}}"
  TITLE="${TITLE:-Table ${TABLE}, smoke test: the protocol at a tiny budget on generated or emulator-recorded data (its scores measure nothing)}"
fi
RUNS="${RUNS:-runs/table${TABLE}}"
# --out-dir given to the script wins over RUNS: the aggregator must look where the runs go.
previous=""
for arg in "$@"; do
  [[ "$arg" == "--" ]] && break
  if [[ "$previous" == "--out-dir" ]]; then RUNS="$arg"; fi
  if [[ "$arg" == --out-dir=* ]]; then RUNS="${arg#--out-dir=}"; fi
  previous="$arg"
done
if ! command -v "$PYTHON" >/dev/null; then
  echo "error: no Python interpreter at PYTHON=$PYTHON; run \`make install\` or set PYTHON" >&2
  exit 127
fi
OUT="${OUT:-results/table${TABLE}}"
PRODUCED_BY="$(printf '%q ' "RUNS=$RUNS" "OUT=$OUT" "scripts/$(basename "$0")" "$@")"

# The sweep runs in the background so that a SIGTERM or Ctrl-C to this script reaches it (bash
# runs no trap while it waits for a foreground command); the sweep then stops its own runs.
# A background command ignores SIGINT, so both arrive as SIGTERM.
status=0
"$PYTHON" -m decision_mamba.sweep "table${TABLE}" --out-dir "$RUNS" "$@" &
sweep_pid=$!
trap 'kill -TERM "$sweep_pid" 2>/dev/null' TERM INT
wait "$sweep_pid" || status=$?
while kill -0 "$sweep_pid" 2>/dev/null; do  # a trapped signal ends `wait` early: wait for the sweep itself
  status=0
  wait "$sweep_pid" || status=$?
done
trap - TERM INT
# 1 means some runs failed (the table lists them as unfinished); anything else (2: a user
# error, nothing launched; 126/127: no interpreter; a signal) ends the script with it.
if [[ $status -ne 0 && $status -ne 1 ]]; then exit $status; fi

# A dry run launched nothing, and SLURM jobs finish later: aggregate those by hand.
for arg in "$@"; do
  [[ "$arg" == "--" ]] && break
  if [[ "$arg" == "--dry-run" || "$arg" == "slurm" || "$arg" == "--launcher=slurm" ]]; then
    if [[ $status -ne 0 ]]; then exit $status; fi  # e.g. the SLURM submission failed
    echo "# when the runs have finished: $PYTHON -m decision_mamba.aggregate $RUNS --table $TABLE --out $OUT${SUITE:+ --suite $SUITE}"
    exit 0
  fi
done
# Also after failed runs: the table lists them as unfinished.
"$PYTHON" -m decision_mamba.aggregate "$RUNS" --table "$TABLE" --out "$OUT" ${SUITE:+--suite "$SUITE"} \
  --produced-by "${PRODUCED_BY% }" ${TITLE:+--title "$TITLE"} ${NOTE:+--note "$NOTE"}
exit $status
