"""A residual add and the norm after it, as one kernel each way (RMSNorm and LayerNorm).

    s = x + residual              (rounded to x's dtype: the residual stream, returned)
    y = norm(s) * (weight + offset) + bias
    norm = RMS: s / sqrt(mean(s^2) + eps);  LayerNorm: (s - mean(s)) / sqrt(var(s) + eps)
    x, residual (N, D) (or (..., D)); weight, bias (D,) or None -> y, s

A pre-norm block runs `s = x + f(...)` and then a norm of s: in PyTorch that is one pass for
the add, two or three for the norm (float32 reductions, the scale), and as many again
backwards. Here the forward reads x and the residual once and writes s and y; the backward
reads s, dy and (where s is also used downstream) its gradient once, writes d x (= d residual)
once, and d weight / d bias come from per-program partial sums. Statistics are float32; the
per-row mean and 1/std are saved instead of being recomputed from scratch.

`offset` is 1 for the paper architecture's LayerNorm, whose weight is stored as an offset
from 1, and 0 elsewhere. `add_norm` is a custom op pair; on CPU without TRITON_INTERPRET=1 and
for float64 it runs `add_norm_torch`, the plain spelling and the tests' reference.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..checks import check_features, check_tensor
from ..launch import cached_launch
from ..utils import cdiv, kernel_op, new_empty, next_power_of_2, use_kernels

__all__ = ["add_norm", "add_norm_torch"]


@cached_launch
@triton.jit
def add_norm_fwd_kernel(x_ptr, r_ptr, w_ptr, b_ptr, y_ptr, s_ptr, mean_ptr, rstd_ptr, D, eps, offset,
                        BLOCK: tl.constexpr, HAS_RES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                        RMS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    x = tl.load(x_ptr + row * D + cols, mask=mask, other=0.0)
    if HAS_RES:
        x = (x.to(tl.float32) + tl.load(r_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32))
        x = x.to(s_ptr.dtype.element_ty)                       # the stream is stored in its dtype
        tl.store(s_ptr + row * D + cols, x, mask=mask)
    x = x.to(tl.float32)
    if RMS:
        mean = tl.zeros((), dtype=tl.float32)
        xc = x
    else:
        mean = tl.sum(x, axis=0) / D
        xc = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / D + eps)
    y = xc * rstd
    if HAS_W:
        y = y * (tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32) + offset)
    if HAS_B:
        y = y + tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * D + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _bwd_row(s_ptr, dy_ptr, ds_ptr, row, cols, mask, D, HAS_DS: tl.constexpr):
    """Row `row` of s, dy and (HAS_DS) ds as stored (ds is s's placeholder without); zeros where
    `mask` is false."""
    off = tl.cast(row, tl.int64) * D + cols
    s = tl.load(s_ptr + off, mask=mask, other=0.0)
    dy = tl.load(dy_ptr + off, mask=mask, other=0.0)
    ds = s
    if HAS_DS:
        ds = tl.load(ds_ptr + off, mask=mask, other=0.0)
    return s, dy, ds


@cached_launch
@triton.jit
def add_norm_bwd_kernel(s_ptr, w_ptr, mean_ptr, rstd_ptr, dy_ptr, ds_ptr, dx_ptr, partial_ptr, N, D, offset,
                        rows_per_program, BLOCK: tl.constexpr, HAS_W: tl.constexpr, HAS_DS: tl.constexpr,
                        RMS: tl.constexpr):
    """d s = 1/std (w dy - [mean(w dy)] - s^ mean(w dy s^)) (+ ds); partial sums of dy s^ and dy."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    w = tl.full((BLOCK,), 1.0, tl.float32)
    if HAS_W:
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32) + offset
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    db = tl.zeros((BLOCK,), dtype=tl.float32)
    first = pid * rows_per_program
    last = tl.minimum(first + rows_per_program, N)
    # each row's loads issued one row ahead (the next row's in flight while this one reduces)
    s_next, dy_next, ds_next = _bwd_row(s_ptr, dy_ptr, ds_ptr, first, cols, mask & (cols * 0 + first < last), D, HAS_DS)
    for r in range(first, last):
        row = tl.cast(r, tl.int64)
        s, dy, ds = s_next, dy_next, ds_next
        s_next, dy_next, ds_next = _bwd_row(s_ptr, dy_ptr, ds_ptr, row + 1, cols, mask & (cols * 0 + r + 1 < last),
                                               D, HAS_DS)
        s = s.to(tl.float32)
        dy = dy.to(tl.float32)
        rstd = tl.load(rstd_ptr + row)
        xhat = tl.where(mask, (s - tl.load(mean_ptr + row)) * rstd, 0.0)
        wdy = w * dy
        dx = wdy - xhat * (tl.sum(wdy * xhat, axis=0) / D)
        if not RMS:
            dx -= tl.sum(wdy, axis=0) / D
        dx = dx * rstd
        if HAS_DS:
            dx += ds.to(tl.float32)
        tl.store(dx_ptr + row * D + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dw += dy * xhat
        db += dy
    tl.store(partial_ptr + (2 * pid) * D + cols, dw, mask=mask)
    tl.store(partial_ptr + (2 * pid + 1) * D + cols, db, mask=mask)


@kernel_op("xlstm_triton::add_norm")
def _add_norm(x: torch.Tensor, residual: Optional[torch.Tensor], weight: Optional[torch.Tensor],
              bias: Optional[torch.Tensor], eps: float, offset: float, rms: bool
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    N, D = x.shape
    y = new_empty((N, D), x.dtype, x.device)
    s = new_empty((N, D), x.dtype, x.device) if residual is not None else x.new_empty(0)
    mean = new_empty((N,), torch.float32, x.device)
    rstd = new_empty((N,), torch.float32, x.device)
    if N:
        add_norm_fwd_kernel[(N,)](x, residual if residual is not None else x, weight if weight is not None else x,
                                  bias if bias is not None else x, y, s, mean, rstd, D, eps, offset,
                                  BLOCK=next_power_of_2(D), HAS_RES=residual is not None,
                                  HAS_W=weight is not None, HAS_B=bias is not None, RMS=rms,
                                  num_warps=min(16, max(1, next_power_of_2(D) // 256)))
    return y, s, mean, rstd


@_add_norm.register_fake
def _(x, residual, weight, bias, eps, offset, rms):
    N, D = x.shape
    f32 = dict(dtype=torch.float32)
    return (torch.empty_like(x), torch.empty_like(x) if residual is not None else x.new_empty(0),
            x.new_empty(N, **f32), x.new_empty(N, **f32))


@kernel_op("xlstm_triton::add_norm_bwd")
def _add_norm_bwd(s: torch.Tensor, weight: Optional[torch.Tensor], mean: torch.Tensor, rstd: torch.Tensor,
                  dy: torch.Tensor, ds: Optional[torch.Tensor], offset: float, rms: bool
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, the float32 sums (2, D): d weight, d bias)."""
    N, D = s.shape
    dx = new_empty((N, D), s.dtype, s.device)
    programs = max(1, min(N, 4 * 132))
    rows_per_program = cdiv(N, programs) if N else 1
    # every program writes its rows (zeros when nothing runs)
    partial = (new_empty if N else torch.zeros)((programs, 2, D), dtype=torch.float32, device=s.device)
    if N:
        add_norm_bwd_kernel[(programs,)](s, weight if weight is not None else s, mean, rstd, dy.contiguous(),
                                         ds.contiguous() if ds is not None else s, dx, partial, N, D, offset,
                                         rows_per_program, BLOCK=next_power_of_2(D),
                                         HAS_W=weight is not None, HAS_DS=ds is not None, RMS=rms,
                                         num_warps=min(16, max(1, next_power_of_2(D) // 256)))
    return dx, partial.sum(0)


@_add_norm_bwd.register_fake
def _(s, weight, mean, rstd, dy, ds, offset, rms):
    D = s.shape[1]
    return torch.empty_like(s), s.new_empty(2, D, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, eps, offset, rms = inputs
    _, s, mean, rstd = output
    ctx.save_for_backward(s if residual is not None else x, weight, mean, rstd)
    ctx.has_residual, ctx.offset, ctx.rms = residual is not None, offset, rms
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, dy, ds, d_mean, d_rstd):
    s, weight, mean, rstd = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(s)
    dx, sums = _add_norm_bwd(s, weight, mean, rstd, dy, ds if ctx.has_residual else None, ctx.offset, ctx.rms)
    return (dx, dx if ctx.has_residual else None, None if weight is None else sums[0].to(weight.dtype),
            None if ctx.bias_dtype is None else sums[1].to(ctx.bias_dtype), None, None, None)


_add_norm.register_autograd(_backward, setup_context=_setup_context)


def add_norm_torch(x: torch.Tensor, residual: Optional[torch.Tensor], weight: Optional[torch.Tensor],
                   bias: Optional[torch.Tensor] = None, eps: float = 1e-6, offset: float = 0.0, rms: bool = True):
    """The plain spelling: (y, s), s = x + residual (x itself without a residual); float32 statistics."""
    s = x if residual is None else x + residual
    D = s.shape[-1]
    w = None if weight is None else weight.float() + offset
    if rms:
        y = F.rms_norm(s.float(), (D,), w, eps)
    else:
        y = F.layer_norm(s.float(), (D,), w, None, eps)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype), s


def add_norm(x: torch.Tensor, residual: Optional[torch.Tensor], weight: Optional[torch.Tensor],
             bias: Optional[torch.Tensor] = None, eps: float = 1e-6, offset: float = 0.0, rms: bool = True):
    """(y, s): s = x + residual (x without one), y = norm(s) * (weight + offset) + bias (module
    docstring). x, residual: (..., D), one shape and dtype; weight, bias: (D,) or None. y and s
    in x's dtype; gradients flow to x, residual, weight and bias, and into y and s."""
    D = check_features("x", x, "(..., D)")
    check_tensor("residual", residual, tuple(x.shape), doc="x's shape", dtypes=(x.dtype,), device=x.device,
                 device_of="x", allow_none=True)
    for name, t in (("weight", weight), ("bias", bias)):
        check_tensor(name, t, (D,), doc="(D,)", device=x.device, device_of="x", allow_none=True)
    if not use_kernels(x):
        return add_norm_torch(x, residual, weight, bias, eps, offset, rms)
    x2 = x.reshape(-1, D).contiguous()
    r2 = None if residual is None else residual.reshape(-1, D).contiguous()
    y, s, _, _ = _add_norm(x2, r2, weight, bias, float(eps), float(offset), bool(rms))
    return y.view(x.shape), (x if residual is None else s.view(x.shape))
