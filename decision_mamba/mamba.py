"""The Mamba block, DMamba's token mixer (paper §3, "Mamba block", Eq. 4-5 and 10-11;
docs/architecture.md). The whole block is in this file: `forward` for whole sequences,
`step` / `step_chunk` for one or a few new tokens (O(1) per token: a rolling conv window
and the SSM state). The two agree (tests/test_mamba.py).

Parameter-compatible with mamba_ssm's `Mamba` (v1, `mamba_simple.py`): the same names,
shapes, initialisation and defaults, so a state_dict moves between the two.

    x (B, L, d_model) --in_proj--> x, z (B, L, ED each)                          Eq. (10)
    x --causal depthwise conv1d (kernel d_conv, left padding d_conv-1)--> SiLU --> u   Eq. (11)
    u --x_proj--> (dt_low (R), B (N), C (N));  delta = softplus(dt_proj(dt_low))
    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,  A = -exp(A_log)           Eq. (4), ZOH
    y_t = (C_t . h_t + D u_t) * silu(z_t)                                      Eq. (5), gate
    out = out_proj(y)

with ED = expand * d_model, R = dt_rank, N = d_state. The recurrence runs in
`selective_scan` (selective_scan.py: mamba_ssm's CUDA kernel, a PyTorch parallel scan, a
numba CPU kernel or a plain loop); on the CPU the conv + SiLU runs in a numba kernel too
(decision_mamba/cpu/conv.py). Both load only when that CPU path runs.

Layout: everything stays (B, L, ED) in memory, the fused CPU scan's own layout, so the
(B, ED, L) tensors handed to `selective_scan` are views and no transpose is ever copied.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decision_mamba.mixer_checks import check_padding_mask, check_positive_int, check_sequence, check_state, check_token
from decision_mamba.selective_scan import BACKENDS, selective_scan

__all__ = ["Mamba", "causal_conv1d_silu"]


# --------------------------------------------------------------------------- causal conv + SiLU
def causal_conv1d_silu(x: Tensor, weight: Tensor, bias: Tensor | None, backend: str = "auto") -> Tensor:
    """silu(causal depthwise conv1d over time) in (B, L, D) layout: output t sees inputs t-K+1 .. t.

    x: (B, L, D); weight: (D, 1, K) as nn.Conv1d stores it; bias: (D,) or None.
    backend "fused" (or "auto" on CPU): numba kernels (decision_mamba/cpu/conv.py), in
    float32 or float64; otherwise torch's conv1d, as "reference" always does. (torch's
    depthwise Conv1d is slow on the CPU and wants (B, D, L); the kernels work in (B, L, D),
    the role causal_conv1d plays for mamba_ssm on a GPU.)
    """
    if backend == "fused" and x.device.type != "cpu":
        raise ValueError(f"causal_conv1d_silu: backend 'fused' runs on CPU tensors, got x on {x.device}; "
                         f"use backend='reference'")
    if backend == "fused" or (backend == "auto" and x.device.type == "cpu"):
        from decision_mamba.cpu.conv import CausalConvSiLU  # the CPU fast path: numba loads here

        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        taps_first = weight[:, 0, :].t().to(dtype)  # (K, D)
        bias = x.new_zeros(x.shape[2], dtype=dtype) if bias is None else bias.to(dtype)
        return CausalConvSiLU.apply(x.to(dtype), taps_first, bias).to(x.dtype)
    seqlen, taps = x.shape[1], weight.shape[-1]
    out = F.conv1d(x.transpose(1, 2), weight, bias, padding=taps - 1, groups=x.shape[2])  # (B, D, L + K - 1)
    return F.silu(out[..., :seqlen]).transpose(1, 2)


def _at_least_float32(t: Tensor) -> Tensor:
    """bf16/fp16 -> float32; float32 and float64 as they are."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class Mamba(nn.Module):
    """Mamba block (mamba_ssm.Mamba v1 layout), with the project's token-mixer interface.

    forward(x, key_padding_mask=None): (B, L, d_model) -> (B, L, d_model); the mask is
        checked and ignored (Mamba has no mask: the model zeroes padded tokens' embeddings).
    init_state(batch_size, device=None, dtype=None) -> (conv_state (B, ED, d_conv),
        ssm_state (B, ED, N)), zeros.
    step(x, state): x (B, d_model) -> (y (B, d_model), new_state); the state is not mutated.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        for name, value in [("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv), ("expand", expand)]:
            check_positive_int(value, name, "Mamba")
        if dt_rank != "auto" and (not isinstance(dt_rank, int) or isinstance(dt_rank, bool) or dt_rank < 1):
            raise ValueError(f"Mamba: dt_rank must be 'auto' or a positive integer, got {dt_rank!r}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"Mamba: dt_init must be 'random' or 'constant', got {dt_init!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"Mamba: need 0 < dt_min <= dt_max, got dt_min={dt_min!r}, dt_max={dt_max!r}")
        if scan_backend not in BACKENDS:
            raise ValueError(f"Mamba: scan_backend must be one of {', '.join(BACKENDS)}, got {scan_backend!r}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.scan_backend = scan_backend

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        # padding = d_conv - 1 on both sides; forward keeps the first L outputs (causal).
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)

        # dt_proj: weights keep the variance of dt_low's projection (S4/Mamba init) ...
        dt_init_std = self.dt_rank ** -0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                nn.init.constant_(self.dt_proj.weight, dt_init_std)
            else:
                nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
            # ... and the bias makes softplus(bias) = dt, dt log-uniform in [dt_min, dt_max]
            dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_init_floor)
            inverse_softplus_dt = dt + torch.log(-torch.expm1(-dt))  # log(exp(dt) - 1), stable
            self.dt_proj.bias.copy_(inverse_softplus_dt)
        self.dt_proj.bias._no_reinit = True  # a model-wide Linear init must leave it alone

        # S4D-real: A_n = -(n + 1) for every channel, stored as log for positivity.
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)  # (ED, N)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner))  # skip connection
        self.D._no_weight_decay = True

        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
                f"dt_rank={self.dt_rank}, scan_backend={self.scan_backend!r}")

    # ------------------------------------------------------------------ whole sequences
    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        check_sequence(x, self.d_model, "Mamba")
        check_padding_mask(key_padding_mask, x, "Mamba")  # checked, then unused: Mamba has no mask
        x_in, z = self.in_proj(x).chunk(2, dim=-1)  # Eq. (10): (B, L, ED) each, views of (B, L, 2 ED)
        u = causal_conv1d_silu(x_in, self.conv1d.weight, self.conv1d.bias, self.scan_backend)  # Eq. (11): (B, L, ED)
        dt_low, B, C = torch.split(self.x_proj(u), [self.dt_rank, self.d_state, self.d_state], dim=-1)  # (B, L, R|N|N)
        delta = F.linear(dt_low, self.dt_proj.weight)  # (B, L, ED); bias and softplus inside the scan
        # A, D and dt bias in float32 (or float64 for a float64 model), as mamba_ssm passes
        # them: its kernel requires float32, and the state stays float32 under bf16/fp16.
        A = -torch.exp(_at_least_float32(self.A_log))  # (ED, N)
        y = selective_scan(  # Eq. (4)-(5), the skip D u and the gate silu(z)
            u.transpose(1, 2),  # (B, ED, L) view
            delta.transpose(1, 2),
            A,
            B.transpose(1, 2),  # (B, N, L) view
            C.transpose(1, 2),
            _at_least_float32(self.D),
            z=z.transpose(1, 2),
            delta_bias=_at_least_float32(self.dt_proj.bias),
            delta_softplus=True,
            backend=self.scan_backend,
        )  # (B, ED, L), (B, L, ED) in memory
        return self.out_proj(y.transpose(1, 2))

    # ------------------------------------------------------------------ one token at a time
    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """Zeros: (conv_state (B, ED, d_conv), the last d_conv conv inputs, oldest first;
        ssm_state (B, ED, N))."""
        check_positive_int(batch_size, "batch_size", "Mamba.init_state")
        device = self.in_proj.weight.device if device is None else device
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype)
        ssm_state = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype)
        return conv_state, ssm_state

    def step(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One new token per sequence: x (B, d_model) -> y (B, d_model), new state.

        Computes in x's dtype; the new state tensors keep the dtypes of the old ones, which
        are left untouched.
        """
        check_token(x, self.d_model, "Mamba")  # step_chunk checks the rest
        y, state = self.step_chunk(x.unsqueeze(1), state)
        return y[:, 0], state

    def step_chunk(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """T new tokens per sequence at once: x (B, T, d_model) -> y (B, T, d_model), new state.

        Equal to T calls of `step`, but the position-wise work (projections, gate) runs
        once on the whole chunk and only the recurrence loops over T. The decision model
        feeds the 2-3 tokens of one environment step this way.
        """
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.d_model or x.shape[1] == 0:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"Mamba.step_chunk: expected x of shape (batch, tokens, {self.d_model}) with tokens >= 1, "
                             f"got {got}")
        check_token(x[:, 0], self.d_model, "Mamba")  # the dtype rule of step()
        batch = x.shape[0]
        check_state(state, [("conv_state", (batch, self.d_inner, self.d_conv)),
                            ("ssm_state", (batch, self.d_inner, self.d_state))], "Mamba")
        conv_state, ssm_state = state
        T = x.shape[1]
        x_in, z = self.in_proj(x).chunk(2, dim=-1)  # Eq. (10): (B, T, ED) each
        # Eq. (11): conv_state holds the last d_conv inputs; the chunk's windows slide over them.
        history = torch.cat([conv_state.to(x.dtype), x_in.transpose(1, 2)], dim=-1)  # (B, ED, d_conv + T)
        windows = history[:, :, 1:].unfold(-1, self.d_conv, 1)  # (B, ED, T, d_conv)
        u = torch.einsum("bdtk,dk->btd", windows, self.conv1d.weight[:, 0, :])  # (B, T, ED)
        if self.conv1d.bias is not None:
            u = u + self.conv1d.bias
        u = F.silu(u)
        dt_low, B, C = torch.split(self.x_proj(u), [self.dt_rank, self.d_state, self.d_state], dim=-1)  # (B, T, R|N|N)
        delta = F.softplus(F.linear(dt_low, self.dt_proj.weight, self.dt_proj.bias))  # (B, T, ED)
        decay = torch.exp(delta.unsqueeze(-1) * -torch.exp(self.A_log))  # (B, T, ED, N): A-bar, ZOH
        drive = (delta * u).unsqueeze(-1) * B.unsqueeze(2)  # (B, T, ED, N): B-bar u
        h = ssm_state.to(x.dtype)  # (B, ED, N)
        states = []
        for t in range(T):  # Eq. (4): h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t
            h = torch.addcmul(drive[:, t], decay[:, t], h)
            states.append(h)
        y = torch.einsum("btdn,btn->btd", torch.stack(states, dim=1), C)  # Eq. (5): y_t = C_t . h_t, (B, T, ED)
        y = torch.addcmul(y, u, self.D) * F.silu(z)  # the skip D u and the gate silu(z)
        new_state = (history[:, :, -self.d_conv:].to(conv_state.dtype), h.to(ssm_state.dtype))
        return self.out_proj(y), new_state
