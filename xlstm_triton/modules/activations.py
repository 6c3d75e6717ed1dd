"""Activations of the feed-forward networks and gates.

- `ACTIVATIONS`: the gated FFN's activation by its config name (the `xlstm` package's names).
- `soft_cap(x, cap)` = cap * tanh(x / cap) (xLSTM-7B gates and logits).
- `silu_mul(gate, up)` = silu(gate) * up as one kernel each way, float32 inside, rounded once:
  SwiGLU's activation (the backward recomputes silu from the saved gate and up).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..utils import new_empty, use_kernels

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


@triton.jit
def silu_mul_bwd_kernel(g_ptr, u_ptr, dy_ptr, dg_ptr, du_ptr, s_g, s_u, P, BLOCK: tl.constexpr):
    """d up = dy silu(g); d gate = dy up sigmoid(g) (1 + g (1 - sigmoid(g))); silu recomputed."""
    row, pid = tl.program_id(0).to(tl.int64), tl.program_id(1)
    cols = pid * BLOCK + tl.arange(0, BLOCK)
    mask = cols < P
    g = tl.load(g_ptr + row * s_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + row * s_u + cols, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + row * P + cols, mask=mask, other=0.0).to(tl.float32)
    sig = 1.0 / (1.0 + tl.exp(-g))
    tl.store(du_ptr + row * P + cols, (dy * g * sig).to(du_ptr.dtype.element_ty), mask=mask)
    tl.store(dg_ptr + row * P + cols, (dy * u * sig * (1.0 + g * (1.0 - sig))).to(dg_ptr.dtype.element_ty),
             mask=mask)


def _rows_grid(rows: int, P: int):
    BLOCK = min(1024, triton.next_power_of_2(P))
    return (rows, triton.cdiv(P, BLOCK)), BLOCK


@torch.library.custom_op("xlstm_triton::silu_mul", mutates_args=())
def _silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    rows, P = up.shape
    y = new_empty((rows, P), up.dtype, up.device)
    grid, BLOCK = _rows_grid(rows, P)
    silu_mul_kernel[grid](gate, up, y, gate.stride(0), up.stride(0), P, BLOCK=BLOCK, num_warps=4)
    return y


@_silu_mul.register_fake
def _(gate, up):
    return up.new_empty(up.shape)


@torch.library.custom_op("xlstm_triton::silu_mul_bwd", mutates_args=())
def _silu_mul_bwd(gate: torch.Tensor, up: torch.Tensor, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, P = up.shape
    dy = dy.contiguous()
    dg = new_empty((rows, P), gate.dtype, gate.device)
    du = new_empty((rows, P), up.dtype, up.device)
    grid, BLOCK = _rows_grid(rows, P)
    silu_mul_bwd_kernel[grid](gate, up, dy, dg, du, gate.stride(0), up.stride(0), P, BLOCK=BLOCK, num_warps=4)
    return dg, du


@_silu_mul_bwd.register_fake
def _(gate, up, dy):
    return gate.new_empty(gate.shape), up.new_empty(up.shape)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, dy):
    gate, up = ctx.saved_tensors
    return _silu_mul_bwd(gate, up, dy)


_silu_mul.register_autograd(_backward, setup_context=_setup_context)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up in float32, rounded once, differentiable (the backward recomputes silu).
    gate, up (..., P) with the same shape (e.g. the two halves of one fused projection).
    Returns (..., P) in up's dtype."""
    if gate.shape != up.shape:
        raise ValueError(f"silu_mul: gate and up must have one shape, got {tuple(gate.shape)} and {tuple(up.shape)}")
    if not use_kernels(up):
        return (F.silu(gate.float()) * up.float()).to(up.dtype)
    P = up.shape[-1]
    g2, u2 = gate.reshape(-1, P), up.reshape(-1, P)        # views for (B, S, P) slices
    if g2.stride(-1) != 1:
        g2 = g2.contiguous()
    if u2.stride(-1) != 1:
        u2 = u2.contiguous()
    return _silu_mul(g2, u2).view(up.shape)
