"""`LinearHeadwise`: the block-diagonal projection of the paper layers (one block per head)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

__all__ = ["LinearHeadwise"]


class LinearHeadwise(nn.Module):
    """Block-diagonal linear map: the last dim (in_features) is split into `num_heads` blocks
    and each block has its own dense (out/NH x in/NH) matrix. weight (NH, out/NH, in/NH),
    bias (out_features) or None. Init: normal, std sqrt(2 / (5 * in/NH))."""

    def __init__(self, in_features: int, num_heads: int, bias: bool = True,
                 out_features: Optional[int] = None):
        super().__init__()
        out_features = in_features if out_features is None else out_features
        if num_heads <= 0 or in_features % num_heads or out_features % num_heads:
            raise ValueError(f"LinearHeadwise: num_heads={num_heads} must be > 0 and divide "
                             f"in_features={in_features} and out_features={out_features}")
        self.in_features, self.out_features, self.num_heads = in_features, out_features, num_heads
        self.weight = nn.Parameter(torch.empty(num_heads, out_features // num_heads,
                                               in_features // num_heads))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.normal_(0.0, math.sqrt(2.0 / 5.0 / self.weight.shape[-1]))
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        if x.shape[-1] != self.in_features:
            raise ValueError(f"LinearHeadwise: expected x of shape (..., {self.in_features}), got "
                             f"{tuple(x.shape)}")
        # explicit block size (not -1): a reshape of an empty batch cannot infer it
        x = x.reshape(*lead, self.num_heads, self.in_features // self.num_heads)
        y = torch.einsum("...hd,hod->...ho", x, self.weight)
        y = y.reshape(*lead, self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"num_heads={self.num_heads}, bias={self.bias is not None}")
