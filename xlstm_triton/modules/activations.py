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

from ..launch import cached_launch
from ..utils import cdiv, kernel_op, new_empty, next_power_of_2, soft_cap, use_kernels

__all__ = ["ACTIVATIONS", "soft_cap", "silu_mul"]


def _relu2(x):
    return torch.square(F.relu(x))


ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "relu^2": _relu2, "sigmoid": torch.sigmoid,
        "swish": F.silu, "selu": F.selu}


@cached_launch
@triton.jit
def silu_mul_kernel(g_ptr, u_ptr, y_ptr, s_g, s_u, P, BLOCK: tl.constexpr):
    row, pid = tl.program_id(0), tl.program_id(1)
    cols = pid * BLOCK + tl.arange(0, BLOCK)
    mask = cols < P
    g = tl.load(g_ptr + row.to(tl.int64) * s_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + row.to(tl.int64) * s_u + cols, mask=mask, other=0.0).to(tl.float32)
    y = g / (1.0 + tl.exp(-g)) * u
    tl.store(y_ptr + row.to(tl.int64) * P + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@cached_launch
@triton.jit
def silu_mul_bwd_kernel(g_ptr, u_ptr, dy_ptr, dg_ptr, du_ptr, s_g, s_u, s_dg, s_du, P, BLOCK: tl.constexpr):
    """d up = dy silu(g); d gate = dy up sigmoid(g) (1 + g (1 - sigmoid(g))); silu recomputed."""
    row, pid = tl.program_id(0).to(tl.int64), tl.program_id(1)
    cols = pid * BLOCK + tl.arange(0, BLOCK)
    mask = cols < P
    g = tl.load(g_ptr + row * s_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + row * s_u + cols, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + row * P + cols, mask=mask, other=0.0).to(tl.float32)
    sig = 1.0 / (1.0 + tl.exp(-g))
    tl.store(du_ptr + row * s_du + cols, (dy * g * sig).to(du_ptr.dtype.element_ty), mask=mask)
    tl.store(dg_ptr + row * s_dg + cols, (dy * u * sig * (1.0 + g * (1.0 - sig))).to(dg_ptr.dtype.element_ty),
             mask=mask)


def _rows_grid(rows: int, P: int):
    BLOCK = min(1024, next_power_of_2(P))
    return (rows, cdiv(P, BLOCK)), BLOCK


@kernel_op("xlstm_triton::silu_mul")
def _silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    rows, P = up.shape
    y = new_empty((rows, P), up.dtype, up.device)
    grid, BLOCK = _rows_grid(rows, P)
    silu_mul_kernel[grid](gate, up, y, gate.stride(0), up.stride(0), P, BLOCK=BLOCK, num_warps=4)
    return y


@_silu_mul.register_fake
def _(gate, up):
    return up.new_empty(up.shape)


def _launch_silu_mul_bwd(gate, up, dy, dg, du):
    """d gate, d up of silu(gate) * up into dg, du ((rows, P) views with unit last stride)."""
    rows, P = up.shape
    dy = dy.contiguous()
    grid, BLOCK = _rows_grid(rows, P)
    silu_mul_bwd_kernel[grid](gate, up, dy, dg, du, gate.stride(0), up.stride(0), dg.stride(0), du.stride(0), P,
                              BLOCK=BLOCK, num_warps=4)


def _rows(t: torch.Tensor, width: int) -> torch.Tensor:
    """t (..., width) as (rows, width) with unit last stride (a view where possible)."""
    t = t.reshape(-1, width)
    return t if t.stride(-1) == 1 else t.contiguous()


@kernel_op("xlstm_triton::silu_mul_bwd")
def _silu_mul_bwd(gate: torch.Tensor, up: torch.Tensor, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, P = up.shape
    dg = new_empty((rows, P), gate.dtype, gate.device)
    du = new_empty((rows, P), up.dtype, up.device)
    _launch_silu_mul_bwd(gate, up, dy, dg, du)
    return dg, du


@_silu_mul_bwd.register_fake
def _(gate, up, dy):
    return gate.new_empty(gate.shape), up.new_empty(up.shape)


@kernel_op("xlstm_triton::silu_mul_bwd_packed")
def _silu_mul_bwd_packed(gate: torch.Tensor, up: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """d gate and d up side by side in one (rows, 2P) tensor: the gradient of a projection
    whose output was split into (gate, up), with no cat."""
    rows, P = up.shape
    dgu = new_empty((rows, 2 * P), up.dtype, up.device)
    _launch_silu_mul_bwd(gate, up, dy, dgu[:, :P], dgu[:, P:])
    return dgu


@_silu_mul_bwd_packed.register_fake
def _(gate, up, dy):
    return up.new_empty(up.shape[0], 2 * up.shape[1])


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
    return _silu_mul(_rows(gate, P), _rows(up, P)).view(up.shape)     # views for (B, S, P) slices


class _SiLUMulLinear(torch.autograd.Function):
    """F.linear(silu(gate) * up, weight, bias) that keeps gate and up (which silu_mul's backward
    reads anyway) but not their product: the backward recomputes it in one pass for the
    weight gradient. inputs: (gate_up,) rows of [gate | up] (the gradient comes back as one
    tensor), or (gate, up)."""

    @staticmethod
    def forward(ctx, weight, bias, *inputs):
        P = weight.shape[1]
        gate, up = (inputs[0][:, :P], inputs[0][:, P:]) if len(inputs) == 1 else inputs
        ctx.save_for_backward(weight, gate, up)
        ctx.has_bias, ctx.packed = bias is not None, len(inputs) == 1
        return F.linear(_silu_mul(gate, up), weight, bias)

    @staticmethod
    def backward(ctx, dy):
        weight, gate, up = ctx.saved_tensors
        dy = dy.contiguous()
        product = _silu_mul(gate, up)
        dw = dy.t() @ product
        del product
        db = dy.sum(0) if ctx.has_bias else None
        d_product = dy @ weight
        if ctx.packed:
            return dw, db, _silu_mul_bwd_packed(gate, up, d_product)
        return (dw, db, *_silu_mul_bwd(gate, up, d_product))


def silu_mul_linear(gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor,
                    bias: Optional[torch.Tensor] = None, gate_up: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear(silu(gate) * up, weight, bias): a SwiGLU feed-forward's activation and down
    projection, saving ~P features per token of activation memory (the product is recomputed
    in the backward, one memory-bound pass). gate, up (..., P); weight (E, P); bias (E,) or None.
    `gate_up` (..., 2P), when gate and up are its two halves, gets its gradient as one tensor
    (no cat in the backward). Returns (..., E). Where the kernels do not run: the plain
    composition."""
    if gate.shape != up.shape:
        raise ValueError(f"silu_mul_linear: gate and up must have one shape, got {tuple(gate.shape)} "
                         f"and {tuple(up.shape)}")
    if not use_kernels(up):
        return F.linear(silu_mul(gate, up), weight, bias)
    P, lead = up.shape[-1], up.shape[:-1]
    inputs = (_rows(gate_up, 2 * P),) if gate_up is not None else (_rows(gate, P), _rows(up, P))
    y = _SiLUMulLinear.apply(weight, bias, *inputs)
    return y.view(*lead, weight.shape[0])
