"""The Mamba-2 block (SSD), the token mixer of DMamba-2 (docs/architecture.md, "Mamba-2").

Mamba-2: Dao & Gu, "Transformers are SSMs" (ICML 2024); §7 the block, §6 the chunked SSD
algorithm. Parameter-compatible with mamba_ssm's `Mamba2` (2.3.2.post1, `modules/mamba2.py`,
its defaults rmsnorm=True, norm_before_gate=False, D per head): the same names, shapes,
initialisation (in the same order of random draws) and defaults, so a state_dict moves
between the two.

    u (B, L, d_model) --in_proj--> z (ED), xBC (ED + 2 G N), dt (H)
    xBC --causal depthwise conv1d (kernel d_conv)--> SiLU --> x (H heads of P), B, C (G groups of N)
    dt = softplus(dt + dt_bias), clamped to dt_limit;  A = -exp(A_log) (one scalar per head)
    per head h, with its group's B, C (state h_t of size (P, N)):
        h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T       y_t = h_t C_t + D x_t      (SSD, §3)
    y = RMSNorm_per_group(y * silu(z)) * norm.weight;  out = out_proj(y)

with ED = expand * d_model, H = ED / headdim heads of P = headdim channels, G = ngroups,
N = d_state. Unlike Mamba-1's per-channel diagonal A, A is a scalar per head, so the
sequence map is a (masked, 1-semiseparable) matrix and the scan becomes matrix products.

`forward` runs whole sequences: on a GPU through mamba_ssm's Triton kernel
`mamba_chunk_scan_combined` when mamba_ssm imports, otherwise (and on the CPU) through
`ssd_chunked` below, PyTorch matrix products. `step` runs one token in O(1): a rolling conv
window and the (H, P, N) state per sequence; forward over L tokens equals L steps.
"""

from __future__ import annotations

import importlib
import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decision_mamba.mixer_checks import check_padding_mask, check_positive_int, check_sequence, check_state, check_token

__all__ = ["Mamba2", "ssd_chunked", "resolve_ssd_backend", "SSD_BACKENDS"]

SSD_BACKENDS = ("auto", "triton", "torch")
TRITON_SSD_MODULE = "mamba_ssm.ops.triton.ssd_combined"
TRITON_SSD_FIX = "pip install mamba-ssm (docs/gpu.md; its Triton SSD kernel needs no CUDA build)"
_warned: set[str] = set()


def _triton_ssd():
    """mamba_ssm's mamba_chunk_scan_combined, or the reason it cannot be had."""
    try:
        return importlib.import_module(TRITON_SSD_MODULE).mamba_chunk_scan_combined, "mamba_ssm's Triton kernel imports"
    except Exception as error:  # ImportError, or a Triton that fails while loading
        return None, f"{TRITON_SSD_MODULE} does not import ({type(error).__name__}: {error})"


def resolve_ssd_backend(requested: str, device: torch.device | str) -> tuple[str, str]:
    """The SSD path that runs for `requested` on `device`, and why (one line).

    "auto": triton on a CUDA device where mamba_ssm's kernel imports (with a warning, once,
    when it does not), torch elsewhere. "triton" where it cannot run is an error naming the fix.
    """
    if requested not in SSD_BACKENDS:
        raise ValueError(f"Mamba2: unknown ssd_backend {requested!r}; expected one of {', '.join(SSD_BACKENDS)}")
    device = torch.device(device)
    if requested == "torch":
        return "torch", "requested: the chunked SSD in PyTorch"
    if device.type != "cuda":
        if requested == "triton":
            raise ValueError(f"Mamba2: ssd_backend 'triton' needs CUDA tensors, got {device}; use 'torch' or 'auto'")
        return "torch", f"auto on {device.type}: the chunked SSD in PyTorch"
    kernel, why = _triton_ssd()
    if kernel is not None:
        return "triton", f"{requested}: {why}"
    if requested == "triton":
        raise ValueError(f"Mamba2: ssd_backend 'triton' is not usable: {why}; {TRITON_SSD_FIX}")
    if why not in _warned:
        _warned.add(why)
        warnings.warn(f"Mamba2 ssd_backend=auto on {device}: {why}. Using the chunked SSD in PyTorch, slower "
                      f"than the kernel; to fix: {TRITON_SSD_FIX}.", RuntimeWarning, stacklevel=3)
    return "torch", f"auto: {why}; the chunked SSD in PyTorch needs no build"


# --------------------------------------------------------------------------- SSD, chunked


def _segment_sums(a: Tensor) -> Tensor:
    """(..., T) -> (..., T, T): out[..., t, s] = a[s+1] + ... + a[t] for s <= t, -inf above the diagonal.

    exp of it is the decay from step s to step t, the 1-semiseparable mask L of §3.
    Built as a masked cumulative sum down the columns rather than as a difference of two
    cumulative sums, which would cancel catastrophically when they are large.
    """
    T = a.shape[-1]
    below = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)  # s < t
    sums = a[..., :, None].expand(*a.shape, T).masked_fill(~below, 0).cumsum(dim=-2)  # [t, s] = sum_{s<r<=t} a_r
    return sums.masked_fill(~below.logical_or(torch.eye(T, dtype=torch.bool, device=a.device)), -math.inf)


def ssd_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int,
                initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The SSD recurrence h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t, by blocks (§6).

    x (b, L, H, P); dt (b, L, H) (already softplus'ed); A (H,); B, C (b, L, G, N) with H a
    multiple of G (head h reads group h // (H / G)); initial_state (b, H, P, N) or None.
    Returns y (b, L, H, P) (no D term) and the final state (b, H, P, N).

    The sequence is cut in chunks of Q = chunk_size (the last zero-padded: dt = 0 leaves the
    state unchanged). The L x L sequence matrix splits into Q x Q blocks: the diagonal
    blocks are a masked quadratic form, like attention (step 1); the off-diagonal blocks
    are low rank and go through the state at the chunk boundaries: each chunk's own
    contribution to its final state (step 2), a recurrence over chunks (step 3), and each
    chunk's output from the state it starts with (step 4).
    """
    batch, length, heads, headdim = x.shape
    groups, d_state = B.shape[2], B.shape[3]
    Q = min(chunk_size, length)  # a sequence shorter than a chunk is one chunk, not padded to chunk_size
    pad = (-length) % Q
    if pad:
        x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    n_chunks = (length + pad) // Q
    # Each head reads its group's B and C.
    B = B.repeat_interleave(heads // groups, dim=2)  # (b, L', H, N)
    C = C.repeat_interleave(heads // groups, dim=2)
    x, dt, B, C = (t.reshape(batch, n_chunks, Q, *t.shape[2:]) for t in (x, dt, B, C))  # (b, c, Q, ...)

    log_decay = (dt * A).permute(0, 3, 1, 2)  # (b, H, c, Q): log of exp(dt_t A), <= 0
    decay_to_start = log_decay.cumsum(dim=-1)  # (b, H, c, Q): from the chunk's start through t
    x_dt = x * dt[..., None]  # (b, c, Q, H, P): dt_t x_t, the input as it enters the state

    # 1. Diagonal blocks: y_t = sum_{s <= t in the chunk} (C_t . B_s) exp(a_{s+1} + ... + a_t) dt_s x_s.
    mask = torch.exp(_segment_sums(log_decay))  # (b, H, c, Q, Q)
    scores = torch.einsum("bctmn,bcsmn->bmcts", C, B) * mask  # (b, H, c, Q_t, Q_s)
    y = torch.einsum("bmcts,bcsmp->bctmp", scores, x_dt)

    # 2. Each chunk's final state from its own inputs: sum_s exp(a_{s+1} + ... + a_Q) dt_s x_s B_s^T.
    decay_to_end = torch.exp(decay_to_start[..., -1:] - decay_to_start)  # (b, H, c, Q)
    chunk_states = torch.einsum("bcsmn,bmcs,bcsmp->bcmpn", B, decay_to_end, x_dt)  # (b, c, H, P, N)

    # 3. The state entering each chunk: a recurrence over the c chunks (c = L / Q is small).
    chunk_decay = torch.exp(decay_to_start[..., -1])  # (b, H, c): the decay across a whole chunk
    state = x.new_zeros(batch, heads, headdim, d_state) if initial_state is None else initial_state.to(x.dtype)
    entering = []
    for c in range(n_chunks):
        entering.append(state)
        state = chunk_decay[:, :, c, None, None] * state + chunk_states[:, c]
    entering = torch.stack(entering, dim=1)  # (b, c, H, P, N)

    # 4. Off-diagonal blocks: the entering state, decayed to t and read out by C_t.
    y = y + torch.einsum("bctmn,bcmpn,bmct->bctmp", C, entering, torch.exp(decay_to_start))
    y = y.reshape(batch, n_chunks * Q, heads, headdim)[:, :length]
    return y, state


# --------------------------------------------------------------------------- the block


class Mamba2(nn.Module):
    """Mamba-2 block (mamba_ssm.Mamba2 layout), with the project's token-mixer interface.

    forward(x, key_padding_mask=None): (B, L, d_model) -> (B, L, d_model); the mask is
        checked and ignored (no mask: the model zeroes padded tokens' embeddings).
    init_state(batch_size, device=None, dtype=None) -> (conv_state (B, ED + 2 G N, d_conv),
        ssm_state (B, H, P, N)), zeros; mamba_ssm's allocate_inference_cache layout.
    step(x, state): x (B, d_model) -> (y (B, d_model), new_state); the state is not mutated.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int = 256,
        A_init_range: tuple[float, float] = (1, 16),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] = (0.0, float("inf")),
        bias: bool = False,
        conv_bias: bool = True,
        ssd_backend: str = "auto",
    ) -> None:
        super().__init__()
        for name, value in [("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv), ("expand", expand),
                            ("headdim", headdim), ("ngroups", ngroups), ("chunk_size", chunk_size)]:
            check_positive_int(value, name, "Mamba2")
        d_inner = expand * d_model
        if d_inner % headdim != 0:
            raise ValueError(f"Mamba2: expand * d_model = {d_inner} must be a multiple of headdim = {headdim}; "
                             f"choose a headdim that divides it")
        if (d_inner // headdim) % ngroups != 0:
            raise ValueError(f"Mamba2: the {d_inner // headdim} heads must split evenly into ngroups = {ngroups}; "
                             f"choose ngroups dividing {d_inner // headdim}")
        if not 0 < A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"Mamba2: need 0 < A_init_range[0] <= A_init_range[1], got {A_init_range!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"Mamba2: need 0 < dt_min <= dt_max, got dt_min={dt_min!r}, dt_max={dt_max!r}")
        if len(dt_limit) != 2 or not 0 <= dt_limit[0] < dt_limit[1]:
            raise ValueError(f"Mamba2: dt_limit must be (low, high) with 0 <= low < high, got {dt_limit!r}")
        if ssd_backend not in SSD_BACKENDS:
            raise ValueError(f"Mamba2: ssd_backend must be one of {', '.join(SSD_BACKENDS)}, got {ssd_backend!r}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = d_inner
        self.headdim = headdim
        self.nheads = d_inner // headdim
        self.ngroups = ngroups
        self.chunk_size = chunk_size
        self.dt_limit = tuple(dt_limit)
        self.ssd_backend = ssd_backend
        self.conv_dim = d_inner + 2 * ngroups * d_state  # the conv runs over x, B and C

        # Parameters in mamba_ssm's order of creation, so one seed gives both modules the same draws.
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * ngroups * d_state + self.nheads, bias=bias)  # z x B C dt
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, kernel_size=d_conv, groups=self.conv_dim,
                                padding=d_conv - 1, bias=conv_bias)
        # dt_bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max], one per head (as Mamba-1 per channel).
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # log(exp(dt) - 1), stable
        self.dt_bias._no_weight_decay = True
        # A = -U(A_init_range) per head, stored as log for positivity.
        A = torch.empty(self.nheads, dtype=torch.float32).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.nheads))  # skip connection, one per head
        self.D._no_weight_decay = True
        self.norm = nn.Module()  # mamba_ssm's RMSNormGated holds just `weight` (its bias is None)
        self.norm.weight = nn.Parameter(torch.ones(d_inner))
        self.norm_eps = 1e-5
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    @staticmethod
    def resolve_backend(device: torch.device | str) -> tuple[str, str]:
        """The SSD path a model built from the config (ssd_backend auto) runs on `device`, and why."""
        return resolve_ssd_backend("auto", device)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, nheads={self.nheads}, headdim={self.headdim}, "
                f"ngroups={self.ngroups}, d_state={self.d_state}, d_conv={self.d_conv}, "
                f"chunk_size={self.chunk_size}, ssd_backend={self.ssd_backend!r}")

    # ------------------------------------------------------------------ shared pieces
    def _split_projection(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(..., in_proj width) -> z (..., ED), xBC (..., conv_dim), dt (..., H)."""
        return torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)

    def _split_conv_output(self, xBC: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(..., conv_dim) -> x (..., H, P), B (..., G, N), C (..., G, N)."""
        x, B, C = torch.split(xBC, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        lead = xBC.shape[:-1]
        return (x.reshape(*lead, self.nheads, self.headdim), B.reshape(*lead, self.ngroups, self.d_state),
                C.reshape(*lead, self.ngroups, self.d_state))

    def _dt(self, dt: Tensor) -> Tensor:
        """softplus(dt + dt_bias), clamped to dt_limit (mamba_ssm clamps only a non-default limit)."""
        dt = F.softplus(dt + self.dt_bias.to(dt.dtype))
        if self.dt_limit != (0.0, float("inf")):
            dt = dt.clamp(*self.dt_limit)
        return dt

    def _gated_norm_out(self, y: Tensor, z: Tensor) -> Tensor:
        """out_proj(RMSNorm(y * silu(z)) * weight), the norm per group of ED / G channels (§7).

        Half precision is normed in float32, as mamba_ssm's kernel does; float64 stays float64.
        """
        dtype = torch.float64 if y.dtype == torch.float64 else torch.float32
        gated = y.to(dtype) * F.silu(z.to(dtype))
        grouped = gated.unflatten(-1, (self.ngroups, self.d_inner // self.ngroups))
        normed = (grouped * torch.rsqrt(grouped.square().mean(dim=-1, keepdim=True) + self.norm_eps)).flatten(-2)
        return self.out_proj((normed * self.norm.weight.to(dtype)).to(y.dtype))

    # ------------------------------------------------------------------ whole sequences
    def forward(self, u: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        check_sequence(u, self.d_model, "Mamba2")
        check_padding_mask(key_padding_mask, u, "Mamba2")
        length = u.shape[1]
        z, xBC, dt = self._split_projection(self.in_proj(u))  # (B, L, ED), (B, L, conv_dim), (B, L, H)
        xBC = F.silu(self.conv1d(xBC.transpose(1, 2))[..., :length].transpose(1, 2))  # causal: first L outputs
        x, B, C = self._split_conv_output(xBC)  # (B, L, H, P), (B, L, G, N), (B, L, G, N)
        A = -torch.exp(self.A_log.float())  # (H,); float32 even for a half-precision model
        backend, _ = resolve_ssd_backend(self.ssd_backend, u.device)
        if backend == "triton":
            kernel, _ = _triton_ssd()
            limit = {} if self.dt_limit == (0.0, float("inf")) else {"dt_limit": self.dt_limit}
            y = kernel(x, dt, A, B, C, self.chunk_size, D=self.D, dt_bias=self.dt_bias, dt_softplus=True, **limit)
        else:
            # The states in float32 under bf16/fp16 (autocast too), as mamba_ssm's kernel keeps them.
            dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
            with torch.autocast(u.device.type, enabled=False):
                x, dt, B, C = (t.to(dtype) for t in (x, dt, B, C))
                dt = self._dt(dt)
                y, _ = ssd_chunked(x, dt, A.to(dtype), B, C, self.chunk_size)
                y = y + self.D.to(dtype)[:, None] * x  # (B, L, H, P)
        return self._gated_norm_out(y.flatten(-2), z)

    # ------------------------------------------------------------------ one token at a time
    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """Zeros: (conv_state (B, conv_dim, d_conv), the last d_conv conv inputs, oldest first;
        ssm_state (B, H, P, N))."""
        check_positive_int(batch_size, "batch_size", "Mamba2.init_state")
        device = self.in_proj.weight.device if device is None else device
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(batch_size, self.conv_dim, self.d_conv, device=device, dtype=dtype)
        ssm_state = torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device, dtype=dtype)
        return conv_state, ssm_state

    def step(self, u: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One new token per sequence: u (B, d_model) -> y (B, d_model), new state (the old one untouched)."""
        check_token(u, self.d_model, "Mamba2")
        batch = u.shape[0]
        check_state(state, [("conv_state", (batch, self.conv_dim, self.d_conv)),
                             ("ssm_state", (batch, self.nheads, self.headdim, self.d_state))], "Mamba2")
        conv_state, ssm_state = state
        z, xBC, dt = self._split_projection(self.in_proj(u))  # (B, ED), (B, conv_dim), (B, H)
        window = torch.cat([conv_state[..., 1:].to(u.dtype), xBC[..., None]], dim=-1)  # (B, conv_dim, d_conv)
        conv_out = (window * self.conv1d.weight[:, 0]).sum(dim=-1)
        if self.conv1d.bias is not None:
            conv_out = conv_out + self.conv1d.bias
        x, B, C = self._split_conv_output(F.silu(conv_out))  # (B, H, P), (B, G, N), (B, G, N)
        B = B.repeat_interleave(self.nheads // self.ngroups, dim=1)  # (B, H, N)
        C = C.repeat_interleave(self.nheads // self.ngroups, dim=1)
        dt = self._dt(dt)  # (B, H)
        A = -torch.exp(self.A_log.float()).to(dt.dtype)  # (H,)
        # h_t = exp(dt A) h_{t-1} + dt x_t B_t^T;  y_t = h_t C_t + D x_t
        h = torch.exp(dt * A)[..., None, None] * ssm_state.to(u.dtype) + (dt[..., None] * x)[..., None] * B[:, :, None]
        y = (h * C[:, :, None]).sum(dim=-1) + self.D.to(u.dtype)[:, None] * x  # (B, H, P)
        out = self._gated_norm_out(y.flatten(-2), z)
        return out, (window.to(conv_state.dtype), h.to(ssm_state.dtype))
