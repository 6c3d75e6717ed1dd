"""Initializers shared by the models: `small_init_`, `wang_init_`, `bias_linspace_init_`."""

from __future__ import annotations

import math

import torch

__all__ = ["small_init_", "wang_init_", "bias_linspace_init_"]


def small_init_(param: torch.Tensor, dim: int) -> torch.Tensor:
    """Normal init with std sqrt(2 / (5 dim)) (Nguyen & Salazar, 2019, "Transformers without
    Tears"), as the `xlstm` package uses for input projections."""
    with torch.no_grad():
        return param.normal_(0.0, math.sqrt(2.0 / (5.0 * dim)))


def wang_init_(param: torch.Tensor, dim: int, num_blocks: int) -> torch.Tensor:
    """Normal init with std 2 / (num_blocks sqrt(dim)) (GPT-NeoX's "wang" init) for output
    projections of residual branches."""
    with torch.no_grad():
        return param.normal_(0.0, 2.0 / num_blocks / math.sqrt(dim))


def bias_linspace_init_(param: torch.Tensor, start: float = 3.4, end: float = 6.0) -> torch.Tensor:
    """A 1-d parameter set to evenly spaced values from start to end."""
    if param.dim() != 1:
        raise ValueError(f"bias_linspace_init_: expected a 1-d parameter, got shape {tuple(param.shape)}")
    with torch.no_grad():
        return param.copy_(torch.linspace(start, end, param.shape[0]))
