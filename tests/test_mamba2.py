"""The Mamba-2 block (decision_mamba/mamba2.py): the chunked SSD, the recurrent step, and
parity with mamba-ssm 2.3.2.post1's `Mamba2` on the CPU.

The real package comes from the cache test_mamba_ssm_package.py fills (its source release,
no CUDA build). mamba_ssm's Mamba2 imports Triton at module level, so pip's triton wheel is
installed next to it (--target, torch untouched) and run by its interpreter
(TRITON_INTERPRET=1) on CPU tensors, with three CUDA-only calls stood in: the device
context, the SM count, and the autotuner's benchmarking (the first config is taken).
Most tests route its scan to its `ssd_minimal_discrete` (the SSD paper's Listing 1) and its
gated RMSNorm to `rms_norm_ref`; one runs its Triton kernels themselves, and ours through
them. Skipped only when the package registry cannot be reached.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from decision_mamba import mamba2 as mamba2_module
from decision_mamba.compute import describe_compute, format_compute
from decision_mamba.config import ConfigError, GymConfig, load_config
from decision_mamba.mamba2 import Mamba2, ssd_chunked

from test_mamba_ssm_package import _UNREACHABLE, _cache_dir, _pip, mamba_ssm_site, real_mamba_ssm  # noqa: F401

TRITON_VERSION = "3.9.0"  # pip's triton wheel; only its interpreter runs here


# --------------------------------------------------------------------------- ours alone


def ssd_sequential(x, dt, A, B, C, initial_state=None):
    """The SSD recurrence token by token: h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t."""
    batch, length, heads, headdim = x.shape
    per_group = heads // B.shape[2]
    h = x.new_zeros(batch, heads, headdim, B.shape[3]) if initial_state is None else initial_state
    ys = []
    for t in range(length):
        B_t = B[:, t].repeat_interleave(per_group, dim=1)  # (b, H, N)
        C_t = C[:, t].repeat_interleave(per_group, dim=1)
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]  # (b, H, 1, 1)
        h = decay * h + dt[:, t, :, None, None] * x[:, t, :, :, None] * B_t[:, :, None, :]
        ys.append((h * C_t[:, :, None, :]).sum(-1))
    return torch.stack(ys, dim=1), h


@pytest.mark.parametrize("length", [1, 7, 12])
@pytest.mark.parametrize("chunk_size", [1, 3, 4, 16])
def test_chunked_ssd_equals_the_sequential_recurrence(chunk_size, length):
    g = torch.Generator().manual_seed(chunk_size * 100 + length)
    batch, heads, headdim, groups, d_state = 2, 4, 3, 2, 5
    x = torch.randn(batch, length, heads, headdim, generator=g, dtype=torch.float64)
    dt = torch.rand(batch, length, heads, generator=g, dtype=torch.float64)
    A = -3 * torch.rand(heads, generator=g, dtype=torch.float64)
    B, C = (torch.randn(batch, length, groups, d_state, generator=g, dtype=torch.float64) for _ in range(2))
    h0 = torch.randn(batch, heads, headdim, d_state, generator=g, dtype=torch.float64)
    y, final = ssd_chunked(x, dt, A, B, C, chunk_size, initial_state=h0)
    y_ref, final_ref = ssd_sequential(x, dt, A, B, C, initial_state=h0)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(final, final_ref, rtol=1e-10, atol=1e-12)


def test_forward_equals_successive_steps_and_leaves_the_state_alone():
    torch.manual_seed(0)
    block = Mamba2(16, d_state=8, headdim=4, ngroups=2, chunk_size=4, dt_limit=(0.01, 0.5)).double()
    x = torch.randn(3, 11, 16, dtype=torch.float64)  # 11 = 2 chunks of 4 and a partial one
    state = block.init_state(3)
    assert [tuple(s.shape) for s in state] == [(3, 32 + 2 * 2 * 8, 4), (3, 8, 4, 8)]
    ys = []
    for t in range(11):
        given, copies = state, [s.clone() for s in state]
        y_t, state = block.step(x[:, t], state)
        ys.append(y_t)
        assert all(torch.equal(a, b) for a, b in zip(given, copies)), "step must not mutate its input state"
    torch.testing.assert_close(torch.stack(ys, dim=1), block(x), rtol=1e-10, atol=1e-12)


def test_bad_options_name_the_fix():
    with pytest.raises(ValueError, match="multiple of headdim"):
        Mamba2(16, headdim=5)
    with pytest.raises(ValueError, match="ngroups"):
        Mamba2(16, headdim=8, ngroups=3)
    with pytest.raises(ValueError, match="ssd_backend"):
        Mamba2(16, headdim=8, ssd_backend="cuda")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        mamba2_module.resolve_ssd_backend("triton", "cpu")
    assert mamba2_module.resolve_ssd_backend("auto", "cpu")[0] == "torch"


def test_a_run_names_the_ssd_path_it_takes():
    cfg = load_config(GymConfig, overrides=["model.mixer=mamba2"])
    assert "scan backend torch (requested auto: auto on cpu: the chunked SSD in PyTorch)" in format_compute(
        describe_compute(cfg, torch.device("cpu")))


def test_a_config_whose_width_does_not_split_into_heads_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"expand \* d_model \(72\) to be a multiple of headdim \* ngroups"):
        load_config(GymConfig, overrides=["model.mixer=mamba2", "model.d_model=36", "model.n_head=1"])
    load_config(GymConfig, overrides=["model.mixer=mamba2", "model.d_model=40", "model.n_head=1"])  # 5 heads of 16


# --------------------------------------------------------------------------- against mamba-ssm


@pytest.fixture(scope="module")
def triton_site(mamba_ssm_site):  # noqa: F811 (the fixture imported above)
    """pip's triton wheel installed into the cache beside mamba-ssm (no deps: torch stays as it is)."""
    site = _cache_dir().parent / f"triton-{TRITON_VERSION}" / "site"
    done = site / ".installed"
    if done.is_file() and (site / "triton").is_dir():
        return site
    site.mkdir(parents=True, exist_ok=True)
    got = _pip(["install", "--no-deps", "--upgrade", "--target", str(site), f"triton=={TRITON_VERSION}"], site.parent)
    output = got.stdout + got.stderr
    if got.returncode != 0:
        if any(marker in output for marker in _UNREACHABLE):
            pytest.skip(f"the package registry cannot be reached to install triton: {output.strip()[-300:]}")
        pytest.fail(f"pip install triton=={TRITON_VERSION} failed:\n{output[-2000:]}")
    assert not (site / "torch").exists(), "the install must leave torch alone"
    done.write_text(TRITON_VERSION + "\n")
    return site


@pytest.fixture
def theirs(real_mamba_ssm, triton_site, monkeypatch):  # noqa: F811
    """mamba_ssm's modules.mamba2 and its references, its Triton code run by the interpreter on the CPU."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.syspath_prepend(str(triton_site))
    if importlib.util.find_spec("huggingface_hub") is None:  # Mamba2 subclasses its hub mixin; unused here
        monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(PyTorchModelHubMixin=object))
    import triton
    from triton.runtime import autotuner

    # A CUDA build of torch ships a triton of its own, which may be loaded already (then the
    # cached one is not imported): fine from 3.5 on, what mamba-ssm's Mamba2 requires.
    if tuple(int(part) for part in triton.__version__.split(".")[:2]) < (3, 5):
        pytest.skip(f"triton {triton.__version__} (torch's own) is loaded; mamba-ssm's Mamba2 needs triton>=3.5")
    assert triton.knobs.runtime.interpret, "triton must run interpreted"
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(
        multi_processor_count=2))
    prune = autotuner.Autotuner.prune_configs
    monkeypatch.setattr(autotuner.Autotuner, "prune_configs", lambda self, kwargs: prune(self, kwargs)[:1])
    module = importlib.import_module("mamba_ssm.modules.mamba2")
    monkeypatch.setattr(module, "selective_state_update", None)  # its step in torch ops (its CUDA-free path)
    assert module.causal_conv1d_fn is None, "without causal-conv1d, Mamba2 convolves with nn.Conv1d"
    return types.SimpleNamespace(
        mamba2=module,
        ssd_minimal=importlib.import_module("mamba_ssm.modules.ssd_minimal"),
        layernorm_gated=importlib.import_module("mamba_ssm.ops.triton.layernorm_gated"),
        ssd_combined=importlib.import_module("mamba_ssm.ops.triton.ssd_combined"))


@pytest.fixture
def theirs_on_references(theirs, monkeypatch):
    """Their Mamba2 with its scan = ssd_minimal_discrete and its gated RMSNorm = rms_norm_ref."""

    def minimal_chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False,
                           dt_limit=(0.0, float("inf")), return_final_states=False, **unused):
        assert z is None and dt_softplus and not any(v for v in unused.values() if v not in (None, False))
        dt = F.softplus(dt + dt_bias).clamp(*dt_limit)
        per_group = x.shape[2] // B.shape[2]
        B, C = (t.repeat_interleave(per_group, dim=2) for t in (B, C))
        y, final = theirs.ssd_minimal.ssd_minimal_discrete(x * dt[..., None], A * dt, B, C, chunk_size)
        y = y + D[:, None] * x
        return (y, final) if return_final_states else y

    def norm_forward(self, x, z=None):
        return theirs.layernorm_gated.rms_norm_ref(x, self.weight, self.bias, z=z, eps=self.eps,
                                                   group_size=self.group_size, norm_before_gate=self.norm_before_gate)

    monkeypatch.setattr(theirs.mamba2, "mamba_chunk_scan_combined", minimal_chunk_scan)
    monkeypatch.setattr(theirs.mamba2.RMSNormGated, "forward", norm_forward)
    return theirs


def pair(theirs, seed=0, **options):
    """Their Mamba2 (the non-fused path, as without causal-conv1d) and ours with its weights."""
    torch.manual_seed(seed)
    their_block = theirs.mamba2.Mamba2(use_mem_eff_path=False, **options)
    our_block = Mamba2(**{k: v for k, v in options.items()})
    our_block.load_state_dict(their_block.state_dict(), strict=True)
    return their_block, our_block


def assert_same_outputs_and_gradients(their_block, our_block, x, rtol=1e-4, atol=1e-5):
    x_theirs, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_theirs, y_ours = their_block(x_theirs), our_block(x_ours)
    torch.testing.assert_close(y_ours, y_theirs, rtol=rtol, atol=atol)
    w = torch.randn_like(y_theirs)
    (y_theirs * w).sum().backward()
    (y_ours * w).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, rtol=rtol, atol=atol)
    their_params = dict(their_block.named_parameters())
    assert set(their_params) == {name for name, _ in our_block.named_parameters()}
    for name, p in our_block.named_parameters():
        torch.testing.assert_close(p.grad, their_params[name].grad, rtol=rtol, atol=atol,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_one_seed_gives_both_the_same_weights_and_state_dicts_load_both_ways(theirs):
    options = dict(d_model=24, d_state=8, headdim=12, ngroups=2, bias=True, conv_bias=False)
    torch.manual_seed(3)
    their_block = theirs.mamba2.Mamba2(**options)
    torch.manual_seed(3)
    our_block = Mamba2(**options)
    theirs_sd, ours_sd = their_block.state_dict(), our_block.state_dict()
    assert list(ours_sd) == list(theirs_sd)
    for name, value in theirs_sd.items():
        assert ours_sd[name].shape == value.shape and torch.equal(ours_sd[name], value), name
    torch.manual_seed(4)
    fresh_ours = Mamba2(**options)
    their_block.load_state_dict(fresh_ours.state_dict(), strict=True)
    our_block.load_state_dict(theirs.mamba2.Mamba2(**options).state_dict(), strict=True)
    assert torch.equal(their_block.A_log, fresh_ours.A_log)


@pytest.mark.parametrize("ngroups, length, dt_limit", [(1, 12, (0.0, float("inf"))), (2, 8, (0.02, 0.08))])
def test_outputs_and_every_gradient_match_theirs_on_ssd_minimal(theirs_on_references, ngroups, length, dt_limit):
    # Theirs runs chunks of 4 (ssd_minimal needs a multiple); ours 5, a different split.
    their_block, our_block = pair(theirs_on_references, d_model=16, d_state=8, headdim=8, ngroups=ngroups,
                                  chunk_size=4, dt_limit=dt_limit)
    our_block.chunk_size = 5
    torch.manual_seed(1)
    assert_same_outputs_and_gradients(their_block, our_block, torch.randn(2, length, 16))


def test_our_step_matches_their_step(theirs_on_references):
    their_block, our_block = pair(theirs_on_references, d_model=16, d_state=8, headdim=8, chunk_size=4)
    torch.manual_seed(2)
    x = torch.randn(3, 6, 16)
    their_conv, their_ssm = their_block.allocate_inference_cache(3, max_seqlen=6)
    state = our_block.init_state(3)
    with torch.no_grad():
        for t in range(6):
            y_theirs, their_conv, their_ssm = their_block.step(x[:, t:t + 1], their_conv, their_ssm)
            y_ours, state = our_block.step(x[:, t], state)
            torch.testing.assert_close(y_ours, y_theirs[:, 0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(state[0], their_conv, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(state[1], their_ssm, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # ~45 s: two forward+backward passes through the Triton interpreter
def test_their_triton_kernels_and_our_triton_dispatch_match_our_torch_path(theirs, monkeypatch):
    # Their block on mamba_chunk_scan_combined and the Triton gated RMSNorm, interpreted;
    # ours on the same scan kernel through the dispatch a GPU takes, and on its own torch path.
    their_block, our_block = pair(theirs, d_model=16, d_state=8, headdim=8, chunk_size=4)
    torch.manual_seed(1)
    x = torch.randn(1, 6, 16)  # a partial last chunk
    assert_same_outputs_and_gradients(their_block, our_block, x)
    calls = []
    kernel = theirs.ssd_combined.mamba_chunk_scan_combined
    monkeypatch.setattr(theirs.ssd_combined, "mamba_chunk_scan_combined",
                        lambda *a, **k: calls.append(1) or kernel(*a, **k))
    monkeypatch.setattr(mamba2_module, "resolve_ssd_backend", lambda requested, device: ("triton", "routed"))
    our_block.zero_grad()
    their_block.zero_grad()
    assert_same_outputs_and_gradients(their_block, our_block, x)
    assert calls, "our triton path must call mamba_chunk_scan_combined"
