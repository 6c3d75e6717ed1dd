"""The gated feed-forward networks: proj_down(act(x W_gate) * x W_up), E -> P -> E.

- `GatedFeedForward` (paper architecture, a `FeedForwardConfig`): one `proj_up` (2P, E) holding
  gate then up, any activation of `ACTIVATIONS`, dropout.
- `SwiGLUFeedForward` (xLSTM-7B, an `xLSTMLargeConfig`): SiLU; `proj_up_gate` and `proj_up`, or
  in the fused weight mode one `proj_up_gate_z` (2P, E), gate rows first.

Both compute act(gate) * up through `gated_activation`, which takes the fused `silu_mul` kernels
for SiLU wherever the Triton kernels run; with SiLU the down projection goes through
`silu_mul_linear`, which recomputes the product in the backward instead of keeping it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..utils import use_kernels
from .activations import ACTIVATIONS, silu_mul, silu_mul_linear
from .init import small_init_, wang_init_

__all__ = ["GatedFeedForward", "SwiGLUFeedForward", "gated_activation"]


def gated_activation(gate: torch.Tensor, up: torch.Tensor, act: str) -> torch.Tensor:
    """ACTIVATIONS[act](gate) * up; SiLU ("swish") through the fused kernel where the Triton
    kernels run (forward and backward)."""
    if act == "swish" and use_kernels(up):
        return silu_mul(gate, up)
    return ACTIVATIONS[act](gate) * up


class GatedFeedForward(nn.Module):
    """proj_up E -> 2P split into (gate, up); act(gate) * up; proj_down P -> E; dropout.
    P = config._proj_up_dim (proj_factor * E rounded up to a multiple of 64)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        if config.ff_type != "ffn_gated":
            raise ValueError(f"FeedForwardConfig.ff_type: only 'ffn_gated' exists, got {config.ff_type!r}")
        if config.act_fn not in ACTIVATIONS:
            raise ValueError(f"FeedForwardConfig.act_fn: unknown activation {config.act_fn!r}; "
                             f"expected one of {list(ACTIVATIONS)}")
        if config.embedding_dim <= 0 or not config._proj_up_dim or config._proj_up_dim <= 0:
            raise ValueError(f"FeedForwardConfig: embedding_dim must be set (> 0) and give a positive "
                             f"up-projection, got embedding_dim={config.embedding_dim}, "
                             f"_proj_up_dim={config._proj_up_dim}")
        E, P = config.embedding_dim, config._proj_up_dim
        self.proj_up = nn.Linear(E, 2 * P, bias=config.bias)
        self.proj_down = nn.Linear(P, E, bias=config.bias)
        self.act_fn = ACTIVATIONS[config.act_fn]
        self.dropout = nn.Dropout(config.dropout)
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.proj_up(x)
        gate, up = gate_up.split(self.config._proj_up_dim, dim=-1)
        if self.config.act_fn == "swish":
            y = silu_mul_linear(gate, up, self.proj_down.weight, self.proj_down.bias, gate_up=gate_up)
        else:
            y = self.proj_down(gated_activation(gate, up, self.config.act_fn))
        return self.dropout(y)

    def reset_parameters(self) -> None:
        small_init_(self.proj_up.weight, dim=self.config.embedding_dim)
        if self.proj_up.bias is not None:
            nn.init.zeros_(self.proj_up.bias)
        wang_init_(self.proj_down.weight, dim=self.config.embedding_dim,
                   num_blocks=self.config._num_blocks or 1)
        if self.proj_down.bias is not None:
            nn.init.zeros_(self.proj_down.bias)



class SwiGLUFeedForward(nn.Module):
    """proj_down(silu(x W_gate) * x W_up), E -> ffn_dim -> E. Weights: single mode
    `proj_up_gate` and `proj_up` (ffn_dim, E); fused mode `proj_up_gate_z` (2 ffn_dim, E),
    gate rows first; `proj_down` (E, ffn_dim)."""

    def __init__(self, config):
        super().__init__()
        E, P, bias = config.embedding_dim, config.ffn_dim, config.use_bias
        self.fused = config.weight_mode == "fused"
        self.ffn_dim = P
        if self.fused:
            self.proj_up_gate_z = nn.Linear(E, 2 * P, bias=bias)
        else:
            self.proj_up_gate = nn.Linear(E, P, bias=bias)
            self.proj_up = nn.Linear(E, P, bias=bias)
        self.proj_down = nn.Linear(P, E, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = None
        if self.fused:
            gate_up = self.proj_up_gate_z(x)
            gate, up = gate_up.split(self.ffn_dim, dim=-1)
        else:
            gate, up = self.proj_up_gate(x), self.proj_up(x)
        return silu_mul_linear(gate, up, self.proj_down.weight, self.proj_down.bias, gate_up=gate_up)
