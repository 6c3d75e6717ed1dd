"""Block-diagonal projections with tiny blocks (the paper mLSTM layer's q, k, v: blocks of 4).

    out[m, n, b*BS + o] = sum_i x[n, b*BS + i] * weight[m, b, o, i] + bias[m, b*BS + o]
    x (N, F), weight (M, F/BS, BS, BS), bias (M, F) or None -> out (M, N, F)

With blocks of 4 the PyTorch spelling (an einsum) runs as a batched matmul of F/4 products of
(N, 4) x (4, 4) plus transposes and copies on both sides: a memory-bound operation done at a
small fraction of the memory rate. Here one kernel reads a tile of x once and writes all M
outputs (q and k share their input), multiplying within registers; the backward is one kernel
for d x (reading every d out once) and one for d weight (per-program partial sums over row
ranges, added up by PyTorch: tile products on the tensor cores, keeping their diagonal blocks),
and d bias is a column sum.

`headwise_linear` is a custom op (`xlstm_triton::headwise_linear`); on CPU without
TRITON_INTERPRET=1, for float64 or for blocks larger than MAX_BLOCK it runs
`headwise_linear_torch`, the einsum, which is also the tests' reference.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..checks import check_features, check_tensor
from ..launch import cached_launch
from ..utils import cdiv, dot_precision, kernel_op, mma, new_empty, next_power_of_2, use_kernels

__all__ = ["headwise_linear", "headwise_linear_backward", "headwise_linear_forward", "headwise_linear_torch",
           "MAX_BLOCK"]

MAX_BLOCK = 8           # larger blocks are real matmuls: the einsum path runs them well


@cached_launch
@triton.jit
def headwise_fwd_kernel(x_ptr, w_ptr, b_ptr, out_ptr, gw_ptr, gp_ptr, N, F, s_x,
                        M: tl.constexpr, BS: tl.constexpr, BR: tl.constexpr, BF: tl.constexpr,
                        HAS_BIAS: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, DOT_PREC: tl.constexpr):
    """out[m] = x blockdiag(w[m])^T (+ bias[m]); with G > 0 also this column block's part of the
    gate projection, gp[pid_f, n, g] = sum_m sum_(f in the block) out[m, n, f] gw[m, g, f] (the
    stored, rounded outputs; float32 sums; the caller adds the column blocks up)."""
    pid_r, pid_f = tl.program_id(0), tl.program_id(1)
    NBT: tl.constexpr = BF // BS
    rows = pid_r * BR + tl.arange(0, BR)
    cols = pid_f * BF + tl.arange(0, BF)
    mask = (rows < N)[:, None] & (cols < F)[None, :]
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * s_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    x4 = tl.reshape(x, (BR, NBT, 1, BS))
    blocks = pid_f * NBT + tl.arange(0, NBT)
    o = tl.arange(0, BS)
    w_offs = blocks[:, None, None] * (BS * BS) + o[None, :, None] * BS + o[None, None, :]
    w_mask = (blocks < F // BS)[:, None, None]
    g = tl.arange(0, GP)
    gates = tl.zeros((BR, GP), dtype=tl.float32)
    for m in tl.static_range(M):
        w = tl.load(w_ptr + m * F * BS + w_offs, mask=w_mask, other=0.0).to(tl.float32)
        y = tl.reshape(tl.sum(x4 * w[None, :, :, :], axis=3), (BR, BF))
        if HAS_BIAS:
            y += tl.load(b_ptr + m * F + cols, mask=cols < F, other=0.0).to(tl.float32)[None, :]
        y = y.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + (rows.to(tl.int64) + m * N)[:, None] * F + cols[None, :], y, mask=mask)
        if G > 0:
            gw = tl.load(gw_ptr + (m * G + g)[None, :] * F + cols[:, None],
                         mask=(g < G)[None, :] & (cols < F)[:, None], other=0.0)      # (BF, GP)
            gates = mma(y, gw.to(y.dtype), gates, DOT_PREC)
    if G > 0:
        tl.store(gp_ptr + (pid_f * N + rows.to(tl.int64))[:, None] * G + g[None, :], gates,
                 mask=(rows < N)[:, None] & (g < G)[None, :])


@triton.jit
def _with_gate_term(d, dg_ptr, gw_ptr, rows, cols, N, F, m, G: tl.constexpr, GP: tl.constexpr,
                    DOT_PREC: tl.constexpr):
    """d (BR, BF) float32 + dg[rows, :G] gw[m, :G, cols]: the gate projection's share of the
    gradient of output m, added where the kernel reads it."""
    g = tl.arange(0, GP)
    dg = tl.load(dg_ptr + rows.to(tl.int64)[:, None] * G + g[None, :], mask=(rows < N)[:, None] & (g < G)[None, :],
                 other=0.0)
    gw = tl.load(gw_ptr + (m * G + g)[:, None] * F + cols[None, :], mask=(g < G)[:, None] & (cols < F)[None, :],
                 other=0.0)
    return mma(dg, gw.to(dg.dtype), d, DOT_PREC)


@cached_launch
@triton.jit
def headwise_bwd_dx_kernel(dout_ptr, w_ptr, dx_ptr, dg_ptr, gw_ptr, N, F, s_dx,
                           M: tl.constexpr, BS: tl.constexpr, BR: tl.constexpr, BF: tl.constexpr,
                           ACCUMULATE: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, DOT_PREC: tl.constexpr):
    """dx[n, b*BS + i] (+)= sum_m sum_o dout[m, n, b*BS + o] * weight[m, b, o, i] (with G > 0,
    dout[m] + dg gw[m]: `_with_gate_term`)."""
    pid_r, pid_f = tl.program_id(0), tl.program_id(1)
    NBT: tl.constexpr = BF // BS
    rows = pid_r * BR + tl.arange(0, BR)
    cols = pid_f * BF + tl.arange(0, BF)
    mask = (rows < N)[:, None] & (cols < F)[None, :]
    blocks = pid_f * NBT + tl.arange(0, NBT)
    o = tl.arange(0, BS)
    w_offs = blocks[:, None, None] * (BS * BS) + o[None, :, None] * BS + o[None, None, :]
    w_mask = (blocks < F // BS)[:, None, None]
    dx = tl.zeros((BR, NBT, BS), dtype=tl.float32)
    for m in tl.static_range(M):
        d = tl.load(dout_ptr + (rows.to(tl.int64) + m * N)[:, None] * F + cols[None, :],
                    mask=mask, other=0.0).to(tl.float32)
        if G > 0:
            d = _with_gate_term(d, dg_ptr, gw_ptr, rows, cols, N, F, m, G, GP, DOT_PREC)
        w = tl.load(w_ptr + m * F * BS + w_offs, mask=w_mask, other=0.0).to(tl.float32)
        dx += tl.sum(tl.reshape(d, (BR, NBT, BS, 1)) * w[None, :, :, :], axis=2)
    dx = tl.reshape(dx, (BR, BF))
    dx_ptrs = dx_ptr + rows.to(tl.int64)[:, None] * s_dx + cols[None, :]
    if ACCUMULATE:
        dx += tl.load(dx_ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(dx_ptrs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@cached_launch
@triton.jit
def headwise_bwd_dw_kernel(x_ptr, dout_ptr, partial_ptr, dg_ptr, gw_ptr, N, F, s_x, rows_per_program,
                           M: tl.constexpr, BS: tl.constexpr, BR: tl.constexpr, BF: tl.constexpr,
                           DOT_PREC: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, GATE_PREC: tl.constexpr):
    """partial[p, m, b, o, i] = sum over this program's rows n of dout[m, n, b*BS + o] * x[n, b*BS + i]
    (with G > 0, dout[m] + dg gw[m]: `_with_gate_term`, rounded to dout's dtype for the product).

    Per tile of BR rows and BF columns, G_m = dout_m^T x (BF, BF) on the tensor cores, of which
    the BS x BS blocks on the diagonal are the gradient (the other products are wasted, but a
    (BF, BR) x (BR, BF) product costs less than reading its two tiles); each x tile serves two
    outputs m (q and k). G's element (c, j) with c // BS == j // BS is partial's (b, o, i) =
    (c // BS, c % BS, j % BS), at offset c * BS + j % BS."""
    pid_p, pid_f = tl.program_id(0), tl.program_id(1)
    cols = pid_f * BF + tl.arange(0, BF)
    col_ok = cols < F
    first = pid_p * rows_per_program
    diag = (cols[:, None] // BS == cols[None, :] // BS) & col_ok[:, None]
    offs = cols[:, None] * BS + (cols[None, :] % BS)
    for m0 in tl.static_range(0, M, 2):
        acc_a = tl.zeros((BF, BF), dtype=tl.float32)
        acc_b = tl.zeros((BF, BF), dtype=tl.float32)
        for start in range(first, first + rows_per_program, BR):
            rows = (start + tl.arange(0, BR)).to(tl.int64)
            mask = (rows < N)[:, None] & col_ok[None, :]
            x = tl.load(x_ptr + rows[:, None] * s_x + cols[None, :], mask=mask, other=0.0)
            d = tl.load(dout_ptr + (rows + m0 * N)[:, None] * F + cols[None, :], mask=mask, other=0.0)
            if G > 0:
                d = _with_gate_term(d.to(tl.float32), dg_ptr, gw_ptr, rows, cols, N, F, m0, G, GP,
                                    GATE_PREC).to(x.dtype)
            acc_a = mma(tl.trans(d), x, acc_a, DOT_PREC)
            if m0 + 1 < M:
                d = tl.load(dout_ptr + (rows + (m0 + 1) * N)[:, None] * F + cols[None, :], mask=mask, other=0.0)
                if G > 0:
                    d = _with_gate_term(d.to(tl.float32), dg_ptr, gw_ptr, rows, cols, N, F, m0 + 1, G, GP,
                                        GATE_PREC).to(x.dtype)
                acc_b = mma(tl.trans(d), x, acc_b, DOT_PREC)
        base = partial_ptr + (pid_p * M + m0).to(tl.int64) * F * BS
        tl.store(base + offs, acc_a, mask=diag)
        if m0 + 1 < M:
            tl.store(base + F * BS + offs, acc_b, mask=diag)


def _tiles(F: int, BS: int) -> tuple[int, int]:
    BF = min(64, next_power_of_2(F))
    BF = max(BF, BS)
    return 32, BF


def _gate_args(gate_weight: Optional[torch.Tensor], M: int, F: int) -> tuple[int, int]:
    """G (gates) and GP (G padded for the tensor cores) of a (M, G, F) gate weight, or 0, 16."""
    if gate_weight is None:
        return 0, 16
    if gate_weight.shape[0] != M or gate_weight.shape[2] != F or not gate_weight.is_contiguous():
        raise ValueError(f"gate_weight: expected a contiguous (M, G, F) = ({M}, G, {F}), got "
                         f"{tuple(gate_weight.shape)}")
    G = gate_weight.shape[1]
    return G, max(16, next_power_of_2(G))


def headwise_linear_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                            gate_weight: Optional[torch.Tensor] = None):
    """The forward kernel, no autograd and no checks: x (N, F) with unit last stride, weight
    (M, F / BS, BS, BS) and bias (M, F) or None contiguous -> (M, N, F).

    With `gate_weight` (M, G, F) contiguous, also a small projection of the outputs, computed
    while they are in registers: returns (out, partial) with partial (F / BF, N, G) float32,
    whose sum over dim 0 is sum_m out[m] @ gate_weight[m]^T (the paper layer's input and forget
    gates of cat(q, k, v), without reading q, k, v again)."""
    N, F = x.shape
    M, BS = weight.shape[0], weight.shape[-1]
    out = new_empty((M, N, F), x.dtype, x.device)
    BR, BF = _tiles(F, BS)
    grid = (cdiv(N, BR), cdiv(F, BF))
    G, GP = _gate_args(gate_weight, M, F)
    partial = new_empty((grid[1], N, G), torch.float32, x.device) if G else out
    headwise_fwd_kernel[grid](x, weight, bias if bias is not None else weight, out,
                              gate_weight if G else weight, partial, N, F, x.stride(0),
                              M=M, BS=BS, BR=BR, BF=BF, HAS_BIAS=bias is not None, G=G, GP=GP,
                              DOT_PREC=dot_precision(x.dtype, x.device), num_warps=4)
    return (out, partial) if G else out


@kernel_op("xlstm_triton::headwise_linear")
def _headwise_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return headwise_linear_forward(x, weight, bias)


@_headwise_linear.register_fake
def _(x, weight, bias):
    return x.new_empty(weight.shape[0], x.shape[0], x.shape[1])


def headwise_linear_backward(x: torch.Tensor, weight: torch.Tensor, dout: torch.Tensor,
                             dx: Optional[torch.Tensor] = None, accumulate: bool = False,
                             d_gates: Optional[torch.Tensor] = None, gate_weight: Optional[torch.Tensor] = None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels of the backward, no autograd: x (N, F), weight (M, F / BS, BS, BS), dout
    (M, N, F) -> (dx (N, F), d weight). `dx`, if given ((N, F) with unit last stride, x's
    dtype), is where dx goes; with `accumulate` it is added to what dx holds (the caller's other
    gradient of x). With `d_gates` (N, G) float32 and `gate_weight` (M, G, F) (the forward's
    gate projection), the gradient of output m is dout[m] + d_gates @ gate_weight[m], formed
    where the kernels read dout (dout itself is not changed)."""
    N, F = x.shape
    M, BS = weight.shape[0], weight.shape[-1]
    dout = dout.contiguous()
    BR, BF = _tiles(F, BS)
    G, GP = _gate_args(gate_weight, M, F)
    if G and (d_gates is None or d_gates.shape != (N, G) or d_gates.dtype != torch.float32
              or not d_gates.is_contiguous()):
        raise ValueError(f"d_gates: expected a contiguous float32 ({N}, {G}) with gate_weight, got "
                         f"{None if d_gates is None else (tuple(d_gates.shape), d_gates.dtype)}")
    gate_args = (d_gates, gate_weight) if G else (dout, dout)
    gate_prec = dot_precision(torch.float32, x.device)
    if dx is None:
        dx = new_empty((N, F), x.dtype, x.device)
    headwise_bwd_dx_kernel[(cdiv(N, BR), cdiv(F, BF))](dout, weight, dx, *gate_args, N, F, dx.stride(0), M=M,
                                                       BS=BS, BR=BR, BF=BF, ACCUMULATE=accumulate, G=G, GP=GP,
                                                       DOT_PREC=gate_prec, num_warps=4)
    BR_dw, BF_dw = 64, max(16, BF)     # tl.dot tiles: at least 16 each way
    programs = max(1, min(cdiv(N, BR_dw), 32))
    rows_per_program = cdiv(cdiv(N, programs), BR_dw) * BR_dw
    programs = cdiv(N, rows_per_program) if N else 1
    partial = new_empty((programs, M, F // BS, BS, BS), torch.float32, x.device)   # written whole
    headwise_bwd_dw_kernel[(programs, cdiv(F, BF_dw))](
        x, dout, partial, *gate_args, N, F, x.stride(0), rows_per_program, M=M, BS=BS, BR=BR_dw, BF=BF_dw,
        DOT_PREC=dot_precision(x.dtype, x.device), G=G, GP=GP, GATE_PREC=gate_prec, num_warps=4)
    return dx, partial.sum(0).to(weight.dtype)


@kernel_op("xlstm_triton::headwise_linear_bwd")
def _headwise_linear_bwd(x: torch.Tensor, weight: torch.Tensor, dout: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    return headwise_linear_backward(x, weight, dout)


@_headwise_linear_bwd.register_fake
def _(x, weight, dout):
    return torch.empty_like(x), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _backward(ctx, dout):
    x, weight = ctx.saved_tensors
    dx, dw = _headwise_linear_bwd(x, weight, dout)
    db = dout.sum(1).to(weight.dtype) if ctx.has_bias else None
    return dx, dw, db


_headwise_linear.register_autograd(_backward, setup_context=_setup_context)


def headwise_linear_torch(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The einsum spelling: x (N, F), weight (M, F/BS, BS, BS), bias (M, F) -> (M, N, F)."""
    M, NB, BS, _ = weight.shape
    y = torch.einsum("nbi,mboi->mnbo", x.reshape(x.shape[0], NB, BS), weight).reshape(M, x.shape[0], NB * BS)
    return y if bias is None else y + bias[:, None, :]


def headwise_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """M block-diagonal projections of one input (module docstring).

    x: (..., F) float; weight: (M, F / BS, BS, BS), square blocks, x's dtype; bias: (M, F) or
    None. Returns (M, ..., F) in x's dtype, out[m] = x @ blockdiag(weight[m])^T + bias[m].
    """
    F = check_features("x", x, "(..., F)")
    check_tensor("weight", weight, ndim=4, doc="(M, F / BS, BS, BS)", dtypes=(x.dtype,), device=x.device,
                 device_of="x")
    M, NB, BS, BS2 = weight.shape
    if BS != BS2 or NB * BS != F or M < 1:
        raise ValueError(f"weight: expected shape (M, F / BS, BS, BS) with F = {F} (x's last dim), got "
                         f"{tuple(weight.shape)}")
    check_tensor("bias", bias, (M, F), doc="(M, F)", dtypes=(x.dtype,), device=x.device, device_of="x",
                 allow_none=True)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, F)
    if BS > MAX_BLOCK or BS & (BS - 1) or not use_kernels(x2):
        out = headwise_linear_torch(x2, weight, bias)
    else:
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        out = _headwise_linear(x2, weight.contiguous(), None if bias is None else bias.contiguous())
    return out.reshape(M, *lead, F)
