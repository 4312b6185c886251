"""Error messages that say what to type: no config-library jargon, no placeholders, no other
library's API hints, and the blame on the layer that set the value."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from decision_mamba.config import ConfigError, GymConfig, load_config
from decision_mamba.data.d4rl import load_dataset
from decision_mamba.errors import MissingFileError

REPO = Path(__file__).resolve().parents[1]

HOPPER = "configs/gym/hopper-medium.yaml"


def test_a_list_given_without_brackets_says_how_to_write_it():
    with pytest.raises(ConfigError) as caught:
        load_config(GymConfig, HOPPER, ["eval.targets=3600"])
    assert str(caught.value) == ("invalid config (key=value overrides): eval.targets takes a list, in brackets: "
                                 "eval.targets=[3600.0]")
    assert load_config(GymConfig, HOPPER, ["eval.targets=[3600]"]).eval.targets == [3600.0]


def test_an_unknown_protocol_is_blamed_on_where_it_was_set(tmp_path):
    with pytest.raises(ConfigError, match=r"^invalid config \(key=value overrides\): protocol must be one of"):
        load_config(GymConfig, HOPPER, ["protocol=paper"])
    config = tmp_path / "paper.yaml"
    config.write_text("protocol: paper\n")
    with pytest.raises(ConfigError, match=rf"^invalid config \({config}\): protocol must be one of"):
        load_config(GymConfig, config, ["seed=1"])


def test_a_missing_file_gets_a_command_only_where_a_download_brings_it(tmp_path):
    with pytest.raises(MissingFileError) as caught:
        load_dataset(tmp_path / "my-data.hdf5")
    message = str(caught.value)
    assert "<" not in message and "check the path" in message and "no D4RL file name" in message
    # the commands it names run: each script is in the repository, each module in the package
    scripts = re.findall(r"python ([\w/]+\.py)", message)
    modules = re.findall(r"python -m ([\w.]+)", message)
    assert scripts == ["tools/generate_dataset.py"] and (REPO / scripts[0]).is_file()
    assert modules == ["decision_mamba.data.download"] and importlib.util.find_spec(modules[0]) is not None
    with pytest.raises(MissingFileError) as caught:
        load_dataset(tmp_path / "hopper_medium-v2.hdf5")  # a D4RL file's name: its command
    assert str(caught.value).endswith(f"download it with: python -m decision_mamba.data.download d4rl "
                                      f"hopper-medium-v2 --data-dir {tmp_path}")


def test_a_missing_minari_dataset_gets_our_command_not_minaris_api_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    with pytest.raises(MissingFileError) as caught:
        load_dataset("minari:nobody/nothing/none-v0")
    message = str(caught.value)
    assert "download=True" not in message and f"looked under {tmp_path}" in message
    assert message.endswith("python -m decision_mamba.data.download minari nobody/nothing/none-v0")


def test_a_hand_run_of_the_ablation_gets_a_name_of_its_own():
    """Table 3's RC ablation set in the YAML (model.channel_mlp: false) must not take the
    default model's run directory."""
    import importlib.util
    from pathlib import Path

    from decision_mamba.naming import run_name

    path = Path(__file__).resolve().parents[1] / "gym" / "experiment.py"
    spec = importlib.util.spec_from_file_location("gym_experiment", path)
    experiment = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(experiment)
    default = load_config(GymConfig, HOPPER)
    rc = load_config(GymConfig, HOPPER, ["model.channel_mlp=false"])
    rc_2l = load_config(GymConfig, HOPPER, ["model.channel_mlp=false", f"model.n_layer={2 * rc.model.n_layer}"])
    names = [run_name(cfg, experiment.ablation(cfg)) for cfg in (default, rc, rc_2l)]
    assert names[0] == "hopper-medium-dmamba-clean-s12" and len(set(names)) == 3
    assert names[1] == f"hopper-medium-dmamba-rc-{rc.model.n_layer}l-clean-s12"


def test_show_config_marks_what_the_yaml_and_the_overrides_changed():
    """The marks against an independent reference: the YAML file read as plain YAML."""
    import dataclasses

    import yaml

    from decision_mamba.run import show_config

    lines = {line.split()[0]: line.split()[2:4] for line in
             show_config(GymConfig, HOPPER, ["seed=7", "train.batch_size=16"]).splitlines()[1:]}
    assert lines["seed"] == ["7", "override"] and lines["train.batch_size"] == ["16", "override"]
    # the reference: the YAML file read as plain YAML, against the dataclass defaults
    written = yaml.safe_load(open(HOPPER))
    defaults = GymConfig()
    for section, values in written.items():
        for key, value in (values.items() if isinstance(values, dict) else [(None, values)]):
            name = f"{section}.{key}" if key else section
            default = getattr(getattr(defaults, section), key) if key else getattr(defaults, section)
            if name in ("seed", "train.batch_size"):
                continue
            assert (lines[name][1] == "file") is (value != default), (name, value, default, lines[name])
    assert lines["eval.every"][1] != "file" and dataclasses.is_dataclass(defaults)


def test_relative_data_paths_are_read_from_the_current_folder_and_say_so(tmp_path, monkeypatch):
    from decision_mamba.errors import UserError
    from decision_mamba.run import REPOSITORY, check_relative_data_paths

    cfg = load_config(GymConfig, REPOSITORY / "configs/gym/quickstart.yaml")  # dataset: data/...-gen.hdf5
    monkeypatch.chdir(REPOSITORY)
    check_relative_data_paths(cfg)  # from the repository's root: found
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=rf"dataset={cfg.dataset} is read from the current folder, {tmp_path}, "
                                        rf"where it is not; .* run from {REPOSITORY}, or set dataset={REPOSITORY}"):
        check_relative_data_paths(cfg)
