"""DMamba's fused recurrent step (numba, CPU) against the PyTorch step and the full forward.

The fused step is a second copy of the block's arithmetic (decision_mamba/cpu/step.py); the
contract tests below keep it from drifting from the modules (mamba.py, model.py)."""

import copy
import dataclasses

import numba
import pytest
import torch

from decision_mamba import fused_step
from decision_mamba.cpu import step as cpu_step
from decision_mamba.cpu.step import BLAS_MIN_BATCH
from decision_mamba.mamba import Mamba
from decision_mamba.model import DecisionModel, ModelConfig


def make_dmamba(seed=0, obs_dim=5, act_dim=3, discrete=False, state_shape=None, **kw) -> DecisionModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(mixer="mamba", d_model=32, n_layer=3, dropout=0.0, max_ep_len=50, **kw)
    model = DecisionModel(cfg, state_shape or (obs_dim,), act_dim, discrete=discrete).eval()
    # Off the structured init (A_log rows alike, D = 1, zero biases), so that a wrong index
    # or a dropped term cannot hide.
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def reference_twin(model: DecisionModel) -> DecisionModel:
    """A copy with scan_backend='reference', which keeps every inference step in PyTorch."""
    twin = copy.deepcopy(model)
    twin.cfg = dataclasses.replace(model.cfg, scan_backend="reference")
    return twin


def inputs(B, T, seed=1, dtype=torch.float32, d_model=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, d_model, generator=g, dtype=dtype)


def random_state(model, B, seed=2, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [tuple(torch.randn(s.shape, generator=g, dtype=dtype) for s in layer_state)
            for layer_state in model.init_state(B)]


def torch_layers_step(model, x, state):
    new_state = []
    for layer, layer_state in zip(model.layers, state):
        x, layer_state = layer.step(x, layer_state)
        new_state.append(layer_state)
    return x, new_state


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
@pytest.mark.parametrize("channel_mlp", [True, False])
@pytest.mark.parametrize("B,T", [(1, 1), (1, 3), (4, 2), (5, 3), (BLAS_MIN_BATCH, 1), (BLAS_MIN_BATCH + 1, 3)])
def test_fused_layers_equal_the_pytorch_layer_steps(dtype, tol, channel_mlp, B, T):
    model = make_dmamba(channel_mlp=channel_mlp).to(dtype)
    x = inputs(B, T, dtype=dtype)
    state = random_state(model, B, dtype=dtype)  # not zeros: the old state must enter correctly
    with torch.no_grad():
        expected, expected_state = torch_layers_step(model, x, state)
        got, got_state = fused_step.fused_layers_step(model.layers, x, state)
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    for (c, s), (c_ref, s_ref) in zip(got_state, expected_state):
        torch.testing.assert_close(c, c_ref, rtol=tol, atol=tol)
        torch.testing.assert_close(s, s_ref, rtol=tol, atol=tol)


def test_optional_biases_enter_like_in_the_pytorch_step():
    """mamba_ssm's bias=True (in_proj, out_proj) and conv_bias=False, which the default layout lacks."""
    model = make_dmamba()
    for i, layer in enumerate(model.layers):
        torch.manual_seed(10 + i)
        layer.mixer = Mamba(32, bias=True, conv_bias=False)
        with torch.no_grad():
            layer.mixer.in_proj.bias.normal_()
            layer.mixer.out_proj.bias.normal_()
    model.eval()
    x, state = inputs(3, 3), random_state(model, 3)
    with torch.no_grad():
        expected, _ = torch_layers_step(model, x, state)
        got, _ = fused_step.fused_layers_step(model.layers, x, state)
    torch.testing.assert_close(got, expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("discrete,B", [(False, 3), (True, 3), (False, BLAS_MIN_BATCH + 1)])
def test_model_step_with_the_fused_layers_equals_the_full_forward(discrete, B):
    # B 3: the single kernel; from BLAS_MIN_BATCH: torch's matrix products, numba's conv and
    # SSM. Either way the state one step returns (channel-last underneath) feeds the next.
    model = make_dmamba(discrete=discrete).double()
    g = torch.Generator().manual_seed(3)
    K = 7
    states = torch.randn(B, K, 5, generator=g, dtype=torch.float64)
    actions = (torch.randint(0, 3, (B, K), generator=g) if discrete
               else torch.rand(B, K, 3, generator=g, dtype=torch.float64) * 2 - 1)
    rtg = torch.randn(B, K, 1, generator=g, dtype=torch.float64)
    timesteps = torch.arange(K).repeat(B, 1) + 4
    with torch.no_grad():
        full = model(states, actions, rtg, timesteps)
        state = model.init_state(B)
        for t in range(K):
            assert fused_step.fused_step_applies(model, states[:, t])
            pred, state = model.step(states[:, t], rtg[:, t], timesteps[:, t], actions[:, t - 1] if t else None, state)
            torch.testing.assert_close(pred, full[:, t], rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("B", [2, BLAS_MIN_BATCH])
def test_the_old_state_is_untouched_and_the_new_one_keeps_its_dtype(B):
    model = make_dmamba()
    x = inputs(B, 3)
    state = random_state(model, B)
    before = [tuple(s.clone() for s in layer_state) for layer_state in state]
    half_state = [(c.double(), s.double()) for c, s in state]
    with torch.no_grad():
        _, new = fused_step.fused_layers_step(model.layers, x, state)
        _, new_from_double = fused_step.fused_layers_step(model.layers, x, half_state)
    for (c, s), (c0, s0) in zip(state, before):
        assert torch.equal(c, c0) and torch.equal(s, s0)
    assert all(c.dtype == torch.float32 and s.dtype == torch.float32 for c, s in new)
    assert all(c.dtype == torch.float64 and s.dtype == torch.float64 for c, s in new_from_double)
    assert not torch.equal(new[0][1], state[0][1])


def test_threads_give_the_same_bits_as_one_thread():
    """The parallel kernel (one chunk of sequences per thread) and the serial one."""
    threads = min(2, numba.config.NUMBA_NUM_THREADS)
    if threads < 2:
        pytest.skip("needs 2 numba threads")
    model = make_dmamba()
    x, state = inputs(5, 3), random_state(model, 5)
    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    try:
        with torch.no_grad():
            torch.set_num_threads(1)
            serial, serial_state = fused_step.fused_layers_step(model.layers, x, state)
            torch.set_num_threads(threads)
            parallel, parallel_state = fused_step.fused_layers_step(model.layers, x, state)
    finally:
        torch.set_num_threads(torch_threads)
        numba.set_num_threads(numba_threads)
    assert torch.equal(serial, parallel)
    for a, b in zip(serial_state, parallel_state):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # and a sequence's result does not depend on its neighbours in the batch
    with torch.no_grad():
        alone, _ = fused_step.fused_layers_step(model.layers, x[3:4], [(c[3:4], s[3:4]) for c, s in state])
    assert torch.equal(alone[0], serial[3])


def test_weights_are_recopied_after_training_changes_them():
    model = make_dmamba()
    x, state = inputs(2, 3), random_state(model, 2)
    with torch.no_grad():
        before, _ = fused_step.fused_layers_step(model.layers, x, state)
    # an optimiser step changes parameters in place
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(5)
    batch_states = torch.randn(2, 4, 5, generator=g)
    loss = model(batch_states, torch.zeros(2, 4, 3), torch.ones(2, 4, 1), torch.arange(4).repeat(2, 1)).square().sum()
    loss.backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        after, _ = fused_step.fused_layers_step(model.layers, x, state)
        expected, _ = torch_layers_step(model, x, state)
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, expected, rtol=2e-5, atol=2e-5)
    # load_state_dict copies in place too
    other = make_dmamba(seed=7)
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        loaded, _ = fused_step.fused_layers_step(model.layers, x, state)
        expected, _ = torch_layers_step(other, x, state)
    torch.testing.assert_close(loaded, expected, rtol=2e-5, atol=2e-5)


def test_weights_are_recopied_after_a_parameter_or_a_block_is_assigned():
    model = make_dmamba()
    x, state = inputs(2, 3), random_state(model, 2)
    with torch.no_grad():
        before, _ = fused_step.fused_layers_step(model.layers, x, state)  # fills the cache
        model.layers[1].mixer.D = torch.nn.Parameter(torch.randn(model.layers[1].mixer.D.shape))
        got, _ = fused_step.fused_layers_step(model.layers, x, state)
        expected, _ = torch_layers_step(model, x, state)
    assert (got - before).abs().max() > 1e-3
    torch.testing.assert_close(got, expected, rtol=2e-5, atol=2e-5)
    # a block built earlier (its parameters registered before the cache was filled)
    spare = make_dmamba(seed=9).layers[2].mixer
    with torch.no_grad():
        fused_step.fused_layers_step(model.layers, x, state)
        model.layers[2].mixer = spare
        got, _ = fused_step.fused_layers_step(model.layers, x, state)
        expected, _ = torch_layers_step(model, x, state)
    torch.testing.assert_close(got, expected, rtol=2e-5, atol=2e-5)


def test_the_fused_step_runs_only_where_it_applies():
    model = make_dmamba()
    x = inputs(1, 3)
    with torch.no_grad():
        assert fused_step.fused_step_applies(model, x)
        assert not fused_step.fused_step_applies(model.train(), x)  # dropout would be skipped
        model.eval()
        assert not fused_step.fused_step_applies(model, x.half())
        assert not fused_step.fused_step_applies(reference_twin(model), x)
        dt = DecisionModel(ModelConfig(mixer="attention", d_model=32), (5,), 3, discrete=False).eval()
        assert not fused_step.fused_step_applies(dt, x)
    assert not fused_step.fused_step_applies(model, x)  # autograd wants a graph: the PyTorch step gives one


def test_reference_backend_steps_equal_the_fused_ones_through_the_model():
    model = make_dmamba()
    twin = reference_twin(model)
    g = torch.Generator().manual_seed(4)
    B, K = 2, 5
    states, rtg = torch.randn(B, K, 5, generator=g), torch.randn(B, K, 1, generator=g)
    actions = torch.rand(B, K, 3, generator=g)
    with torch.no_grad():
        s1, s2 = model.init_state(B), twin.init_state(B)
        for t in range(K):
            ts = torch.full((B,), t)
            p1, s1 = model.step(states[:, t], rtg[:, t], ts, actions[:, t - 1] if t else None, s1)
            p2, s2 = twin.step(states[:, t], rtg[:, t], ts, actions[:, t - 1] if t else None, s2)
            torch.testing.assert_close(p1, p2, rtol=2e-5, atol=2e-6)


def test_importing_the_model_installs_no_process_wide_torch_hooks():
    # The weight cache notices replaced parameters by reading them off the
    # modules at each step, not through torch's global registration hooks.
    program = ("import torch.nn.modules.module as m, decision_mamba.model; "
               "print(len(m._global_parameter_registration_hooks) + len(m._global_module_registration_hooks))")
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0"


def test_the_model_imports_the_fused_step_only_for_a_mixer_that_has_one():
    # DMamba's MIXERS entry names fused_step; the model imports it on its first step.
    program = ("import sys, torch; from decision_mamba.model import DecisionModel, ModelConfig\n"
               "def steps(mixer):\n"
               "    model = DecisionModel(ModelConfig(mixer=mixer, d_model=8, n_layer=1), (3,), 2, discrete=False).eval()\n"
               "    with torch.no_grad():\n"
               "        model.step(torch.zeros(1, 3), torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), None,\n"
               "                   model.init_state(1))\n"
               "    return 'decision_mamba.fused_step' in sys.modules\n"
               "print(steps('attention'), steps('mamba'))")
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


# ------------------------------------------------------------------ the contract with the modules
def mamba_with(d_model, **options):
    """A DMamba layer's mixer with options ModelConfig does not expose (mamba_ssm's bias,
    conv_bias, dt_rank), put in place of the one the model built."""
    return Mamba(d_model, **options)


# Every layer variant the kernel claims to cover: the mixer's options, the RC ablation
# (channel_mlp False), one to three layers. Sizes are small; the dtype float64, so that
# "moves exactly as" can be checked to 1e-10.
VARIANTS = {
    "default": (dict(n_layer=3), None),
    "RC": (dict(n_layer=2, channel_mlp=False), None),
    "one-layer-small-state": (dict(n_layer=1, d_state=4, d_conv=2, expand=1), None),
    "conv-1-expand-3": (dict(n_layer=2, d_conv=1, expand=3, d_state=8), None),
    "biases-no-conv-bias-rank-3": (dict(n_layer=2), dict(bias=True, conv_bias=False, dt_rank=3)),
    "RC-with-biases": (dict(n_layer=1, channel_mlp=False), dict(bias=True, dt_rank=2)),
}


def variant_model(name: str) -> DecisionModel:
    cfg_options, mixer_options = VARIANTS[name]
    torch.manual_seed(0)
    cfg = ModelConfig(mixer="mamba", d_model=16, dropout=0.0, max_ep_len=50, **cfg_options)
    model = DecisionModel(cfg, (5,), 3, discrete=False)
    if mixer_options is not None:
        for layer in model.layers:
            layer.mixer = mamba_with(16, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand, **mixer_options)
    model = model.double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # off the structured init: no parameter may hide behind a symmetric value
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


@pytest.mark.parametrize("B", [2, BLAS_MIN_BATCH])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_fused_step_moves_exactly_as_the_pytorch_step_when_any_parameter_moves(variant, B):
    """Perturb each parameter of each layer in turn: the fused step's outputs and new states
    must change exactly as the PyTorch step's do (the single kernel below BLAS_MIN_BATCH
    sequences, torch's matrix products with numba's conv and SSM from it on). A parameter the
    kernel ignored, read from the wrong place or combined differently fails here."""
    model = variant_model(variant)
    assert cpu_step.covers(model.layers), f"the kernel should cover the {variant} layers"
    x = inputs(B, 3, dtype=torch.float64, d_model=16)
    state = random_state(model, B, dtype=torch.float64)

    def both():
        with torch.no_grad():
            fused, fused_state = fused_step.fused_layers_step(model.layers, x, state)
            torch_out, torch_state = torch_layers_step(model, x, state)
        flat = lambda out, st: torch.cat([out.flatten()] + [t.flatten() for pair in st for t in pair])  # noqa: E731
        return flat(fused, fused_state), flat(torch_out, torch_state)

    fused_before, torch_before = both()
    torch.testing.assert_close(fused_before, torch_before, rtol=1e-10, atol=1e-11)
    assert cpu_step._cached_weights(model.layers, torch.float64) is not None, "the kernel ran, not the PyTorch step"
    g = torch.Generator().manual_seed(2)
    names = [name for name, _ in model.layers.named_parameters()]
    assert len(names) == len({name for name in names})
    for name, parameter in model.layers.named_parameters():
        saved = parameter.detach().clone()
        with torch.no_grad():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=g, dtype=parameter.dtype))
        fused_after, torch_after = both()
        torch_moved = torch_after - torch_before
        assert torch_moved.abs().max() > 1e-6, f"{name}: the PyTorch step does not depend on it"
        torch.testing.assert_close(fused_after - fused_before, torch_moved, rtol=1e-8, atol=1e-10,
                                   msg=lambda m: f"{variant}, {name}: the fused step moved differently. {m}")
        assert cpu_step._cached_weights(model.layers, torch.float64) is not None, \
            f"{variant}, {name}: the kernel's own check found it disagrees and ran the PyTorch step"
        with torch.no_grad():
            parameter.copy_(saved)


class MambaWithExtraGate(Mamba):
    """A researcher's variant: a subclass with a parameter the kernel knows nothing of."""

    def __init__(self, d_model, **kw):
        super().__init__(d_model, **kw)
        self.extra = torch.nn.Parameter(torch.full((self.d_inner,), 0.5))

    def step_chunk(self, x, state):
        y, state = super().step_chunk(x, state)
        return y * 2, state


def uncovered_models():
    model = make_dmamba()
    yield "a Mamba subclass", model, lambda m: setattr(m.layers[1], "mixer", MambaWithExtraGate(32))
    yield "a parameter added to the block", make_dmamba(), lambda m: m.layers[0].mixer.register_parameter(
        "scale", torch.nn.Parameter(torch.ones(1)))
    yield "a module added to a layer", make_dmamba(), lambda m: setattr(m.layers[2], "adapter", torch.nn.Linear(32, 32))
    yield "another layer norm epsilon", make_dmamba(), lambda m: setattr(m.layers[0].ln_mixer, "eps", 1e-3)
    yield "layers of different widths", make_dmamba(), lambda m: setattr(m.layers[0], "mixer", Mamba(32, expand=1))
    yield "the channel MLP in one layer only", make_dmamba(), lambda m: (setattr(m.layers[1], "mlp", None),
                                                                        setattr(m.layers[1], "ln_mlp", None))


@pytest.mark.parametrize("case", range(6))
def test_layers_the_kernel_does_not_cover_run_the_pytorch_step(case):
    what, model, change = list(uncovered_models())[case]
    x, state = inputs(2, 3), random_state(model, 2)
    with torch.no_grad():
        fused_step.fused_layers_step(model.layers, x, state)  # the covered layers: cached
        change(model)
        model.eval()
        state = random_state(model, 2)  # (a new mixer may have a state of another shape)
        assert not cpu_step.covers(model.layers), what
        assert fused_step.fused_step_applies(model, x)  # the door still opens ...
        got, got_state = fused_step.fused_layers_step(model.layers, x, state)
        expected, expected_state = torch_layers_step(model, x, state)
    assert torch.equal(got, expected), f"{what}: ... and the PyTorch step runs behind it"
    for (c, s), (c_ref, s_ref) in zip(got_state, expected_state):
        assert torch.equal(c, c_ref) and torch.equal(s, s_ref)


def test_the_kernel_reads_every_weight_by_name():
    """KERNEL_WEIGHTS names exactly the parameters of a DMamba layer (with the optional biases)."""
    layer = variant_model("biases-no-conv-bias-rank-3").layers[0]
    names = {name for name, _ in layer.named_parameters()}
    table = {name for _, name, _, _ in cpu_step.KERNEL_WEIGHTS}
    assert names == table - {"mixer.conv1d.bias"}
    assert {name for name, _ in variant_model("RC").layers[0].named_parameters()} <= table


def test_an_edit_of_the_block_s_arithmetic_turns_the_kernel_off(monkeypatch):
    """`covers` sees modules and parameters, not code: the kernel's own check against the
    PyTorch step (made whenever it copies the weights) catches an edited step."""
    model = make_dmamba()
    x, state = inputs(2, 3), random_state(model, 2)
    with torch.no_grad():
        fused_step.fused_layers_step(model.layers, x, state)
    assert cpu_step._cached_weights(model.layers, torch.float32) is not None
    edited = Mamba.step_chunk

    def step_chunk_with_a_new_gate(self, x, state):  # a researcher's edit of the block
        y, state = edited(self, x, state)
        return 1.5 * y, state

    monkeypatch.setattr(Mamba, "step_chunk", step_chunk_with_a_new_gate)
    monkeypatch.setattr(cpu_step, "_warned_disagreement", False)
    with torch.no_grad():
        model.layers[0].mixer.D.add_(0.0)  # any weight update makes the kernel re-check
        with pytest.warns(RuntimeWarning, match="disagrees with the layers' PyTorch step"):
            got, _ = fused_step.fused_layers_step(model.layers, x, state)
        expected, _ = torch_layers_step(model, x, state)
    assert cpu_step._cached_weights(model.layers, torch.float32) is None
    assert torch.equal(got, expected)
