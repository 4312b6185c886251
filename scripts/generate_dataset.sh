#!/usr/bin/env bash
# Regenerate the bundled Hopper-v4 datasets (data/README.md) with the exact command that
# made them, then copy the two small ones into data/. SAC trains on one CPU core: about
# 1.5 hours (320k steps at 40-70 steps/s). Re-running resumes from the last SAC
# checkpoint and skips finished datasets, so the script can be interrupted at any time.
#
#   scripts/generate_dataset.sh                 # the bundled data
#   scripts/generate_dataset.sh --no-progress   # extra arguments go to the generator
#
# Environment: PYTHON (default .venv/bin/python), OUT (default data/generated/hopper-v4).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
OUT="${OUT:-data/generated/hopper-v4}"

"$PYTHON" tools/generate_dataset.py --env Hopper-v4 --out "$OUT" \
  --seed 0 --sac-steps 320000 --checkpoint-interval 5000 --eval-episodes 10 \
  --transitions 50000 --random-transitions 20000 --no-next-observations "$@"

for name in hopper-medium-v4-gen.hdf5 hopper-random-v4-gen.hdf5; do
  cp "$OUT/$name" "data/.$name.tmp" && mv "data/.$name.tmp" "data/$name"  # atomic replace
done
echo "copied hopper-medium-v4-gen.hdf5 and hopper-random-v4-gen.hdf5 to data/"
