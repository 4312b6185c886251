"""The top-level gym/ folder (the gym/experiment.py entry point) must not pass for OpenAI Gym."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def python_in_repo_root(program: str) -> subprocess.CompletedProcess:
    # cwd = the repository root puts it first on sys.path, as `python -m ...` from there does.
    return subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_stable_baselines3_started_in_the_repo_root_does_not_see_gym_installed():
    program = ("from stable_baselines3.common.vec_env import patch_gym\n"
               "from stable_baselines3.common.utils import get_system_info\n"
               "print(patch_gym.gym_installed)\n"
               "print('OpenAI Gym' in get_system_info(print_info=False)[0])\n")  # what SB3's save() calls
    done = python_in_repo_root(program)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


def test_importing_gym_from_the_repo_root_names_the_entry_point():
    done = python_in_repo_root("import gym")
    assert done.returncode != 0
    assert "ModuleNotFoundError" in done.stderr and "python gym/experiment.py" in done.stderr


def test_the_entry_point_still_runs_as_a_script():
    done = subprocess.run([sys.executable, str(REPO / "gym" / "experiment.py"), "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "--config" in done.stdout and "model.mixer" in done.stdout
