"""Token mixers of the paper's comparison (REFERENCE §2): DT, DC and DS4 next to DMamba.

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

- `CausalSelfAttention`: DT (GPT-2 style masked multi-head attention), step = KV cache.
- `TokenTypeConv`: DC (depthwise causal convolution, one kernel per token type R/s/a).
- `S4DMixer`: DS4 (a diagonal S4 layer, S4D-Lin init, FFT convolution, GELU, GLU).
- `MIXERS`: the registry, one `MixerSpec` per mixer (names, options, init rule, recurrent
  step); every other module looks mixers up here. `build_mixer(name, d_model, **kwargs)`
  builds one, importing its class (Mamba's from `decision_mamba.mamba`) on demand.
"""

from __future__ import annotations

import importlib
import inspect
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CausalSelfAttention", "TokenTypeConv", "S4DMixer", "MixerSpec", "MIXERS", "mixer_spec", "build_mixer"]


# --------------------------------------------------------------------------- validation


def _check_sequence(x: Tensor, d_model: int, who: str) -> None:
    """Reject anything but a floating (B, L >= 1, d_model) tensor, naming the expected shape."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{who}.forward: x must be a torch.Tensor of shape (batch, seq_len, {d_model}), "
                         f"got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"{who}.forward: expected x of shape (batch, seq_len, {d_model}), "
                         f"got {tuple(x.shape)}; for a single token use step()")
    if x.shape[1] == 0:
        raise ValueError(f"{who}.forward: the sequence is empty (seq_len = 0); pass at least one token")
    if not x.is_floating_point():
        raise ValueError(f"{who}.forward: x must be a floating-point tensor of shape (batch, seq_len, {d_model}), "
                         f"got dtype {x.dtype}; cast it with x.float()")


def _check_token(x: Tensor, d_model: int, who: str) -> None:
    """Reject anything but a floating (B, d_model) tensor: step() takes one token per sequence."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{who}.step: x must be a torch.Tensor of shape (batch, {d_model}), got {type(x).__name__}")
    if x.dim() != 2 or x.shape[-1] != d_model:
        raise ValueError(f"{who}.step: expected x of shape (batch, {d_model}) (one token per sequence), "
                         f"got {tuple(x.shape)}; for a whole sequence use forward()")
    if not x.is_floating_point():
        raise ValueError(f"{who}.step: x must be a floating-point tensor of shape (batch, {d_model}), "
                         f"got dtype {x.dtype}; cast it with x.float()")


def _check_padding_mask(mask: Tensor | None, x: Tensor, who: str) -> None:
    if mask is None:
        return
    expected = tuple(x.shape[:2])
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != expected:
        got = f"{tuple(mask.shape)} {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"{who}.forward: key_padding_mask must be a bool tensor of shape (batch, seq_len) = "
                         f"{expected}, True for real tokens, got {got}")


def _check_state(state: tuple, expected: list[tuple[str, tuple[int | None, ...]]], who: str) -> None:
    """Check the state tuple against (name, shape) pairs; None in a shape matches any size."""
    names = ", ".join(name for name, _ in expected)
    if not isinstance(state, tuple) or len(state) != len(expected):
        raise ValueError(f"{who}.step: state must be the tuple ({names}) returned by init_state() or step(), "
                         f"got {type(state).__name__} of length {len(state) if isinstance(state, tuple) else '?'}")
    for tensor, (name, shape) in zip(state, expected):
        ok = (isinstance(tensor, Tensor) and tensor.dim() == len(shape)
              and all(want is None or got == want for got, want in zip(tensor.shape, shape)))
        if not ok:
            shown = tuple("*" if s is None else s for s in shape)
            got = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
            raise ValueError(f"{who}.step: state {name} must have shape {shown}, got {got}; "
                             f"build the state with init_state(batch_size)")


def _check_positive_int(value: object, name: str, who: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{who}: {name} must be a positive integer, got {value!r}")


def _check_probability(value: object, name: str, who: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise ValueError(f"{who}: {name} must be a number in [0, 1), got {value!r}")


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
        _check_positive_int(d_model, "d_model", who)
        _check_positive_int(n_head, "n_head", who)
        if d_model % n_head != 0:
            raise ValueError(f"{who}: d_model ({d_model}) must be divisible by n_head ({n_head}); "
                             f"choose n_head among the divisors of d_model (1 for gym, 8 for Atari)")
        _check_probability(dropout, "dropout", who)
        if max_len is not None:
            _check_positive_int(max_len, "max_len", who)
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
        _check_sequence(x, self.d_model, "CausalSelfAttention")
        _check_padding_mask(key_padding_mask, x, "CausalSelfAttention")
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
        _check_positive_int(batch_size, "batch_size", "CausalSelfAttention.init_state")
        weight = self.qkv.weight
        shape = (batch_size, self.n_head, 0, self.head_dim)
        empty = torch.zeros(shape, device=device or weight.device, dtype=dtype or weight.dtype)
        return empty, empty.clone()

    def step(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Attend from the new token to every cached token and itself; append its k, v."""
        _check_token(x, self.d_model, "CausalSelfAttention")
        B = x.shape[0]
        _check_state(state, [("k_cache", (B, self.n_head, None, self.head_dim)),
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
        _check_positive_int(d_model, "d_model", who)
        _check_positive_int(window, "window", who)
        _check_positive_int(tokens_per_step, "tokens_per_step", who)
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
        _check_sequence(x, self.d_model, "TokenTypeConv")
        _check_padding_mask(key_padding_mask, x, "TokenTypeConv")
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
        _check_positive_int(batch_size, "batch_size", "TokenTypeConv.init_state")
        device = device or self.weight.device
        buffer = torch.zeros(batch_size, self.d_model, self.window - 1, device=device,
                             dtype=dtype or self.weight.dtype)
        position = torch.zeros(batch_size, dtype=torch.int64, device=device)
        return buffer, position

    def step(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        _check_token(x, self.d_model, "TokenTypeConv")
        B = x.shape[0]
        _check_state(state, [("buffer", (B, self.d_model, self.window - 1)), ("position", (B,))], "TokenTypeConv")
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
        _check_positive_int(d_model, "d_model", who)
        _check_positive_int(d_state, "d_state", who)
        if d_state % 2 != 0:
            raise ValueError(f"{who}: d_state must be even (N/2 complex modes stand for N real ones), got {d_state}")
        if not (isinstance(dt_min, (int, float)) and isinstance(dt_max, (int, float)) and 0 < dt_min <= dt_max):
            raise ValueError(f"{who}: need 0 < dt_min <= dt_max, got dt_min={dt_min!r}, dt_max={dt_max!r}")
        _check_probability(dropout, "dropout", who)
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
        _check_positive_int(length, "length", "S4DMixer.kernel")
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
        _check_sequence(x, self.d_model, "S4DMixer")
        _check_padding_mask(key_padding_mask, x, "S4DMixer")
        L = x.shape[1]
        k = self.kernel(L)  # (D, L)
        u = x.transpose(1, 2)  # (B, D, L)
        n_fft = 2 * L  # zero padding to 2L turns the circular convolution into a causal one
        y = torch.fft.irfft(torch.fft.rfft(u, n=n_fft) * torch.fft.rfft(k, n=n_fft), n=n_fft)[..., :L]  # (B, D, L)
        return self._output(y.transpose(1, 2), x)

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> tuple[Tensor]:
        """(h,) with h complex (B, D, N/2) zeros; a real dtype maps to its complex counterpart."""
        _check_positive_int(batch_size, "batch_size", "S4DMixer.init_state")
        dtype = dtype or self.C.dtype
        if not dtype.is_complex:
            dtype = torch.promote_types(dtype, torch.complex64)  # float32 -> complex64, float64 -> complex128
        h = torch.zeros(batch_size, self.d_model, self.d_state // 2, device=device or self.C.device, dtype=dtype)
        return (h,)

    def step(self, x: Tensor, state: tuple[Tensor]) -> tuple[Tensor, tuple[Tensor]]:
        _check_token(x, self.d_model, "S4DMixer")
        B = x.shape[0]
        _check_state(state, [("h", (B, self.d_model, self.d_state // 2))], "S4DMixer")
        (h,) = state
        dtA, dB, C = self._discretize()  # (D, N/2)
        h = dtA.exp() * h + dB * x[:, :, None]  # (B, D, N/2)
        y = 2.0 * (C * h).sum(dim=-1).real  # (B, D)
        return self._output(y, x), (h,)


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class MixerSpec:
    """Everything the rest of the project knows about one token mixer: its entry in MIXERS.

    The config (validation, --help), the model (building, init, recurrent dispatch), run
    names, the sweep and the aggregator read these fields and spell no mixer name of their
    own. README, "Add a mixer", walks through a new entry.
    """

    name: str  # model.mixer in configs and on the command line
    model_name: str  # our short name of the model built with it: run names, wandb groups, sweep --models
    paper_name: str  # the paper's name of that model, in reports and tables
    cls: str  # "module:Class", imported on first use (mamba.py needs numba; the others do not)
    # constructor argument -> the ModelConfig field that sets it (d_model is always passed)
    options: dict[str, str] = field(default_factory=dict)
    # True: the mixer keeps its reference initialisation (mamba_ssm's, S4D's) and the model's
    # GPT-2 init (normal 0.02) leaves it alone; False: the GPT-2 init covers it too
    own_init: bool = False
    # True: init_state/step exist, so eval.mode=recurrent and DecisionModel.step can use it
    recurrent: bool = True
    # a module with fused_step_applies(model, x) and fused_layers_step(layers, x, states):
    # one call for all layers of a recurrent step (DMamba on the CPU), imported on first use
    fused_step: str | None = None
    paper_tables: tuple[int, ...] = ()  # the paper's tables that report the model (sweep.TABLES)

    @property
    def uses_scan(self) -> bool:
        """Whether model.scan_backend applies: the mixer runs the selective scan."""
        return "scan_backend" in self.options


# The mixers of the paper's comparison (REFERENCE §2), in its tables' column order.
MIXERS: dict[str, MixerSpec] = {spec.name: spec for spec in (
    MixerSpec("mamba", "dmamba", "DMamba", "decision_mamba.mamba:Mamba",
              {"d_state": "d_state", "d_conv": "d_conv", "expand": "expand", "scan_backend": "scan_backend"},
              own_init=True, fused_step="decision_mamba.fused_step", paper_tables=(1, 2, 3, 4)),
    MixerSpec("attention", "dt", "DT", "decision_mamba.mixers:CausalSelfAttention",
              {"n_head": "n_head", "dropout": "dropout"}, paper_tables=(1, 2)),
    MixerSpec("conv", "dc", "DC", "decision_mamba.mixers:TokenTypeConv", {"window": "conv_window"},
              paper_tables=(1, 2)),
    MixerSpec("s4", "ds4", "DS4", "decision_mamba.mixers:S4DMixer", {"d_state": "s4_d_state", "dropout": "dropout"},
              own_init=True, paper_tables=(1,)),
    MixerSpec("mamba2", "dmamba2", "DMamba-2", "decision_mamba.mamba2:Mamba2",
              {"d_state": "d_state", "d_conv": "d_conv", "expand": "expand", "headdim": "headdim",
               "ngroups": "ngroups", "chunk_size": "chunk_size"}, own_init=True),
)}
DEFAULT_MIXER = next(iter(MIXERS))  # ModelConfig.mixer's default: DMamba's


def mixer_spec(name: str) -> MixerSpec:
    if name not in MIXERS:
        raise ValueError(f"unknown token mixer {name!r}; valid names: {', '.join(sorted(MIXERS))}")
    return MIXERS[name]


def describe_mixers() -> str:
    """'mamba (DMamba), attention (DT), ...': the valid model.mixer values, for --help and errors."""
    return ", ".join(f"{spec.name} ({spec.paper_name})" for spec in MIXERS.values())


def model_name(mixer: str) -> str:
    """Our short model name (dmamba) of a model.mixer value; an unknown one passes through."""
    return MIXERS[mixer].model_name if mixer in MIXERS else mixer


def paper_name(mixer: str) -> str:
    """The paper's model name (DMamba) of a model.mixer value; an unknown one passes through."""
    return MIXERS[mixer].paper_name if mixer in MIXERS else mixer


def spec_of_model(model: str) -> MixerSpec | None:
    """The entry whose short model name is `model` (dmamba -> mamba's), None if there is none."""
    return next((spec for spec in MIXERS.values() if spec.model_name == model), None)


def models_in_table(table: int) -> tuple[str, ...]:
    """The short names of the models the paper's Table `table` reports, in its column order."""
    return tuple(spec.model_name for spec in MIXERS.values() if table in spec.paper_tables)


def mixer_class(name: str) -> type[nn.Module]:
    module, _, attribute = mixer_spec(name).cls.partition(":")
    return getattr(importlib.import_module(module), attribute)


def mixer_kwargs(cfg) -> dict:
    """The constructor options of cfg.mixer, read from the ModelConfig `cfg` (d_model apart)."""
    return {argument: getattr(cfg, config_field) for argument, config_field in mixer_spec(cfg.mixer).options.items()}


def fused_step_module(name: str):
    """The module of the mixer's whole-stack recurrent step, or None (see MixerSpec.fused_step)."""
    module = mixer_spec(name).fused_step
    return importlib.import_module(module) if module else None


def build_mixer(name: str, d_model: int, **kwargs) -> nn.Module:
    """Build the token mixer `name` of width d_model; kwargs must all belong to that mixer."""
    cls = mixer_class(name)
    params = list(inspect.signature(cls).parameters.values())[1:]  # all but d_model
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unexpected = sorted(set(kwargs) - set(accepted))
    if unexpected and not accepts_any:
        raise ValueError(f"build_mixer({name!r}): {cls.__name__} does not take {', '.join(unexpected)}; "
                         f"it accepts: {', '.join(accepted) or 'no options'}")
    missing = [p.name for p in params
               if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               and p.name not in kwargs]
    if missing:
        raise ValueError(f"build_mixer({name!r}): {cls.__name__} needs {', '.join(missing)}, "
                         f"e.g. build_mixer({name!r}, {d_model}, {missing[0]}=...)")
    return cls(d_model, **kwargs)
