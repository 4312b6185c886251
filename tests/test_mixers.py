"""Tests of the token mixers (decision_mamba/mixers.py) and their table, MIXERS.

The mixer contract (causality, forward = successive steps, overfitting a batch, bad input)
runs over every registered mixer and over a tiny fifth one that this file registers, and
trains through gym/experiment.py. DT, DC and DS4 are also checked against independent,
slow and obvious references: a hand-written softmax attention, a per-position loop for the
token-type convolution, a Python-loop recurrence (and a numerically integrated ODE) for the
S4D kernel; Mamba's are in test_mamba.py.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from decision_mamba.config import GymConfig, load_config
from decision_mamba.errors import UserError
from decision_mamba.mixer_checks import check_padding_mask, check_sequence, check_state, check_token
from decision_mamba.mixers import MIXERS, CausalSelfAttention, Mixer, S4DMixer, TokenTypeConv, build_mixer
from decision_mamba.model import DecisionModel, ModelConfig

from helpers import roll_random_hopper, write_episodes_d4rl

REPO = Path(__file__).resolve().parents[1]
D_MODEL = 16


# --------------------------------------------------------------------------- a fifth mixer


class DecayingSum(nn.Module):
    """The tiny extra mixer: h_t = a * h_{t-1} + W_in x_t per channel, y_t = W_out gelu(h_t).

    Written as a new mixer would be: the shared input checks, the token-mixer interface
    (forward, init_state, step), and one MIXERS entry (EXTRA below) make it usable
    everywhere: configs, the model, recurrent evaluation, run names and reports.
    """

    def __init__(self, d_model: int, dropout: float = 0.0):
        super().__init__()
        self.d_model = d_model
        self.in_proj = nn.Linear(d_model, 2 * d_model)
        self.decay_logit = nn.Parameter(torch.linspace(-2.0, 2.0, 2 * d_model))  # a = sigmoid(logit)
        self.out_proj = nn.Linear(2 * d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, key_padding_mask=None):
        check_sequence(x, self.d_model, "DecayingSum")
        check_padding_mask(key_padding_mask, x, "DecayingSum")
        u, a = self.in_proj(x), torch.sigmoid(self.decay_logit)  # (B, L, 2d), (2d,)
        h, hs = torch.zeros_like(u[:, 0]), []
        for t in range(x.shape[1]):
            h = a * h + u[:, t]
            hs.append(h)
        return self.dropout(self.out_proj(F.gelu(torch.stack(hs, dim=1))))

    def init_state(self, batch_size, device=None, dtype=None):
        weight = self.in_proj.weight
        return (torch.zeros(batch_size, 2 * self.d_model, device=device or weight.device, dtype=dtype or weight.dtype),)

    def step(self, x, state):
        check_token(x, self.d_model, "DecayingSum")
        check_state(state, [("h", (x.shape[0], 2 * self.d_model))], "DecayingSum")
        h = torch.sigmoid(self.decay_logit) * state[0] + self.in_proj(x)
        return self.dropout(self.out_proj(F.gelu(h))), (h,)


# The one place the extra mixer is registered: its MIXERS entry, installed for every test of
# this file (and removed after each) by the autouse fixture below.
EXTRA_NAME, EXTRA = "decay", Mixer(lambda c: DecayingSum(c.d_model, dropout=c.dropout))
CONTRACT_MIXERS = [*MIXERS, EXTRA_NAME]  # every mixer of the table, and the extra one


@pytest.fixture(autouse=True)
def extra_mixer_registered(monkeypatch):
    monkeypatch.setitem(MIXERS, EXTRA_NAME, EXTRA)


def make_mixer(name: str, dropout: float = 0.1, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.nn.Module:
    """A small mixer built from its table entry, in eval mode (dropout > 0 by default, so
    eval() must switch it off)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(mixer=name, d_model=D_MODEL, n_head=4, conv_window=6, s4_d_state=8, d_state=8, dropout=dropout)
    return build_mixer(cfg).to(dtype).eval()


def run_steps(mixer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Feed x (B, L, D) one token at a time through step(), return (B, L, D)."""
    state = mixer.init_state(x.shape[0], dtype=x.dtype)
    outputs = []
    for t in range(x.shape[1]):
        y, state = mixer.step(x[:, t], state)
        outputs.append(y)
    return torch.stack(outputs, dim=1)


# --------------------------------------------------------------------------- the contract, every mixer


@pytest.mark.parametrize("name", CONTRACT_MIXERS)
def test_causal_future_tokens_do_not_change_past_outputs(name):
    mixer = make_mixer(name)
    torch.manual_seed(1)
    x = torch.randn(2, 15, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        y = mixer(x)
        for t in [0, 4, 7, 13]:
            perturbed = x.clone()
            perturbed[:, t + 1:] += torch.randn_like(perturbed[:, t + 1:])
            y_perturbed = mixer(perturbed)
            torch.testing.assert_close(y_perturbed[:, : t + 1], y[:, : t + 1], rtol=0, atol=1e-12)
            # ...while the perturbed positions themselves do change (the test can see changes).
            assert (y_perturbed[:, t + 1] - y[:, t + 1]).abs().max() > 1e-3


@pytest.mark.parametrize("name", CONTRACT_MIXERS)
def test_forward_equals_successive_steps(name):
    mixer = make_mixer(name)
    torch.manual_seed(2)
    x = torch.randn(3, 17, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(run_steps(mixer, x), mixer(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", CONTRACT_MIXERS)
def test_step_does_not_mutate_the_input_state(name):
    mixer = make_mixer(name)
    x = torch.randn(2, 3, D_MODEL, dtype=torch.float64)
    state = mixer.init_state(2, dtype=torch.float64)
    with torch.no_grad():
        for t in range(3):
            before = tuple(s.clone() for s in state)
            _, new_state = mixer.step(x[:, t], state)
            for old, kept in zip(state, before):
                assert torch.equal(old, kept)
            assert all(new is not old for new, old in zip(new_state, state))
            state = new_state


@pytest.mark.parametrize("name", CONTRACT_MIXERS)
def test_overfits_a_tiny_fixed_batch(name):
    """Mixer + linear readout fit a fixed random batch: the loss falls at least 100-fold."""
    mixer = make_mixer(name, dropout=0.0, dtype=torch.float32, seed=3).train()
    readout = torch.nn.Linear(D_MODEL, 2)
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 9, D_MODEL, generator=generator)
    target = torch.randn(2, 9, 2, generator=generator)
    params = list(mixer.parameters()) + list(readout.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(300):
        loss = F.mse_loss(readout(mixer(x)), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 100, f"{name}: loss {losses[0]:.4f} -> {losses[-1]:.6f}"


@pytest.mark.parametrize("name", CONTRACT_MIXERS)
def test_bad_inputs_name_the_expected_shape(name):
    mixer = make_mixer(name)
    with pytest.raises(ValueError, match=r"\(batch, seq_len, 16\)"):
        mixer(torch.randn(4, D_MODEL, dtype=torch.float64))  # rank 2
    with pytest.raises(ValueError, match=r"\(batch, seq_len, 16\)"):
        mixer(torch.randn(2, 5, D_MODEL + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="floating-point"):
        mixer(torch.ones(2, 5, D_MODEL, dtype=torch.int64))
    with pytest.raises(ValueError, match="key_padding_mask"):
        mixer(torch.randn(2, 5, D_MODEL, dtype=torch.float64), key_padding_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="key_padding_mask"):
        mixer(torch.randn(2, 5, D_MODEL, dtype=torch.float64), key_padding_mask=torch.ones(2, 5))
    state = mixer.init_state(2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\(batch, 16\)"):
        mixer.step(torch.randn(2, 1, D_MODEL, dtype=torch.float64), state)
    with pytest.raises(ValueError, match="floating-point"):
        mixer.step(torch.ones(2, D_MODEL, dtype=torch.int64), state)
    with pytest.raises(ValueError, match="init_state"):
        mixer.step(torch.randn(3, D_MODEL, dtype=torch.float64), state)  # batch 3, state for 2


# --------------------------------------------------------------------------- attention (DT)


def attention_reference(mixer: CausalSelfAttention, x: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """softmax(QK^T / sqrt(hd)) V with causal and key-padding masks, written out by hand."""
    B, L, D = x.shape
    H, hd = mixer.n_head, D // mixer.n_head
    qkv = x @ mixer.qkv.weight.T + mixer.qkv.bias
    q, k, v = (qkv[..., i * D:(i + 1) * D].reshape(B, L, H, hd).permute(0, 2, 1, 3) for i in range(3))
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # (B, H, L, L)
    visible = torch.ones(L, L, dtype=torch.bool).tril()[None, None]
    if real is not None:
        visible = visible & real[:, None, None, :]
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # a row with no visible key: all-zero probabilities
    y = (probs @ v).permute(0, 2, 1, 3).reshape(B, L, D)
    return y @ mixer.out_proj.weight.T + mixer.out_proj.bias


def left_padding_mask(pad_lengths: list[int], length: int) -> torch.Tensor:
    return torch.stack([torch.arange(length) >= pad for pad in pad_lengths])  # (B, L), True = real


def test_attention_matches_hand_written_softmax_reference():
    mixer = make_mixer("attention")
    torch.manual_seed(5)
    x = torch.randn(4, 12, D_MODEL, dtype=torch.float64)
    real = left_padding_mask([0, 3, 11, 12], 12)  # the last sequence is all padding
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), attention_reference(mixer, x, None), rtol=0, atol=1e-12)
        y = mixer(x, key_padding_mask=real)
        torch.testing.assert_close(y, attention_reference(mixer, x, real), rtol=0, atol=1e-12)
    # Fully padded query rows attend to nothing: output = out_proj(0) = its bias, never NaN.
    torch.testing.assert_close(y[3], mixer.out_proj.bias.detach().expand(12, D_MODEL), rtol=0, atol=0)
    torch.testing.assert_close(y[1, :3], mixer.out_proj.bias.detach().expand(3, D_MODEL), rtol=0, atol=0)


def test_attention_padding_gives_finite_gradients():
    mixer = make_mixer("attention").train()
    x = torch.randn(3, 10, D_MODEL, dtype=torch.float64, requires_grad=True)
    real = left_padding_mask([0, 4, 10], 10)
    mixer(x, key_padding_mask=real).square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in mixer.parameters())
    assert x.grad[1, :4].abs().max() == 0  # pad tokens influence nothing


def test_attention_real_outputs_ignore_pad_token_values():
    mixer = make_mixer("attention")
    torch.manual_seed(6)
    pad_lengths = [0, 2, 5]
    real = left_padding_mask(pad_lengths, 9)
    x = torch.randn(3, 9, D_MODEL, dtype=torch.float64)
    other_pads = torch.where(real[..., None], x, 10 * torch.randn_like(x))
    with torch.no_grad():
        y, y_other = mixer(x, key_padding_mask=real), mixer(other_pads, key_padding_mask=real)
        torch.testing.assert_close(y[real], y_other[real], rtol=0, atol=1e-12)
        # Without the mask the pad values do leak into the real positions.
        assert (mixer(x)[real] - mixer(other_pads)[real]).abs().max() > 1e-3


def test_attention_validates_heads_and_max_len():
    with pytest.raises(ValueError, match="divisible by n_head"):
        CausalSelfAttention(10, n_head=3)
    mixer = CausalSelfAttention(D_MODEL, n_head=2, max_len=4).eval()
    with pytest.raises(ValueError, match="max_len"):
        mixer(torch.randn(1, 5, D_MODEL))
    state = mixer.init_state(1)
    assert state[0].shape == (1, 2, 0, D_MODEL // 2)
    for _ in range(4):
        _, state = mixer.step(torch.randn(1, D_MODEL), state)
    assert state[0].shape == (1, 2, 4, D_MODEL // 2)
    with pytest.raises(ValueError, match="max_len"):
        mixer.step(torch.randn(1, D_MODEL), state)


# --------------------------------------------------------------------------- token-type conv (DC)


def token_type_conv_reference(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Per position: the kernel of the position's own token type over the preceding window."""
    B, L, D = x.shape
    n_types, _, window = weight.shape
    y = np.zeros_like(x)
    for b in range(B):
        for t in range(L):
            token_type = t % n_types
            for c in range(D):
                total = bias[token_type, c]
                for j in range(window):
                    source = t - (window - 1) + j  # weight[..., -1] multiplies the current token
                    if source >= 0:
                        total += weight[token_type, c, j] * x[b, source, c]
                y[b, t, c] = total
    return y


@pytest.mark.parametrize("window, tokens_per_step", [(6, 3), (1, 3), (4, 2)])
def test_token_type_conv_matches_per_position_loop(window, tokens_per_step):
    torch.manual_seed(7)
    mixer = TokenTypeConv(D_MODEL, window=window, tokens_per_step=tokens_per_step).double()
    x = torch.randn(2, 11, D_MODEL, dtype=torch.float64)
    expected = token_type_conv_reference(x.numpy(), mixer.weight.detach().numpy(), mixer.bias.detach().numpy())
    with torch.no_grad():
        np.testing.assert_allclose(mixer(x).numpy(), expected, rtol=0, atol=1e-12)
        np.testing.assert_allclose(run_steps(mixer, x).numpy(), expected, rtol=0, atol=1e-12)


def test_token_type_conv_uses_a_separate_kernel_per_type():
    torch.manual_seed(8)
    mixer = TokenTypeConv(D_MODEL, window=6).double()
    x = torch.randn(1, 12, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        before = mixer(x)
        mixer.weight[1] += 1.0  # the state-token kernel only
        changed = (mixer(x) - before).abs().amax(dim=(0, 2)) > 0  # (L,)
    assert changed.tolist() == [t % 3 == 1 for t in range(12)]


# --------------------------------------------------------------------------- diagonal S4 (DS4)


def s4d_numpy_parameters(mixer: S4DMixer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dt (D,), A (D, N/2), C (D, N/2)) as numpy arrays, read from the raw parameters."""
    dt = np.exp(mixer.log_dt.detach().numpy())
    A = -np.exp(mixer.log_A_real.detach().numpy()) + 1j * mixer.A_imag.detach().numpy()
    C = mixer.C.detach().numpy()[..., 0] + 1j * mixer.C.detach().numpy()[..., 1]
    return dt, A, C


def s4d_loop_kernel(mixer: S4DMixer, length: int) -> np.ndarray:
    """Impulse response of the ZOH recurrence h_t = dA h_{t-1} + dB u_t, y_t = 2 Re(C h_t)."""
    dt, A, C = s4d_numpy_parameters(mixer)
    dA = np.exp(dt[:, None] * A)
    dB = (dA - 1) / A
    h = np.zeros_like(A)
    kernel = np.zeros((A.shape[0], length))
    for t in range(length):
        impulse = 1.0 if t == 0 else 0.0
        h = dA * h + dB * impulse
        kernel[:, t] = 2 * (C * h).sum(axis=1).real
    return kernel


def make_s4(seed: int = 9, dt_max: float = 0.1) -> S4DMixer:
    torch.manual_seed(seed)
    return S4DMixer(D_MODEL, d_state=8, dt_max=dt_max).double().eval()


def test_s4d_kernel_matches_sequential_recurrence():
    mixer = make_s4(dt_max=0.5)  # larger steps, so the kernel decays noticeably within 40 taps
    with torch.no_grad():
        kernel = mixer.kernel(40).numpy()
    np.testing.assert_allclose(kernel, s4d_loop_kernel(mixer, 40), rtol=0, atol=1e-12)
    assert np.abs(kernel[:, -1]).max() < np.abs(kernel[:, 0]).max()


def test_s4d_discretisation_is_zero_order_hold():
    """K[0] = 2 Re(C dB), and ZOH means dB = integral_0^dt exp(A s) ds (checked by quadrature)."""
    mixer = make_s4()
    dt, A, C = s4d_numpy_parameters(mixer)
    s = np.linspace(0.0, 1.0, 20001)[None, None, :] * dt[:, None, None]  # (D, 1, S)
    integrand = np.exp(A[:, :, None] * s)  # (D, N/2, S)
    dB = ((integrand[..., 1:] + integrand[..., :-1]) / 2 * np.diff(s, axis=-1)).sum(axis=-1)
    with torch.no_grad():
        first_tap = mixer.kernel(1).numpy()[:, 0]
    np.testing.assert_allclose(first_tap, 2 * (C * dB).sum(axis=1).real, rtol=1e-7, atol=1e-12)


def test_s4d_forward_matches_direct_convolution():
    """The FFT convolution + D skip + GELU + GLU equal a direct sum over past inputs."""
    mixer = make_s4()
    torch.manual_seed(10)
    x = torch.randn(2, 13, D_MODEL, dtype=torch.float64)
    L = x.shape[1]
    kernel = torch.from_numpy(s4d_loop_kernel(mixer, L))  # (D, L)
    with torch.no_grad():
        conv = torch.zeros_like(x)
        for t in range(L):
            for j in range(t + 1):
                conv[:, t] += kernel[:, t - j] * x[:, j]
        hidden = F.gelu(conv + mixer.D * x)
        projected = hidden @ mixer.output_linear.weight.T + mixer.output_linear.bias
        expected = projected[..., :D_MODEL] * torch.sigmoid(projected[..., D_MODEL:])
        torch.testing.assert_close(mixer(x), expected, rtol=0, atol=1e-12)


def test_s4d_init_is_s4d_lin_and_validates():
    mixer = S4DMixer(D_MODEL, d_state=8, dt_min=0.01, dt_max=0.02)
    A = torch.complex(-mixer.log_A_real.exp(), mixer.A_imag).detach()
    expected = torch.complex(torch.full((4,), -0.5), math.pi * torch.arange(4.0))
    torch.testing.assert_close(A, expected.expand(D_MODEL, 4))
    dt = mixer.log_dt.exp()
    assert ((dt >= 0.01 - 1e-7) & (dt <= 0.02 + 1e-7)).all()
    assert mixer.init_state(3)[0].dtype == torch.complex64
    assert mixer.init_state(3, dtype=torch.float64)[0].shape == (3, D_MODEL, 4)
    with pytest.raises(ValueError, match="even"):
        S4DMixer(D_MODEL, d_state=7)
    with pytest.raises(ValueError, match="dt_min"):
        S4DMixer(D_MODEL, dt_min=0.1, dt_max=0.01)


# --------------------------------------------------------------------------- registry


def test_each_entry_builds_its_mixer_from_the_model_config():
    # every option a different value, so that an entry reading the wrong field shows
    cfg = ModelConfig(d_model=32, n_head=8, dropout=0.25, conv_window=5, s4_d_state=12, d_state=6, d_conv=3, expand=7,
                      scan_backend="reference", headdim=8, ngroups=2, chunk_size=5)
    built = {name: build_mixer(dataclasses.replace(cfg, mixer=name)) for name in MIXERS}
    mamba = built["mamba"]
    assert type(mamba).__name__ == "Mamba" and mamba.d_state == 6 and mamba.conv1d.kernel_size == (3,)
    assert mamba.in_proj.out_features == 2 * 7 * 32 and mamba.scan_backend == "reference"
    assert isinstance(built["attention"], CausalSelfAttention) and built["attention"].n_head == 8
    assert built["attention"].dropout == 0.25
    assert isinstance(built["conv"], TokenTypeConv) and built["conv"].window == 5
    assert isinstance(built["s4"], S4DMixer) and built["s4"].d_state == 12 and built["s4"].dropout.p == 0.25
    mamba2 = built["mamba2"]
    assert type(mamba2).__name__ == "Mamba2" and mamba2.d_state == 6 and mamba2.d_conv == 3
    assert mamba2.d_inner == 7 * 32 and mamba2.headdim == cfg.headdim and mamba2.ngroups == cfg.ngroups
    assert mamba2.chunk_size == cfg.chunk_size
    assert built["decay"].d_model == 32 and built["decay"].dropout.p == 0.25
    assert list(MIXERS) == ["mamba", "attention", "conv", "s4", "mamba2", EXTRA_NAME]


def test_an_unknown_mixer_is_refused_when_the_model_is_built():
    """The config cannot know the table (it is a leaf); the model names the valid mixers."""
    with pytest.raises(UserError, match="model.mixer must be one of mamba, attention, conv, s4, mamba2, decay, got 'transformer'"):
        DecisionModel(ModelConfig(mixer="transformer"), (3,), 2, discrete=False)


def test_the_table_entry_alone_makes_the_mixer_usable_by_configs_runs_and_reports():
    """The extra entry makes it a valid model.mixer; runs and reports call it by its own name."""
    from decision_mamba import naming
    from decision_mamba.aggregate import PAPER_NUMBERS, display_name
    from decision_mamba.sweep import TABLES

    cfg = load_config(GymConfig, overrides=[f"model.mixer={EXTRA_NAME}", "eval.mode=recurrent"])
    assert naming.model_label(cfg) == "decay" and "-decay-" in naming.run_name(cfg)
    assert naming.paper_name(EXTRA_NAME) == "decay"
    assert display_name("decay") == "decay" and display_name("dmamba") == "DMamba" and display_name("rc") == "RC"
    # The paper's tables hold the paper's models (its numbers are keyed by their short names).
    named = {short for short, _ in naming.MODEL_NAMES.values()}
    assert {naming.mixer_of_model(short) for short in named} == set(MIXERS) - {EXTRA_NAME}
    for table, spec in TABLES.items():
        assert spec.models and set(spec.models) <= named
        columns = {column for _, column in PAPER_NUMBERS[table]}
        if table in (1, 2):
            assert columns == set(spec.models)


class WindowOnlySum(nn.Module):
    """DecayingSum without the recurrent half of the interface (no init_state, no step)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.inner = DecayingSum(d_model)

    def forward(self, x, key_padding_mask=None):
        return self.inner(x, key_padding_mask)


def test_a_mixer_without_a_recurrent_step_is_refused_for_recurrent_evaluation(monkeypatch):
    from decision_mamba.evaluation import evaluate_after

    monkeypatch.setitem(MIXERS, "window_only", Mixer(lambda c: WindowOnlySum(c.d_model)))
    cfg = load_config(GymConfig, overrides=["model.mixer=window_only", "eval.mode=recurrent"])
    model = DecisionModel(cfg.model, (3,), 2, discrete=False)
    assert not model.recurrent and DecisionModel(ModelConfig(mixer=EXTRA_NAME), (3,), 2, discrete=False).recurrent
    with pytest.raises(UserError, match="eval.mode=recurrent needs a mixer with a recurrent step; window_only has none"):
        evaluate_after(cfg, model, envs=None, env={})  # before any run directory or environment exists
    cfg.eval.mode = "window"
    evaluate_after(cfg, model, envs=None, env={})
    with pytest.raises(ValueError, match="no recurrent step"):
        model.init_state(1)


def test_own_init_decides_whether_the_gpt2_init_covers_the_mixer(monkeypatch):
    """own_init=False: the model's normal(0, 0.02) init redraws the mixer's Linear weights;
    own_init=True: they keep the mixer's own (PyTorch's default, std 1/sqrt(3 fan_in) = 0.144 here)."""
    stds = {}
    for own_init in (False, True):
        monkeypatch.setitem(MIXERS, EXTRA_NAME, EXTRA._replace(own_init=own_init))
        torch.manual_seed(0)
        model = DecisionModel(ModelConfig(mixer=EXTRA_NAME, d_model=16, n_layer=2), (3,), 2, discrete=False)
        stds[own_init] = torch.cat([layer.mixer.in_proj.weight.flatten() for layer in model.layers]).std().item()
    assert abs(stds[False] - 0.02) < 0.003 and abs(stds[True] - 1 / math.sqrt(3 * 16)) < 0.02


def load_gym_experiment():
    # gym/ is a folder of scripts, not a package (gym/__init__.py refuses the import)
    spec = importlib.util.spec_from_file_location("gym_experiment_for_mixers", REPO / "gym" / "experiment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_extra_mixer_trains_and_evaluates_through_the_gym_entry_point(tmp_path, capsys):
    """Registered in this file only, the fifth mixer runs gym/experiment.py's main end to end:
    training, recurrent evaluation in Hopper-v4, checkpoint, summary, report."""
    data = write_episodes_d4rl(tmp_path / "hopper-random-test.hdf5", roll_random_hopper(6, seed=3, max_episode_steps=30))
    summary = load_gym_experiment().main([
        "--config", str(REPO / "configs/gym/hopper-medium.yaml"), f"dataset={data}", f"model.mixer={EXTRA_NAME}",
        "model.d_model=16", "model.n_layer=1", "train.batch_size=8", "train.context_len=4", "train.warmup_steps=5",
        "train.learning_rate=1e-3", "train.num_iterations=2", "train.steps_per_iteration=15", "eval.mode=recurrent",
        "eval.episodes=1", "eval.targets=[3600]", "eval.max_ep_len=20", "run.progress=false", "train.num_threads=1",
        f"run.out_dir={tmp_path / 'runs'}"])
    run_dir = Path(summary["run_dir"])
    assert "-decay-" in run_dir.name
    assert summary["last"]["iteration"] == 2 and np.isfinite(summary["last"]["score"])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2] and all(r["eval"] for r in records)
    assert all(np.isfinite(r["train"]["loss_mean"]) for r in records)
    weights = torch.load(run_dir / "checkpoints" / "iter_002.pt", weights_only=True)["trainer"]["model"]
    assert "layers.0.mixer.decay_logit" in weights  # the extra mixer was built and trained
    assert not torch.equal(weights["layers.0.mixer.decay_logit"], torch.linspace(-2.0, 2.0, 32))
    assert "decay, last evaluation (iteration 2)" in capsys.readouterr().out
