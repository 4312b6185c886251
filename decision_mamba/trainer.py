"""The shared trainer: optimiser, learning-rate schedule, the update step, and its state.

Both experiments train the same way (the paper's Tables 5 and 6; docs/protocol.md): AdamW, a warm-up schedule, gradient
clipping and the loss of Eq. (12). Gym uses DT's gym schedule (linear warm-up over
steps, then constant) and decays every weight; Atari uses DT's minGPT schedule (linear
warm-up and cosine decay counted in tokens) and decays only matmul weights.

Everything the next step depends on (weights, optimiser moments, schedule position,
the sampler's and torch's random state) is in `state_dict`, so a resumed run continues
exactly where the checkpoint was taken.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from decision_mamba.compute import autocast, grad_scaler
from decision_mamba.config import TrainConfig
from decision_mamba.model import DecisionModel

BatchSampler = Callable[[np.random.Generator], dict[str, np.ndarray]]


def configure_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW. Parameters marked `_no_weight_decay` (Mamba's A_log and D, as in mamba_ssm)
    are never decayed (unless `decay_ssm_params`: the release's gym optimizer decays every
    parameter, A_log and D included); with `decay_matmul_weights_only` (minGPT's grouping, DT Atari)
    neither are biases, LayerNorms and embeddings."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            exempt = getattr(p, "_no_weight_decay", False) and not cfg.decay_ssm_params
            if cfg.decay_matmul_weights_only:
                matmul = isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) and name == "weight"
                exempt = exempt or not matmul
            (no_decay if exempt else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel for the whole update instead of ~10 tensor ops per parameter (on
    # the CPU the optimiser step went from 15.6 to 5.8 ms at the gym size); the same AdamW
    # formula, deterministic (same bits at 1 and 2 threads). Only for CPU/CUDA floats (torch
    # has had a CPU kernel since 2.4, below our floor of 2.6); otherwise torch's loop AdamW.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=tuple(cfg.betas), fused=fused)


def linear_warmup(step: int, warmup_steps: int) -> float:
    """DT gym: LR multiplier rising linearly to 1 over warmup_steps, then constant."""
    return min(1.0, (step + 1) / max(1, warmup_steps))


def warmup_cosine_tokens(tokens: int, warmup_tokens: int, final_tokens: int, floor: float = 0.1,
                         clamp: bool = True) -> float:
    """DT Atari: linear warm-up over warmup_tokens, then cosine decay to `floor` at final_tokens.

    clamp=False is the release's (and minGPT's) formula: the progress is not capped at 1,
    so past final_tokens the cosine climbs back up from the floor.
    """
    if tokens < warmup_tokens:
        return tokens / max(1, warmup_tokens)
    progress = (tokens - warmup_tokens) / max(1, final_tokens - warmup_tokens)
    return max(floor, 0.5 * (1.0 + math.cos(math.pi * (min(1.0, progress) if clamp else progress))))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name} but no CUDA device is available; use train.device=cpu")
    return device


def to_torch(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device, non_blocking=True) for k, v in batch.items()}


@dataclass
class StepStats:
    loss: float
    lr: float
    grad_norm: float
    sample_s: float = 0.0  # wall-clock of drawing the batch and moving it to the device


class Trainer:
    """Runs update steps on batches drawn by `sample_batch(rng)`."""

    def __init__(self, model: DecisionModel, cfg: TrainConfig, sample_batch: BatchSampler,
                 rng: np.random.Generator, device: torch.device, final_tokens: int = 0):
        self.model = model
        self.cfg = cfg
        self.sample_batch = sample_batch
        self.rng = rng
        self.device = device
        self.optimizer = configure_optimizer(model, cfg)
        self.scaler = grad_scaler(cfg.precision, device)  # a pass-through unless fp16
        # Tokens are counted as DT's Atari code does: real (non-padded) action targets.
        self.final_tokens = final_tokens
        self.step = 0
        self.tokens = 0

    def lr_multiplier(self) -> float:
        if self.cfg.lr_schedule == "linear_warmup":
            return linear_warmup(self.step, self.cfg.warmup_steps)
        if self.step == 0 and self.cfg.first_update_full_lr:
            # The release sets the LR after each update, so its first runs at the optimizer's full LR.
            return 1.0
        return warmup_cosine_tokens(self.tokens, self.cfg.warmup_tokens, self.final_tokens,
                                    clamp=self.cfg.lr_clamp)

    def train_step(self) -> StepStats:
        self.model.train()
        start = time.perf_counter()
        batch = to_torch(self.sample_batch(self.rng), self.device)
        sample_s = time.perf_counter() - start
        lr = self.cfg.learning_rate * self.lr_multiplier()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with autocast(self.cfg.precision, self.device):
            loss = self.model.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)  # clip the true gradients
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)  # skipped by fp16's scaler when a gradient is inf/nan
        self.scaler.update()
        self.step += 1
        self.tokens += int(batch["mask"].sum())
        return StepStats(loss=float(loss.detach()), lr=lr, grad_norm=float(grad_norm), sample_s=sample_s)

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "tokens": self.tokens,
            "grad_scaler": self.scaler.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.tokens = int(state["tokens"])
        if state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
