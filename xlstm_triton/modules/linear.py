"""`LinearHeadwise`: the block-diagonal projection of the paper layers (one block per head);
square blocks of up to MAX_BLOCK features run the fused kernel of `headwise_linear.py`."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .headwise_linear import MAX_BLOCK, headwise_linear

__all__ = ["LinearHeadwise", "linear_headwise_many"]


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
        if self.in_features == self.out_features and self.in_features // self.num_heads <= MAX_BLOCK:
            # tiny square blocks (the mLSTM layer's q, k, v): one fused kernel instead of a bmm
            bias = None if self.bias is None else self.bias[None]
            return headwise_linear(x, self.weight[None], bias)[0]
        # explicit block size (not -1): a reshape of an empty batch cannot infer it
        x = x.reshape(*lead, self.num_heads, self.in_features // self.num_heads)
        y = torch.einsum("...hd,hod->...ho", x, self.weight)
        y = y.reshape(*lead, self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"num_heads={self.num_heads}, bias={self.bias is not None}")


def linear_headwise_many(x: torch.Tensor, layers) -> tuple:
    """`tuple(layer(x) for layer in layers)`, with one read of x when all layers have the same
    tiny square blocks (the fused kernel writes every output in one pass)."""
    first = layers[0]
    fusable = all(layer.in_features == layer.out_features == first.in_features
                  and layer.num_heads == first.num_heads and (layer.bias is None) == (first.bias is None)
                  for layer in layers) and first.in_features // first.num_heads <= MAX_BLOCK
    if not fusable:
        return tuple(layer(x) for layer in layers)
    weight = torch.stack([layer.weight for layer in layers])
    bias = None if first.bias is None else torch.stack([layer.bias for layer in layers])
    return tuple(headwise_linear(x, weight, bias).unbind(0))

