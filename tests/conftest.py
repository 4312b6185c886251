"""Shared pytest fixtures. Data makers live in tests/helpers.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from decision_mamba.cpu import configure_process

configure_process()  # as the entry points do, before torch loads: the speed they run at

import numba  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import RecordedEpisode, roll_random_hopper

pytest_plugins = ["tmp_guard"]  # temporary and cache folders under pytest's; /tmp watched

# `make test` runs two pytest workers on two cores: one thread each for torch and numba.
# Oversubscribed, their spinning thread pools make small steps ten times slower.
torch.set_num_threads(1)
numba.set_num_threads(1)


@dataclass
class HopperRecording:
    episodes: list[RecordedEpisode]  # the ground truth, step by step
    minari_root: Path  # MINARI_DATASETS_PATH holding the same episodes
    minari_id: str


@pytest.fixture(scope="session")
def hopper_recording(tmp_path_factory) -> HopperRecording:
    """Six random-policy Hopper-v4 episodes (time limit 40 steps), also saved with minari.

    Seed 0 gives a mix of episodes that end by falling and by the time limit; the fixture
    checks it so that tests relying on both kinds of episode end cannot silently lose one.
    """
    minari_root = tmp_path_factory.mktemp("minari")
    minari_id = "test/hopper/random-v0"
    episodes = roll_random_hopper(6, seed=0, max_episode_steps=40, minari_root=minari_root, minari_id=minari_id)
    assert any(e.terminated for e in episodes) and any(e.truncated for e in episodes)
    assert not any(e.terminated and e.truncated for e in episodes)
    return HopperRecording(episodes=episodes, minari_root=minari_root, minari_id=minari_id)


@pytest.fixture(scope="session")
def hopper_episodes(hopper_recording) -> list[RecordedEpisode]:
    return hopper_recording.episodes


# ------------------------------------------------------------------------ the fast tier
# `make test-fast` (pytest -m "not slow") leaves out what takes a machine's minutes: the
# end-to-end runs (training through the entry points, the table scripts, the subprocess
# per error case, the runs stopped by a signal), the learning tests, the parity tests that
# install mamba-ssm, and the few unit tests that each take seconds of CPU (compiling a
# kernel, a subprocess, a real evaluation, the benchmark's code path). `make test` runs everything.
# file -> "*" (every test of it) or the names of its slow tests (parametrized ones by name).
SLOW_TESTS: dict[str, str | set[str]] = {
    "test_atari_experiment.py": "*", "test_bench.py": "*", "test_bench_gpu.py": "*", "test_checkpoint.py": "*",
    "test_determinism.py": "*", "test_evaluate_command.py": "*", "test_generate.py": "*", "test_gym_experiment.py": "*",
    "test_learning.py": "*", "test_mamba_ssm_package.py": "*", "test_protocols.py": "*",
    "test_record_atari.py": "*", "test_suites.py": "*", "test_sweep.py": "*", "test_user_errors.py": "*",
    "test_video.py": "*",
    "test_aggregate.py": {"test_dmamba2_sits_after_the_papers_models_in_the_table_statistics_plots_and_index",
                          "test_dmamba2_variants_have_their_own_cells_in_the_ablation_table"},
    "test_compute.py": {"test_configure_process_makes_large_blocks_come_from_the_heap_unless_the_user_says_no",
                        "test_configure_process_shortens_the_openmp_spin_before_torch_loads",
                        "test_importing_every_module_of_the_package_changes_nothing_global"},
    "test_confighelp.py": {"test_help_lists_every_key_with_its_default",
                           "test_show_config_prints_the_resolved_values_and_exits"},
    "test_evaluation.py": {"test_overlap_runs_the_model_in_a_worker_and_the_simulators_here",
                           "test_window_and_recurrent_agree_when_the_window_covers_the_episode",
                           "test_batched_episodes_equal_episodes_run_one_at_a_time"},
    "test_fused_step.py": {"test_weights_are_recopied_after_training_changes_them",
                           "test_threads_give_the_same_bits_as_one_thread",
                           "test_the_model_imports_the_fused_step_only_for_a_mixer_that_has_one",
                           "test_importing_the_model_installs_no_process_wide_torch_hooks"},
    "test_gym_folder.py": {"test_the_entry_point_still_runs_as_a_script",
                           "test_stable_baselines3_started_in_the_repo_root_does_not_see_gym_installed"},
    "test_mamba2.py": {"test_one_seed_gives_both_the_same_weights_and_state_dicts_load_both_ways",
                       "test_outputs_and_every_gradient_match_theirs_on_ssd_minimal",
                       "test_our_step_matches_their_step",
                       "test_their_triton_kernels_and_our_triton_dispatch_match_our_torch_path"},
    "test_memory_study.py": {"test_the_study_lists_lengths_x_models_x_seeds_with_whole_episode_contexts",
                             "test_the_sweep_makes_the_missing_tmaze_data_with_the_studys_shares",
                             "test_the_scripts_dry_run_lists_the_parts_and_dt_at_its_lengths",
                             "test_the_gpu_budget_runs_ten_thousand_updates_and_hopper_p_at_its_configs_budgets",
                             "test_the_study_table_of_hand_made_runs"},
    "test_mixers.py": {"test_the_extra_mixer_trains_and_evaluates_through_the_gym_entry_point"},
    "test_run.py": {"test_wandb_offline_logs_the_run"},
    "test_tmaze.py": {"test_a_tiny_training_run_finishes", "test_a_missing_dataset_names_the_command_that_makes_it",
                      "test_the_probe_trains_what_a_study_run_of_the_same_seed_trains"},
    "test_stopping.py": {"test_two_resumes_at_once_the_second_exits_in_one_line",
                         "test_a_signal_ends_a_run_in_one_line_naming_resume",
                         "test_a_stopped_sweep_takes_its_running_runs_down_with_it",
                         "test_a_stopped_table_script_takes_the_sweep_and_its_runs_down"},
}


@pytest.hookimpl(tryfirst=True)  # before -m and -k deselect: they must see the marks
def pytest_collection_modifyitems(config, items):
    """Mark SLOW_TESTS slow; a name there that its file does not define is an error (a renamed
    test would otherwise move to the fast tier unseen)."""
    modules = {}
    for item in items:
        file, name = item.path.name, getattr(item, "originalname", item.name)
        modules[file] = item.module
        slow = SLOW_TESTS.get(file)
        if slow == "*" or (slow and name in slow):
            item.add_marker(pytest.mark.slow)
    stale = [f"{file}::{name}" for file, module in modules.items() if isinstance(SLOW_TESTS.get(file), set)
             for name in sorted(SLOW_TESTS[file]) if not hasattr(module, name)]
    if stale:
        raise pytest.UsageError(f"tests/conftest.py SLOW_TESTS names tests that do not exist: {', '.join(stale)}")
