"""The GPU path, checked on the CPU: the no-build parallel scan, kernel detection and the
backend choice (with stand-in mamba_ssm packages), mixed precision, and the run's record of
which backend ran. The real mamba_ssm package: test_mamba_ssm_package.py; on a GPU:
test_gpu.py (scripts/gpu_check.sh)."""

from __future__ import annotations

import json
import sys
import types
import warnings

import numpy as np
import pytest
import torch

from decision_mamba import selective_scan as scan_module
from decision_mamba.compute import describe_compute, format_compute
from decision_mamba.config import ConfigError, GymConfig, load_config
from decision_mamba.data.sampler import sample_batch
from decision_mamba.data.trajectories import Trajectories
from decision_mamba.mamba import Mamba
from decision_mamba.model import DecisionModel
from decision_mamba.run import run_experiment
from decision_mamba.scan_parallel import linear_scan
from decision_mamba.selective_scan import (cuda_kernel_status, resolve_scan_backend, selective_scan,
                                           selective_scan_reference)
from decision_mamba.trainer import Trainer


def scan_inputs(batch=2, d_inner=6, seqlen=13, d_state=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype)  # noqa: E731
    return {"u": r(batch, d_inner, seqlen), "delta": r(batch, d_inner, seqlen),
            "A": -torch.rand(d_inner, d_state, generator=g, dtype=dtype) * 3, "B": r(batch, d_state, seqlen),
            "C": r(batch, d_state, seqlen), "D": r(d_inner), "z": r(batch, d_inner, seqlen), "delta_bias": r(d_inner)}


# --------------------------------------------------------------------------- the parallel scan


def test_linear_scan_equals_the_loop():
    g = torch.Generator().manual_seed(0)
    for seqlen in (1, 2, 3, 8, 13, 64):
        a = torch.rand(2, 3, seqlen, 4, generator=g, dtype=torch.float64)
        b = torch.randn(2, 3, seqlen, 4, generator=g, dtype=torch.float64)
        h, expected = torch.zeros(2, 3, 4, dtype=torch.float64), []
        for t in range(seqlen):
            h = a[:, :, t] * h + b[:, :, t]
            expected.append(h)
        torch.testing.assert_close(linear_scan(a.clone(), b.clone()), torch.stack(expected, 2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gated,seqlen", [(True, 13), (False, 16), (True, 1)])
def test_parallel_scan_forward_and_every_gradient_equal_the_reference(gated, seqlen):
    inputs = scan_inputs(seqlen=seqlen)
    if not gated:
        inputs["z"] = None
    leaves = {k: v.requires_grad_() for k, v in inputs.items() if v is not None}
    g = torch.Generator().manual_seed(1)
    w_y = torch.randn(2, 6, seqlen, generator=g, dtype=torch.float64)
    w_h = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    results = {}
    for backend in ("reference", "parallel"):
        y, h_last = selective_scan(**inputs, delta_softplus=True, return_last_state=True, backend=backend)
        grads = torch.autograd.grad((y * w_y).sum() + (h_last * w_h).sum(), list(leaves.values()))
        results[backend] = (y, h_last, grads)
    (y_ref, h_ref, g_ref), (y_par, h_par, g_par) = results["reference"], results["parallel"]
    torch.testing.assert_close(y_par, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h_par, h_ref, rtol=1e-10, atol=1e-10)
    for name, a, b in zip(leaves, g_par, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m, name=name: f"d{name}: {m}")


def test_parallel_scan_gradcheck_and_only_the_last_state():
    inputs = {k: v[:, :3, :5] if k in ("u", "delta", "z") else v for k, v in scan_inputs(d_inner=3, seqlen=5).items()}
    names = ["u", "delta", "A", "B", "C"]

    def last_state(*xs):
        kwargs = dict(inputs, **dict(zip(names, xs)))
        return selective_scan(**kwargs, delta_softplus=True, return_last_state=True, backend="parallel")[1]  # dy None

    assert torch.autograd.gradcheck(last_state, [inputs[n].clone().requires_grad_() for n in names])


def test_parallel_scan_in_bfloat16_keeps_a_float32_state():
    inputs = scan_inputs(dtype=torch.float32)
    low = {k: v.to(torch.bfloat16) if k in ("u", "delta", "B", "C", "z") else v for k, v in inputs.items()}
    y, h_last = selective_scan(**low, delta_softplus=True, return_last_state=True, backend="parallel")
    assert y.dtype == torch.bfloat16 and h_last.dtype == torch.float32
    expected = selective_scan_reference(**{k: v.float() for k, v in low.items()}, delta_softplus=True)
    torch.testing.assert_close(y.float(), expected, rtol=2e-2, atol=2e-2)


def test_mamba_block_with_the_parallel_scan_equals_the_reference():
    torch.manual_seed(0)
    block = Mamba(12, scan_backend="parallel").double()
    x = torch.randn(2, 9, 12, dtype=torch.float64, requires_grad=True)
    y = block(x)
    grads = torch.autograd.grad(y.square().sum(), [x, *block.parameters()])
    block.scan_backend = "reference"
    y_ref = block(x)
    grads_ref = torch.autograd.grad(y_ref.square().sum(), [x, *block.parameters()])
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


# --------------------------------------------------------------------------- detection and choice


@pytest.fixture
def stand_in_mamba_ssm(monkeypatch):
    """Install a fake mamba_ssm whose selective_scan_interface the test shapes; forget cached verdicts."""
    def install(extension):
        interface = types.ModuleType(scan_module.CUDA_SCAN_MODULE)
        interface.selective_scan_cuda = extension
        interface.selective_scan_fn = lambda *args, **kwargs: pytest.fail("the stand-in kernel must not be called")
        for name in ("mamba_ssm", "mamba_ssm.ops"):
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
        monkeypatch.setitem(sys.modules, scan_module.CUDA_SCAN_MODULE, interface)
        scan_module._cuda_kernel_status.cache_clear()
        scan_module._warned.clear()
        return interface

    yield install
    scan_module._cuda_kernel_status.cache_clear()
    scan_module._warned.clear()


def test_a_kernel_module_that_is_none_makes_auto_take_the_parallel_scan_and_warn_once(stand_in_mamba_ssm):
    stand_in_mamba_ssm(None)  # mamba-ssm's main branch built without MAMBA_KEEP_CUDA_BUILD
    ok, why = cuda_kernel_status("cuda:0")
    assert not ok and "selective_scan_cuda" in why and "MAMBA_KEEP_CUDA_BUILD" in why
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = resolve_scan_backend("auto", "cuda:0")
        second = resolve_scan_backend("auto", "cuda:0")
    assert first == second and first[0] == "parallel" and "selective_scan_cuda" in first[1]
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert "selective_scan_cuda" in message and "make install GPU=1" in message and "scan_backend=parallel" in message
    assert "MAMBA_KEEP_CUDA_BUILD=TRUE pip install --no-build-isolation mamba-ssm" in message and "\n" not in message


def test_an_explicit_cuda_backend_without_a_working_kernel_is_an_error_naming_the_fix(stand_in_mamba_ssm):
    stand_in_mamba_ssm(types.SimpleNamespace())  # an object without the kernel's fwd
    with pytest.raises(ValueError, match="backend 'cuda' is not usable: .*selective_scan_cuda.*make install GPU=1"):
        resolve_scan_backend("cuda", "cuda:0")


def test_an_extension_that_is_present_is_still_tried_on_the_device(stand_in_mamba_ssm):
    stand_in_mamba_ssm(types.SimpleNamespace(fwd=None, bwd=None))
    ok, why = cuda_kernel_status("cpu")
    assert not ok and "CUDA devices" in why
    if not torch.cuda.is_available():  # a test call on a device that is not there fails, and says so
        ok, why = cuda_kernel_status("cuda:0")
        assert not ok and "failed a test call on cuda:0" in why


def test_a_mamba_ssm_that_does_not_import_is_detected(monkeypatch):
    monkeypatch.setitem(sys.modules, scan_module.CUDA_SCAN_MODULE, None)  # import raises ImportError
    scan_module._cuda_kernel_status.cache_clear()
    try:
        ok, why = cuda_kernel_status("cuda:0")
        assert not ok and "does not import" in why
    finally:
        scan_module._cuda_kernel_status.cache_clear()


def test_backend_choice_on_the_cpu():
    assert resolve_scan_backend("auto", "cpu")[0] == "fused"
    for name in ("parallel", "fused", "reference"):
        assert resolve_scan_backend(name, "cpu") == (name, "requested")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        resolve_scan_backend("cuda", "cpu")
    with pytest.raises(ValueError, match="runs on CPU tensors"):
        resolve_scan_backend("fused", "cuda:0")
    with pytest.raises(ValueError, match="unknown backend 'triton'"):
        resolve_scan_backend("triton", "cpu")
    assert load_config(GymConfig, None, ["model.scan_backend=parallel"]).model.scan_backend == "parallel"
    with pytest.raises(ConfigError, match="model.scan_backend must be one of auto, cuda, parallel"):
        load_config(GymConfig, None, ["model.scan_backend=triton"])


# --------------------------------------------------------------------------- precision


def test_mamba_hands_the_scan_float32_A_D_and_dt_bias_in_bfloat16(monkeypatch):
    import decision_mamba.mamba as mamba_module

    seen = {}

    def recording_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, **kwargs):
        seen.update(u=u.dtype, A=A.dtype, D=D.dtype, delta_bias=delta_bias.dtype)
        return selective_scan(u, delta, A, B, C, D, z, delta_bias, **kwargs)

    monkeypatch.setattr(mamba_module, "selective_scan", recording_scan)
    torch.manual_seed(0)
    block = Mamba(16, scan_backend="parallel")
    x = torch.randn(2, 7, 16)
    expected = block(x)
    y = block.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert seen == {"u": torch.bfloat16, "A": torch.float32, "D": torch.float32, "delta_bias": torch.float32}
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), expected, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_parallel_scan_under_autocast_scans_and_differentiates_in_float32(dtype):
    # The trainer's backward runs outside autocast: a scan whose forward let autocast run its
    # einsums in the low dtype got a low-dtype dy and failed there ("expected m1 and m2 to
    # have the same dtype").
    torch.manual_seed(0)
    block = Mamba(16, scan_backend="parallel")
    x = torch.randn(2, 7, 16)
    expected = torch.autograd.grad(block(x).square().sum(), list(block.parameters()))
    with torch.autocast("cpu", dtype=dtype):
        y = block(x)
    grads = torch.autograd.grad(y.float().square().sum(), list(block.parameters()))
    for got, want in zip(grads, expected):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0.1, atol=0.1 * float(want.abs().max()))


def tiny_trainer(overrides=(), tmp_path="runs"):
    cfg = load_config(GymConfig, None, [
        "model.mixer=mamba", "model.d_model=16", "model.n_layer=1", "model.max_ep_len=20", "train.batch_size=4",
        "train.context_len=3", "train.steps_per_iteration=2", "train.num_iterations=1", "train.warmup_steps=1",
        "train.learning_rate=1e-3", f"run.out_dir={tmp_path}", "run.progress=false", *overrides])
    rng = np.random.default_rng(0)
    lengths = np.array([6, 9, 7])
    n = int(lengths.sum())
    traj = Trajectories(observations=rng.normal(size=(n, 4)).astype(np.float32),
                        actions=rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
                        rewards=rng.normal(size=n).astype(np.float32),
                        starts=np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths=lengths)
    torch.manual_seed(cfg.seed)
    model = DecisionModel(cfg.model, (4,), 2, discrete=False)

    def draw(rng):
        return sample_batch(traj, 4, 3, rng, rtg_scale=10.0, max_ep_len=20, mode="dt-gym")

    return cfg, Trainer(model, cfg.train, draw, np.random.default_rng(cfg.seed), torch.device("cpu"))


def test_fp32_default_stays_bit_deterministic_and_bf16_fp16_train_close_to_it():
    assert GymConfig().train.precision == "fp32"
    runs = {}
    for name, precision in [("fp32", "fp32"), ("fp32 again", "fp32"), ("bf16", "bf16"), ("fp16", "fp16")]:
        _, trainer = tiny_trainer([f"train.precision={precision}"])
        losses = [trainer.train_step().loss for _ in range(3)]
        runs[name] = (losses, [p.detach().clone() for p in trainer.model.parameters()], trainer)
    assert runs["fp32"][0] == runs["fp32 again"][0]
    assert all(torch.equal(a, b) for a, b in zip(runs["fp32"][1], runs["fp32 again"][1]))
    for name in ("bf16", "fp16"):
        losses = runs[name][0]
        assert all(np.isfinite(losses)) and losses != runs["fp32"][0]  # autocast did change the arithmetic
        np.testing.assert_allclose(losses, runs["fp32"][0], rtol=5e-2)
        assert all(p.dtype == torch.float32 for p in runs[name][1])  # weights stay float32
    assert not runs["fp32"][2].scaler.is_enabled() and not runs["bf16"][2].scaler.is_enabled()
    fp16 = runs["fp16"][2]
    assert fp16.scaler.is_enabled() and fp16.state_dict()["grad_scaler"]["scale"] == fp16.scaler.get_scale()
    with pytest.raises(ConfigError, match="train.precision must be one of fp32, bf16, fp16"):
        load_config(GymConfig, None, ["train.precision=fp8"])


# --------------------------------------------------------------------------- the run's record


def test_the_backend_that_ran_is_printed_and_stored_with_its_reason(tmp_path, capsys):
    cfg, trainer = tiny_trainer(["train.precision=bf16"], tmp_path)
    evaluate = lambda iteration: {"1": {"return_mean": 0.0, "return_std": 0.0, "length_mean": 1.0,  # noqa: E731
                                        "score_mean": 0.0, "score_std": 0.0}}
    summary = run_experiment(cfg, trainer, evaluate, run_dir=tmp_path / "run", group="test")
    stored = json.loads((tmp_path / "run" / "summary.json").read_text())["compute"]
    assert stored == summary["compute"]
    assert (stored["device"], stored["precision"], stored["scan_backend_requested"], stored["scan_backend"]) == \
        ("cpu", "bf16", "auto", "fused")
    assert stored["scan_backend_reason"] == "auto on the CPU: the numba kernel"
    assert format_compute(stored) in capsys.readouterr().out
    attention = load_config(GymConfig, None, ["model.mixer=attention"])
    assert describe_compute(attention, torch.device("cpu"))["scan_backend"] == "none"
