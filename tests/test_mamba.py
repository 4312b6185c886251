"""The Mamba block: mamba_ssm's parameter layout and init, fused == reference, causality,
recurrent steps == the whole sequence, and that it can learn."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from decision_mamba.mamba import Mamba, causal_conv1d_silu


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def make_block(d_model=24, seed=0, **kwargs) -> Mamba:
    torch.manual_seed(seed)
    return Mamba(d_model, **kwargs)


def perturb_parameters(block: Mamba, seed: int = 1) -> Mamba:
    """Move every parameter off its structured init (A_log rows all equal, D = 1, ...) so
    that a wrong index or a missing term cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return block


# --------------------------------------------------------------------------- mamba_ssm layout


def test_state_dict_matches_mamba_ssm_layout():
    block = Mamba(40)
    # mamba_ssm.Mamba(d_model=40) with its defaults: d_inner = 80, dt_rank = ceil(40 / 16) = 3,
    # d_state = 16, d_conv = 4, no in/out projection bias, conv bias; written out by hand.
    expected = {
        "A_log": (80, 16),
        "D": (80,),
        "in_proj.weight": (160, 40),
        "conv1d.weight": (80, 1, 4),
        "conv1d.bias": (80,),
        "x_proj.weight": (3 + 2 * 16, 80),
        "dt_proj.weight": (80, 3),
        "dt_proj.bias": (80,),
        "out_proj.weight": (40, 80),
    }
    state = block.state_dict()
    assert list(state) == list(expected)  # same order too
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    # a mamba_ssm checkpoint (here: another block's state_dict) loads strictly
    Mamba(40).load_state_dict(state, strict=True)


def test_bias_options_add_and_remove_the_same_parameters_as_mamba_ssm():
    keys = set(Mamba(16, bias=True, conv_bias=False, d_state=8, expand=3, dt_rank=5, d_conv=3).state_dict())
    assert keys == {"A_log", "D", "in_proj.weight", "in_proj.bias", "conv1d.weight", "x_proj.weight",
                    "dt_proj.weight", "dt_proj.bias", "out_proj.weight", "out_proj.bias"}
    block = Mamba(16, bias=True, conv_bias=False, d_state=8, expand=3, dt_rank=5, d_conv=3)
    assert block.x_proj.weight.shape == (5 + 16, 48)
    assert block.conv1d.weight.shape == (48, 1, 3)


def test_initialisation_follows_mamba_ssm():
    block = make_block(128)
    d_inner, d_state, dt_rank = 256, 16, 8
    torch.testing.assert_close(block.A_log.detach(),
                               torch.log(torch.arange(1.0, d_state + 1)).repeat(d_inner, 1), rtol=0, atol=0)
    assert torch.equal(block.D.detach(), torch.ones(d_inner))
    dt = F.softplus(block.dt_proj.bias.detach().double())
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    # log-uniform in [1e-3, 0.1]: log(dt) has mean (log 1e-3 + log 0.1) / 2 and std 4.6 / sqrt(12)
    assert abs(dt.log().mean().item() - (math.log(1e-3) + math.log(0.1)) / 2) < 0.3
    assert abs(dt.log().std().item() - math.log(100) / math.sqrt(12)) < 0.15
    bound = dt_rank ** -0.5
    weight = block.dt_proj.weight.detach()
    assert weight.abs().max() <= bound and abs(weight.std().item() - bound / math.sqrt(3)) < 0.02
    # the flags the trainer and the model-wide init respect
    assert block.A_log._no_weight_decay and block.D._no_weight_decay
    assert block.dt_proj.bias._no_reinit


def test_dt_init_floor_and_constant_init():
    block = make_block(16, dt_min=1e-6, dt_max=1e-5, dt_init_floor=5e-6, dt_init="constant", dt_scale=2.0)
    dt = F.softplus(block.dt_proj.bias.detach().double())
    assert dt.min() >= 5e-6 * (1 - 1e-4)
    assert torch.allclose(block.dt_proj.weight, torch.full_like(block.dt_proj.weight, 2.0 * 1 ** -0.5))


# --------------------------------------------------------------------------- fused == reference


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_fused_block_matches_reference_block(dtype, tol):
    fused = perturb_parameters(make_block(24, scan_backend="fused")).to(dtype)
    reference = copy.deepcopy(fused).double()
    reference.scan_backend = "reference"  # torch conv1d and the sequential scan
    x = torch.randn(3, 13, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x_fused = x.clone().to(dtype).requires_grad_()
    x_ref = x.clone().requires_grad_()
    weight = torch.randn(3, 13, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out_fused = fused(x_fused)
    out_ref = reference(x_ref)
    assert out_fused.dtype == dtype and out_fused.shape == (3, 13, 24)
    assert rel_err(out_fused, out_ref) < tol
    (out_fused * weight.to(dtype)).sum().backward()
    (out_ref * weight).sum().backward()
    assert rel_err(x_fused.grad, x_ref.grad) < tol
    for (name, p_fused), p_ref in zip(fused.named_parameters(), reference.parameters()):
        assert rel_err(p_fused.grad, p_ref.grad) < tol, name


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_block_is_causal(backend):
    block = perturb_parameters(make_block(16, scan_backend=backend)).double()
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    t = 5
    x_changed = x.clone()
    x_changed[:, t + 1:] += torch.randn(2, 12 - t - 1, 16, dtype=torch.float64)
    with torch.no_grad():
        out, out_changed = block(x), block(x_changed)
    assert torch.equal(out[:, : t + 1], out_changed[:, : t + 1])
    assert (out[:, t + 1:] - out_changed[:, t + 1:]).abs().min() > 0


def test_key_padding_mask_is_accepted_and_ignored():
    block = make_block(16)
    x = torch.randn(2, 5, 16)
    mask = torch.tensor([[False, False, True, True, True], [True] * 5])
    with torch.no_grad():
        assert torch.equal(block(x, key_padding_mask=mask), block(x))


# --------------------------------------------------------------------------- recurrent inference


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("seqlen", [1, 9])
def test_steps_equal_the_forward_pass(dtype, tol, seqlen):
    block = perturb_parameters(make_block(16, d_conv=3)).to(dtype)
    x = torch.randn(3, seqlen, 16, dtype=dtype, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = block(x)
        state = block.init_state(3)
        outs = []
        for t in range(seqlen):
            before = tuple(s.clone() for s in state)
            y, new_state = block.step(x[:, t], state)
            assert all(torch.equal(a, b) for a, b in zip(state, before))  # the old state is untouched
            state = new_state
            outs.append(y)
    assert rel_err(torch.stack(outs, dim=1), full) < tol
    assert state[0].shape == (3, 32, 3) and state[1].shape == (3, 32, 16)


def test_init_state_is_zeros_with_the_documented_shapes():
    block = make_block(16, d_state=8, d_conv=5, expand=3)
    conv_state, ssm_state = block.init_state(4, dtype=torch.float64)
    assert conv_state.shape == (4, 48, 5) and ssm_state.shape == (4, 48, 8)
    assert conv_state.dtype == ssm_state.dtype == torch.float64
    assert not conv_state.any() and not ssm_state.any()


# --------------------------------------------------------------------------- the conv kernel


@pytest.mark.parametrize("seqlen,taps", [(1, 4), (3, 4), (10, 2), (7, 5)])
def test_fused_causal_conv_matches_torch_conv1d(seqlen, taps):
    g = torch.Generator().manual_seed(seqlen * taps)
    # x as the first half of a wider tensor, like the block's in_proj output
    xz = torch.randn(3, seqlen, 14, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 1, taps, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(7, generator=g, dtype=torch.float64, requires_grad=True)
    outs = {}
    for backend in ("fused", "reference"):
        y = causal_conv1d_silu(xz[..., :7], weight, bias, backend)
        outs[backend] = [y, *torch.autograd.grad((y * y.detach().cos()).sum(), (xz, weight, bias))]
    for ours, theirs in zip(outs["fused"], outs["reference"]):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_gradcheck_of_the_fused_causal_conv():
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
              for shape in [(2, 5, 3), (3, 1, 4), (3,)]]
    assert torch.autograd.gradcheck(lambda x, w, b: causal_conv1d_silu(x, w, b, "fused"), inputs)


# --------------------------------------------------------------------------- learning


def test_block_with_a_linear_readout_overfits_a_fixed_batch():
    torch.manual_seed(0)
    block = Mamba(16, d_state=8)
    readout = torch.nn.Linear(16, 2)
    x = torch.randn(4, 12, 16)
    target = torch.randn(4, 12, 2)
    params = list(block.parameters()) + list(readout.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(150):
        optimizer.zero_grad()
        loss = F.mse_loss(readout(block(x)), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 100


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    block = make_block(16)
    with pytest.raises(ValueError, match=r"expected x of shape \(batch, seq_len, 16\), got \(5, 16\)"):
        block(torch.randn(5, 16))
    with pytest.raises(ValueError, match=r"expected x of shape \(batch, seq_len, 16\), got \(2, 5, 15\)"):
        block(torch.randn(2, 5, 15))
    with pytest.raises(ValueError, match="floating-point"):
        block(torch.ones(2, 5, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        block(torch.randn(2, 0, 16))
    with pytest.raises(ValueError, match=r"key_padding_mask must be a bool tensor of shape \(batch, seq_len\) = \(2, 5\)"):
        block(torch.randn(2, 5, 16), key_padding_mask=torch.ones(2, 4, dtype=torch.bool))
    state = block.init_state(2)
    with pytest.raises(ValueError, match=r"expected x of shape \(batch, 16\)"):
        block.step(torch.randn(2, 3, 16), state)
    with pytest.raises(ValueError, match=r"state conv_state must have shape \(3, 32, 4\), got \(2, 32, 4\)"):
        block.step(torch.randn(3, 16), state)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        block.init_state(0)
    with pytest.raises(ValueError, match="d_state must be a positive integer"):
        Mamba(16, d_state=0)
    with pytest.raises(ValueError, match="scan_backend must be one of auto, cuda, parallel, fused, reference"):
        Mamba(16, scan_backend="triton")
    with pytest.raises(ValueError, match="dt_init must be 'random' or 'constant'"):
        Mamba(16, dt_init="normal")


@pytest.mark.parametrize("chunks", [(1, 3, 2), (4, 1, 1, 3), (9,)])
def test_chunked_steps_equal_the_forward_pass(chunks):
    torch.manual_seed(0)
    block = Mamba(16, d_state=4, scan_backend="reference").double()
    x = torch.randn(2, sum(chunks), 16, dtype=torch.float64)
    full = block(x)
    state, outputs, start = block.init_state(2, dtype=torch.float64), [], 0
    for size in chunks:
        y, state = block.step_chunk(x[:, start:start + size], state)
        outputs.append(y)
        start += size
    torch.testing.assert_close(torch.cat(outputs, dim=1), full, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(batch, tokens, 16\)"):
        block.step_chunk(x[:, 0], state)
