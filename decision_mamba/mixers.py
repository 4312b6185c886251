"""Token mixers of the paper's comparison (paper §4, docs/architecture.md): DT, DC and DS4
next to DMamba, and MIXERS, the table the model builds them from.

The decision model swaps one module per layer, the token mixer, in
`x = x + TokenMixer(LN(x))` (paper Eq. 8). Every mixer shares this interface:

    forward(x, key_padding_mask=None)   x (B, L, d_model) -> (B, L, d_model), causal along L
    init_state(batch_size, device=None, dtype=None) -> tuple of tensors, batch as dim 0
    step(x, state) -> (y, new_state)    x, y (B, d_model): ONE new token given the state
                                        of all previous ones; forward over L tokens equals
                                        L successive steps. The input state is not mutated.

`key_padding_mask` (B, L) is True for real tokens and False for left padding. Only
attention can honour it; the other mixers validate and ignore it, so the caller must give
pad tokens a fixed embedding if their outputs are to be independent of pad values.
A mixer without init_state/step runs in eval.mode=window only. The input checks they
share are in mixer_checks.py.

- `Mamba` (mamba.py): DMamba, the selective SSM block.
- `CausalSelfAttention`: DT (GPT-2 style masked multi-head attention), step = KV cache.
- `TokenTypeConv`: DC (depthwise causal convolution, one kernel per token type R/s/a).
- `S4DMixer`: DS4 (a diagonal S4 layer, S4D-Lin init, FFT convolution, GELU, GLU).

Adding a mixer: its class, one entry in MIXERS (and a ModelConfig field per new option).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decision_mamba.config import ModelConfig
from decision_mamba.errors import UserError
from decision_mamba.mamba import Mamba
from decision_mamba.mamba2 import Mamba2
from decision_mamba.mixer_checks import (check_padding_mask, check_positive_int, check_probability, check_sequence,
                                         check_state, check_token)

__all__ = ["CausalSelfAttention", "TokenTypeConv", "S4DMixer", "Mixer", "MIXERS", "build_mixer"]


# --------------------------------------------------------------------------- DT: attention


class CausalSelfAttention(nn.Module):
    """GPT-2 masked multi-head self-attention, the token mixer of Decision Transformer.

    One fused qkv Linear and an output Linear (both with bias), dropout on the attention
    probabilities and on the output ("residual dropout"). No positional information: DT
    adds a timestep embedding to the tokens before the first layer.

    `max_len`, if given, is the longest sequence (and KV cache) accepted; None = no limit.
    The KV cache of `step` grows by one token per call, so the caller decides when to
    restart it (e.g. to keep the K-timestep context seen in training).
    """

    def __init__(self, d_model: int, n_head: int, dropout: float = 0.1, max_len: int | None = None):
        super().__init__()
        who = "CausalSelfAttention"
        check_positive_int(d_model, "d_model", who)
        check_positive_int(n_head, "n_head", who)
        if d_model % n_head != 0:
            raise ValueError(f"{who}: d_model ({d_model}) must be divisible by n_head ({n_head}); "
                             f"choose n_head among the divisors of d_model (1 for gym, 8 for Atari)")
        check_probability(dropout, "dropout", who)
        if max_len is not None:
            check_positive_int(max_len, "max_len", who)
        self.d_model = d_model
        self.n_head = n_head
        self.head_dim = d_model // n_head
        self.dropout = dropout
        self.max_len = max_len
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.resid_dropout = nn.Dropout(dropout)

    def _split_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, L, d_model) -> q, k, v each (B, H, L, hd)."""
        B, L, _ = x.shape
        q, k, v = self.qkv(x).split(self.d_model, dim=-1)  # 3 x (B, L, D)
        return tuple(t.view(B, L, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))

    def _merge_heads(self, y: Tensor) -> Tensor:
        """(B, H, L, hd) -> (B, L, d_model), then the output projection and residual dropout."""
        B, _, L, _ = y.shape
        y = y.transpose(1, 2).reshape(B, L, self.d_model)
        return self.resid_dropout(self.out_proj(y))

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        check_sequence(x, self.d_model, "CausalSelfAttention")
        check_padding_mask(key_padding_mask, x, "CausalSelfAttention")
        L = x.shape[1]
        if self.max_len is not None and L > self.max_len:
            raise ValueError(f"CausalSelfAttention.forward: seq_len {L} exceeds max_len {self.max_len}; "
                             f"shorten the context or build the mixer with a larger max_len")
        q, k, v = self._split_heads(x)  # (B, H, L, hd)
        dropout_p = self.dropout if self.training else 0.0
        if key_padding_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()  # (L, L) query x key
            allowed = causal & key_padding_mask[:, None, None, :]  # (B, 1, L, L)
            # A query that sees no real key (a left-pad token) would be a softmax over -inf
            # only, i.e. NaN. Let such rows attend causally for a finite computation, then set
            # their attention output to zero, as if the whole probability row were zero.
            no_key = ~allowed.any(dim=-1, keepdim=True)  # (B, 1, L, 1)
            allowed = allowed | (no_key & causal)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)
            y = y.masked_fill(no_key, 0.0)  # (B, H, L, hd)
        return self._merge_heads(y)

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """An empty KV cache: (k_cache, v_cache), each (B, H, 0, hd)."""
        check_positive_int(batch_size, "batch_size", "CausalSelfAttention.init_state")
        weight = self.qkv.weight
        shape = (batch_size, self.n_head, 0, self.head_dim)
        empty = torch.zeros(shape, device=device or weight.device, dtype=dtype or weight.dtype)
        return empty, empty.clone()

    def step(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Attend from the new token to every cached token and itself; append its k, v."""
        check_token(x, self.d_model, "CausalSelfAttention")
        B = x.shape[0]
        check_state(state, [("k_cache", (B, self.n_head, None, self.head_dim)),
                             ("v_cache", (B, self.n_head, None, self.head_dim))], "CausalSelfAttention")
        k_cache, v_cache = state
        if k_cache.shape[2] != v_cache.shape[2]:
            raise ValueError(f"CausalSelfAttention.step: k_cache and v_cache hold different numbers of tokens "
                             f"({k_cache.shape[2]} vs {v_cache.shape[2]}); build the state with init_state()")
        if self.max_len is not None and k_cache.shape[2] + 1 > self.max_len:
            raise ValueError(f"CausalSelfAttention.step: the KV cache already holds max_len = {self.max_len} "
                             f"tokens; restart from init_state() or build the mixer with a larger max_len")
        q, k, v = self._split_heads(x[:, None, :])  # (B, H, 1, hd)
        k_cache = torch.cat([k_cache, k], dim=2)  # (B, H, T + 1, hd)
        v_cache = torch.cat([v_cache, v], dim=2)
        dropout_p = self.dropout if self.training else 0.0
        # The new token is the last one, so every cached key is visible: no mask needed.
        y = F.scaled_dot_product_attention(q, k_cache, v_cache, dropout_p=dropout_p)  # (B, H, 1, hd)
        return self._merge_heads(y)[:, 0], (k_cache, v_cache)


# --------------------------------------------------------------------------- DC: convolution


class TokenTypeConv(nn.Module):
    """Depthwise causal convolution with one kernel per token type: the Decision ConvFormer mixer.

    Tokens are interleaved R, s, a, R, s, a, ... (type = position % tokens_per_step). The
    output at position t applies the kernel (and bias) of t's own type to the window of the
    `window` tokens ending at t, whatever their types; tokens before the start are zeros.

        y[b, t, c] = bias[type(t), c] + sum_j weight[type(t), c, j] * x[b, t - window + 1 + j, c]
    """

    def __init__(self, d_model: int, window: int = 6, tokens_per_step: int = 3):
        super().__init__()
        who = "TokenTypeConv"
        check_positive_int(d_model, "d_model", who)
        check_positive_int(window, "window", who)
        check_positive_int(tokens_per_step, "tokens_per_step", who)
        self.d_model = d_model
        self.window = window
        self.tokens_per_step = tokens_per_step
        self.weight = nn.Parameter(torch.empty(tokens_per_step, d_model, window))  # (T, D, W)
        self.bias = nn.Parameter(torch.empty(tokens_per_step, d_model))  # (T, D)
        # nn.Conv1d's default init for a depthwise kernel: U(-1/sqrt(fan_in), +) with fan_in = window.
        bound = 1.0 / math.sqrt(window)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        check_sequence(x, self.d_model, "TokenTypeConv")
        check_padding_mask(key_padding_mask, x, "TokenTypeConv")
        B, L, D = x.shape
        T, W = self.tokens_per_step, self.window
        # One grouped conv computes all T kernels at once: input channel c feeds the T output
        # channels c*T + type, so each group is one channel with its T kernels.
        kernels = self.weight.permute(1, 0, 2).reshape(D * T, 1, W)  # (D*T, 1, W)
        biases = self.bias.t().reshape(D * T)  # (D*T,)
        u = F.pad(x.transpose(1, 2), (W - 1, 0))  # (B, D, W - 1 + L), causal left padding
        y_all = F.conv1d(u, kernels, biases, groups=D).view(B, D, T, L)  # (B, D, T, L)
        # Keep, at each position, the output of its own token type.
        positions = torch.arange(L, device=x.device)
        y = y_all[:, :, positions % T, positions]  # (B, D, L)
        return y.transpose(1, 2)

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """(buffer (B, D, window-1) of the previous inputs, zeros = the causal padding;
        position (B,) int64, the index of the next token, whose type is position % T)."""
        check_positive_int(batch_size, "batch_size", "TokenTypeConv.init_state")
        device = device or self.weight.device
        buffer = torch.zeros(batch_size, self.d_model, self.window - 1, device=device,
                             dtype=dtype or self.weight.dtype)
        position = torch.zeros(batch_size, dtype=torch.int64, device=device)
        return buffer, position

    def step(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        check_token(x, self.d_model, "TokenTypeConv")
        B = x.shape[0]
        check_state(state, [("buffer", (B, self.d_model, self.window - 1)), ("position", (B,))], "TokenTypeConv")
        buffer, position = state
        window_input = torch.cat([buffer, x[:, :, None]], dim=-1)  # (B, D, W)
        token_type = position % self.tokens_per_step  # (B,)
        y = (window_input * self.weight[token_type]).sum(dim=-1) + self.bias[token_type]  # (B, D)
        return y, (window_input[:, :, 1:], position + 1)


# --------------------------------------------------------------------------- DS4: diagonal S4


class S4DMixer(nn.Module):
    """A diagonal S4 layer (S4D) with the output GLU of the S4 block: the Decision S4 mixer.

    Per channel c, N/2 complex modes with the continuous system
    h'(t) = A h(t) + B u(t), y(t) = 2 Re(C h(t)) (each mode stands for a conjugate pair,
    hence the 2 Re). S4D-Lin init A_n = -1/2 + i*pi*n, B = 1 (folded into the learnable
    complex C), learnable dt per channel, zero-order-hold discretisation:

        dA = exp(dt A),  dB = (exp(dt A) - 1) / A * B
        h_t = dA h_{t-1} + dB u_t,  y_t = 2 Re(sum_n C_n h_t,n) + D u_t

    i.e. the causal convolution y = K * u + D u with K[l] = 2 Re(sum_n C_n dB_n dA_n^l),
    computed by FFT (zero-padded to 2L, so the circular convolution is a linear one).
    Then GELU, dropout, and Linear(d_model, 2 d_model) + GLU.
    """

    def __init__(self, d_model: int, d_state: int = 64, dt_min: float = 0.001, dt_max: float = 0.1,
                 dropout: float = 0.0):
        super().__init__()
        who = "S4DMixer"
        check_positive_int(d_model, "d_model", who)
        check_positive_int(d_state, "d_state", who)
        if d_state % 2 != 0:
            raise ValueError(f"{who}: d_state must be even (N/2 complex modes stand for N real ones), got {d_state}")
        if not (isinstance(dt_min, (int, float)) and isinstance(dt_max, (int, float)) and 0 < dt_min <= dt_max):
            raise ValueError(f"{who}: need 0 < dt_min <= dt_max, got dt_min={dt_min!r}, dt_max={dt_max!r}")
        check_probability(dropout, "dropout", who)
        self.d_model = d_model
        self.d_state = d_state
        n_modes = d_state // 2

        # log dt ~ U[log dt_min, log dt_max], one timescale per channel.
        log_dt = torch.rand(d_model) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)  # (D,)
        # S4D-Lin: A_n = -1/2 + i*pi*n. The real part is kept negative through -exp(log_A_real).
        self.log_A_real = nn.Parameter(torch.full((d_model, n_modes), math.log(0.5)))  # (D, N/2)
        self.A_imag = nn.Parameter(math.pi * torch.arange(n_modes, dtype=torch.float32).repeat(d_model, 1))
        # C ~ standard complex normal (real and imaginary parts of variance 1/2), stored as
        # real pairs so the module works with any real dtype (.double() -> complex128).
        self.C = nn.Parameter(torch.randn(d_model, n_modes, 2) * math.sqrt(0.5))  # (D, N/2, 2)
        self.D = nn.Parameter(torch.randn(d_model))  # (D,) skip connection
        self.dropout = nn.Dropout(dropout)
        self.output_linear = nn.Linear(d_model, 2 * d_model)

    def _discretize(self) -> tuple[Tensor, Tensor, Tensor]:
        """ZOH: (dt*A, dB, C), each complex (D, N/2); dA = exp(dt*A)."""
        dt = self.log_dt.exp()[:, None]  # (D, 1)
        A = torch.complex(-self.log_A_real.exp(), self.A_imag)  # (D, N/2)
        dtA = A * dt  # (D, N/2)
        dB = (dtA.exp() - 1.0) / A  # B = 1
        C = torch.view_as_complex(self.C)  # (D, N/2)
        return dtA, dB, C

    def kernel(self, length: int) -> Tensor:
        """The causal convolution kernel K (D, length): K[c, l] = 2 Re(sum_n C dB dA^l)."""
        check_positive_int(length, "length", "S4DMixer.kernel")
        dtA, dB, C = self._discretize()
        # Vandermonde matrix dA^l = exp(l * dt A), one exponential per entry.
        steps = torch.arange(length, device=dtA.device, dtype=dtA.real.dtype)
        vandermonde = torch.exp(dtA[:, :, None] * steps)  # (D, N/2, L)
        return 2.0 * torch.einsum("dn,dnl->dl", C * dB, vandermonde).real  # (D, L)

    def _output(self, y: Tensor, u: Tensor) -> Tensor:
        """D skip, GELU, dropout, Linear + GLU, on (..., D) tensors."""
        y = F.gelu(y + self.D * u)
        return F.glu(self.output_linear(self.dropout(y)), dim=-1)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        check_sequence(x, self.d_model, "S4DMixer")
        check_padding_mask(key_padding_mask, x, "S4DMixer")
        L = x.shape[1]
        k = self.kernel(L)  # (D, L)
        u = x.transpose(1, 2)  # (B, D, L)
        n_fft = 2 * L  # zero padding to 2L turns the circular convolution into a causal one
        y = torch.fft.irfft(torch.fft.rfft(u, n=n_fft) * torch.fft.rfft(k, n=n_fft), n=n_fft)[..., :L]  # (B, D, L)
        return self._output(y.transpose(1, 2), x)

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> tuple[Tensor]:
        """(h,) with h complex (B, D, N/2) zeros; a real dtype maps to its complex counterpart."""
        check_positive_int(batch_size, "batch_size", "S4DMixer.init_state")
        dtype = dtype or self.C.dtype
        if not dtype.is_complex:
            dtype = torch.promote_types(dtype, torch.complex64)  # float32 -> complex64, float64 -> complex128
        h = torch.zeros(batch_size, self.d_model, self.d_state // 2, device=device or self.C.device, dtype=dtype)
        return (h,)

    def step(self, x: Tensor, state: tuple[Tensor]) -> tuple[Tensor, tuple[Tensor]]:
        check_token(x, self.d_model, "S4DMixer")
        B = x.shape[0]
        check_state(state, [("h", (B, self.d_model, self.d_state // 2))], "S4DMixer")
        (h,) = state
        dtA, dB, C = self._discretize()  # (D, N/2)
        h = dtA.exp() * h + dB * x[:, :, None]  # (B, D, N/2)
        y = 2.0 * (C * h).sum(dim=-1).real  # (B, D)
        return self._output(y, x), (h,)


# --------------------------------------------------------------------------- the table


class Mixer(NamedTuple):
    """One entry of MIXERS."""

    build: Callable[[ModelConfig], nn.Module]  # one layer's mixer, from the model's config
    own_init: bool = False  # True: keeps its reference init (mamba_ssm's, S4D's); False: GPT-2's normal(0.02) too


# model.mixer -> its mixer; the paper's four, in its tables' column order, then ours.
MIXERS: dict[str, Mixer] = {
    "mamba": Mixer(lambda c: Mamba(c.d_model, d_state=c.d_state, d_conv=c.d_conv, expand=c.expand,
                                   scan_backend=c.scan_backend), own_init=True),
    "attention": Mixer(lambda c: CausalSelfAttention(c.d_model, n_head=c.n_head, dropout=c.dropout)),
    "conv": Mixer(lambda c: TokenTypeConv(c.d_model, window=c.conv_window)),
    "s4": Mixer(lambda c: S4DMixer(c.d_model, d_state=c.s4_d_state, dropout=c.dropout), own_init=True),
    # beyond the paper: DMamba-2, a Mamba-2 (SSD) block (decision_mamba/mamba2.py)
    "mamba2": Mixer(lambda c: Mamba2(c.d_model, d_state=c.d_state, d_conv=c.d_conv, expand=c.expand, headdim=c.headdim,
                                     ngroups=c.ngroups, chunk_size=c.chunk_size), own_init=True),
}


def mixer_entry(cfg: ModelConfig) -> Mixer:
    """cfg.mixer's entry; an unknown name is the user's error, named with the valid ones."""
    if cfg.mixer not in MIXERS:
        raise UserError(f"model.mixer must be one of {', '.join(MIXERS)}, got {cfg.mixer!r}")
    return MIXERS[cfg.mixer]


def build_mixer(cfg: ModelConfig) -> nn.Module:
    """One layer's token mixer, as cfg.mixer's entry builds it."""
    return mixer_entry(cfg).build(cfg)
