"""DMamba's recurrent step on the CPU: all layers in one numba kernel call.

`DecisionModel.step` advances every layer by the 2-3 tokens of one environment step. In
PyTorch that is about 35 small operations per layer, each a few microseconds of dispatch
(and, with several threads, a wake-up of the thread pool) around a few microseconds of
arithmetic: at batch 1 the step cost as much as recomputing a 20-step window. Here one
call runs Eq. (8)-(9) for every layer, new token and sequence:

    h  = LN(x);  x_in, z = in_proj(h)
    u  = silu(conv1d over the last d_conv x_in)             conv_state keeps them
    dt_low, B, C = x_proj(u);  delta = softplus(dt_proj(dt_low))
    s  = exp(delta A) s + delta B u;  y = (C . s + D u) silu(z)     ssm_state is s
    x += out_proj(y);  x += fc2(gelu(fc1(LN(x))))           (the MLP unless "RC")

the arithmetic of `Mamba.step_chunk` and `ChannelMLP` (tests/test_fused_step.py holds
them equal). Inference only: no gradient, no dropout. From BLAS_MIN_BATCH sequences on,
the matrix products go to torch's BLAS instead and only the conv and the SSM run in
(per-layer) numba kernels, the same helpers as the single kernel's.

The states are mamba_ssm's (B, ED, d_conv) and (B, ED, N) tensors, stored channel-last
underneath (transposed views of (B, d_conv, ED) and (B, N, ED) arrays): the kernels' loops
run over contiguous channels and the next step reads the state with no transposed copy.

Only the conv and SSM states need the tokens in order; the projections and the MLP are
position-wise and run over all new tokens at once. Matrix products are row updates,
out[r] += x[r, i] * W^T[i, :], over the rows of the transposed weight: the inner loop is
contiguous and free of reductions, so LLVM vectorises it without reassociating sums
(which the kernels avoid: see selective_scan.py). The transposed copies are made once and
remade when a parameter changes (a new tensor, or an in-place update, which torch counts
in `Tensor._version`), checked at every call by reading the weights off the modules: no
process-wide torch hooks. Not seen: an in-place write through `param.data` (`.data` is a
tensor with a version counter of its own); change weights under `torch.no_grad()` instead.
"""

from __future__ import annotations

import math
import types
import weakref

import numba
import numpy as np
import torch
import torch.nn.functional as F
from numba import prange, types as nb_types
from numba.extending import overload
from torch import Tensor, nn

from decision_mamba.selective_scan import jit_kernel, kernel_exp, use_torch_thread_count

__all__ = ["fused_step_applies", "fused_layers_step"]


# (This file's kernels recompile after a change of jit_kernel's options: see its comment.)
def _helper(fn):
    return jit_kernel(fn, parallel=False)  # called from the kernels below, which are parallel or not


@_helper
def _layer_norm(x, weight, bias, out):
    n = x.shape[0]
    mean = x.dtype.type(0)
    for i in range(n):
        mean += x[i]
    mean /= x.dtype.type(n)
    var = x.dtype.type(0)
    for i in range(n):
        var += (x[i] - mean) * (x[i] - mean)
    inv_std = x.dtype.type(1) / math.sqrt(var / x.dtype.type(n) + x.dtype.type(1e-5))  # nn.LayerNorm's default eps
    for i in range(n):
        out[i] = (x[i] - mean) * inv_std * weight[i] + bias[i]


@_helper
def _start_from_bias(row, bias):
    """row = bias, or zeros where bias is empty (no bias). Explicit loops: numba's slice
    assignment is a generic copy that does not vectorise."""
    if bias.shape[0]:
        for j in range(row.shape[0]):
            row[j] = bias[j]
    else:
        for j in range(row.shape[0]):
            row[j] = 0


@_helper
def _linear_rows(x, weight_t, bias, out):
    """out = x @ weight_t (+ bias unless it is empty); x (M, in), weight_t (in, out), out (M, out)."""
    rows, n_out = out.shape
    for r in range(rows):
        _start_from_bias(out[r], bias)
    for i in range(x.shape[1]):
        w = weight_t[i]
        for r in range(rows):
            xi = x[r, i]
            o = out[r]
            for j in range(n_out):
                o[j] += xi * w[j]


def _like(v, c):
    """The constant c in v's float type. numba types a Python literal as int64 or float64, and
    float32 with either is float64: `1 + v` would make every float32 kernel below compute
    in float64 (and not vectorise as well)."""
    return c


@overload(_like)
def _like_overload(v, c):
    to = np.float32 if v == nb_types.float32 else np.float64
    return lambda v, c: to(c)


@_helper
def _silu(v):
    return v / (_like(v, 1.0) + kernel_exp(-v))


@_helper
def _softplus(v):
    return v if v > _like(v, 20.0) else math.log1p(kernel_exp(v))  # F.softplus's threshold


@_helper
def _gelu(v):  # exact GELU, F.gelu's default
    return v * _like(v, 0.5) * (_like(v, 1.0) + math.erf(v * _like(v, 0.7071067811865476)))


@_helper
def _conv_silu_tokens(xz, window, new_window, conv_w_t, conv_b, u):
    """u_t = silu(conv_b + sum_k conv_w_t[k] window_t[k]) for one sequence's new tokens, where
    window_t holds the last d_conv conv inputs up to token t, oldest first.

    xz: (T, 2 ED), the new conv inputs x_in in its first ED columns; window: (d_conv, ED),
    the d_conv inputs before them; new_window: (d_conv, ED) <- the last d_conv after them;
    conv_w_t: (d_conv, ED); conv_b: (ED,) or (0,) for none; u: (T, ED) <- the outputs.
    """
    tokens, d_inner = u.shape
    d_conv = window.shape[0]
    for t in range(tokens):
        u_t = u[t]
        _start_from_bias(u_t, conv_b)
        for k in range(d_conv):
            p = t + 1 + k  # input p of the history [window, x_in]
            w = conv_w_t[k]
            if p < d_conv:  # (two loops, not one over a chosen row: see _ssm_tokens)
                old = window[p]
                for j in range(d_inner):
                    u_t[j] += w[j] * old[j]
            else:
                new = xz[p - d_conv]
                for j in range(d_inner):
                    u_t[j] += w[j] * new[j]
        for j in range(d_inner):
            u_t[j] = _silu(u_t[j])
    for k in range(d_conv):
        p = tokens + k
        if p < d_conv:
            old = window[p]
            for j in range(d_inner):
                new_window[k, j] = old[j]
        else:
            new = xz[p - d_conv]
            for j in range(d_inner):
                new_window[k, j] = new[j]


@_helper
def _ssm_tokens(xz, u, delta, dbc, A_t, D, s, new_s, y):
    """The SSM over one sequence's new tokens in order (Eq. 2-3), with the skip and the gate:
    s = exp(delta A) s + delta B u;  y = (C . s + D u) silu(z).

    xz: (T, 2 ED), the gate z in its last ED columns; u: (T, ED); delta: (T, ED), already
    softplus(dt_proj(dt_low)) (numba's log1p does not vectorise: 256 of them cost as much as
    the whole SSM update, so it runs where it does, below or in torch); dbc: (T, R + 2N),
    x_proj's output (dt_low, B, C); A_t: (N, ED); D: (ED,); s: (N, ED), the state before;
    new_s: (N, ED) <- the state after; y: (T, ED) <- the outputs.
    """
    tokens, d_inner = u.shape
    d_state = A_t.shape[0]
    dt_rank = dbc.shape[1] - 2 * d_state
    for t in range(tokens):
        u_t, delta_t, y_t = u[t], delta[t], y[t]
        for j in range(d_inner):
            y_t[j] = D[j] * u_t[j]
        for n in range(d_state):
            B_n = dbc[t, dt_rank + n]
            C_n = dbc[t, dt_rank + d_state + n]
            A_n, after = A_t[n], new_s[n]
            # The first token reads the old state, the later ones update the new one in
            # place: one pass over the (large) state per token. Two loops, not one over
            # `s if t == 0 else new_s`: LLVM's runtime overlap check rejects a loop reading
            # and writing one array through two names, and it would not vectorise.
            if t == 0:
                before = s[n]
                for j in range(d_inner):
                    h = kernel_exp(delta_t[j] * A_n[j]) * before[j] + delta_t[j] * u_t[j] * B_n
                    after[j] = h
                    y_t[j] += C_n * h
            else:
                for j in range(d_inner):
                    h = kernel_exp(delta_t[j] * A_n[j]) * after[j] + delta_t[j] * u_t[j] * B_n
                    after[j] = h
                    y_t[j] += C_n * h
        for j in range(d_inner):
            y_t[j] *= _silu(xz[t, d_inner + j])


def _decision_layers_step(x, conv_states, ssm_states, new_conv_states, new_ssm_states, n_chunks,
                          ln1_w, ln1_b, in_w_t, in_b, conv_w_t, conv_b, x_proj_w_t, dt_w_t, dt_b, A_t, D,
                          out_w_t, out_b, ln2_w, ln2_b, fc_w_t, fc_b, proj_w_t, proj_b):
    """Every DecisionLayer of a DMamba over the T new tokens of each sequence; x is updated in place.

    x: (B, T, d). conv_states[l]: (B, d_conv, ED), oldest first; ssm_states[l]: (B, N, ED)
    (channel-last: see the module docstring); both left untouched, the new states go to
    new_*[l]. Weights are stacked over the L layers, the linear ones transposed to
    (in, out); conv_w_t: (L, d_conv, ED);
    A_t = -exp(A_log)^T: (L, N, ED). Biases of size 0 mean none; fc weights of size 0 mean
    no channel MLP (the RC ablation).

    The sequences are split into `n_chunks` contiguous chunks, one per thread, each taken
    through all the layers: a single parallel region per call (waking the threads costs
    about as much as a layer's work at small batch), and each weight row is read once
    per chunk.
    """
    batch, tokens, d_model = x.shape
    n_layer, d_conv, d_inner = conv_w_t.shape
    d_state = A_t.shape[1]
    dt_rank = dt_w_t.shape[1]
    d_hidden = fc_w_t.shape[2]
    per_chunk = (batch + n_chunks - 1) // n_chunks
    for chunk in prange(n_chunks):
        b0 = chunk * per_chunk
        b1 = min(batch, b0 + per_chunk)
        rows = max(0, b1 - b0) * tokens
        xs = x[b0:b1].reshape(rows, d_model)  # row r: token r % T of sequence b0 + r // T
        normed = np.empty((rows, d_model), x.dtype)
        xz = np.empty((rows, 2 * d_inner), x.dtype)  # x_in (ED) then the gate z (ED)
        u = np.empty((rows, d_inner), x.dtype)
        dbc = np.empty((rows, dt_rank + 2 * d_state), x.dtype)  # dt_low (R), B (N), C (N)
        delta = np.empty((rows, d_inner), x.dtype)
        y = np.empty((rows, d_inner), x.dtype)
        mixed = np.empty((rows, d_model), x.dtype)
        hidden = np.empty((rows, d_hidden), x.dtype)
        for layer in range(n_layer):
            # 1. Position-wise: the pre-norm and in_proj of every new token.
            for r in range(rows):
                _layer_norm(xs[r], ln1_w[layer], ln1_b[layer], normed[r])
            _linear_rows(normed, in_w_t[layer], in_b[layer], xz)
            # 2. The conv, token after token; then x_proj and dt_proj, position-wise again;
            # then the SSM, token after token.
            for b in range(b0, b1):
                r0 = (b - b0) * tokens
                _conv_silu_tokens(xz[r0:r0 + tokens], conv_states[layer][b], new_conv_states[layer][b],
                                  conv_w_t[layer], conv_b[layer], u[r0:r0 + tokens])
            _linear_rows(u, x_proj_w_t[layer], dt_b[layer, :0], dbc)
            _linear_rows(dbc[:, :dt_rank], dt_w_t[layer], dt_b[layer], delta)
            for r in range(rows):
                for j in range(d_inner):
                    delta[r, j] = _softplus(delta[r, j])
            for b in range(b0, b1):
                r0 = (b - b0) * tokens
                _ssm_tokens(xz[r0:r0 + tokens], u[r0:r0 + tokens], delta[r0:r0 + tokens], dbc[r0:r0 + tokens],
                            A_t[layer], D[layer], ssm_states[layer][b], new_ssm_states[layer][b], y[r0:r0 + tokens])

            # 3. Position-wise: out_proj and the residual, then the channel MLP (Eq. 8-9).
            _linear_rows(y, out_w_t[layer], out_b[layer], mixed)
            xs += mixed
            if d_hidden:
                for r in range(rows):
                    _layer_norm(xs[r], ln2_w[layer], ln2_b[layer], normed[r])
                _linear_rows(normed, fc_w_t[layer], fc_b[layer], hidden)
                for r in range(rows):
                    for i in range(d_hidden):
                        hidden[r, i] = _gelu(hidden[r, i])
                _linear_rows(hidden, proj_w_t[layer], proj_b[layer], mixed)
                xs += mixed


def _mixer_conv(xz, conv_state, conv_w_t, conv_b, u, new_conv_state):
    """The conv of one Mamba layer for every sequence: xz (B, T, 2 ED) -> u (B, T, ED).

    conv_state: (B, d_conv, ED), left untouched; the new one goes to new_conv_state."""
    for b in range(xz.shape[0]):
        _conv_silu_tokens(xz[b], conv_state[b], new_conv_state[b], conv_w_t, conv_b, u[b])


def _mixer_ssm(xz, u, delta, dbc, A_t, D, ssm_state, y, new_ssm_state):
    """The SSM of one Mamba layer for every sequence (see _ssm_tokens): -> y (B, T, ED).

    ssm_state: (B, N, ED), left untouched; the new one goes to new_ssm_state."""
    for b in range(xz.shape[0]):
        _ssm_tokens(xz[b], u[b], delta[b], dbc[b], A_t, D, ssm_state[b], new_ssm_state[b], y[b])


def _compile(fn, parallel: bool):
    # numba's disk cache files a kernel under its function's qualified name and keys it by
    # signature and source, not by the compile options: two dispatchers of one function
    # would load each other's machine code (measured: the "parallel" one ran serially).
    # So each variant gets a function object of its own name.
    name = f"{fn.__name__}_{'parallel' if parallel else 'serial'}"
    variant = types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    variant.__qualname__ = name
    return jit_kernel(variant, parallel=parallel)


# The same kernel twice: with parallel regions for many tokens, plain loops for few. Every
# token's arithmetic is the same in both, so are the results.
_layers_step_serial = _compile(_decision_layers_step, parallel=False)
_layers_step_parallel = _compile(_decision_layers_step, parallel=True)
# Serial: between torch's matrix products, whose OpenMP threads are still spinning, a numba
# parallel region costs ~50 us to start and fights them for the cores (measured at batch
# 100, 2 threads: 16.7 ms a step with parallel kernels, 13.0 ms with serial ones).
_mixer_conv_kernel = jit_kernel(_mixer_conv, parallel=False)
_mixer_ssm_kernel = jit_kernel(_mixer_ssm, parallel=False)


# ------------------------------------------------------------------ weights, once
def _stacked(tensors: list, dtype: torch.dtype, transpose: bool = False) -> np.ndarray:
    """(L, ...) over the layers; (L, 0) when the tensors are None (no bias), copied."""
    if tensors[0] is None:
        return np.zeros((len(tensors), 0), dtype=torch.empty(0, dtype=dtype).numpy().dtype)
    return torch.stack([(t.t() if transpose else t).detach().to(dtype) for t in tensors]).contiguous().numpy()


# Where each kernel weight lives in a DecisionLayer, in the kernel's order, and whether it
# is transposed. The paths are walked through the modules' own dicts (_modules,
# _parameters): nn.Module.__getattr__ costs ~2 us a call, which at 57 weights was a fifth
# of a batch-1 step.
_MIXER_WEIGHTS = (
    (("ln_mixer", "weight"), False), (("ln_mixer", "bias"), False),
    (("mixer", "in_proj", "weight"), True), (("mixer", "in_proj", "bias"), False),
    (("mixer", "conv1d", "weight"), True),  # (ED, 1, d_conv): taps [:, 0, :], then transposed
    (("mixer", "conv1d", "bias"), False),
    (("mixer", "x_proj", "weight"), True),
    (("mixer", "dt_proj", "weight"), True), (("mixer", "dt_proj", "bias"), False),
    (("mixer", "A_log"), True),  # A = -exp(A_log), transposed
    (("mixer", "D"), False),
    (("mixer", "out_proj", "weight"), True), (("mixer", "out_proj", "bias"), False),
)
_MLP_WEIGHTS = (
    (("ln_mlp", "weight"), False), (("ln_mlp", "bias"), False),
    (("mlp", "fc", "weight"), True), (("mlp", "fc", "bias"), False),
    (("mlp", "proj", "weight"), True), (("mlp", "proj", "bias"), False),
)

# The position of each mixer weight among the kernel's arguments (the BLAS path reads some by name).
_WEIGHT_INDEX = {path: index for index, (path, _) in enumerate(_MIXER_WEIGHTS)}


def _lookup(module: nn.Module, path: tuple[str, ...]) -> Tensor | None:
    for name in path[:-1]:
        module = module._modules[name]
        if module is None:
            return None
    return module._parameters.get(path[-1])


def _weight_tensors(layers: nn.ModuleList) -> list[tuple[list[Tensor | None], bool]]:
    """The kernel's weight arguments, in its order: (the tensor of each layer or None, transpose).
    Read afresh at every step, so a Parameter or block assigned in place of another is seen."""
    layer_list = list(layers._modules.values())
    mlp = _MLP_WEIGHTS if layer_list[0]._modules.get("mlp") is not None else ()
    tensors = [([_lookup(layer, path) for layer in layer_list], transpose) for path, transpose in _MIXER_WEIGHTS + mlp]
    if not mlp:  # RC: no channel MLP, empty weights (d_hidden = 0)
        tensors += [([None] * len(layer_list), False)] * len(_MLP_WEIGHTS)
    return tensors


def _stacked_weights(tensors: list, dtype: torch.dtype) -> tuple[np.ndarray, ...]:
    """The kernel's weight arrays from `_weight_tensors`: stacked over the layers, copied."""
    arrays = []
    for index, (per_layer, transpose) in enumerate(tensors):
        if index == 4:  # the conv taps
            per_layer = [w[:, 0, :] for w in per_layer]
        elif index == 9:  # A from A_log
            per_layer = [-torch.exp(a.detach()) for a in per_layer]
        arrays.append(_stacked(per_layer, dtype, transpose))
    if tensors[-2][0][0] is None:  # RC: the fc and proj weights are (L, 0, 0)
        n_layer = len(tensors[0][0])
        arrays[-4] = arrays[-4].reshape(n_layer, 0, 0)
        arrays[-2] = arrays[-2].reshape(n_layer, 0, 0)
    return tuple(arrays)


# layers -> (tensors, key, weights); weak, so that a deleted model frees its copies. The
# entry holds the tensors it was made from, so their ids cannot be reused while it lives.
_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cached_weights(layers: nn.ModuleList, dtype: torch.dtype) -> tuple[np.ndarray, ...]:
    """The kernel's weights, remade when a parameter was replaced (another tensor), changed
    in place (an optimiser step, load_state_dict: torch counts in-place updates in
    `Tensor._version`) or given new storage (`.data =`)."""
    tensors = _weight_tensors(layers)
    flat = [t for per_layer, _ in tensors for t in per_layer if t is not None]
    key = (dtype, *[(id(t), t._version, t.data_ptr()) for t in flat])
    cached = _WEIGHTS.get(layers)
    if cached is None or cached[1] != key:
        cached = (flat, key, _stacked_weights(tensors, dtype))
        _WEIGHTS[layers] = cached
    return cached[2]


# ------------------------------------------------------------------ entry points
def fused_step_applies(model: nn.Module, x: Tensor) -> bool:
    """Whether `fused_layers_step` may run this step: a DMamba model in eval mode,
    CPU tokens in float32/float64, no gradient wanted, and a scan backend that allows it
    (not "reference")."""
    cfg = model.cfg
    return (cfg.mixer == "mamba" and cfg.scan_backend in ("auto", "fused")
            and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64) and not model.training
            and not (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in model.parameters()))))


# From this many sequences on, the position-wise work (the projections and the MLP, ~95% of
# the arithmetic) goes to torch's BLAS, ~2.5x faster per core than the kernel's row
# updates once there are enough rows to fill its tiles; the conv and the SSM stay in numba
# kernels. Below it the single kernel wins: its one call replaces ~40 torch calls of a few
# microseconds each. Measured (2 threads, interleaved, torch/kernel time per step): 2.36x at
# batch 1, 1.02x at 6, 0.88x at 8, 0.77x at 10, 0.50x at 100, 0.59x at 400.
BLAS_MIN_BATCH = 8


def fused_layers_step(layers: nn.ModuleList, x: Tensor, states: list[tuple[Tensor, Tensor]]
                      ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """All DecisionLayers of a DMamba over T new tokens: x (B, T, d) -> (B, T, d), new states.

    The old states are left untouched (as by `Mamba.step`); the new ones keep their dtypes.
    Below BLAS_MIN_BATCH sequences one numba kernel runs everything, and a sequence's
    numbers do not depend on the others in the batch; from it on, the matrix products go
    to torch (see BLAS_MIN_BATCH). Either way the same inputs give the same bits.
    """
    # The bookkeeping is in numpy: a torch call costs a few microseconds even when it does
    # nothing (a .to() to the same dtype), and at batch 1 the whole kernel takes ~0.5 ms.
    dtype = x.dtype
    old_conv = tuple(_channel_last(c, dtype) for c, _ in states)
    old_ssm = tuple(_channel_last(s, dtype) for _, s in states)
    new_conv = tuple(np.empty_like(a) for a in old_conv)
    new_ssm = tuple(np.empty_like(a) for a in old_ssm)
    weights = _cached_weights(layers, dtype)
    if x.shape[0] >= BLAS_MIN_BATCH:
        out = _layers_step_with_blas(layers, x.detach(), old_conv, old_ssm, new_conv, new_ssm, weights)
    else:
        x_np = np.array(x.detach().numpy(), order="C")  # a copy: the kernel updates it in place
        # A thread per chunk of sequences. One sequence runs without a parallel region, whose
        # start-up (~0.1 ms here) would cost a third of its step; from two on, threads pay.
        n_chunks = min(x_np.shape[0], torch.get_num_threads())
        if n_chunks > 1:
            use_torch_thread_count()
            n_chunks = min(n_chunks, numba.get_num_threads())
        kernel = _layers_step_parallel if n_chunks > 1 else _layers_step_serial
        kernel(x_np, old_conv, old_ssm, new_conv, new_ssm, n_chunks, *weights)
        out = torch.from_numpy(x_np)
    return out, [(_state_tensor(c, c0), _state_tensor(s, s0)) for c, s, (c0, s0) in zip(new_conv, new_ssm, states)]


def _layers_step_with_blas(layers: nn.ModuleList, x: Tensor, old_conv, old_ssm, new_conv, new_ssm,
                           weights: tuple[np.ndarray, ...]) -> Tensor:
    """The same layers as `_decision_layers_step`, the matrix products in torch (the layers'
    own modules, in eval mode), the conv and the SSM in the per-layer kernels above."""
    conv_w_t, conv_b, A_t, D = (weights[_WEIGHT_INDEX[path]] for path in
                                (("mixer", "conv1d", "weight"), ("mixer", "conv1d", "bias"), ("mixer", "A_log"),
                                 ("mixer", "D")))
    for index, layer in enumerate(layers):
        mixer = layer.mixer
        xz = mixer.in_proj(layer.ln_mixer(x)).contiguous()  # (B, T, 2 ED): x_in, z
        u = x.new_empty(*x.shape[:2], mixer.d_inner)  # (B, T, ED)
        _mixer_conv_kernel(xz.numpy(), old_conv[index], conv_w_t[index], conv_b[index], u.numpy(),
                           new_conv[index])
        dbc = mixer.x_proj(u)  # (B, T, R + 2N): dt_low, B, C
        delta = F.softplus(F.linear(dbc[..., :mixer.dt_rank], mixer.dt_proj.weight, mixer.dt_proj.bias))  # (B, T, ED)
        y = torch.empty_like(u)
        _mixer_ssm_kernel(xz.numpy(), u.numpy(), delta.numpy(), dbc.numpy(), A_t[index], D[index],
                          old_ssm[index], y.numpy(), new_ssm[index])
        x = x + mixer.out_proj(y)
        if layer.mlp is not None:
            x = x + layer.mlp(layer.ln_mlp(x))
    return x


def _channel_last(state: Tensor, dtype: torch.dtype) -> np.ndarray:
    """A (B, ED, K) state as the C-contiguous (B, K, ED) array the kernels use: no copy for
    a state this module made (see _state_tensor), one transposed copy for any other."""
    if state.dtype != dtype:
        state = state.to(dtype)
    return np.ascontiguousarray(state.detach().transpose(1, 2).numpy())


def _state_tensor(a: np.ndarray, like: Tensor) -> Tensor:
    """A kernel state (B, K, ED) as the (B, ED, K) tensor of mamba_ssm's layout, in like's dtype.

    A transposed view: its values are those of the (B, ED, K) state, its memory channel-last,
    so that the next step hands it to the kernels without a copy (and the PyTorch step,
    which takes any strides, reads it as it is)."""
    t = torch.from_numpy(a).transpose(1, 2)
    return t if t.dtype == like.dtype else t.to(like.dtype)
