# The budgets of the studies on the bundled Hopper data (scripts/protocol_effect.sh,
# scripts/compare_mixers.sh), sourced with BUDGET set: one definition, so that their runs
# are trained alike. Sets SETTINGS (overrides for every run) and DATA (the data overrides).
case "$BUDGET" in
  smoke)  # seconds per run: a tiny model, 20 updates, one short episode per target
    SETTINGS=(model.d_model=16 model.n_layer=1 train.batch_size=8 train.context_len=5 train.warmup_steps=10
              train.num_iterations=1 train.steps_per_iteration=20 eval.episodes=1 eval.max_ep_len=20
              train.num_threads=1) ;;
  hour)   # configs/gym/quickstart.yaml's model and optimiser, 900 updates, 5 episodes per target
    SETTINGS=(model.d_model=128 model.n_layer=3 train.batch_size=32 train.context_len=20 train.learning_rate=1e-3
              train.warmup_steps=200 train.num_iterations=3 train.steps_per_iteration=300 eval.episodes=5) ;;
  *) echo "BUDGET must be smoke or hour, got '$BUDGET'" >&2; exit 2 ;;
esac
DATA=(dataset=data/hopper-medium-v4-gen.hdf5 env_version=v4)
