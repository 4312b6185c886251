"""benchmarks/bench.py's lower bound (the fused scan and conv made free, and put back), and
benchmarks/bench_context.py's machinery: the step it times, the order, the ratios, the memory."""

from __future__ import annotations

import argparse
import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from decision_mamba.data.sampler import sample_batch
from decision_mamba.mamba import causal_conv1d_silu
from decision_mamba.selective_scan import selective_scan, selective_scan_reference
from decision_mamba.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench", REPO / "benchmarks" / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def scan_and_conv_outputs():
    """Outputs and every input gradient of one fused scan and one fused conv."""
    g = torch.Generator().manual_seed(0)
    u, delta, z = (torch.randn(2, 5, 7, generator=g, requires_grad=True) for _ in range(3))  # (B, D, L)
    A = -torch.rand(5, 3, generator=g)
    B, C = (torch.randn(2, 3, 7, generator=g, requires_grad=True) for _ in range(2))
    D = torch.randn(5, generator=g, requires_grad=True)
    y, h_last = selective_scan(u, delta, A, B, C, D, z, delta_softplus=True, return_last_state=True, backend="fused")
    x = torch.randn(2, 7, 5, generator=g, requires_grad=True)  # (B, L, D)
    weight, bias = torch.randn(5, 1, 4, generator=g, requires_grad=True), torch.randn(5, generator=g, requires_grad=True)
    conv = causal_conv1d_silu(x, weight, bias, backend="fused")
    (y.sum() + h_last.sum() + conv.sum()).backward()
    grads = [t.grad for t in (u, delta, z, B, C, D, x, weight, bias)]
    reference = selective_scan_reference(u, delta, A, B, C, D, z, delta_softplus=True)
    return [y, h_last, conv, *grads], reference


def test_free_scan_and_conv_zero_every_output_and_gradient_then_restore_the_kernels():
    with bench.free_scan_and_conv():
        outputs, _ = scan_and_conv_outputs()
    # (softplus' and the conv's own gradient paths pass zeros through as zeros)
    assert all(t is not None and not t.any() for t in outputs)
    outputs, reference = scan_and_conv_outputs()
    torch.testing.assert_close(outputs[0], reference, rtol=1e-4, atol=1e-5)
    assert outputs[2].abs().sum() > 0 and all(t.abs().sum() > 0 for t in outputs[3:])


def test_action_selection_times_every_step_contender_beside_the_window_with_ratios():
    """3.: DMamba's, DT's and DMamba-2's one-token steps and DMamba's window, in one interleaved run,
    each with its ratio to DMamba's step, and a report column for each."""
    assert list(bench.STEP_CONTENDERS) == ["DMamba (fused CPU scan)", "DT", "DMamba-2 (chunked SSD)"]
    assert set(bench.STEP_CONTENDERS) <= set(bench.CONTENDERS)  # one home: the training step's table
    [row] = bench.bench_action_selection(reps=3, batch_sizes=(2,), K=3)
    columns = [*bench.STEP_CONTENDERS.values(), bench.WINDOW]
    assert [k for k in row if k not in ("envs", "K")] == columns and (row["envs"], row["K"]) == (2, 3)
    baseline = row["DMamba recurrent step"]
    assert (baseline["ratio"], baseline["ratio_lo"], baseline["ratio_hi"]) == (1.0, 1.0, 1.0)
    for column in columns:
        assert row[column]["ms"] > 0 and row[column]["ratio_lo"] <= row[column]["ratio"] <= row[column]["ratio_hi"]
    header, rule, line = bench.action_selection_table([row])[2:]
    assert header == ("| episodes batched | DMamba recurrent step | DT KV-cache step | DMamba-2 recurrent step | "
                      "DMamba K-window | DT KV-cache step / DMamba recurrent step | DMamba-2 recurrent step / "
                      "DMamba recurrent step | DMamba K-window / DMamba recurrent step |")
    assert rule.count("---") == 8  # the batch, 4 timings, 3 ratios
    cells = line.strip("|").split(" | ")
    assert cells[0].strip() == "2" and float(cells[3]) == pytest.approx(row["DMamba-2 recurrent step"]["ms"], abs=0.01)
    assert cells[6].startswith(f"{row['DMamba-2 recurrent step']['ratio']:.2f}x [")


def test_summarise_takes_medians_of_per_round_ratios():
    times = {"a": [1.0, 2.0, 4.0], "b": [2.0, 2.0, 2.0]}  # per round a / b: 0.5, 1, 2
    result = bench.summarise(times, "b")
    assert result["a"] == {"ms": 2000.0, "ratio": 1.0, "ratio_lo": 0.5, "ratio_hi": 2.0}
    assert result["b"]["ratio"] == 1.0


# ------------------------------------------------- benchmarks/bench_context.py
context_spec = importlib.util.spec_from_file_location("bench_context", REPO / "benchmarks" / "bench_context.py")
bench_context = importlib.util.module_from_spec(context_spec)
context_spec.loader.exec_module(bench_context)


@pytest.mark.parametrize("label", ["DMamba", "DT"])
def test_the_timed_step_is_one_adamw_update_on_whole_episode_windows(label):
    """The step bench_context times, against the update computed here by hand: the gradient of
    the masked MSE on the sampler's whole-episode windows, clipped, and AdamW's first step."""
    K, B = 450, 2  # longer than every bundled episode (at most 406 steps): each window is a whole one
    step = bench_context.training_steps([K], B)[label, K]
    trainer = step.__self__
    before = copy.deepcopy(trainer.model)
    rng_state = torch.get_rng_state()
    step()

    traj, mean, std = bench_context.load_data(bench_context.config("mamba", K, B))
    batch = sample_batch(traj, B, K, np.random.default_rng(12), state_mean=mean, state_std=std, rtg_scale=1000.0,
                         mode="episode")  # quickstart: seed 12, rtg_scale 1000
    first = traj.episode_index()[np.random.default_rng(12).integers(0, traj.num_transitions, size=B)]
    lengths = traj.lengths[first]
    assert (lengths < K).all() and (batch["mask"].sum(axis=1) == lengths).all()
    for row, n in zip(batch["timesteps"], lengths):
        assert (row[:n] == np.arange(n)).all()  # from the episode's first step
    torch.set_rng_state(rng_state)  # the same dropout masks
    before.train()
    b = {k: torch.from_numpy(v) for k, v in batch.items()}
    preds = before(b["states"], b["actions"], b["returns_to_go"], b["timesteps"], b["mask"])
    mask = b["mask"]
    ((preds[mask] - b["actions"][mask]) ** 2).mean().backward()
    torch.nn.utils.clip_grad_norm_(before.parameters(), 0.25)  # quickstart's grad_clip

    lr = 1e-3 / 200  # quickstart's learning rate at the first of 200 warm-up steps
    for (name, p0), p1 in zip(before.named_parameters(), trainer.model.parameters()):
        torch.testing.assert_close(p1.grad, p0.grad, rtol=1e-4, atol=1e-7, msg=name)
        decay = 0.0 if name.endswith(("A_log", ".D")) else 1e-4  # Mamba's A_log and D are not decayed
        # AdamW's first step: the moments are g and g^2, so the update is lr * g / (|g| + eps)
        expected = p0.detach() * (1 - lr * decay) - lr * p0.grad / (p0.grad.abs() + 1e-8)
        torch.testing.assert_close(p1.detach(), expected, rtol=0, atol=lr * 1e-2, msg=name)


def test_every_model_is_timed_at_every_context_in_each_round(monkeypatch):
    calls = []
    train_step = Trainer.train_step

    def recorded(self):
        calls.append((self.model.cfg.mixer, self.cfg.context_len, self.cfg.batch_size))
        return train_step(self)

    monkeypatch.setattr(Trainer, "train_step", recorded)
    times = bench_context.time_steps([3, 5], B=2, reps=2, warmup=1)
    one_round = [("mamba", 3, 2), ("attention", 3, 2), ("mamba", 5, 2), ("attention", 5, 2)]
    assert calls == one_round * 3  # the warm-up, then 2 timed rounds
    assert set(times) == {("DMamba", 3), ("DT", 3), ("DMamba", 5), ("DT", 5)}
    assert all(len(ts) == 2 and min(ts) > 0 for ts in times.values())


def test_ratios_and_growth_are_medians_of_per_round_ratios():
    times = {("DMamba", 20): [1.0, 2.0], ("DT", 20): [2.0, 2.0], ("DMamba", 100): [3.0, 4.0], ("DT", 100): [10.0, 12.0]}
    first, second = bench_context.summarise(times, [20, 100])
    assert first["seconds"] == {"DMamba": 1.5, "DT": 2.0} and "growth" not in first
    assert first["dt_over_dmamba"] == {"median": 1.5, "lo": 1.0, "hi": 2.0}  # rounds: 2/1, 2/2
    assert second["dt_over_dmamba"] == {"median": (10 / 3 + 3) / 2, "lo": 3.0, "hi": 10 / 3}
    assert second["growth"] == {"DMamba": {"median": 2.5, "lo": 2.0, "hi": 3.0},  # rounds: 3/1, 4/2
                                "DT": {"median": 5.5, "lo": 5.0, "hi": 6.0}}
    memory = {("DMamba", 20): {"peak_growth_mib": 40.0}, ("DT", 20): {"peak_growth_mib": 30.0},
              ("DMamba", 100): {"peak_growth_mib": 200.0}, ("DT", 100): {"peak_growth_mib": 240.0}}
    args = argparse.Namespace(contexts=[20, 100], batch=16, reps=2, memory_steps=1)
    table = bench_context.report([first, second], memory, np.array([50, 150]), args).splitlines()
    # real steps at K 100: episodes drawn by length, 50/200 * 50 + 150/200 * 100
    assert table[-1] == ("| 100 | 88 | 3.500 | 11.000 | 3.17x [3.00-3.33] | 5.00x | 2.50x [2.00-3.00] | "
                         "5.50x [5.00-6.00] | 200 | 240 | 5.00x | 8.00x |")


def test_the_peak_memory_of_a_step_grows_with_the_context():
    memory = bench_context.measure_memory([4, 200], B=4, steps=1)
    for label in ("DMamba", "DT"):
        assert memory[label, 200]["peak_growth_mib"] > memory[label, 4]["peak_growth_mib"] + 5, memory
