#!/usr/bin/env bash
# The memory study (docs/memory.md): T-Maze success against corridor length L for DMamba,
# DT, DC and DS4, each trained on whole episodes (context K = L + 2) and evaluated with its
# recurrent step; and Hopper-P (positions only) DMamba vs DT at K = 20 and on whole
# episodes (K = 1000). Launched through `python -m decision_mamba.sweep memory` (which makes
# any missing T-Maze data first), then one table, its curves, statistics and run index from
# `python -m decision_mamba.aggregate --study memory`. Not a paper table.
#
#   BUDGET=smoke scripts/memory_study.sh    # seconds per run: proves the pipeline, measures nothing
#   BUDGET=cpu SLOTS=2 LENGTHS="10 30 100" scripts/memory_study.sh   # T-Maze to L = 100, ~35 min on 2 CPU cores
#   BUDGET=cpu SLOTS=2 PARTS=hopper-p scripts/memory_study.sh         # Hopper-P, ~30 min
#   BUDGET=cpu SLOTS=2 PARTS="tmaze hopper-p" scripts/memory_study.sh   # both, L = 10 to 300: ~2 h
#   BUDGET=cpu SLOTS=2 LENGTHS=1000 MODELS="dmamba dc ds4" scripts/memory_study.sh   # L = 1000: hours
#   BUDGET=gpu SLOTS=4 PARTS="tmaze hopper-p" scripts/memory_study.sh   # on a GPU: 10,000 updates a run
#   scripts/memory_study.sh --dry-run       # list the runs
#
# Environment: BUDGET (smoke | cpu | gpu, default smoke), PARTS (tmaze, hopper-p or both; default
# tmaze), LENGTHS (default "10 30 100 300 1000"; cpu: "10 30 100 300"), MODELS (default "dmamba dt dc ds4"; Hopper-P
# runs those of them it has, DMamba and DT), DT_LENGTHS (the lengths DT runs, default
# LENGTHS), SEEDS (default "12 23 34"), SLOTS (runs at a time, default 1), RUNS (default
# runs/memory-study-$BUDGET; smoke: runs/smoke/memory-study), OUT (default
# results/memory-study-$BUDGET; smoke: results/smoke/memory-study), PYTHON (default .venv/bin/python). Arguments go to every sweep call (e.g. --dry-run, --wandb offline).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
BUDGET="${BUDGET:-smoke}"
PARTS="${PARTS:-tmaze}"
MODELS="${MODELS:-dmamba dt dc ds4}"
SEEDS="${SEEDS:-12 23 34}"
SLOTS="${SLOTS:-1}"
if [[ "$BUDGET" == smoke ]]; then  # never beside a real study's runs and results
  RUNS="${RUNS:-runs/smoke/memory-study}"
  OUT="${OUT:-results/smoke/memory-study}"
fi
RUNS="${RUNS:-runs/memory-study-$BUDGET}"
OUT="${OUT:-results/memory-study-$BUDGET}"
if ! command -v "$PYTHON" >/dev/null; then
  echo "error: no Python interpreter at PYTHON=$PYTHON; run \`make install\` or set PYTHON" >&2
  exit 127
fi

# The budget: everything but what the study sets per length (data, K, batch size, eval.mode).
case "$BUDGET" in
  smoke)  # seconds per run: a tiny model, 6 updates, 4 episodes per evaluation
    TMAZE=(model.d_model=16 model.n_layer=1 train.batch_size=4 train.warmup_steps=2 train.num_iterations=2
           train.steps_per_iteration=3 eval.episodes=4 train.num_threads=1)
    HOPPER_K20=(model.d_model=16 model.n_layer=1 train.batch_size=4 train.warmup_steps=2 train.num_iterations=1
                train.steps_per_iteration=3 eval.episodes=1 eval.max_ep_len=20 train.num_threads=1)
    HOPPER_EPISODE=("${HOPPER_K20[@]}") ;;
  cpu)    # the study on a 2-core CPU, one thread per run: 0.13M-parameter models (d_model 64, 2 layers,
          # configs/memory/tmaze-study.yaml), 2 x 500 updates of 16 episodes, 2 evaluations of 48 episodes
    TMAZE=(train.num_iterations=2 train.steps_per_iteration=500 eval.episodes=48 train.num_threads=1)
    # Hopper-P: the same model and updates; K = 20 at the config's batch 32, whole episodes at batch 4;
    # 2 evaluations of 5 episodes of up to 1000 steps
    HOPPER_K20=(model.d_model=64 model.n_layer=2 train.num_iterations=2 train.steps_per_iteration=100
                train.warmup_steps=50 eval.episodes=5 train.num_threads=1)
    HOPPER_EPISODE=("${HOPPER_K20[@]}" train.batch_size=4)
    # L = 1000 only when asked for: a DMamba run there takes about half an hour, a DT run hours
    LENGTHS="${LENGTHS:-10 30 100 300}" ;;
  gpu)    # the study on a GPU, for the lengths the CPU cannot reach (not yet run: its cost is unmeasured):
          # the same model, 10 x 1,000 updates of 16 episodes, an evaluation of 100 episodes after each
          # thousand, since the updates a model needs before it uses the cue grow with L (docs/memory.md,
          # "The design"); Hopper-P at its configs' own budgets (d_model 128, 3 layers, 3 x 400 updates)
    TMAZE=(train.num_iterations=10 train.steps_per_iteration=1000 eval.episodes=100)
    HOPPER_K20=()
    HOPPER_EPISODE=() ;;
  *) echo "error: BUDGET must be smoke, cpu or gpu, got '$BUDGET'" >&2; exit 2 ;;
esac
LENGTHS="${LENGTHS:-10 30 100 300 1000}"
DT_LENGTHS="${DT_LENGTHS:-$LENGTHS}"
PRODUCED_BY="$(printf '%q ' "BUDGET=$BUDGET" "PARTS=$PARTS" "LENGTHS=$LENGTHS" "MODELS=$MODELS" "DT_LENGTHS=$DT_LENGTHS" \
  "SEEDS=$SEEDS" "SLOTS=$SLOTS" "RUNS=$RUNS" "OUT=$OUT" "scripts/$(basename "$0")" "$@")"

ARGS=("$@")
DRY_RUN=""
for arg in "$@"; do [[ "$arg" == "--dry-run" ]] && DRY_RUN=1; done
sweep() {  # sweep DATASETS MODELS VARIANT -- OVERRIDES...
  local datasets="$1" models="$2" variant="$3"; shift 4
  [[ -z "$datasets" || -z "$models" ]] && return 0
  local variants=(); [[ -n "$variant" ]] && variants=(--variants "$variant")
  # shellcheck disable=SC2086  # DATASETS, MODELS and SEEDS are lists of words
  "$PYTHON" -m decision_mamba.sweep memory --datasets $datasets --models $models "${variants[@]}" --seeds $SEEDS \
    --out-dir "$RUNS" --slots "$SLOTS" "${ARGS[@]}" -- "$@"
}
in_list() { [[ " $2 " == *" $1 "* ]]; }
status=0
check() {  # 1: some runs failed (the table lists them as unfinished); else (2: a user error, nothing
           # launched; a signal) stop here, launching nothing more
  if [[ $1 -ne 0 && $1 -ne 1 ]]; then exit "$1"; fi
  if [[ $1 -eq 1 ]]; then status=1; fi
}

for part in $PARTS; do
  case "$part" in
    tmaze)
      # DT runs the lengths of DT_LENGTHS only (the table's note names the others); the other models all
      others=""; for m in $MODELS; do [[ "$m" != dt ]] && others+="$m "; done
      datasets=""; for L in $LENGTHS; do datasets+="tmaze-L$L "; done
      dt_datasets=""; for L in $LENGTHS; do in_list "$L" "$DT_LENGTHS" && dt_datasets+="tmaze-L$L "; done
      sweep "$datasets" "$others" "" -- "${TMAZE[@]}" || check $?
      if in_list dt "$MODELS"; then sweep "$dt_datasets" dt "" -- "${TMAZE[@]}" || check $?; fi ;;
    hopper-p)
      hopper_models=""; for m in $MODELS; do [[ "$m" == dmamba || "$m" == dt ]] && hopper_models+="$m "; done
      sweep hopper-P-medium "$hopper_models" k20 -- "${HOPPER_K20[@]}" || check $?
      sweep hopper-P-medium "$hopper_models" episode -- "${HOPPER_EPISODE[@]}" || check $? ;;
    *) echo "error: PARTS holds tmaze and/or hopper-p, got '$part'" >&2; exit 2 ;;
  esac
done
if [[ -n "$DRY_RUN" ]]; then
  echo "# when the runs have finished: $PYTHON -m decision_mamba.aggregate $RUNS --study memory --out $OUT"
  exit 0
fi

NOTE="Budget $BUDGET (scripts/memory_study.sh; docs/memory.md says why)."
skipped=""; for L in $LENGTHS; do in_list "$L" "$DT_LENGTHS" || skipped+="$L "; done
if in_list dt "$MODELS" && [[ -n "$skipped" ]]; then
  NOTE+=" DT was not run at L = ${skipped% } (DT_LENGTHS=$DT_LENGTHS): its attention over the whole episode did not fit this budget; its cells say \"not run\"."
fi
[[ "$BUDGET" == smoke ]] && NOTE+=" A smoke test: a tiny model for a few updates; its scores measure nothing."
"$PYTHON" -m decision_mamba.aggregate "$RUNS" --study memory --out "$OUT" --produced-by "${PRODUCED_BY% }" --note "$NOTE"
exit $status
