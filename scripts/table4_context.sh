#!/usr/bin/env bash
# Table 4 of the paper: DMamba with context length K = 10, 30, 40, 60 on Breakout and
# Qbert, seeds 123 231 312 (24 runs), then the table and the plots.
#
#   scripts/table4_context.sh --variants k10 k60 --launcher slurm --partition gpu
#   scripts/table4_context.sh --smoke    # the protocol at a tiny budget on data recorded from the emulator
#
# Arguments go to `python -m decision_mamba.sweep table4`; environment: RUNS, OUT, TITLE,
# NOTE, PYTHON as in scripts/table1_gym.sh.
TABLE=4
source "$(dirname "$0")/_table.sh"
