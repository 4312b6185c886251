"""The input checks every token mixer shares (mixers.py, mamba.py, mamba2.py, and any mixer you add).

Each raises a ValueError that names the method, the expected shape or value, and the fix.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_sequence(x: Tensor, d_model: int, who: str) -> None:
    """Reject anything but a floating (B, L >= 1, d_model) tensor, naming the expected shape."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{who}.forward: x must be a torch.Tensor of shape (batch, seq_len, {d_model}), "
                         f"got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"{who}.forward: expected x of shape (batch, seq_len, {d_model}), "
                         f"got {tuple(x.shape)}; for a single token use step()")
    if x.shape[1] == 0:
        raise ValueError(f"{who}.forward: the sequence is empty (seq_len = 0); pass at least one token")
    if not x.is_floating_point():
        raise ValueError(f"{who}.forward: x must be a floating-point tensor of shape (batch, seq_len, {d_model}), "
                         f"got dtype {x.dtype}; cast it with x.float()")


def check_token(x: Tensor, d_model: int, who: str) -> None:
    """Reject anything but a floating (B, d_model) tensor: step() takes one token per sequence."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{who}.step: x must be a torch.Tensor of shape (batch, {d_model}), got {type(x).__name__}")
    if x.dim() != 2 or x.shape[-1] != d_model:
        raise ValueError(f"{who}.step: expected x of shape (batch, {d_model}) (one token per sequence), "
                         f"got {tuple(x.shape)}; for a whole sequence use forward()")
    if not x.is_floating_point():
        raise ValueError(f"{who}.step: x must be a floating-point tensor of shape (batch, {d_model}), "
                         f"got dtype {x.dtype}; cast it with x.float()")


def check_padding_mask(mask: Tensor | None, x: Tensor, who: str) -> None:
    if mask is None:
        return
    expected = tuple(x.shape[:2])
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != expected:
        got = f"{tuple(mask.shape)} {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"{who}.forward: key_padding_mask must be a bool tensor of shape (batch, seq_len) = "
                         f"{expected}, True for real tokens, got {got}")


def check_state(state: tuple, expected: list[tuple[str, tuple[int | None, ...]]], who: str) -> None:
    """Check the state tuple against (name, shape) pairs; None in a shape matches any size."""
    names = ", ".join(name for name, _ in expected)
    if not isinstance(state, tuple) or len(state) != len(expected):
        raise ValueError(f"{who}.step: state must be the tuple ({names}) returned by init_state() or step(), "
                         f"got {type(state).__name__} of length {len(state) if isinstance(state, tuple) else '?'}")
    for tensor, (name, shape) in zip(state, expected):
        ok = (isinstance(tensor, Tensor) and tensor.dim() == len(shape)
              and all(want is None or got == want for got, want in zip(tensor.shape, shape)))
        if not ok:
            shown = tuple("*" if s is None else s for s in shape)
            got = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
            raise ValueError(f"{who}.step: state {name} must have shape {shown}, got {got}; "
                             f"build the state with init_state(batch_size)")


def check_positive_int(value: object, name: str, who: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{who}: {name} must be a positive integer, got {value!r}")


def check_probability(value: object, name: str, who: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise ValueError(f"{who}: {name} must be a number in [0, 1), got {value!r}")
