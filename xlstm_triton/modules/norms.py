"""The normalizations of both model families, in PyTorch (memory-bound; no custom kernel).

- `LayerNorm`: over the last dim, weight stored as an offset (scale = 1 + weight) by default,
  bias optional (the paper architecture's block norms).
- `MultiHeadLayerNorm`: the same per head, (..., NH, DH) -> (..., NH * DH) (a group norm with one
  group per head; the mLSTM and sLSTM output norms).
- `RMSNorm`: x / rms(x) * weight (+ bias) (the xLSTM-7B block norms); without autograd on a GPU
  it is one fused PyTorch kernel.

`add_forward(x, residual)` of LayerNorm and RMSNorm adds a residual branch and normalizes in
one kernel each way (`add_norm.py`); the blocks use it between their branches. The fused
per-head norm with what follows it (the output gate; the paper layer's skip) is `gated_head_norm.py`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import use_fused, use_kernels
from .add_norm import add_norm

__all__ = ["LayerNorm", "MultiHeadLayerNorm", "RMSNorm"]


class LayerNorm(nn.Module):
    """LayerNorm over the last dim with an optional bias. With `residual_weight` (the default) the
    weight parameter holds an offset: the scale is 1 + weight, and the weight starts at 0."""

    def __init__(self, ndim: int = -1, weight: bool = True, bias: bool = False, eps: float = 1e-5,
                 residual_weight: bool = True):
        super().__init__()
        if ndim <= 0:
            raise ValueError(f"LayerNorm: ndim must be > 0, got {ndim}")
        self.weight = nn.Parameter(torch.zeros(ndim)) if weight else None
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.eps = eps
        self.residual_weight = residual_weight
        self.ndim = ndim
        self.reset_parameters()

    @property
    def weight_proxy(self) -> Optional[torch.Tensor]:
        """The scale actually applied: 1 + weight (or weight without `residual_weight`)."""
        if self.weight is None:
            return None
        return 1.0 + self.weight if self.residual_weight else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.ndim,), self.weight_proxy, self.bias, self.eps)

    def add_forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None):
        """(norm(s), s) with s = x + residual (x itself without one): the residual add of a
        pre-norm block and this norm, one fused kernel each way where the Triton kernels run."""
        if use_kernels(x) and type(self) is LayerNorm:
            offset = 1.0 if self.residual_weight and self.weight is not None else 0.0
            return add_norm(x, residual, self.weight, self.bias, self.eps, offset, rms=False)
        s = x if residual is None else x + residual
        return self(s), s

    def reset_parameters(self) -> None:
        if self.weight is not None:
            with torch.no_grad():
                self.weight.fill_(0.0 if self.residual_weight else 1.0)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (f"{self.ndim}, eps={self.eps}, weight={self.weight is not None}, "
                f"bias={self.bias is not None}, residual_weight={self.residual_weight}")


class MultiHeadLayerNorm(LayerNorm):
    """Per-head normalization: input (..., NH, DH), each head normalized over its DH features,
    then scaled (1 + weight) and shifted by the (NH * DH,) parameters. Returns (..., NH * DH).
    This is a group norm with NH groups over the flattened NH * DH features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        NH, DH = x.shape[-2:]
        if NH * DH != self.ndim:
            raise ValueError(f"MultiHeadLayerNorm: expected input (..., NH, DH) with NH * DH = "
                             f"{self.ndim}, got shape {tuple(x.shape)}")
        y = F.layer_norm(x, (DH,), eps=self.eps)
        w, b = self.weight_proxy, self.bias
        if w is not None:
            y = y * w.view(NH, DH)
        if b is not None:
            y = y + b.view(NH, DH)
        return y.flatten(-2)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) over the last dim, then * weight (+ bias). The weight is the
    scale itself (init 1). With `force_float32_reductions` the normalization runs in float32
    and is cast back to the input dtype before the weight is applied. (..., E) -> (..., E)."""

    def __init__(self, num_features: int, eps: float = 1e-6, use_weight: bool = True,
                 use_bias: bool = False, force_float32_reductions: bool = True):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.force_float32_reductions = force_float32_reductions
        self.weight = nn.Parameter(torch.ones(num_features)) if use_weight else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if use_bias else None

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.weight is not None:
                self.weight.fill_(1.0)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None and use_fused(x):
            # one kernel (it reduces in float32 and rounds once) instead of four
            return F.rms_norm(x, (self.num_features,), self.weight, self.eps)
        y = x.float() if self.force_float32_reductions else x
        y = F.rms_norm(y, (self.num_features,), eps=self.eps).to(x.dtype)
        if self.weight is not None:
            y = y * self.weight
        return y if self.bias is None else y + self.bias

    def add_forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None):
        """(norm(s), s) with s = x + residual (x itself without one): the residual add of a
        pre-norm block and this norm, one fused kernel each way where the Triton kernels run
        (float32 statistics, one rounding of the output)."""
        if use_kernels(x):
            return add_norm(x, residual, self.weight, self.bias, self.eps, 0.0, rms=True)
        s = x if residual is None else x + residual
        return self(s), s

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, bias={self.bias is not None}"
