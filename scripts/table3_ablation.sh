#!/usr/bin/env bash
# Table 3 of the paper: DMamba ablation on the three medium datasets: default, "RC"
# (no channel-mixing MLP) and "RC & 2L" (no MLP, twice the layers), seeds 12 23 34 45 51
# (45 runs), then the table and the plots.
#
#   scripts/table3_ablation.sh --variants rc rc-2l --slots 2
#   scripts/table3_ablation.sh --smoke   # the protocol at a tiny budget on generated data
#
# Arguments go to `python -m decision_mamba.sweep table3`; environment: RUNS, OUT, TITLE,
# NOTE, PYTHON as in scripts/table1_gym.sh.
TABLE=3
source "$(dirname "$0")/_table.sh"
