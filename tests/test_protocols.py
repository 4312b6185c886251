"""Every switch of protocols.py pinned to the authors' release, each against a reference
written here from the release's code (gym/experiment.py get_batch, gym/util/trainer.py,
gym/models/decision_mamba.py with HF GPT2Model.init_weights, atari/mingpt/model_atari.py
and trainer_atari.py, DT's D4RL converter), plus the protocols and the naming scheme."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from decision_mamba import naming, protocols
from decision_mamba.config import AtariConfig, ConfigError, GymConfig, TrainConfig, load_config
from decision_mamba.data.d4rl import load_d4rl_hdf5
from decision_mamba.data.sampler import gather_windows, state_normalization
from decision_mamba.data.trajectories import Trajectories
from decision_mamba.model import DecisionModel, ModelConfig
from decision_mamba.run import best_and_last
from decision_mamba.trainer import Trainer, configure_optimizer

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ protocols
# The release's evaluation targets, copied from its gym/util/trainer.py get_env_info.
RELEASE_TARGETS = {"hopper": [1800, 3600, 7200, 36000, 72000],
                   "halfcheetah": [6000, 12000, 24000, 120000, 240000],
                   "walker2d": [2500, 5000, 10000, 50000, 100000]}


@pytest.mark.parametrize("env", sorted(RELEASE_TARGETS))
def test_release_protocol_sets_every_gym_switch_and_the_release_targets(env):
    cfg = load_config(GymConfig, REPO / "configs/gym/hopper-medium.yaml", ["protocol=release", f"env={env}"])
    assert cfg.eval.targets == [float(t) for t in RELEASE_TARGETS[env]]
    assert (cfg.model.init, cfg.train.padding, cfg.train.decay_ssm_params, cfg.drop_unterminated_tail) == \
        ("release", "release", True, True)
    assert protocols.protocol_label(cfg) == "release"
    clean = load_config(GymConfig, REPO / "configs/gym/hopper-medium.yaml", [f"env={env}"])
    assert clean.eval.targets == [3600.0]  # the config file's, untouched
    assert (clean.model.init, clean.train.padding, clean.train.decay_ssm_params, clean.drop_unterminated_tail) == \
        ("mamba", "masked", False, False)


def test_release_protocol_sets_every_atari_switch():
    cfg = load_config(AtariConfig, REPO / "configs/atari/breakout.yaml", ["protocol=release"])
    assert (cfg.model.init, cfg.model.atari_embed_ln, cfg.train.lr_clamp, cfg.train.first_update_full_lr,
            cfg.train.batch_order, cfg.eval.atari_resize, cfg.model.timestep_embedding, cfg.eval.atari_short_prefix) == \
        ("release", False, False, True, "shuffled_epoch", "linear", "global_position", "unpadded")
    assert protocols.protocol_label(cfg) == "release"
    clean = load_config(AtariConfig, REPO / "configs/atari/breakout.yaml")
    assert (clean.model.init, clean.model.atari_embed_ln, clean.train.lr_clamp, clean.train.first_update_full_lr,
            clean.train.batch_order, clean.eval.atari_resize, clean.model.timestep_embedding,
            clean.eval.atari_short_prefix) == \
        ("mamba", True, True, False, "with_replacement", "area", "per_step", "padded")


# The release's one evaluation target per game (atari/mingpt/trainer_atari.py, Trainer.train).
RELEASE_ATARI_TARGETS = {"Breakout": 90, "Qbert": 14000, "Pong": 20, "Seaquest": 1150}


@pytest.mark.parametrize("path", sorted(p.name for p in (REPO / "configs/atari").glob("*.yaml")
                                        if p.name != "quickstart.yaml"))
def test_every_atari_config_evaluates_the_release_target_of_its_game(path):
    cfg = load_config(AtariConfig, REPO / "configs/atari" / path, ["protocol=release"])
    assert cfg.eval.targets == [float(RELEASE_ATARI_TARGETS[cfg.game])]


def test_an_explicit_override_wins_over_the_protocol_and_shows_in_the_label():
    cfg = load_config(GymConfig, REPO / "configs/gym/hopper-medium.yaml", ["protocol=release", "train.padding=masked"])
    assert cfg.train.padding == "masked" and cfg.model.init == "release"
    assert protocols.protocol_label(cfg) == "release+padding=masked"
    only_init = load_config(GymConfig, REPO / "configs/gym/hopper-medium.yaml", ["model.init=release"])
    assert protocols.protocol_label(only_init) == "clean+init=release"


def test_an_unknown_protocol_is_an_error_that_names_the_choices():
    with pytest.raises(ConfigError, match="protocol must be one of clean, release"):
        load_config(GymConfig, None, ["protocol=paper"])


# ------------------------------------------------------------- initialisation
def tiny_mamba(init: str, discrete: bool = False, **kw) -> DecisionModel:
    torch.manual_seed(0)
    cfg = ModelConfig(mixer="mamba", d_model=128, n_layer=2, init=init, **kw)
    return DecisionModel(cfg, (4, 84, 84) if discrete else (11,), 4 if discrete else 3, discrete=discrete)


def _uniform_bound(module: nn.Linear | nn.Conv1d | nn.Conv2d) -> float:
    # PyTorch's default: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)), bias alike.
    fan_in = module.weight[0].numel()
    return 1.0 / math.sqrt(fan_in)


def assert_pytorch_default(module) -> None:
    bound = _uniform_bound(module)
    w = module.weight.detach()
    assert w.abs().max() <= bound and w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.15)
    if module.bias is not None:
        assert module.bias.abs().max() <= bound and module.bias.abs().max() > 0


def test_release_init_is_gpt2_init_inside_the_layers_and_pytorch_defaults_outside():
    model = tiny_mamba("release")
    d_state = model.cfg.d_state
    for layer in model.layers:
        mamba = layer.mixer
        # HF GPT2's _init_weights: every nn.Linear inside GPT2Model ~ N(0, 0.02), bias 0.
        for name in ("in_proj", "x_proj", "dt_proj", "out_proj"):
            w = getattr(mamba, name).weight.detach()
            assert w.std().item() == pytest.approx(0.02, rel=0.1) and abs(w.mean().item()) < 0.005, name
        assert torch.equal(mamba.dt_proj.bias.detach(), torch.zeros_like(mamba.dt_proj.bias))  # dt = softplus(0)
        for linear in (layer.mlp.fc, layer.mlp.proj):
            assert linear.weight.std().item() == pytest.approx(0.02, rel=0.1)
            assert torch.equal(linear.bias.detach(), torch.zeros_like(linear.bias))
        # Conv1d, A_log and D are not Linear: untouched (mamba_ssm's init).
        assert_pytorch_default(mamba.conv1d)
        assert torch.equal(mamba.A_log.detach()[0], torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)))
        assert torch.equal(mamba.D.detach(), torch.ones_like(mamba.D))
    # Outside GPT2Model: PyTorch's defaults (embedding N(0, 1), Linear uniform).
    assert model.embed_timestep.weight.std().item() == pytest.approx(1.0, rel=0.05)
    for linear in (model.embed_state, model.embed_action, model.embed_return, model.action_head[0]):
        assert_pytorch_default(linear)


def test_mamba_init_keeps_mamba_ssm_dt_and_gpt2_embeddings():
    model = tiny_mamba("mamba")
    dt = torch.nn.functional.softplus(model.layers[0].mixer.dt_proj.bias.detach())
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6  # mamba_ssm: log-uniform in [0.001, 0.1]
    assert model.embed_timestep.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_release_init_of_the_atari_model_follows_mingpt():
    model = tiny_mamba("release", discrete=True, atari_embed_ln=False)
    # minGPT's apply(_init_weights) runs before the encoder and return embedding exist.
    for conv in model.embed_state.conv:
        if isinstance(conv, nn.Conv2d):
            assert_pytorch_default(conv)
    assert_pytorch_default(model.embed_state.proj[0])
    assert_pytorch_default(model.embed_return[0])
    # the action embedding is re-drawn N(0, 0.02), the head is inside apply(); position tables start at 0
    assert model.embed_action[0].weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.action_head.weight.std().item() == pytest.approx(0.02, rel=0.15)
    assert torch.equal(model.embed_timestep.weight.detach(), torch.zeros_like(model.embed_timestep.weight))
    # no LayerNorm on the Atari tokens
    assert isinstance(model.embed_ln, nn.Identity)
    assert isinstance(tiny_mamba("release", discrete=True).embed_ln, nn.LayerNorm)


# ---------------------------------------------------------------- weight decay
def test_decay_ssm_params_puts_a_log_and_d_under_weight_decay():
    model = tiny_mamba("mamba")
    ssm = {id(p) for layer in model.layers for p in (layer.mixer.A_log, layer.mixer.D)}
    for decay, expected in ((False, set()), (True, ssm)):
        groups = configure_optimizer(model, TrainConfig(decay_ssm_params=decay)).param_groups
        decayed = {id(p) for p in groups[0]["params"]}
        assert groups[0]["weight_decay"] > 0 and ssm & decayed == expected
        # the release's gym optimizer decays every parameter
        assert (len(groups[1]["params"]) == 0) == decay


# ------------------------------------------------------------ Atari LR schedule
def release_lr_per_update(lr: float, tokens_per_step: int, steps: int, warmup: int, final: int) -> list[float]:
    """trainer_atari.py: the optimizer starts at lr; after each update tokens grow and the LR is set."""
    used, tokens, current = [], 0, lr
    for _ in range(steps):
        used.append(current)
        tokens += tokens_per_step
        if tokens < warmup:
            mult = tokens / max(1, warmup)
        else:
            progress = (tokens - warmup) / max(1, final - warmup)
            mult = max(0.1, 0.5 * (1.0 + math.cos(math.pi * progress)))
        current = lr * mult
    return used


def test_atari_lr_at_every_update_is_the_release_formula():
    B, K, N, epochs, lr = 2, 3, 12, 10, 6e-4
    steps_per_epoch = N // B
    torch.manual_seed(0)
    model = DecisionModel(ModelConfig(mixer="conv", d_model=8, n_layer=1), (2,), 2, discrete=False)
    batch = {"states": np.zeros((B, K, 2), np.float32), "actions": np.zeros((B, K, 2), np.float32),
             "returns_to_go": np.zeros((B, K, 1), np.float32), "timesteps": np.zeros((B, K), np.int64),
             "mask": np.ones((B, K), bool)}
    final, warmup = 2 * N * K * 3, B * K  # the release's final_tokens; warm-up over the first update
    cfg = TrainConfig(learning_rate=lr, lr_schedule="warmup_cosine_tokens", warmup_tokens=warmup,
                      lr_clamp=False, first_update_full_lr=True)
    trainer = Trainer(model, cfg, lambda rng: batch, np.random.default_rng(0), torch.device("cpu"), final_tokens=final)
    used = [trainer.train_step().lr for _ in range(epochs * steps_per_epoch)]
    expected = release_lr_per_update(lr, B * K, epochs * steps_per_epoch, warmup, final)
    assert used == pytest.approx(expected, rel=1e-12)
    # the LR after each epoch (the one the next epoch starts with): 0.25, 0.5, 0.75 x LR after epochs 8-10
    ends = [release_lr_per_update(lr, B * K, e * steps_per_epoch + 1, warmup, final)[-1] / lr for e in (8, 9, 10)]
    assert ends == pytest.approx([0.25, 0.5, 0.75], abs=0.03)
    # today's schedule: clamped at the floor, first update at warm-up's 0
    clamped = Trainer(model, TrainConfig(learning_rate=lr, lr_schedule="warmup_cosine_tokens", warmup_tokens=warmup),
                      lambda rng: batch, np.random.default_rng(0), torch.device("cpu"), final_tokens=final)
    ours = [clamped.train_step().lr for _ in range(epochs * steps_per_epoch)]
    assert ours[0] == 0.0 and ours[-1] == pytest.approx(0.1 * lr)


# --------------------------------------------------------------- gym padding
def release_get_batch(episodes: list[dict], draws: list[tuple[int, int]], K: int, state_mean, state_std,
                      scale: float, max_ep_len: int) -> dict[str, np.ndarray]:
    """The release's get_batch (gym/experiment.py) for given (trajectory, start) draws."""
    s, a, rtg, ts, mask = [], [], [], [], []
    state_dim, act_dim = episodes[0]["observations"].shape[1], episodes[0]["actions"].shape[1]
    for traj_index, si in draws:
        traj = episodes[traj_index]
        s_i = traj["observations"][si:si + K].reshape(1, -1, state_dim)
        a_i = traj["actions"][si:si + K].reshape(1, -1, act_dim)
        t_i = np.arange(si, si + s_i.shape[1]).reshape(1, -1)
        t_i[t_i >= max_ep_len] = max_ep_len - 1
        rewards = traj["rewards"][si:]
        r_i = np.cumsum(rewards[::-1])[::-1][:s_i.shape[1] + 1].reshape(1, -1, 1)  # discount_cumsum, gamma 1
        if r_i.shape[1] <= s_i.shape[1]:
            r_i = np.concatenate([r_i, np.zeros((1, 1, 1))], axis=1)
        tlen = s_i.shape[1]
        s_i = np.concatenate([np.zeros((1, K - tlen, state_dim)), s_i], axis=1)
        s.append((s_i - state_mean) / state_std)
        a.append(np.concatenate([np.ones((1, K - tlen, act_dim)) * -10.0, a_i], axis=1))
        rtg.append(np.concatenate([np.zeros((1, K - tlen, 1)), r_i], axis=1) / scale)
        ts.append(np.concatenate([np.zeros((1, K - tlen)), t_i], axis=1))
        mask.append(np.concatenate([np.zeros((1, K - tlen)), np.ones((1, tlen))], axis=1))
    # the trainer feeds rtg[:, :-1] to the model
    return {"states": np.concatenate(s), "actions": np.concatenate(a), "returns_to_go": np.concatenate(rtg)[:, :-1],
            "timesteps": np.concatenate(ts), "mask": np.concatenate(mask)}


def test_release_padding_gives_the_release_get_batch_for_the_same_draws():
    rng = np.random.default_rng(3)
    lengths = [7, 2, 12]
    episodes = [{"observations": rng.normal(size=(n, 4)).astype(np.float32) * 3 + 1,
                 "actions": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
                 "rewards": rng.uniform(0, 2, size=n).astype(np.float32)} for n in lengths]
    traj = Trajectories.from_episodes(episodes)
    mean, std = state_normalization(traj)
    K = 5
    # every start of every episode: windows that fit, that run past the end, of one step
    draws = [(e, si) for e, n in enumerate(lengths) for si in range(n)]
    first = np.array([traj.starts[e] + si for e, si in draws])
    end = np.minimum(first + K, np.array([traj.starts[e] + lengths[e] for e, _ in draws]))
    ours = gather_windows(traj, first, end, K, state_mean=mean, state_std=std, rtg_scale=1000.0, max_ep_len=9,
                          padding="release")
    reference = release_get_batch(episodes, draws, K, mean, std, 1000.0, max_ep_len=9)
    np.testing.assert_allclose(ours["states"], reference["states"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ours["actions"], reference["actions"])
    np.testing.assert_allclose(ours["returns_to_go"], reference["returns_to_go"], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(ours["timesteps"], reference["timesteps"])
    np.testing.assert_array_equal(ours["mask"], reference["mask"].astype(bool))
    assert (~ours["mask"]).any()  # some windows are padded, so the padding was compared


def test_release_padding_reaches_the_model_unmasked():
    torch.manual_seed(0)
    model = DecisionModel(ModelConfig(mixer="mamba", d_model=16, n_layer=1, dropout=0.0, scan_backend="reference"),
                          (3,), 2, discrete=False).eval()
    B, K = 1, 4
    mask = torch.tensor([[False, False, True, True]])
    real = dict(states=torch.randn(B, K, 3), returns_to_go=torch.randn(B, K, 1),
                timesteps=torch.arange(K)[None])
    actions_a = torch.randn(B, K, 2)
    actions_b = actions_a.clone()
    actions_b[~mask] = -10.0  # only the pads differ
    with torch.no_grad():
        same = [model(actions=a, mask=mask, **real)[:, -1] for a in (actions_a, actions_b)]
        model.zero_padded_tokens = False  # train.padding=release
        differ = [model(actions=a, mask=mask, **real)[:, -1] for a in (actions_a, actions_b)]
    torch.testing.assert_close(same[0], same[1])
    assert not torch.allclose(differ[0], differ[1])


# ------------------------------------------------------- D4RL unterminated tail
def test_drop_unterminated_tail_matches_the_d4rl_converter(tmp_path):
    rng = np.random.default_rng(0)
    n = 20
    terminals = np.zeros(n, bool)
    timeouts = np.zeros(n, bool)
    terminals[[4, 9]] = True
    timeouts[14] = True  # steps 15..19 end with no flag
    arrays = {"observations": rng.normal(size=(n, 3)).astype(np.float32),
              "actions": rng.normal(size=(n, 2)).astype(np.float32),
              "rewards": rng.normal(size=n).astype(np.float32), "terminals": terminals, "timeouts": timeouts}
    path = tmp_path / "tail.hdf5"
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f[key] = value
    # DT's download_d4rl_datasets.py: an episode is saved when its last step is flagged.
    saved, current = [], []
    for i in range(n):
        current.append(i)
        if terminals[i] or timeouts[i]:
            saved.append(current)
            current = []
    kept, _ = load_d4rl_hdf5(path)
    dropped, _ = load_d4rl_hdf5(path, drop_unterminated_tail=True)
    assert list(dropped.lengths) == [len(e) for e in saved]
    np.testing.assert_array_equal(dropped.observations, arrays["observations"][:15])
    assert list(kept.lengths) == [len(e) for e in saved] + [5]  # ours keeps it


# ------------------------------------------------------------- score selection
def test_the_reported_score_is_the_best_target_and_the_best_evaluation():
    def evaluation(scores: dict[str, float]) -> dict:
        return {t: {"return_mean": 0.0, "return_std": 0.0, "length_mean": 0.0, "score_mean": s, "score_std": 0.0}
                for t, s in scores.items()}
    records = [{"iteration": 1, "step": 10, "eval": evaluation({"1800": 40.0, "3600": 55.0, "72000": 12.0})},
               {"iteration": 2, "step": 20, "eval": evaluation({"1800": 61.0, "3600": 50.0, "72000": 20.0})},
               {"iteration": 3, "step": 30, "eval": evaluation({"1800": 30.0, "3600": 44.0, "72000": 45.0})}]
    summary = best_and_last(records)
    # the release logs every target and the paper reports the best: max over targets, then over evaluations
    assert summary["best"]["score"] == 61.0 and summary["best"]["iteration"] == 2
    assert summary["last"]["score"] == 45.0


# ------------------------------------------------------------ Atari batch order
def load_train_atari():
    spec = importlib.util.spec_from_file_location("train_atari", REPO / "atari" / "train_atari.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shuffled_epoch_visits_every_release_start_once_per_epoch():
    lengths = [9, 3, 14, 6]
    n = sum(lengths)
    episodes = [{"observations": np.arange(s, s + k, dtype=np.float32)[:, None],
                 "actions": np.zeros(k, np.int64), "rewards": np.ones(k, np.float32)}
                for s, k in zip(np.cumsum([0] + lengths[:-1]), lengths)]
    traj = Trajectories.from_episodes(episodes)
    cfg = load_config(AtariConfig, None, ["train.context_len=2", "train.batch_size=4", "seed=5"])
    step = {"value": 0}
    draw, steps_per_epoch = load_train_atari().shuffled_epoch_sampler(traj, cfg, lambda: step["value"])
    num_starts = n - 3 * 2  # the release's len(dataset) = len(data) - block_size, block_size = 3K
    assert steps_per_epoch == math.ceil(num_starts / 4)
    epochs = []
    for epoch in range(2):
        seen = []
        for i in range(steps_per_epoch):
            step["value"] = epoch * steps_per_epoch + i
            batch = draw(np.random.default_rng(0))
            seen.append(len(batch["mask"]))
            # the window's last real state is its anchor's, or its episode's last (dt-atari)
            epochs.append(batch["states"][:, -1, 0])
        assert seen == [4] * (steps_per_epoch - 1) + [num_starts - 4 * (steps_per_epoch - 1)]  # last batch smaller
    first, second = np.concatenate(epochs[:steps_per_epoch]), np.concatenate(epochs[steps_per_epoch:])
    assert len(first) == num_starts and sorted(first) == sorted(second) and not np.array_equal(first, second)


def test_release_atari_lr_at_every_epoch_boundary_through_the_training_wiring():
    """train_atari.py's own wiring (epoch_schedule: shuffled epochs, final_tokens) under
    protocol=release against trainer_atari.py's loop: DataLoader batches of B over the
    len(data) - 3K starts (the last one smaller), tokens += (y >= 0).sum() = batch * K after
    each update, the LR set after it, the first update at the optimizer's full LR."""
    lengths, K, B, lr, epochs = [11, 9, 14, 8], 2, 4, 6e-4, 10
    n = sum(lengths)
    episodes = [{"observations": np.zeros((k, 1), np.float32), "actions": np.zeros(k, np.int64),
                 "rewards": np.ones(k, np.float32)} for k in lengths]
    traj = Trajectories.from_episodes(episodes)
    cfg = load_config(AtariConfig, None, ["protocol=release", f"train.context_len={K}", f"train.batch_size={B}",
                                          "train.warmup_tokens=16", f"train.learning_rate={lr}"])
    torch.manual_seed(0)
    model = DecisionModel(ModelConfig(mixer="conv", d_model=8, n_layer=1), (1,), 2, discrete=True)
    draw, steps_per_epoch, final_tokens = load_train_atari().epoch_schedule(traj, cfg, lambda: trainer.step)
    trainer = Trainer(model, cfg.train, draw, np.random.default_rng(0), torch.device("cpu"), final_tokens=final_tokens)
    used = [trainer.train_step().lr for _ in range(epochs * steps_per_epoch)]

    dataset_len = n - 3 * K  # StateActionReturnDataset.__len__
    assert final_tokens == 2 * dataset_len * K * 3  # train_atari.py's final_tokens
    batches = [B] * (dataset_len // B) + ([dataset_len % B] if dataset_len % B else [])
    expected, tokens, current = [], 0, lr
    for _ in range(epochs):
        for size in batches:
            expected.append(current)
            tokens += size * K
            if tokens < 16:
                mult = tokens / 16
            else:
                mult = max(0.1, 0.5 * (1.0 + math.cos(math.pi * (tokens - 16) / max(1, final_tokens - 16))))
            current = lr * mult
    assert steps_per_epoch == len(batches) and len(used) == len(expected)
    boundaries = [e * len(batches) for e in range(epochs)]  # the first update of every epoch
    assert [used[i] for i in boundaries] == pytest.approx([expected[i] for i in boundaries], rel=1e-12)
    assert used == pytest.approx(expected, rel=1e-12)


def documented_switch_rows() -> dict[str, list[str]]:
    """docs/protocol.md, "The switches": {config key: its row's cells}."""
    text = (REPO / "docs" / "protocol.md").read_text()
    section = text[text.index("## The switches"):]
    section = section[:section.index("\n## ", 1)]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].split("`")[1]] = cells
    return rows


def test_the_protocol_page_has_one_row_per_switch_with_the_release_value():
    rows = documented_switch_rows()
    switches = {**protocols.GYM_SWITCHES, **protocols.ATARI_SWITCHES}
    assert set(rows) == {"protocol", *switches}  # no switch missing, none the code does not have
    for key, (clean, release, _) in switches.items():
        release_cell, ours_cell = rows[key][1], rows[key][2]
        if key == "eval.targets":
            for env, targets in protocols.RELEASE_GYM_TARGETS.items():
                assert f"{env} " + " ".join(f"{t:g}" for t in targets) in release_cell
        else:
            assert release_cell.startswith(f"`{release}`" if isinstance(release, str) else str(release).lower()), key
            assert ours_cell.startswith(f"`{clean}`" if isinstance(clean, str) else str(clean).lower()), key


def keys_the_yaml_says_the_protocol_sets(path: Path) -> dict[str, list[str]]:
    """The table YAML's header comment: {protocol: the keys it lists}."""
    listed: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("#   protocol="):
            current = line.removeprefix("#   protocol=").split(" ", 1)[0]
            listed[current] = []
        elif line.startswith("#     ") and current:
            listed[current] += line.removeprefix("#").split()
    return listed


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for folder in ("gym", "atari")
                                        for p in (REPO / "configs" / folder).glob("*.yaml")))
def test_every_table_yaml_names_the_keys_each_protocol_sets_over_it(path):
    schema = AtariConfig if path.startswith("configs/atari/") else GymConfig
    kind = "atari" if schema is AtariConfig else "gym"
    listed = keys_the_yaml_says_the_protocol_sets(REPO / path)
    assert set(listed) == set(protocols.PROTOCOLS), f"{path}: its header must list the keys of each protocol"
    for protocol in protocols.PROTOCOLS:
        cfg = load_config(schema, REPO / path, [f"protocol={protocol}"])
        env = cfg.game.lower() if kind == "atari" else cfg.env
        expected = protocols.values(protocol, kind, env)
        assert listed[protocol] == list(expected), f"{path}: protocol={protocol}"
        for key, value in expected.items():  # and the loaded config holds the protocol's value, not the file's
            loaded = protocols._lookup(cfg, key)
            assert (list(loaded) if isinstance(value, list) else loaded) == value, (path, key)


# -------------------------------------------------------------------- naming
def test_one_naming_scheme_for_hand_runs_and_sweeps():
    from decision_mamba import sweep

    cfg = load_config(GymConfig, REPO / "configs/gym/hopper-medium.yaml",
                      ["dataset=data/hopper-medium-v4-gen.hdf5", "model.init=release"])
    assert naming.dataset_name(cfg) == "hopper-medium-v4-gen"  # not hopper-hopper-medium-v4-gen
    assert naming.run_name(cfg) == "hopper-medium-v4-gen-dmamba-clean+init=release-s12"
    assert naming.run_group(cfg) == "hand/hopper-medium-v4-gen/dmamba/clean+init=release"
    assert naming.run_tags(cfg) == ["data:file", "protocol:clean+init=release", "generated"]
    d4rl = load_config(GymConfig, REPO / "configs/gym/hopper-medium.yaml", ["protocol=release"])
    assert naming.run_group(d4rl, table=1) == "table1/hopper-medium/dmamba/release"
    assert naming.run_tags(d4rl) == ["data:d4rl", "protocol:release"]
    # the sweep names its runs with the same functions
    [run] = sweep.table_runs(1, datasets=["hopper-medium"], models=["dmamba"], seeds=[12], protocol="clean",
                             overrides=["dataset=data/hopper-medium-v4-gen.hdf5", "model.init=release"])
    assert run.name == naming.run_name(cfg) and run.group == naming.run_group(cfg, table=1)


@pytest.mark.parametrize("table", [2, 4])
def test_the_atari_table_runs_default_to_every_release_switch(table):
    from decision_mamba import sweep

    runs = sweep.table_runs(table, seeds=[123])  # --protocol defaults to release
    assert runs and all(run.name.endswith("-release-s123") and run.group.endswith("/release") for run in runs)
    for run in runs:
        cfg = load_config(AtariConfig, REPO / run.config, list(run.overrides))
        assert protocols.values("release", "atari") == {key: protocols._lookup(cfg, key)
                                                        for key in protocols.ATARI_SWITCHES}, run.name


# ----------------------------------------------------------------- aggregator
def test_the_aggregator_never_averages_two_protocols_in_one_cell(tmp_path):
    import csv

    from decision_mamba import aggregate
    from decision_mamba.config import to_yaml
    from helpers import write_run_folder

    scores = {}
    for protocol, extra, seed, score in (("release", [], 12, 80.0), ("release", [], 23, 70.0),
                                         ("clean", [], 12, 40.0), ("clean", ["model.init=release"], 12, 10.0)):
        cfg = load_config(GymConfig, REPO / "configs/gym/hopper-medium.yaml",
                          [f"protocol={protocol}", f"seed={seed}", *extra])
        cfg.run.wandb_group = naming.run_group(cfg, table=1)
        write_run_folder(tmp_path / "runs" / naming.run_name(cfg), to_yaml(cfg), [{"3600": {"score_mean": score}}])
        scores.setdefault(protocols.protocol_label(cfg), []).append(score)
    prefix = tmp_path / "t1"
    assert aggregate.main([str(tmp_path / "runs"), "--table", "1", "--out", str(prefix)]) == 0
    rows = {r["protocol"]: r for r in csv.DictReader(open(f"{prefix}.csv"))
            if r["dataset"] == "hopper-medium" and r["model"] == "dmamba" and r["seed"] == ""}
    assert set(rows) == {"release", "clean", "clean+init=release"}
    for label, values in scores.items():
        assert float(rows[label]["last_mean"]) == pytest.approx(np.mean(values))
        assert int(rows[label]["seeds_done"]) == len(values)
    assert "| hopper-medium | DMamba | clean+init=release |" in Path(f"{prefix}.md").read_text()


# ------------------------------------------------------------ Atari resize
def test_atari_resize_linear_is_cv2_inter_linear_of_the_pooled_screen():
    import cv2
    from gymnasium.wrappers import AtariPreprocessing

    from decision_mamba.envs import make_atari_env

    frames = {}
    for resize in ("area", "linear"):
        env = make_atari_env("Breakout", seed=0, resize=resize)
        obs, _ = env.reset()
        for _ in range(3):
            obs, *_ = env.step(1)  # FIRE, then the ball moves: a screen with detail
        wrapper = env
        while not isinstance(wrapper, AtariPreprocessing):
            wrapper = wrapper.env
        pooled = wrapper.obs_buffer[0]  # (210, 160) max of the last two frames
        interpolation = cv2.INTER_LINEAR if resize == "linear" else cv2.INTER_AREA
        np.testing.assert_array_equal(obs[-1], cv2.resize(pooled, (84, 84), interpolation=interpolation))
        frames[resize] = obs[-1]
        env.close()
    assert not np.array_equal(frames["area"], frames["linear"])


# ------------------------------------------- Atari timestep embedding, short prefixes
def global_position_model(mixer: str = "mamba", K: int = 4, seed: int = 0, **kw) -> DecisionModel:
    """A small discrete model with the release's Atari embedding; vector states keep it fast
    (the frame encoder is not what is tested). Random position tables, not the release's
    zeros, so that a wrong index shows."""
    torch.manual_seed(seed)
    cfg = ModelConfig(mixer=mixer, d_model=16, n_layer=2, n_head=2, dropout=0.0, max_ep_len=50,
                      scan_backend="reference", atari_embed_ln=False, timestep_embedding="global_position", **kw)
    model = DecisionModel(cfg, (4,), 2, discrete=True, context_len=K).eval()
    with torch.no_grad():
        model.embed_timestep.weight.normal_()
        model.embed_position.weight.normal_()
    return model


def release_tokens(model: DecisionModel, states, actions, rtgs, timestep: int) -> torch.Tensor:
    """model_atari.py's stem for one sequence: T states, rtgs and T actions (training, 3T
    tokens) or T - 1 actions (evaluation, 3T - 1 tokens); the global table is gathered at one
    `timestep` for the whole sequence, the position table at the token index; no LayerNorm."""
    T = states.shape[0]
    n = 3 * T - (1 if actions.shape[0] == T - 1 else 0)
    tokens = torch.zeros(n, model.cfg.d_model)
    tokens[0::3] = model.embed_return(rtgs)  # ret_emb
    tokens[1::3] = model.embed_state(states)  # state_encoder
    if actions.shape[0] > 0:
        tokens[2::3] = model.embed_action(actions)  # action_embeddings
    position = model.embed_timestep.weight[timestep][None] + model.embed_position.weight[:n]  # global + pos_emb
    return tokens + position


def layer_input(model: DecisionModel, *args, **kwargs) -> torch.Tensor:
    """What our forward hands the first layer: the embedded, interleaved tokens (B, 3K, d)."""
    seen = []
    handle = model.layers[0].register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    with torch.no_grad():
        model(*args, **kwargs)
    handle.remove()
    return seen[0]


def test_global_position_embedding_is_the_release_stem():
    model = global_position_model(K=4)
    B, K = 3, 4
    g = torch.Generator().manual_seed(1)
    states, rtg = torch.randn(B, K, 4, generator=g), torch.randn(B, K, 1, generator=g)
    actions = torch.randint(0, 2, (B, K), generator=g)
    timesteps = torch.tensor([[0, 1, 2, 3], [7, 8, 9, 10], [40, 41, 42, 43]])
    ours = layer_input(model, states, actions, rtg, timesteps)
    with torch.no_grad():
        for b in range(B):
            # training: the dataset's timesteps[idx:idx + 1], the window's first step
            reference = release_tokens(model, states[b], actions[b], rtg[b], int(timesteps[b, 0]))
            torch.testing.assert_close(ours[b], reference, rtol=0, atol=1e-6)
    # evaluation: the current (last) step's global embedding, every token of the window
    current = layer_input(model, states, actions, rtg, timesteps, global_timestep=timesteps[:, -1])
    with torch.no_grad():
        reference = release_tokens(model, states[2], actions[2, :-1], rtg[2], 43)
    torch.testing.assert_close(current[2, :3 * K - 1], reference, rtol=0, atol=1e-6)
    # a left-padded window (an episode shorter than K) embeds its real steps as the same steps unpadded
    mask = torch.tensor([[False, False, True, True]] * B)
    padded = layer_input(model, states, actions, rtg, timesteps, mask)
    alone = layer_input(model, states[:, 2:], actions[:, 2:], rtg[:, 2:], timesteps[:, 2:])
    torch.testing.assert_close(padded[:, 6:], alone, rtol=0, atol=1e-6)
    assert torch.equal(padded[:, :6], torch.zeros_like(padded[:, :6]))  # masked: pads zeroed


def test_per_step_embedding_is_one_table_row_per_timestep():
    torch.manual_seed(0)
    model = DecisionModel(ModelConfig(mixer="mamba", d_model=16, n_layer=1, dropout=0.0, max_ep_len=50,
                                      atari_embed_ln=False), (4,), 2, discrete=True).eval()
    states, rtg, actions = torch.randn(1, 3, 4), torch.randn(1, 3, 1), torch.tensor([[1, 0, 1]])
    timesteps = torch.tensor([[5, 6, 7]])
    ours = layer_input(model, states, actions, rtg, timesteps)[0]
    with torch.no_grad():
        emb = [model.embed_return(rtg[0]), model.embed_state(states[0]), model.embed_action(actions[0])]
        reference = torch.stack(emb, dim=1) + model.embed_timestep.weight[timesteps[0]][:, None]
    torch.testing.assert_close(ours, reference.reshape(9, -1), rtol=0, atol=1e-6)
    assert model.embed_position is None and "embed_position.weight" not in model.state_dict()


def test_global_position_state_dict_keys_and_release_init():
    model = global_position_model(K=5)
    keys = model.state_dict()
    assert tuple(keys["embed_position.weight"].shape) == (15, 16)  # 3K tokens
    assert tuple(keys["embed_timestep.weight"].shape) == (50, 16)  # the global table
    # a checkpoint of the other embedding does not load silently
    per_step = DecisionModel(ModelConfig(mixer="mamba", d_model=16, n_layer=2, max_ep_len=50), (4,), 2, discrete=True)
    with pytest.raises(RuntimeError, match="embed_position"):
        per_step.load_state_dict(keys)
    # minGPT: pos_emb and global_pos_emb are nn.Parameter(torch.zeros(...)), untouched by _init_weights
    release = DecisionModel(ModelConfig(mixer="mamba", d_model=16, n_layer=1, init="release",
                                        timestep_embedding="global_position"), (4,), 2, discrete=True, context_len=5)
    assert torch.equal(release.embed_position.weight, torch.zeros(15, 16))
    assert torch.equal(release.embed_timestep.weight, torch.zeros_like(release.embed_timestep.weight))
    with pytest.raises(ValueError, match="context length"):
        DecisionModel(ModelConfig(timestep_embedding="global_position"), (4,), 2, discrete=True)
    with pytest.raises(ValueError, match="longer than the position table"):
        model(torch.zeros(1, 6, 4), torch.zeros(1, 6, dtype=torch.int64), torch.zeros(1, 6, 1),
              torch.zeros(1, 6, dtype=torch.int64))


def test_the_recurrent_step_refuses_the_global_position_embedding():
    from decision_mamba.errors import UserError

    with pytest.raises(ConfigError, match="eval.mode=recurrent cannot run model.timestep_embedding=global_position"):
        load_config(AtariConfig, REPO / "configs/atari/breakout.yaml", ["protocol=release", "eval.mode=recurrent"])
    load_config(AtariConfig, REPO / "configs/atari/breakout.yaml", ["protocol=release",
                                                                    "model.timestep_embedding=per_step",
                                                                    "eval.mode=recurrent"])  # fine
    model = global_position_model()
    with pytest.raises(UserError, match="use eval.mode=window"):
        model.step(torch.zeros(1, 4), torch.zeros(1, 1), torch.zeros(1, dtype=torch.int64), None, model.init_state(1))
    for key in ("model.timestep_embedding=global_position", "eval.atari_short_prefix=unpadded"):
        with pytest.raises(ConfigError, match="Atari release's"):
            load_config(GymConfig, REPO / "configs/gym/hopper-medium.yaml", [key])


class LogitRecorder(nn.Module):
    """Wraps a model; keeps the logits the evaluation acted on at each step."""

    def __init__(self, model: DecisionModel):
        super().__init__()
        self.model = model
        self.cfg, self.discrete, self.act_dim = model.cfg, model.discrete, model.act_dim
        self.embed_position = model.embed_position
        self.logits = []

    def forward(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        self.logits.append(out[:, -1].clone())
        return out


def release_episode_logits(model: DecisionModel, seed: int, target: float, K: int, max_steps: int) -> list:
    """trainer_atari.py get_returns + utils.sample for one episode, greedy: the states, rtgs and
    actions so far, cropped to the last K (actions: K - 1 of them, the stem drops the rest),
    unpadded while t < K, the global embedding of the current step j; logits of the last state."""
    import gymnasium as gym

    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=seed)
    states, actions, rtgs, logits = [], [], [target], []
    with torch.no_grad():
        for j in range(max_steps):
            states.append(torch.as_tensor(obs, dtype=torch.float32))
            T = min(len(states), K)
            x = release_tokens(model, torch.stack(states[-T:]), torch.tensor(actions[len(actions) - (T - 1):],
                               dtype=torch.int64), torch.tensor(rtgs[-T:], dtype=torch.float32)[:, None],
                               min(j, model.cfg.max_ep_len - 1))[None]
            for layer in model.layers:
                x = layer(x)
            step_logits = model.action_head(model.ln_f(x))[0, -1]  # the last token is the last state's
            logits.append(step_logits)
            action = int(step_logits.argmax())
            obs, reward, terminated, truncated, _ = env.step(action)
            actions.append(action)
            rtgs.append(rtgs[-1] - reward)
            if terminated or truncated:
                break
    env.close()
    return logits


@pytest.mark.parametrize("mixer", ["mamba", "attention"])
def test_unpadded_short_prefix_is_the_release_evaluation(mixer):
    import gymnasium as gym

    from decision_mamba.evaluation import evaluate_batched

    K, max_steps, targets, seed = 4, 12, np.array([20.0, 5.0]), 3
    model = global_position_model(mixer, K=K, init="release")
    if mixer == "mamba":  # weights big enough for the pads' trace in Mamba's state to show (~1e-5 at init)
        with torch.no_grad():
            for layer in model.layers:
                layer.mixer.conv1d.bias.normal_(0, 2)
                layer.mixer.x_proj.weight.normal_(0, 0.3)
    results = {}
    for prefix in ("unpadded", "padded"):
        recorder = LogitRecorder(model)
        envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * len(targets),
                                        autoreset_mode=gym.vector.AutoresetMode.DISABLED)
        stats = evaluate_batched(recorder, envs, targets, context_len=K, rtg_scale=1.0, max_ep_len=max_steps,
                                 seed=seed, short_prefix=prefix)
        envs.close()
        results[prefix] = (torch.stack(recorder.logits), stats)  # (steps, E, n_actions)
    for i, target in enumerate(targets):
        reference = torch.stack(release_episode_logits(model, seed + i, float(target), K, max_steps))
        ours, stats = results["unpadded"]
        assert stats.lengths[i] == len(reference) and stats.lengths[i] > K  # full windows reached too
        torch.testing.assert_close(ours[:len(reference), i], reference, rtol=1e-5, atol=1e-6)
        # today's padded prefixes: the same from t = K - 1 on (full windows); before, attention
        # masks the pads and Mamba sees them (their embeddings are zero, its conv bias is not)
        padded = results["padded"][0][:len(reference), i]
        torch.testing.assert_close(padded[K - 1:], reference[K - 1:], rtol=1e-5, atol=1e-6)
        if mixer == "mamba":
            assert (padded[1:K - 1] - reference[1:K - 1]).abs().max() > 1e-5
