#!/usr/bin/env bash
# Table 2 of the paper: Atari gamer-normalized score of DMamba, DT and DC on Breakout,
# Qbert, Pong and Seaquest (1% of the DQN-replay data), seeds 123 231 312 (36 runs),
# then the table and the plots. The replay data is read from
# data/dqn_replay/<Game>/1/replay_logs/ (the DQN-replay layout), or pass -- data_dir=...
#
#   scripts/table2_atari.sh --launcher slurm --partition gpu --time 2880
#   scripts/table2_atari.sh --datasets breakout --models dmamba --slots 2
#   scripts/table2_atari.sh --smoke      # the protocol at a tiny budget on data recorded from the emulator (no download)
#
# Arguments go to `python -m decision_mamba.sweep table2`; environment: RUNS, OUT, TITLE,
# NOTE, PYTHON as in scripts/table1_gym.sh.
TABLE=2
source "$(dirname "$0")/_table.sh"
