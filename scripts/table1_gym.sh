#!/usr/bin/env bash
# Table 1 of the paper: D4RL normalized score of DMamba, DT, DC and DS4 on the 9 gym
# datasets, the paper's seeds 12 23 34 45 51 (180 runs), then the table and the plots.
#
#   scripts/table1_gym.sh                                   # everything, one run at a time
#   scripts/table1_gym.sh --models dmamba --slots 2         # DMamba only, 2 runs at a time
#   scripts/table1_gym.sh --launcher slurm --partition gpu  # one SLURM job array
#   scripts/table1_gym.sh --dry-run                         # list the runs
#   scripts/table1_gym.sh --smoke                          # the protocol at a tiny budget on generated data
#
# Writes results/table1.md (the table, its protocol, its wall-time cost, the IQM / mean with
# 95% bootstrap intervals and P(DMamba > each baseline)), .csv, -stats.csv, -runs.csv (the run
# index) and the curves, intervals, profiles and improvement plots (.png, .svg); docs/results.md.
# Table 1 on Minari's mujoco/*-v0 datasets: scripts/table1_minari.sh.
#
# Arguments go to `python -m decision_mamba.sweep table1` (filters, launcher; key=value
# overrides for every run after --). Environment: RUNS (run directories, default
# runs/table1), OUT (output prefix, default results/table1), TITLE and NOTE (the table's
# title and a paragraph under it), PYTHON (default .venv/bin/python).
TABLE=1
source "$(dirname "$0")/_table.sh"
