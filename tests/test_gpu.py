"""The GPU check's tests (marker `gpu`; scripts/gpu_check.sh runs them on an NVIDIA GPU).

On the device given by DM_TEST_DEVICE (default cuda), against the CPU in float32:
- every mixer's forward and backward (gym and Atari inputs) equals the same weights on
  the CPU, with the sequential reference scan there;
- every scan path that runs on the device (mamba_ssm's kernel where it works, parallel,
  reference) equals the CPU's sequential reference, output, last state and every gradient;
- the recurrent step, iterated, equals the forward on the device;
- a bf16 training step (and an fp16 one, with its GradScaler) stays finite and close to fp32.
"1e-3 relative" is max|got - expected| / max|expected| <= 1e-3 for each tensor.

Without a CUDA device every test skips, saying so: the normal suite pays nothing.
DM_TEST_DEVICE=cpu runs the same tests on the CPU, to check them where no GPU is
(there the device and the reference are the same machine, so only the scan paths and the
recurrence are really compared).
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

from decision_mamba.compute import PRECISIONS
from decision_mamba.config import TrainConfig
from decision_mamba.model import DecisionModel, ModelConfig
from decision_mamba.selective_scan import cuda_kernel_status, selective_scan, selective_scan_reference
from decision_mamba.trainer import Trainer

DEVICE = torch.device(os.environ.get("DM_TEST_DEVICE", "cuda"))
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(),
                       reason=f"no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                              f"DM_TEST_DEVICE=cpu runs these tests on the CPU"),
]

TOL = 1e-3  # relative, in float32
# Scan paths on a GPU; "cuda" skips (saying why) where mamba_ssm's kernel does not work.
GPU_SCANS = ["cuda", "parallel", "reference"]
# (label, ModelConfig overrides): every mixer, DMamba once per scan path.
MODELS = [(f"mamba-{scan}", {"mixer": "mamba", "scan_backend": scan}) for scan in GPU_SCANS] + [
    ("attention", {"mixer": "attention", "n_head": 2}), ("conv", {"mixer": "conv"}), ("s4", {"mixer": "s4"})]


@pytest.fixture(autouse=True)
def full_float32():
    """TF32 off (cuDNN convolutions use it by default): the comparisons are of float32 arithmetic."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def skip_unless_runs(overrides: dict) -> None:
    if overrides.get("scan_backend") == "cuda":
        ok, why = cuda_kernel_status(DEVICE)
        if not ok:
            pytest.skip(f"scan path cuda: {why}")


def assert_relative(got: torch.Tensor, expected: torch.Tensor, what: str, tol: float = TOL) -> None:
    got, expected = got.detach().double().cpu(), expected.detach().double().cpu()
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(got).all(), f"{what}: not finite"
    scale = expected.abs().max().clamp(min=1e-12)
    err = float((got - expected).abs().max() / scale)
    assert err <= tol, f"{what}: relative error {err:.2e} > {tol:g} (max |expected| {float(scale):.3g})"


# --------------------------------------------------------------------------- models


def make_model(overrides: dict, atari: bool = False) -> DecisionModel:
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, n_layer=2, dropout=0.0, max_ep_len=64, s4_d_state=8, **overrides)
    return DecisionModel(cfg, (4, 84, 84) if atari else (5,), 4 if atari else 3, discrete=atari)


def make_batch(atari: bool = False, B: int = 3, K: int = 8, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if atari:
        states = torch.randint(0, 256, (B, K, 4, 84, 84), generator=g, dtype=torch.uint8)
        actions = torch.randint(0, 4, (B, K), generator=g)
    else:
        states = torch.randn(B, K, 5, generator=g)
        actions = torch.rand(B, K, 3, generator=g) * 2 - 1
    return {"states": states, "actions": actions, "returns_to_go": torch.randn(B, K, 1, generator=g),
            "timesteps": torch.arange(K).repeat(B, 1) + torch.randint(0, 40, (B, 1), generator=g),
            "mask": torch.ones(B, K, dtype=torch.bool)}


def on(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def cpu_reference(model: DecisionModel) -> DecisionModel:
    """The same weights on the CPU, DMamba with the sequential PyTorch scan."""
    reference = copy.deepcopy(model).cpu()
    for layer in reference.layers:
        if hasattr(layer.mixer, "scan_backend"):
            layer.mixer.scan_backend = "reference"
    return reference


def forward_and_grads(model: DecisionModel, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.train()
    preds = model(batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"], batch["mask"])
    g = torch.Generator().manual_seed(2)
    weights = torch.randn(preds.shape, generator=g).to(preds.device)  # a loss that weighs every output
    (preds * weights).sum().backward()
    return preds, {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("atari", [False, True], ids=["gym", "atari"])
@pytest.mark.parametrize("label,overrides", MODELS, ids=[label for label, _ in MODELS])
def test_forward_and_every_gradient_on_the_device_equal_the_cpu(label, overrides, atari):
    skip_unless_runs(overrides)
    model = make_model(overrides, atari)
    reference = cpu_reference(model)
    batch = make_batch(atari)
    preds, grads = forward_and_grads(model.to(DEVICE), on(batch, DEVICE))
    assert preds.device.type == DEVICE.type
    expected, expected_grads = forward_and_grads(reference, batch)
    assert_relative(preds, expected, f"{label}: predictions")
    assert grads.keys() == expected_grads.keys() and len(grads) == len(list(model.parameters()))
    for name, grad in grads.items():
        assert_relative(grad, expected_grads[name], f"{label}: d{name}")


@pytest.mark.parametrize("label,overrides", MODELS, ids=[label for label, _ in MODELS])
def test_recurrent_step_equals_the_forward_on_the_device(label, overrides):
    skip_unless_runs(overrides)
    model = make_model(overrides).to(DEVICE).eval()
    batch = on(make_batch(), DEVICE)
    with torch.no_grad():
        full = model(batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"], batch["mask"])
        state = model.init_state(batch["states"].shape[0], device=DEVICE)
        for t in range(batch["states"].shape[1]):
            prev = batch["actions"][:, t - 1] if t else None
            pred, state = model.step(batch["states"][:, t], batch["returns_to_go"][:, t], batch["timesteps"][:, t],
                                     prev, state)
            assert pred.device.type == DEVICE.type
            assert_relative(pred, full[:, t], f"{label}: step {t}")


# --------------------------------------------------------------------------- scan paths


def scan_inputs(batch=2, d_inner=32, seqlen=60, d_state=16, seed=0) -> dict[str, torch.Tensor]:
    """float32 leaves in the ranges the Mamba block produces (A < 0, softplus'd delta ~ 0.1)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    return {"u": r(batch, d_inner, seqlen), "delta": r(batch, d_inner, seqlen) - 2.0,
            "A": -torch.rand(d_inner, d_state, generator=g) * 4 - 0.5, "B": r(batch, d_state, seqlen),
            "C": r(batch, d_state, seqlen), "D": r(d_inner), "z": r(batch, d_inner, seqlen), "delta_bias": r(d_inner)}


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "no-gate"])
@pytest.mark.parametrize("scan", GPU_SCANS)
def test_scan_path_on_the_device_equals_the_cpu_reference(scan, gated):
    skip_unless_runs({"scan_backend": scan})
    inputs = scan_inputs()
    if not gated:
        inputs["z"] = None
    names = [k for k, v in inputs.items() if v is not None]
    g = torch.Generator().manual_seed(3)
    w_y, w_h = torch.randn(2, 32, 60, generator=g), torch.randn(2, 32, 16, generator=g)

    def run(fn, device, **kwargs):
        leaves = {k: inputs[k].to(device).requires_grad_() for k in names}
        y, h_last = fn(**leaves, delta_softplus=True, return_last_state=True, **kwargs)
        grads = torch.autograd.grad((y * w_y.to(device)).sum() + (h_last * w_h.to(device)).sum(),
                                    list(leaves.values()))
        return y, h_last, dict(zip(names, grads))

    y, h_last, grads = run(selective_scan, DEVICE, backend=scan)
    assert y.device.type == DEVICE.type
    y_ref, h_ref, grads_ref = run(selective_scan_reference, torch.device("cpu"))
    assert_relative(y, y_ref, f"{scan}: y")
    assert_relative(h_last, h_ref, f"{scan}: last state")
    for name in names:
        assert_relative(grads[name], grads_ref[name], f"{scan}: d{name}")


# --------------------------------------------------------------------------- mixed precision


def trainer_for(overrides: dict, precision: str) -> Trainer:
    model = make_model(overrides).to(DEVICE)
    rng = np.random.default_rng(0)
    batch = {k: v.numpy() for k, v in make_batch(B=8, K=10).items()}
    cfg = TrainConfig(batch_size=8, context_len=10, learning_rate=1e-3, warmup_steps=1, precision=precision)
    return Trainer(model, cfg, lambda rng: batch, rng, DEVICE)


@pytest.mark.parametrize("precision", [p for p in PRECISIONS if p != "fp32"])
@pytest.mark.parametrize("label,overrides", MODELS, ids=[label for label, _ in MODELS])
def test_a_mixed_precision_training_step_stays_finite_and_close_to_fp32(label, overrides, precision):
    skip_unless_runs(overrides)
    if precision == "fp16" and DEVICE.type == "cpu" and overrides["mixer"] == "s4":
        pytest.skip("s4 on the CPU: torch's CPU FFT has no float16")  # autocast leaves FFTs alone on CUDA
    runs = {}
    for p in ("fp32", precision):
        trainer = trainer_for(overrides, p)
        losses = [trainer.train_step().loss for _ in range(3)]
        runs[p] = losses, trainer
    losses, trainer = runs[precision]
    assert np.isfinite(losses).all(), f"{label} {precision}: losses {losses}"
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in trainer.model.parameters())
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    if precision == "fp16":  # the scaler let the updates through (a skipped step would leave inf gradients)
        assert trainer.scaler.get_scale() > 0 and trainer.step == 3
    np.testing.assert_allclose(losses, runs["fp32"][0], rtol=5e-2, err_msg=f"{label} {precision} vs fp32")
