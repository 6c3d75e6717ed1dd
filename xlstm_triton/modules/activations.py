"""Activations of the feed-forward networks and gates.

- `ACTIVATIONS`: the gated FFN's activation by its config name (the `xlstm` package's names).
- `soft_cap(x, cap)` = cap * tanh(x / cap) (xLSTM-7B gates and logits).
- `silu_mul(gate, up)` = silu(gate) * up as one kernel, float32 inside, rounded once: SwiGLU's
  activation in inference (no autograd), where it replaces three PyTorch launches per token.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..utils import new_empty, use_triton

__all__ = ["ACTIVATIONS", "soft_cap", "silu_mul"]


def _relu2(x):
    return torch.square(F.relu(x))


ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "relu^2": _relu2, "sigmoid": torch.sigmoid,
        "swish": F.silu, "selu": F.selu}


def soft_cap(x: torch.Tensor, cap: Optional[float]) -> torch.Tensor:
    """cap * tanh(x / cap): smooth clamp to (-cap, cap); None: identity."""
    return x if cap is None else cap * torch.tanh(x / cap)


@triton.jit
def silu_mul_kernel(g_ptr, u_ptr, y_ptr, s_g, s_u, P, BLOCK: tl.constexpr):
    row, pid = tl.program_id(0), tl.program_id(1)
    cols = pid * BLOCK + tl.arange(0, BLOCK)
    mask = cols < P
    g = tl.load(g_ptr + row.to(tl.int64) * s_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + row.to(tl.int64) * s_u + cols, mask=mask, other=0.0).to(tl.float32)
    y = g / (1.0 + tl.exp(-g)) * u
    tl.store(y_ptr + row.to(tl.int64) * P + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up in float32, rounded once. gate, up (..., P) with the same shape, last
    dim contiguous (e.g. the two halves of one fused projection). Returns (..., P) in up's dtype."""
    if gate.shape != up.shape:
        raise ValueError(f"silu_mul: gate and up must have one shape, got {tuple(gate.shape)} and {tuple(up.shape)}")
    if not use_triton(up):
        return (F.silu(gate.float()) * up.float()).to(up.dtype)
    P = up.shape[-1]
    g2, u2 = gate.reshape(-1, P), up.reshape(-1, P)        # views for (B, S, P) slices
    if g2.stride(-1) != 1:
        g2 = g2.contiguous()
    if u2.stride(-1) != 1:
        u2 = u2.contiguous()
    y = new_empty(up.shape, up.dtype, up.device)
    BLOCK = min(1024, triton.next_power_of_2(P))
    silu_mul_kernel[(g2.shape[0], triton.cdiv(P, BLOCK))](g2, u2, y, g2.stride(0), u2.stride(0), P,
                                                          BLOCK=BLOCK, num_warps=4)
    return y
