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

A `GateProjection` (the paper layer's input and forget gates of cat(q, k, v)) rides along: the
forward kernel also writes the column blocks' partial sums of out @ W^T, and the backward
kernels add d_gates @ W to d out where they read it and form d W (and the gate bias's d b) as
(d_gates^T x) blockdiag(weight)^T (+ the bias term) from the x tiles they read anyway, so q, k,
v are not read again for the gates.

`headwise_linear` is a custom op (`xlstm_triton::headwise_linear`); on CPU without
TRITON_INTERPRET=1, for float64 or for blocks larger than MAX_BLOCK it runs
`headwise_linear_torch`, the einsum, which is also the tests' reference.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from ..checks import check_features, check_tensor
from ..launch import cached_launch
from ..utils import (cdiv, dot_precision, kernel_op, mma, new_empty, next_power_of_2, packed_kernel_args,
                     packed_sequence, use_kernels)
from .causal_conv1d import conv_input_grad, conv_pre_activation

__all__ = ["ConvFirst", "ConvInputGrad", "GateProjection", "gate_column_blocks", "headwise_linear",
           "headwise_linear_backward", "headwise_linear_forward", "headwise_linear_torch", "weight_grad_programs",
           "MAX_BLOCK"]

MAX_BLOCK = 8           # larger blocks are real matmuls: the einsum path runs them well


@triton.jit
def _stacked_load(p0, p1, g, G0: tl.constexpr, G: tl.constexpr, stride, rest, mask):
    """Elements of a tensor stacked from two blocks along g (float32): g < G0 at p0 + g stride +
    rest, G0 <= g < G at p1 + (g - G0) stride + rest (g and rest broadcast); zeros elsewhere
    and outside mask. One load through pointers picked per element. The paper layer's gate
    weights, biases and their gradients come as igate's and fgate's."""
    ptrs = tl.where(g < G0, p0 + g * stride, p1 + (g - G0) * stride) + rest
    return tl.load(ptrs, mask=mask & (g < G), other=0.0).to(tl.float32)


@triton.jit
def _gate_weight_tile(gw0_ptr, gw1_ptr, s_gw, gcols, col_ok, G0: tl.constexpr, G: tl.constexpr,
                      GP: tl.constexpr):
    """(GP, BF) float32 tile of the gate weight [gw0; gw1] (two row blocks of G0 and G - G0 rows,
    row stride s_gw, unit column stride) at columns `gcols`; rows from G on are zeros."""
    g = tl.arange(0, GP)
    return _stacked_load(gw0_ptr, gw1_ptr, g[:, None], G0, G, s_gw, gcols[None, :], col_ok[None, :])


@triton.jit
def _gate_weight_tile_t(gw0_ptr, gw1_ptr, s_gw, gcols, col_ok, G0: tl.constexpr, G: tl.constexpr,
                        GP: tl.constexpr):
    """The same tile transposed, (BF, GP), loaded in that layout (the forward's mma operand)."""
    g = tl.arange(0, GP)
    return _stacked_load(gw0_ptr, gw1_ptr, g[None, :], G0, G, s_gw, gcols[:, None], col_ok[:, None])


@triton.jit
def _tile_of_program(F, BF: tl.constexpr):
    """(row block, column block) of this program on a 1-D grid of row blocks x column blocks,
    the column blocks of a row block consecutive: the programs running at once read and write
    whole rows (DRAM pages at a time; programs of one column block down the rows were 14% slower in
    the forward on an H100, bench/NOTES.md)."""
    pid = tl.program_id(0)
    n_f = tl.cdiv(F, BF)
    return pid // n_f, pid % n_f


@triton.jit
def _block_product(x, w_ptr, m, F, blocks, o, bias_ptr, cols, BR: tl.constexpr, BF: tl.constexpr,
                   BS: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Output m of the tile x (BR, BF) float32: x blockdiag(w[m])^T (+ bias[m]), float32."""
    NBT: tl.constexpr = BF // BS
    w_offs = blocks[:, None, None] * (BS * BS) + o[None, :, None] * BS + o[None, None, :]
    w = tl.load(w_ptr + m * F * BS + w_offs, mask=(blocks < F // BS)[:, None, None], other=0.0).to(tl.float32)
    y = tl.reshape(tl.sum(tl.reshape(x, (BR, NBT, 1, BS)) * w[None, :, :, :], axis=3), (BR, BF))
    if HAS_BIAS:
        y += tl.load(bias_ptr + m * F + cols, mask=cols < F, other=0.0).to(tl.float32)[None, :]
    return y


@cached_launch
@triton.jit(do_not_specialize=["NSEQ", "STEPS"])
def headwise_fwd_kernel(x_ptr, w_ptr, b_ptr, out_ptr, gw0_ptr, gw1_ptr, gb0_ptr, gb1_ptr, gp_ptr, N, F, s_x,
                        s_gw, gcol0, cw_ptr, cb_ptr, xc_ptr, cu_ptr, NSEQ, STEPS, S,
                        M: tl.constexpr, BS: tl.constexpr, BR: tl.constexpr, BF: tl.constexpr,
                        HAS_BIAS: tl.constexpr, G0: tl.constexpr, G: tl.constexpr, GP: tl.constexpr,
                        GATE_BIAS: tl.constexpr, DOT_PREC: tl.constexpr, CONV_K: tl.constexpr,
                        CONV_OUT: tl.constexpr, CONV_BIAS: tl.constexpr, VARLEN: tl.constexpr):
    """out[m] = x blockdiag(w[m])^T (+ bias[m]); with G > 0 also this column block's part of the
    gate projection, gp[pid_f, n, g] = sum_m sum_(f in the block) out[m, n, f] gw[g, gcol0 + m F + f]
    (the stored, rounded outputs; float32 sums; the caller adds the column blocks up), plus the
    gate bias [gb0; gb1] in column block 0 with GATE_BIAS.

    With CONV_K > 0 the outputs m < CONV_OUT are of x_c = SiLU(causal depthwise conv(x)) instead
    (weights cw (F, CONV_K), bias cb with CONV_BIAS; zero state; rows n of sequences of S steps,
    or packed ones with VARLEN, offsets cu (NSEQ + 1,)), and x_c, rounded to x's dtype as the
    outputs read it, is written to xc (N, F)."""
    pid_r, pid_f = _tile_of_program(F, BF)
    NBT: tl.constexpr = BF // BS
    rows = pid_r * BR + tl.arange(0, BR)
    cols = pid_f * BF + tl.arange(0, BF)
    col_ok = cols < F
    mask = (rows < N)[:, None] & col_ok[None, :]
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * s_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    x_c = x
    if CONV_K > 0:
        if VARLEN:
            _, first = packed_sequence(cu_ptr, NSEQ, STEPS, rows, N)
        else:
            first = rows // S * S
        # taps of the rows before this tile's come from cache: the conv module's own helper,
        # with the rows flattened (batch stride 0) and each row's window from its sequence start
        pre = conv_pre_activation(x_ptr, 0, s_x, x_ptr, cw_ptr, cb_ptr, 0, rows, first, rows, cols, N, F, CONV_K,
                                  BR, BF, False, CONV_BIAS)
        x_c = (pre / (1.0 + tl.exp(-pre))).to(xc_ptr.dtype.element_ty)
        tl.store(xc_ptr + rows.to(tl.int64)[:, None] * F + cols[None, :], x_c, mask=mask)
        x_c = x_c.to(tl.float32)
    blocks = pid_f * NBT + tl.arange(0, NBT)
    o = tl.arange(0, BS)
    g = tl.arange(0, GP)
    gates = tl.zeros((BR, GP), dtype=tl.float32)
    for m in tl.static_range(M):
        if m < CONV_OUT:
            y = _block_product(x_c, w_ptr, m, F, blocks, o, b_ptr, cols, BR, BF, BS, HAS_BIAS)
        else:
            y = _block_product(x, w_ptr, m, F, blocks, o, b_ptr, cols, BR, BF, BS, HAS_BIAS)
        y = y.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + (rows.to(tl.int64) + m * N)[:, None] * F + cols[None, :], y, mask=mask)
        if G > 0:
            gw = _gate_weight_tile_t(gw0_ptr, gw1_ptr, s_gw, gcol0 + m * F + cols, col_ok, G0, G, GP)
            gates = mma(y, gw.to(y.dtype), gates, DOT_PREC)
    if G > 0:
        if GATE_BIAS:
            gb = _stacked_load(gb0_ptr, gb1_ptr, g, G0, G, 1, 0, True)
            gates += tl.where(pid_f == 0, gb, 0.0)[None, :]
        tl.store(gp_ptr + (pid_f * N + rows.to(tl.int64))[:, None] * G + g[None, :], gates,
                 mask=(rows < N)[:, None] & (g < G)[None, :])


@triton.jit
def _load_d_gates(dg0_ptr, dg1_ptr, rows, N, S, s_dgb, s_dgs, s_dgg, G0: tl.constexpr, G: tl.constexpr,
                  GP: tl.constexpr):
    """The (BR, GP) float32 tile of d_gates at `rows` (zeros past G and N): columns below G0
    from dg0, the rest from dg1, each (B, S, G_i) with strides (s_dgb, s_dgs, s_dgg), row n at
    (n // S, n % S)."""
    g = tl.arange(0, GP)
    rows = rows.to(tl.int32)
    b = rows // S
    off = b.to(tl.int64) * s_dgb + (rows - b * S).to(tl.int64) * s_dgs
    return _stacked_load(dg0_ptr, dg1_ptr, g[None, :], G0, G, s_dgg, off[:, None], (rows < N)[:, None])


@cached_launch
@triton.jit(do_not_specialize=["NSEQ", "STEPS"])
def headwise_bwd_dx_kernel(dout_ptr, w_ptr, dx_ptr, dg0_ptr, dg1_ptr, gw0_ptr, gw1_ptr, N, F, s_dx, S_dg, s_dgb,
                           s_dgs, s_dgg, s_gw, gcol0, dpre_ptr, cw_ptr, cu_ptr, NSEQ, STEPS, S,
                           M: tl.constexpr, BS: tl.constexpr, BR: tl.constexpr, BF: tl.constexpr,
                           ACCUMULATE: tl.constexpr, G0: tl.constexpr, G: tl.constexpr, GP: tl.constexpr,
                           DOT_PREC: tl.constexpr, CONV_K: tl.constexpr, VARLEN: tl.constexpr):
    """dx[n, b*BS + i] (+)= sum_m sum_o dout[m, n, b*BS + o] * weight[m, b, o, i] (with G > 0,
    dout[m] + dg gw[:, gcol0 + m F + cols], added where it is read; dg, float32 in memory, and gw
    multiplied in dout's dtype with DOT_PREC: for 16-bit inputs one 16-bit product, the share
    being added to a 16-bit dout (on an H100 the kernel went 0.222 -> 0.172 ms per paper layer
    against float32 dg with 3xTF32 products, which the d weight kernel keeps: 0.189 against 0.203
    ms there, bench/NOTES.md); for float32 inputs 3xTF32). With CONV_K > 0 also plus a causal
    conv's input gradient, sum_j cw[f, j] dpre[n + CONV_K - 1 - j] within n's sequence (dpre
    (N, F); sequences of S rows, or packed ones with VARLEN, offsets cu (NSEQ + 1,))."""
    pid_r, pid_f = _tile_of_program(F, BF)
    NBT: tl.constexpr = BF // BS
    rows = pid_r * BR + tl.arange(0, BR)
    cols = pid_f * BF + tl.arange(0, BF)
    col_ok = cols < F
    mask = (rows < N)[:, None] & col_ok[None, :]
    blocks = pid_f * NBT + tl.arange(0, NBT)
    o = tl.arange(0, BS)
    w_offs = blocks[:, None, None] * (BS * BS) + o[None, :, None] * BS + o[None, None, :]
    w_mask = (blocks < F // BS)[:, None, None]
    # dout[0] and dout[1] loaded before the products, the old gradient in dx after them (with
    # it loaded beside them the kernel took 141 against 130 us on an H100, bench/NOTES.md)
    d_ptrs = dout_ptr + rows.to(tl.int64)[:, None] * F + cols[None, :]
    d0 = tl.load(d_ptrs, mask=mask, other=0.0)
    if M > 1:
        d1 = tl.load(d_ptrs + N * F, mask=mask, other=0.0)
    if G > 0:
        dg = _load_d_gates(dg0_ptr, dg1_ptr, rows, N, S_dg, s_dgb, s_dgs, s_dgg, G0, G, GP)
        dg = dg.to(dout_ptr.dtype.element_ty)
    dx = tl.zeros((BR, NBT, BS), dtype=tl.float32)
    for m in tl.static_range(M):
        if m == 0:
            d = d0.to(tl.float32)
        elif m == 1:
            d = d1.to(tl.float32)
        else:
            d = tl.load(d_ptrs + m * N * F, mask=mask, other=0.0).to(tl.float32)
        if G > 0:       # the gate projection's share of output m's gradient, dg gw[:, gcol0 + m F + cols]
            gw = _gate_weight_tile(gw0_ptr, gw1_ptr, s_gw, gcol0 + m * F + cols, col_ok, G0, G, GP)
            d = mma(dg, gw.to(dout_ptr.dtype.element_ty), d, DOT_PREC)
        w = tl.load(w_ptr + m * F * BS + w_offs, mask=w_mask, other=0.0).to(tl.float32)
        dx += tl.sum(tl.reshape(d, (BR, NBT, BS, 1)) * w[None, :, :, :], axis=2)
    dx = tl.reshape(dx, (BR, BF))
    if CONV_K > 0:
        if VARLEN:
            end = tl.load(cu_ptr + packed_sequence(cu_ptr, NSEQ, STEPS, rows, N)[0] + 1)
        else:
            end = (rows // S + 1) * S
        dx += conv_input_grad(dpre_ptr, cw_ptr, rows, end, cols, F, CONV_K, BR, BF)
    dx_ptrs = dx_ptr + rows.to(tl.int64)[:, None] * s_dx + cols[None, :]
    if ACCUMULATE:
        dx += tl.load(dx_ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(dx_ptrs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _block_diagonal(w_ptr, m, F, cols, col_ok, BS: tl.constexpr):
    """blockdiag(w[m])^T restricted to the column block `cols`, (BF, BF): element (j, c) is
    w[m, c // BS, c % BS, j % BS] where j and c share a block, else 0 (so x @ it = x blockdiag(w[m])^T)."""
    same = (cols[:, None] // BS == cols[None, :] // BS) & col_ok[:, None] & col_ok[None, :]
    return tl.load(w_ptr + m * F * BS + cols[None, :] * BS + (cols[:, None] % BS), mask=same, other=0.0)


@cached_launch
@triton.jit
def headwise_bwd_dw_kernel(x_ptr, w_ptr, b_ptr, dout_ptr, partial_ptr, dg0_ptr, dg1_ptr, gw0_ptr, gw1_ptr,
                           gpart_ptr, N, F, s_x, rows_per_program, s_pp, S_dg, s_dgb, s_dgs, s_dgg, s_gw,
                           gcol0, s_gpp, C_g,
                           M: tl.constexpr, BS: tl.constexpr, BR: tl.constexpr, BF: tl.constexpr,
                           HAS_BIAS: tl.constexpr, DOT_PREC: tl.constexpr, G0: tl.constexpr, G: tl.constexpr,
                           GP: tl.constexpr, GATE_BIAS: tl.constexpr, GATE_PREC: tl.constexpr):
    """partial[p, m, b, o, i] = sum over this program's rows n of dout[m, n, b*BS + o] * x[n, b*BS + i]
    (with G > 0, dout[m] + dg gw[:, gcol0 + m F + cols]); program p's block starts at p * s_pp.
    The gates' share, sum_n (dg[n] gw[:, c]) x[n, j], is gw^T (dg^T x): the (GP, BF) product
    dg^T x that the gate weight's gradient needs anyway, times gw once per program (not a
    product with gw per tile of rows).

    With G > 0 also the gate projection's weight gradient: program p's block of gpart (at p *
    s_gpp) holds d W (G, C_g) row-major and then d b (G,); element (g, gcol0 + m F + c) = the sum
    over the rows of dg[n, g] out[m, n, c]. As out[m] = x blockdiag(w[m])^T + bias[m], that is
    (dg^T x) blockdiag(w[m])^T + (sum_n dg[n, g]) bias[m]: the loop gathers the (GP, BF) product
    dg^T x (dg rounded to x's dtype) and the sums of dg, and the block-diagonal product is applied
    once per program (out in float32 as the forward formed it before rounding it to store).
    With GATE_BIAS, the column block 0 programs also write d b[g], the rows' sum of dg.

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
    g = tl.arange(0, GP)
    dg_sum = tl.zeros((GP,), dtype=tl.float32)
    dg_x = tl.zeros((GP, BF), dtype=tl.float32)         # dg^T x over this program's rows
    for m0 in tl.static_range(0, M, 2):
        acc_a = tl.zeros((BF, BF), dtype=tl.float32)
        acc_b = tl.zeros((BF, BF), dtype=tl.float32)
        for start in range(first, first + rows_per_program, BR):
            rows = (start + tl.arange(0, BR)).to(tl.int64)
            mask = (rows < N)[:, None] & col_ok[None, :]
            x = tl.load(x_ptr + rows[:, None] * s_x + cols[None, :], mask=mask, other=0.0)
            d = tl.load(dout_ptr + (rows + m0 * N)[:, None] * F + cols[None, :], mask=mask, other=0.0)
            if G > 0:
                if m0 == 0:
                    dg = _load_d_gates(dg0_ptr, dg1_ptr, rows, N, S_dg, s_dgb, s_dgs, s_dgg, G0, G, GP)
                    dg_x = mma(tl.trans(dg).to(x.dtype), x, dg_x, DOT_PREC)
                    dg_sum += tl.sum(dg, axis=0)
            acc_a = mma(tl.trans(d), x, acc_a, DOT_PREC)
            if m0 + 1 < M:
                d = tl.load(dout_ptr + (rows + (m0 + 1) * N)[:, None] * F + cols[None, :], mask=mask, other=0.0)
                acc_b = mma(tl.trans(d), x, acc_b, DOT_PREC)
        if G > 0:       # the gates' share of dout[m], summed over the rows: gw_m^T (dg^T x)
            gw_a = _gate_weight_tile(gw0_ptr, gw1_ptr, s_gw, gcol0 + m0 * F + cols, col_ok, G0, G, GP)
            acc_a = mma(tl.trans(gw_a), dg_x, acc_a, GATE_PREC)
            if m0 + 1 < M:
                gw_b = _gate_weight_tile(gw0_ptr, gw1_ptr, s_gw, gcol0 + (m0 + 1) * F + cols, col_ok, G0, G, GP)
                acc_b = mma(tl.trans(gw_b), dg_x, acc_b, GATE_PREC)
        base = partial_ptr + pid_p.to(tl.int64) * s_pp + m0 * F * BS
        tl.store(base + offs, acc_a, mask=diag)
        if m0 + 1 < M:
            tl.store(base + F * BS + offs, acc_b, mask=diag)
    if G > 0:
        gbase = gpart_ptr + pid_p.to(tl.int64) * s_gpp
        g_mask = (g < G)[:, None] & col_ok[None, :]
        for m in tl.static_range(M):
            wd = _block_diagonal(w_ptr, m, F, cols, col_ok, BS).to(tl.float32)
            d_w = mma(dg_x, wd, tl.zeros((GP, BF), dtype=tl.float32), GATE_PREC)
            if HAS_BIAS:
                d_w += dg_sum[:, None] * tl.load(b_ptr + m * F + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
            tl.store(gbase + g[:, None] * C_g + (gcol0 + m * F + cols)[None, :], d_w, mask=g_mask)
        if GATE_BIAS:
            if pid_f == 0:
                tl.store(gbase + G * C_g + g, dg_sum, mask=g < G)


# Tiles of the forward and d x kernels (rows x columns), and of the weight-gradient kernel
# (DW_ROWS x at most DW_COLS; its programs along the rows, at most DW_PROGRAMS), on NUM_WARPS
# warps; module constants so that `bench.tools.ab_layer` can time other choices. H100, the
# paper layer (N = 16,384, F = 2,048), ms per layer's 4 forward / 2 d x calls: 32 x 64 tiles
# 0.284 / 0.212, 32 x 128 0.265 / 0.188, 32 x 256 0.276 / 0.216, 16 x 256 0.281 / 0.241; 8
# warps or 64 rows slower (bench/NOTES.md).
ROWS, COLS, NUM_WARPS = 32, 128, 4
DW_ROWS, DW_COLS, DW_PROGRAMS = 64, 64, 32


def _tiles(F: int, BS: int) -> tuple[int, int]:
    BF = min(COLS, next_power_of_2(F))
    BF = max(BF, BS)
    return ROWS, BF


class GateProjection(NamedTuple):
    """A small projection of the outputs formed inside the kernels (the paper layer's input and
    forget gates of cat(q, k, v), without reading q, k, v again): gates (N, G) = the sum over the
    calls sharing it of out[m] @ W[:, col + m F : col + (m + 1) F]^T, plus the bias in the call
    that carries it. `weights`: W (G, C) as two row blocks, (G0, C) and (G - G0, C), with unit
    column stride and one row stride (igate.weight and fgate.weight); `col`: W's column of this
    call's output 0; `bias`: the two blocks of W's bias (G0,), (G - G0,) with unit stride, or
    None where another call adds it."""
    weights: tuple
    col: int
    bias: Optional[tuple] = None


def _gate_args(gates: Optional[GateProjection], M: int, F: int, placeholder: torch.Tensor) -> tuple:
    """The kernels' gate arguments: (w0, w1, row stride, col), G0, G and GP (G padded for the
    tensor cores); without gates, `placeholder` for the pointers and G = 0."""
    if gates is None:
        return (placeholder, placeholder, 0, 0), 0, 0, 16
    w0, w1 = gates.weights
    C = w0.shape[1]
    for name, w in (("gate weight 0", w0), ("gate weight 1", w1)):
        if w.dim() != 2 or w.shape[1] != C or w.stride() != w0.stride() or w.stride(1) != 1:
            raise ValueError(f"{name}: expected ({'G0' if w is w0 else 'G - G0'}, {C}) with unit column stride and "
                             f"the other block's row stride, got {tuple(w.shape)} strides {w.stride()}")
    if gates.col < 0 or gates.col + M * F > C:
        raise ValueError(f"gate col: columns {gates.col}..{gates.col + M * F} of the outputs fall outside the gate "
                         f"weight's {C}")
    G0, G = w0.shape[0], w0.shape[0] + w1.shape[0]
    return (w0, w1, w0.stride(0), gates.col), G0, G, max(16, next_power_of_2(G))


def _d_gates_args(d_gates, N: int, G0: int, G: int) -> tuple:
    """The kernels' d_gates arguments (two pointers, S and the strides) of two (B, S, G_i) views."""
    ok = isinstance(d_gates, (tuple, list)) and len(d_gates) == 2
    if ok:
        d0, d1 = d_gates
        ok = (d0.dim() == 3 and d0.shape[0] * d0.shape[1] == N and d0.shape[2] == G0 and d1.shape[:2] == d0.shape[:2]
              and d1.shape[2] == G - G0 and d0.dtype == d1.dtype == torch.float32 and d0.stride() == d1.stride())
    if not ok:
        got = ([(tuple(t.shape), t.stride(), t.dtype) for t in d_gates] if isinstance(d_gates, (tuple, list))
               else d_gates)
        raise ValueError(f"d_gates: expected two float32 (B, S, G_i) views with B * S = {N}, G_i = {G0} and {G - G0}, "
                         f"the same strides, got {got}")
    return (d0, d1, d0.shape[1], *d0.stride())


class ConvInputGrad(NamedTuple):
    """A causal depthwise conv's input gradient added by the backward's d x kernel, for a call
    whose x is that conv's input (the paper layer's v of x_m, whose other gradient comes through
    the conv and q, k): dx[n] += sum_j weight[:, j] dpre[n + K - 1 - j] within n's sequence.
    `dpre` (N, F) contiguous (`causal_conv1d_backward_pre`'s), `weight` (F, K) contiguous; x's N
    rows are sequences of `seq_len` steps, or the packed sequences of the checked offsets
    `cu_seqlens`."""
    dpre: torch.Tensor
    weight: torch.Tensor
    seq_len: int
    cu_seqlens: Optional[torch.Tensor] = None


class ConvFirst(NamedTuple):
    """Outputs 0 .. outputs - 1 of the forward kernel taken of x_c = SiLU(causal depthwise
    conv(x)) instead of x, from a zero state (the paper layer's q and k of x_c, v of x_m: one
    read of x_m for all three and no separate conv kernel). `weight` (F, K) and `bias` (F,) or
    None, contiguous in x's dtype (`causal_conv1d_forward`'s); x's N rows are sequences of
    `seq_len` steps, or the packed sequences of the checked offsets `cu_seqlens`."""
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    outputs: int
    seq_len: int
    cu_seqlens: Optional[torch.Tensor] = None


def headwise_linear_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                            gates: Optional[GateProjection] = None, gate_partial: Optional[torch.Tensor] = None,
                            conv: Optional[ConvFirst] = None):
    """The forward kernel, no autograd and no checks: x (N, F) with unit last stride, weight
    (M, F / BS, BS, BS) and bias (M, F) or None contiguous -> (M, N, F).

    With `gates` (a `GateProjection`), also returns its column-block partial sums: (out, partial)
    with partial (F / BF, N, G) float32 (written into `gate_partial` if given, a contiguous
    buffer of that shape: two calls can share one buffer and one sum over dim 0). With `conv`
    (a `ConvFirst`), returns (out, x_c, partial) with x_c (N, F) contiguous in x's dtype and
    partial None without gates."""
    N, F = x.shape
    M, BS = weight.shape[0], weight.shape[-1]
    out = new_empty((M, N, F), x.dtype, x.device)
    BR, BF = _tiles(F, BS)
    n_cols = cdiv(F, BF)
    grid = (cdiv(N, BR) * n_cols,)           # a program per tile (`_tile_of_program`)
    gate_args, G0, G, GP = _gate_args(gates, M, F, weight)
    if not G:
        partial = out
    elif gate_partial is not None:
        if (gate_partial.shape != (n_cols, N, G) or gate_partial.dtype != torch.float32
                or not gate_partial.is_contiguous()):
            raise ValueError(f"gate_partial: expected a contiguous float32 {(n_cols, N, G)}, got "
                             f"{tuple(gate_partial.shape)} {gate_partial.dtype}")
        partial = gate_partial
    else:
        partial = new_empty((n_cols, N, G), torch.float32, x.device)
    gate_bias = gates.bias if G and gates.bias is not None else None
    if gate_bias is not None and (len(gate_bias) != 2 or any(b.dim() != 1 or b.stride(0) != 1 for b in gate_bias)):
        raise ValueError(f"gate bias: expected two 1-D blocks with unit stride, got "
                         f"{[(tuple(b.shape), b.stride()) for b in gate_bias]}")
    w0, w1, s_gw, col = gate_args
    if conv is None:
        x_c, conv_args, K, conv_outputs = out, (weight, weight, out, weight, 1, 0, 1), 0, 0
    else:
        x_c = new_empty((N, F), x.dtype, x.device)
        K, conv_outputs = conv.weight.shape[1], conv.outputs
        conv_args = (conv.weight, conv.bias if conv.bias is not None else conv.weight, x_c,
                     *packed_kernel_args(conv.cu_seqlens, weight), conv.seq_len)
    headwise_fwd_kernel[grid](x, weight, bias if bias is not None else weight, out, w0, w1,
                              *(gate_bias if gate_bias is not None else (weight, weight)), partial, N, F, x.stride(0),
                              s_gw, col, *conv_args, M=M, BS=BS, BR=BR, BF=BF, HAS_BIAS=bias is not None, G0=G0,
                              G=G, GP=GP, GATE_BIAS=gate_bias is not None, DOT_PREC=dot_precision(x.dtype, x.device),
                              CONV_K=K, CONV_OUT=conv_outputs, CONV_BIAS=conv is not None and conv.bias is not None,
                              VARLEN=conv is not None and conv.cu_seqlens is not None, num_warps=NUM_WARPS)
    if conv is not None:
        return out, x_c, (partial if G else None)
    return (out, partial) if G else out


def gate_column_blocks(F: int, BS: int) -> int:
    """The column blocks of the forward kernel (dim 0 of its gate partial sums)."""
    return cdiv(F, _tiles(F, BS)[1])


def _weight_grad_split(N: int) -> tuple[int, int]:
    """(programs, rows per program) of the backward's weight-gradient kernel along the rows: up
    to DW_PROGRAMS programs, each over a range of whole tiles."""
    programs = max(1, min(cdiv(N, DW_ROWS), DW_PROGRAMS))
    rows_per_program = cdiv(cdiv(N, programs), DW_ROWS) * DW_ROWS if N else DW_ROWS
    return (cdiv(N, rows_per_program) if N else 1), rows_per_program


def _dw_stages(dtype: torch.dtype) -> int:
    """Software-pipeline stages of the weight-gradient kernel: float32 tiles with the gate
    projection need 240 KiB of shared memory at Triton's default 3 stages (over an H100's 227
    KiB); 1 stage needs 144 KiB. 16-bit tiles keep the default."""
    return 1 if dtype == torch.float32 else 3


def weight_grad_programs(N: int) -> int:
    """The programs along the rows of the backward's weight-gradient kernel (dim 0 of its
    partial sums)."""
    return _weight_grad_split(N)[0]


@kernel_op("xlstm_triton::headwise_linear")
def _headwise_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return headwise_linear_forward(x, weight, bias)


@_headwise_linear.register_fake
def _(x, weight, bias):
    return x.new_empty(weight.shape[0], x.shape[0], x.shape[1])


def headwise_linear_backward(x: torch.Tensor, weight: torch.Tensor, dout: torch.Tensor,
                             dx: Optional[torch.Tensor] = None, accumulate: bool = False,
                             bias: Optional[torch.Tensor] = None, gates: Optional[GateProjection] = None,
                             d_gates: Optional[torch.Tensor] = None, partial: Optional[torch.Tensor] = None,
                             gate_partial: Optional[torch.Tensor] = None, conv: Optional[ConvInputGrad] = None
                             ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The kernels of the backward, no autograd: x (N, F), weight (M, F / BS, BS, BS), dout
    (M, N, F) -> (dx (N, F), d weight). `dx`, if given ((N, F) with unit last stride, x's
    dtype), is where dx goes; with `accumulate` it is added to what dx holds (the caller's other
    gradient of x). `partial`, if given (float32 (P, M, F / BS, BS, BS) with P =
    `weight_grad_programs(N)`, contiguous from dim 1 on), receives d weight's per-program sums,
    and d weight is returned as None (the caller adds them up, with other calls' if they share
    a buffer).

    With `gates` (the forward's `GateProjection`) and `d_gates`, the gradient of the gates
    (N, G) as two float32 column blocks of G0 and G - G0 columns, each a (B, S, G_i) view with
    B S = N (any strides, the same for both; e.g. the mLSTM backward's d i and d f transposed),
    the gradient of output m is dout[m] + d_gates @ W[:, col + m F ...], formed where the kernels read dout
    (dout itself is not changed), and the projection's own gradient goes to `gate_partial`
    (float32 (P, G * (C + 1)), unit last stride; C = W's columns): per program, d W (G, C)
    row-major, then d b (G,); this call writes its columns of d W = d_gates^T out (formed as
    (d_gates^T x) blockdiag(weight)^T + column sums of d_gates x `bias`: out in float32 before the
    forward rounds it to store) and, where `gates.bias` is given, d b = the column sums of
    d_gates. The calls sharing a projection write all of
    gate_partial between them; its sum over dim 0 cut at G * C gives d W and d b contiguous.

    With `conv` (a `ConvInputGrad`), dx also gets that conv's input gradient."""
    N, F = x.shape
    M, BS = weight.shape[0], weight.shape[-1]
    dout = dout.contiguous()
    BR, BF = _tiles(F, BS)
    gate_args, G0, G, GP = _gate_args(gates, M, F, dout)
    programs, rows_per_program = _weight_grad_split(N)
    if G:
        C = gates.weights[0].shape[1]
        d_gate_args = _d_gates_args(d_gates, N, G0, G)
        if (gate_partial is None or gate_partial.shape != (programs, G * (C + 1)) or gate_partial.dtype != torch.float32
                or gate_partial.stride(1) != 1):
            raise ValueError(f"gate_partial: expected float32 {(programs, G * (C + 1))} with gates, got "
                             f"{None if gate_partial is None else (tuple(gate_partial.shape), gate_partial.dtype)}")
        gate_bias = gates.bias is not None
    else:
        gate_partial, gate_bias = dout, False
        d_gate_args = (dout, dout, 1, 0, 0, 0)
    w0, w1, s_gw, col = gate_args
    gate_prec = dot_precision(torch.float32, x.device)
    if dx is None:
        dx = new_empty((N, F), x.dtype, x.device)
    conv_args = ((dout, dout, dout, 1, 0, 1) if conv is None else
                 (conv.dpre, conv.weight, *packed_kernel_args(conv.cu_seqlens, dout), conv.seq_len))
    headwise_bwd_dx_kernel[(cdiv(N, BR) * cdiv(F, BF),)](
        dout, weight, dx, *d_gate_args[:2], w0, w1, N, F, dx.stride(0), *d_gate_args[2:], s_gw, col, *conv_args,
        M=M, BS=BS, BR=BR, BF=BF, ACCUMULATE=accumulate, G0=G0, G=G, GP=GP,
        DOT_PREC=dot_precision(dout.dtype, x.device), CONV_K=0 if conv is None else conv.weight.shape[1],
        VARLEN=conv is not None and conv.cu_seqlens is not None, num_warps=NUM_WARPS)
    BF_dw = max(16, min(DW_COLS, BF))     # tl.dot tiles: at least 16 each way
    shape = (programs, M, F // BS, BS, BS)
    own = partial is None
    if own:
        partial = new_empty(shape, torch.float32, x.device)   # written whole
    elif partial.shape != shape or partial.dtype != torch.float32 or partial[0].stride() != (F * BS, BS * BS, BS, 1):
        raise ValueError(f"partial: expected float32 {shape}, contiguous from dim 1 on, got {tuple(partial.shape)} "
                         f"{partial.dtype} strides {partial.stride()}")
    headwise_bwd_dw_kernel[(programs, cdiv(F, BF_dw))](
        x, weight, bias if bias is not None else weight, dout, partial, *d_gate_args[:2], w0, w1, gate_partial, N, F,
        x.stride(0), rows_per_program, partial.stride(0), *d_gate_args[2:], s_gw, col,
        gate_partial.stride(0) if G else 0, C if G else 0, M=M, BS=BS, BR=DW_ROWS, BF=BF_dw,
        HAS_BIAS=bias is not None, DOT_PREC=dot_precision(x.dtype, x.device), G0=G0, G=G, GP=GP,
        GATE_BIAS=gate_bias, GATE_PREC=gate_prec, num_warps=NUM_WARPS, num_stages=_dw_stages(x.dtype))
    return dx, (partial.sum(0).to(weight.dtype) if own else None)


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
