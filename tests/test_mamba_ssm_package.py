"""The real mamba-ssm package on the CPU: our `cuda` dispatch and state_dict against its Mamba.

mamba-ssm's source release is downloaded once into the user's cache
(~/.cache/decision-mamba/, or $XDG_CACHE_HOME) and installed there from source, as a GPU
install without a prebuilt wheel would (docs/gpu.md), but with the CUDA build skipped:

    pip download mamba-ssm==V --no-deps --no-binary :all: --no-build-isolation
    MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE \
        pip install --no-deps --no-build-isolation --target <cache> mamba_ssm-V.tar.gz einops

torch is never touched (--no-deps, and the target holds only mamba_ssm and einops). The
CUDA entry points are then routed to mamba-ssm's own reference functions
(selective_scan_ref, mamba_inner_ref; its Triton layer norm, unused by Mamba-1, to a stand-in
that fails if called), so the test checks what the GPU path relies on: our Mamba with
scan_backend=cuda calls mamba_ssm's scan with the arguments mamba_ssm.Mamba gives it, and
the two blocks' weights move both ways. The first run takes ~20 s; later runs use the cache.
It skips only when the package registry cannot be reached.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from decision_mamba import selective_scan as scan_module
from decision_mamba.mamba import Mamba

# The release `make install GPU=1` installs (docs/gpu.md; pyproject's `gpu` extra allows >=2.2.2,<2.4).
MAMBA_SSM_VERSION = os.environ.get("DM_TEST_MAMBA_SSM_VERSION", "2.3.2.post1")
_UNREACHABLE = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution",
                "Network is unreachable", "ConnectTimeoutError", "Could not fetch URL", "ProxyError")


def _cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "decision-mamba" / f"mamba-ssm-{MAMBA_SSM_VERSION}"


def _pip(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, MAMBA_SKIP_CUDA_BUILD="TRUE", MAMBA_FORCE_BUILD="TRUE", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def mamba_ssm_site() -> Path:
    """The folder holding mamba_ssm and einops, installed on first use."""
    cache = _cache_dir()
    site = cache / "site"
    done = site / ".installed"
    if done.is_file() and (site / "mamba_ssm" / "modules" / "mamba_simple.py").is_file():
        return site
    downloads = cache / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    got = _pip(["download", f"mamba-ssm=={MAMBA_SSM_VERSION}", "--no-deps", "--no-binary", ":all:",
                "--no-build-isolation", "-d", str(downloads)], cache)
    output = got.stdout + got.stderr
    if got.returncode != 0:
        if any(marker in output for marker in _UNREACHABLE):
            pytest.skip(f"the package registry cannot be reached to download mamba-ssm: {output.strip()[-300:]}")
        pytest.fail(f"pip download mamba-ssm=={MAMBA_SSM_VERSION} failed:\n{output[-2000:]}")
    sdist = sorted(downloads.glob(f"mamba_ssm-{MAMBA_SSM_VERSION}.tar.gz"))
    assert sdist, f"pip download left no mamba_ssm-{MAMBA_SSM_VERSION}.tar.gz in {downloads}"
    installed = _pip(["install", "--no-deps", "--no-build-isolation", "--upgrade", "--target", str(site),
                      str(sdist[0]), "einops"], cache)
    output = installed.stdout + installed.stderr
    if installed.returncode != 0:
        if any(marker in output for marker in _UNREACHABLE):
            pytest.skip(f"the package registry cannot be reached to install einops: {output.strip()[-300:]}")
        pytest.fail(f"pip install of mamba-ssm's source release failed:\n{output[-2000:]}")
    assert not (site / "torch").exists(), "the install must leave torch alone"
    done.write_text(MAMBA_SSM_VERSION + "\n")
    return site


def torch_causal_conv1d(x, weight, bias=None, activation=None):
    """causal_conv1d_fn's contract in torch ops: x (B, D, L), weight (D, K); silu if asked."""
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=weight.shape[-1] - 1, groups=x.shape[1])[..., :x.shape[-1]]
    return F.silu(out) if activation in ("silu", "swish") else out


@pytest.fixture
def real_mamba_ssm(mamba_ssm_site, monkeypatch):
    """Import the real mamba_ssm from the cache, without its package __init__ (which pulls in
    Mamba-2/3 and their Triton and TileLang kernels) and with its Triton layer norm stood in."""
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(mamba_ssm_site))
    package = types.ModuleType("mamba_ssm")
    package.__path__ = [str(mamba_ssm_site / "mamba_ssm")]
    monkeypatch.setitem(sys.modules, "mamba_ssm", package)
    layer_norm = types.ModuleType("mamba_ssm.ops.triton.layer_norm")
    layer_norm._layer_norm_fwd = lambda *a, **k: pytest.fail("the Triton layer norm is a GPU kernel")
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops.triton.layer_norm", layer_norm)
    scan_module._cuda_kernel_status.cache_clear()
    yield mamba_ssm_site
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("mamba_ssm", "selective_scan_cuda", "einops"):
            del sys.modules[name]
    scan_module._cuda_kernel_status.cache_clear()


def test_a_missing_or_none_kernel_extension_is_detected_as_missing(real_mamba_ssm, monkeypatch):
    import importlib

    # As installed (MAMBA_SKIP_CUDA_BUILD): no selective_scan_cuda at all.
    ok, why = scan_module.cuda_kernel_status("cuda:0")
    assert not ok and "selective_scan_cuda" in why, why
    # A module slot that is None (an import that must fail).
    monkeypatch.setitem(sys.modules, "selective_scan_cuda", None)
    scan_module._cuda_kernel_status.cache_clear()
    ok, why = scan_module.cuda_kernel_status("cuda:0")
    assert not ok and "selective_scan_cuda" in why, why
    # The interface imports, but its extension is None (mamba-ssm's main branch without
    # MAMBA_KEEP_CUDA_BUILD): the import alone would have said "available".
    monkeypatch.setitem(sys.modules, "selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    interface = importlib.import_module(scan_module.CUDA_SCAN_MODULE)
    monkeypatch.setattr(interface, "selective_scan_cuda", None)
    scan_module._cuda_kernel_status.cache_clear()
    ok, why = scan_module.cuda_kernel_status("cuda:0")
    assert not ok and "selective_scan_cuda is missing" in why, why


@pytest.fixture
def routed(real_mamba_ssm, monkeypatch):
    """mamba_ssm imported with its CUDA entry points routed to its reference functions."""
    import importlib

    extension = types.ModuleType("selective_scan_cuda")  # fwd/bwd absent: never called once routed
    monkeypatch.setitem(sys.modules, "selective_scan_cuda", extension)
    interface = importlib.import_module(scan_module.CUDA_SCAN_MODULE)
    mamba_simple = importlib.import_module("mamba_ssm.modules.mamba_simple")
    monkeypatch.setattr(interface, "selective_scan_fn", interface.selective_scan_ref)
    monkeypatch.setattr(interface, "causal_conv1d_fn", torch_causal_conv1d)  # used by mamba_inner_ref
    monkeypatch.setattr(mamba_simple, "selective_scan_fn", interface.selective_scan_ref)
    monkeypatch.setattr(mamba_simple, "mamba_inner_fn", interface.mamba_inner_ref)
    # Our 'cuda' backend, let run on CPU tensors (the device check is tested in test_gpu_path.py).
    monkeypatch.setattr(scan_module, "resolve_scan_backend", lambda requested, device: ("cuda", "routed for a test"))
    return types.SimpleNamespace(interface=interface, mamba_simple=mamba_simple)


@pytest.mark.parametrize("fast_path", [False, True], ids=["selective_scan_fn", "mamba_inner_fn"])
def test_our_cuda_dispatch_gives_mamba_ssm_outputs_and_gradients(routed, monkeypatch, fast_path):
    # fast path: mamba_ssm.Mamba takes mamba_inner_fn when causal_conv1d is importable
    monkeypatch.setattr(routed.mamba_simple, "causal_conv1d_fn", torch_causal_conv1d if fast_path else None)
    torch.manual_seed(0)
    theirs = routed.mamba_simple.Mamba(d_model=24, d_state=16, d_conv=4, expand=2)
    ours = Mamba(24, d_state=16, d_conv=4, expand=2, scan_backend="cuda")
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(3, 11, 24)
    x_theirs, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_theirs, y_ours = theirs(x_theirs), ours(x_ours)
    torch.testing.assert_close(y_ours, y_theirs, rtol=1e-5, atol=1e-6)
    w = torch.randn_like(y_theirs)
    (y_theirs * w).sum().backward()
    (y_ours * w).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, rtol=1e-5, atol=1e-6)
    their_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, their_params[name].grad, rtol=1e-4, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")
    # and mamba_ssm's scan, not ours, did the work: a broken routed scan breaks our output
    monkeypatch.setattr(routed.interface, "selective_scan_fn", lambda *a, **k: torch.zeros(3, 48, 11))
    assert ours(x).abs().max() < 1e-6 < y_ours.abs().max()


def test_mamba_ssm_state_dicts_load_strictly_both_ways(routed):
    torch.manual_seed(1)
    theirs = routed.mamba_simple.Mamba(d_model=40, bias=True, conv_bias=False)
    ours = Mamba(40, bias=True, conv_bias=False)
    assert ours.load_state_dict(theirs.state_dict(), strict=True).missing_keys == []
    for name, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[name], value), name
    torch.manual_seed(2)
    fresh_theirs = routed.mamba_simple.Mamba(d_model=40, bias=True, conv_bias=False)
    fresh_theirs.load_state_dict(Mamba(40, bias=True, conv_bias=False).state_dict(), strict=True)
    assert set(fresh_theirs.state_dict()) == set(ours.state_dict())
