"""--help and --show-config list every config key with its value and its description."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from decision_mamba.config import AtariConfig, GymConfig
from decision_mamba.confighelp import config_rows, field_help
from generate_dataset import build_parser  # tools/

REPO = Path(__file__).resolve().parents[1]


def leaf_keys(cls, prefix=""):
    """Every dotted key of a config dataclass, walked independently of confighelp."""
    keys = []
    for f in dataclasses.fields(cls):
        value = getattr(cls(), f.name)
        if dataclasses.is_dataclass(value):
            keys += leaf_keys(type(value), f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


@pytest.mark.parametrize("schema", [GymConfig, AtariConfig])
def test_every_field_has_a_description(schema):
    rows = config_rows(schema())
    assert [key for key, _, _ in rows] == leaf_keys(schema)
    missing = [key for key, _, text in rows if not text]
    assert not missing, f"give these config fields a help text (config.setting): {missing}"


def test_descriptions_are_the_fields_own_and_name_the_choices():
    from decision_mamba.config import PRECISIONS, SCAN_BACKENDS, ModelConfig, TrainConfig

    assert field_help(TrainConfig)["context_len"] == "K timesteps, 3K tokens"
    assert field_help(TrainConfig)["precision"].startswith(" | ".join(PRECISIONS) + ":")
    assert field_help(ModelConfig)["scan_backend"].startswith(" | ".join(SCAN_BACKENDS) + " (")


def run_cli(script, *args):
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True,
                          cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)


@pytest.mark.parametrize("script,schema", [("gym/experiment.py", GymConfig), ("atari/train_atari.py", AtariConfig)])
def test_help_lists_every_key_with_its_default(script, schema):
    out = run_cli(script, "--help")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for key, value, text in config_rows(schema()):
        shown = str(list(value) if isinstance(value, tuple) else value) if value != "" else "''"
        assert any((line.strip() + " ").startswith(f"{key} = {shown} ") and text in line for line in lines), key


def test_show_config_prints_the_resolved_values_and_exits():
    out = run_cli("atari/train_atari.py", "--config", "configs/atari/breakout.yaml", "--show-config",
                  "eval.episodes=3", "train.context_len=40")
    assert out.returncode == 0, out.stderr
    settings = {line.split()[0]: line.split()[2] for line in out.stdout.splitlines()[1:]}
    assert settings["eval.episodes"] == "3" and settings["train.context_len"] == "40"
    assert settings["game"] == "Breakout"
    assert "run directory" not in out.stdout  # nothing was trained


def test_generate_help_shows_defaults_and_expected_time():
    parser = build_parser()
    text = parser.format_help()
    assert "(default: 1000000)" in text and "(default: 0)" in text  # --sac-steps, --seed
    assert "expected time" in text and "hours" in text
    for action in parser._actions:
        if isinstance(action.default, int) and not isinstance(action.default, bool):
            assert f"(default: {action.default})" in " ".join(text.split()), action.dest
