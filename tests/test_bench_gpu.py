"""benchmarks/bench_gpu.py's code path, run tiny on the CPU (a check that it runs; nothing is measured)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "benchmarks" / "bench_gpu.py")
bench_gpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_gpu)


def test_every_contender_and_both_evaluation_modes_run_and_are_reported(monkeypatch):
    monkeypatch.setattr(bench_gpu, "_timed", lambda fn, device, reps, warmup=0: (fn(), 0.001)[1])  # one step each
    cpu = torch.device("cpu")
    training = bench_gpu.bench_training(cpu, bench_gpu.TINY, reps=1)
    expected = {(size, label, p) for size in bench_gpu.TINY for label in bench_gpu.contenders(cpu, bench_gpu.TINY[size])
                for p in bench_gpu.PRECISIONS}
    assert {(r["size"], r["model"], r["precision"]) for r in training} == expected
    assert {"DMamba (fused scan)", "DMamba (parallel scan)", "DMamba (reference scan)", "DT", "DC", "DS4"} == \
        {r["model"] for r in training}
    assert not [r for r in training if "error" in r]
    evaluation = bench_gpu.bench_evaluation(cpu, episodes=2, steps=3, tiny=True)
    assert [(r["mode"], r["overlap"]) for r in evaluation] == [("window", "off"), ("window", "on"),
                                                               ("recurrent", "off"), ("recurrent", "on")]
    assert all("s" in r for r in evaluation)
    result = {"device": "cpu", "device_name": "CPU", "torch": torch.__version__, "cuda": None, "auto_scan": "fused",
              "auto_scan_reason": "r", "tiny": True, "command": "c", "training": training, "evaluation": evaluation}
    text = bench_gpu.to_markdown(result)
    assert text.count("| DMamba (parallel scan) | 1.00 | 1.00 | n/a | n/a |") == 2  # gym and atari tables
    assert not bench_gpu.failed(result)
    training[0]["error"] = "OutOfMemoryError: CUDA out of memory"
    assert bench_gpu.failed(result) and "OutOfMemoryError" in bench_gpu.to_markdown(result)
