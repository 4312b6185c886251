"""Configs: the YAML files hold the paper's settings; bad keys and values are named."""

from pathlib import Path

import pytest

from decision_mamba.config import AtariConfig, ConfigError, GymConfig, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# Table 5 of the paper (docs/protocol.md): (d_model, learning rate) per dataset.
TABLE5 = {
    "hopper-medium": (256, 1e-4), "hopper-medium-replay": (256, 1e-4), "hopper-medium-expert": (128, 1e-3),
    "halfcheetah-medium": (128, 1e-3), "halfcheetah-medium-replay": (128, 1e-3),
    "halfcheetah-medium-expert": (128, 1e-3), "walker2d-medium": (128, 1e-4),
    "walker2d-medium-replay": (128, 1e-3), "walker2d-medium-expert": (128, 1e-3),
}
TARGETS = {"hopper": 3600, "halfcheetah": 6000, "walker2d": 5000}
ATARI = {"breakout": (90, 30), "qbert": (14000, 30), "pong": (20, 50), "seaquest": (1150, 30)}


@pytest.mark.parametrize("name", sorted(TABLE5))
def test_gym_configs_hold_table5(name):
    cfg = load_config(GymConfig, CONFIGS / "gym" / f"{name}.yaml")
    d_model, lr = TABLE5[name]
    assert (cfg.model.d_model, cfg.train.learning_rate) == (d_model, lr)
    assert cfg.env + "-" + cfg.dataset == name
    assert cfg.model.n_layer == 3 and cfg.train.batch_size == 64 and cfg.train.context_len == 20
    assert cfg.train.grad_clip == 0.25 and cfg.train.weight_decay == 1e-4 and cfg.train.warmup_steps == 10_000
    assert cfg.train.num_iterations * cfg.train.steps_per_iteration == 100_000
    assert cfg.eval.targets == [TARGETS[cfg.env]] and cfg.train.rtg_scale == 1000
    assert cfg.model.mixer == "mamba" and (cfg.model.d_state, cfg.model.d_conv, cfg.model.expand) == (16, 4, 2)


@pytest.mark.parametrize("game", sorted(ATARI))
def test_atari_configs_hold_table6(game):
    cfg = load_config(AtariConfig, CONFIGS / "atari" / f"{game}.yaml")
    target, K = ATARI[game]
    assert cfg.eval.targets == [target] and cfg.train.context_len == K
    assert (cfg.model.n_layer, cfg.model.d_model, cfg.train.batch_size) == (6, 128, 256)
    assert cfg.train.learning_rate == 6e-4 and tuple(cfg.train.betas) == (0.9, 0.95)
    assert cfg.train.grad_clip == 1.0 and cfg.train.weight_decay == 0.1 and cfg.train.decay_matmul_weights_only
    assert cfg.train.lr_schedule == "warmup_cosine_tokens" and cfg.train.warmup_tokens == 512 * 20
    assert cfg.eval.sample_actions and cfg.num_steps == 500_000


def test_overrides_reach_nested_keys():
    cfg = load_config(GymConfig, CONFIGS / "gym" / "hopper-medium.yaml",
                      ["model.mixer=attention", "train.batch_size=8", "seed=23", "eval.targets=[1800,3600]"])
    assert cfg.model.mixer == "attention" and cfg.train.batch_size == 8 and cfg.seed == 23
    assert cfg.eval.targets == [1800.0, 3600.0]


def test_unknown_keys_are_errors_that_name_them(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: hopper\ntrain:\n  learnin_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(GymConfig, bad)
    assert str(err.value) == f"invalid config ({bad}): unknown key train.learnin_rate; did you mean train.learning_rate?"
    # from the overrides, over a good file: the overrides are named, not the file
    with pytest.raises(ConfigError) as err:
        load_config(GymConfig, CONFIGS / "gym" / "hopper-medium.yaml", ["train.batchsize=3"])
    assert str(err.value) == "invalid config (key=value overrides): unknown key train.batchsize; did you mean train.batch_size?"
    with pytest.raises(ConfigError) as err:
        load_config(GymConfig, None, ["modle.d_model=3"])
    assert str(err.value) == "invalid config (key=value overrides): unknown key modle; did you mean model?"
    with pytest.raises(ConfigError) as err:  # nothing close: the section's keys
        load_config(GymConfig, None, ["model.zzz=1"])
    assert str(err.value).startswith("invalid config (key=value overrides): unknown key model.zzz; the keys of model are: "
                                     "mixer, d_model, n_layer, ")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(GymConfig, None, ["train.batch_size"])


def test_a_file_that_is_not_yaml_is_named_in_one_line(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("train: [\n")
    with pytest.raises(ConfigError) as err:
        load_config(GymConfig, bad)
    assert str(err.value).startswith(f"invalid config ({bad}): ParserError: ") and "\n" not in str(err.value)


def test_wrong_types_and_values_are_errors():
    with pytest.raises(ConfigError) as err:
        load_config(GymConfig, None, ["train.batch_size=many"])
    assert str(err.value) == ("invalid config (key=value overrides): train.batch_size: Value 'many' of type 'str' "
                              f"could not be converted to Integer; expected a value like its default, {GymConfig().train.batch_size}")
    with pytest.raises(ConfigError, match="eval.mode"):
        load_config(GymConfig, None, ["eval.mode=greedy"])
    with pytest.raises(ConfigError, match="divisible"):
        load_config(GymConfig, None, ["model.n_head=3"])
    with pytest.raises(ConfigError, match="env must be"):
        load_config(GymConfig, None, ["env=ant"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(GymConfig, "configs/gym/nope.yaml")


def test_importing_the_config_loads_no_torch_numba_or_gymnasium():
    """The config is a leaf: reading a YAML file needs none of the heavy libraries."""
    import subprocess
    import sys

    program = ("import sys; from decision_mamba.config import GymConfig, load_config; "
               "load_config(GymConfig, 'configs/gym/hopper-medium.yaml'); "
               "print(sorted(m for m in ('torch', 'numba', 'gymnasium') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"
