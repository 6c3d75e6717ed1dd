"""Causal depthwise convolution over time with an optional SiLU, carrying a state, fused.

    pre[b, t, f] = bias[f] + sum_j weight[f, j] * x[b, t - K + 1 + j, f]   (x before t = 0: state)
    y = silu(pre) (or pre)
    x (B, S, F), weight (F, K), bias (F) or None, state (B, K - 1, F) or None (zeros) -> y (B, S, F)

Packed sequences (`cu_seqlens`, x of shape (1, S, F)): each sequence's window starts at its own
first step, from its own state row (N, K - 1, F).

The layers' convolution (kernel 4, then SiLU) is memory-bound; in PyTorch it is a padded copy,
cuDNN's grouped conv1d with its layout transposes, and the SiLU as separate passes, each way.
Here the forward is one kernel (x read once per tap from cache, y written once), and the
backward two: one recomputes pre (cheap, nothing but x is saved), writes d pre and, per
program of several row tiles, partial sums of d weight and d bias; one gathers d x from d pre.
d state (K - 1 rows) is a few PyTorch ops.

`causal_conv1d` is a custom op pair (`xlstm_triton::causal_conv1d`, `::causal_conv1d_bwd`); on
CPU without TRITON_INTERPRET=1 and for float64, `causal_conv1d_torch` (F.conv1d), which is also
the tests' reference.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..checks import check_cu_seqlens, check_tensor, host_offsets
from ..launch import cached_launch
from ..utils import cdiv, kernel_op, new_empty, next_power_of_2, packed_kernel_args, packed_sequence, use_kernels

__all__ = ["causal_conv1d", "causal_conv1d_backward", "causal_conv1d_backward_pre", "causal_conv1d_forward",
           "causal_conv1d_torch", "conv_input_grad", "conv_pre_activation"]


@triton.jit
def _sequence_of(cu_ptr, NSEQ, STEPS, b, t, S, VARLEN: tl.constexpr):
    """(first step, state row) of the sequence each step t of the tile belongs to: (0, b)
    for a batch of rows; packed sequences (VARLEN, offsets cu (NSEQ + 1,)): their start and
    index."""
    if VARLEN:
        seq, first = packed_sequence(cu_ptr, NSEQ, STEPS, t, S)
        seq = seq.to(tl.int64)
    else:
        first = tl.zeros_like(t)
        seq = b
    return first, seq


@triton.jit
def _tap(x_ptr, s_xb, s_xs, st_ptr, b, t, first, seq, f, S, F, j: tl.constexpr, K: tl.constexpr,
         HAS_STATE: tl.constexpr):
    """The input under tap j for the (BT, BF) tile: x[b, t - K + 1 + j, f] where that step is in
    t's sequence (from `first` on), from the sequence's state before it (zeros without one),
    float32."""
    src = t - (K - 1) + j
    fm = f < F
    v = tl.load(x_ptr + b * s_xb + src.to(tl.int64)[:, None] * s_xs + f[None, :],
                mask=((src >= first) & (src < S))[:, None] & fm[None, :], other=0.0).to(tl.float32)
    if HAS_STATE:
        row = src - first + (K - 1)
        v += tl.load(st_ptr + (seq * (K - 1) + row).to(tl.int64)[:, None] * F + f[None, :],
                     mask=((src < first) & (row >= 0) & (t < S))[:, None] & fm[None, :], other=0.0).to(tl.float32)
    return v


@triton.jit
def conv_pre_activation(x_ptr, s_xb, s_xs, st_ptr, w_ptr, b_ptr, b, t, first, seq, f, S, F, K: tl.constexpr,
                        BT: tl.constexpr, BF: tl.constexpr, HAS_STATE: tl.constexpr, HAS_BIAS: tl.constexpr):
    """bias + sum_j w[f, j] x[b, t - K + 1 + j, f] for a (BT, BF) tile, float32."""
    fm = f < F
    acc = tl.zeros((BT, BF), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + f, mask=fm, other=0.0).to(tl.float32)[None, :]
    for j in tl.static_range(K):
        v = _tap(x_ptr, s_xb, s_xs, st_ptr, b, t, first, seq, f, S, F, j, K, HAS_STATE)
        acc += v * tl.load(w_ptr + f * K + j, mask=fm, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _tile_of_program():
    """(sequence, row tile, column tile) of this program on the grid (column tiles, row tiles,
    B): consecutive programs take the column tiles of the same rows, so the programs running at
    once read whole rows (H100, paper layer: forward 119 -> 116 us, d x 95 -> 90 us against the
    grid in the other order, bench/NOTES.md)."""
    return tl.program_id(2).to(tl.int64), tl.program_id(1), tl.program_id(0)


@cached_launch
@triton.jit(do_not_specialize=["NSEQ", "STEPS"])
def causal_conv1d_fwd_kernel(x_ptr, s_xb, s_xs, st_ptr, w_ptr, b_ptr, cu_ptr, NSEQ, STEPS, y_ptr, S, F,
                             K: tl.constexpr, BT: tl.constexpr, BF: tl.constexpr, HAS_STATE: tl.constexpr,
                             HAS_BIAS: tl.constexpr, SILU: tl.constexpr, VARLEN: tl.constexpr):
    b, pt, pf = _tile_of_program()
    t = pt * BT + tl.arange(0, BT)
    f = pf * BF + tl.arange(0, BF)
    first, seq = _sequence_of(cu_ptr, NSEQ, STEPS, b, t, S, VARLEN)
    pre = conv_pre_activation(x_ptr, s_xb, s_xs, st_ptr, w_ptr, b_ptr, b, t, first, seq, f, S, F, K, BT, BF,
                              HAS_STATE, HAS_BIAS)
    y = pre
    if SILU:
        y = pre / (1.0 + tl.exp(-pre))
    tl.store(y_ptr + (b * S + t.to(tl.int64))[:, None] * F + f[None, :], y.to(y_ptr.dtype.element_ty),
             mask=(t < S)[:, None] & (f < F)[None, :])


@triton.jit
def _tap_product(acc, dpre, x_ptr, s_xb, s_xs, st_ptr, b, t, first, seq, f, S, F, j: tl.constexpr, K: tl.constexpr,
                 HAS_STATE: tl.constexpr):
    """acc + d pre * (tap j's inputs) where tap j exists (j < K)."""
    if j < K:
        acc += dpre * _tap(x_ptr, s_xb, s_xs, st_ptr, b, t, first, seq, f, S, F, j, K, HAS_STATE)
    return acc


@triton.jit
def _tap_or_zeros(x_ptr, s_xb, s_xs, st_ptr, b, t, first, seq, f, S, F, j: tl.constexpr, K: tl.constexpr,
                  HAS_STATE: tl.constexpr, BT: tl.constexpr, BF: tl.constexpr):
    """Tap j's inputs (`_tap`) where tap j exists (j < K), else zeros."""
    if j < K:
        return _tap(x_ptr, s_xb, s_xs, st_ptr, b, t, first, seq, f, S, F, j, K, HAS_STATE)
    else:
        return tl.zeros((BT, BF), dtype=tl.float32)


@cached_launch
@triton.jit(do_not_specialize=["NSEQ", "STEPS"])
def causal_conv1d_bwd_pre_kernel(x_ptr, s_xb, s_xs, st_ptr, w_ptr, b_ptr, cu_ptr, NSEQ, STEPS, dy_ptr, dpre_ptr,
                                 partial_ptr, S, F, K: tl.constexpr, J0: tl.constexpr, BT: tl.constexpr,
                                 TILES: tl.constexpr, BF: tl.constexpr, HAS_STATE: tl.constexpr,
                                 HAS_BIAS: tl.constexpr, SILU: tl.constexpr, VARLEN: tl.constexpr):
    """d pre = dy * silu'(pre) for TILES row tiles of BT rows, and the program's partial sums
    partial[program, j, f] = sum_t d pre[t] x[t - K + 1 + j] for taps j = J0 .. J0 + 3 (< K),
    and (J0 = 0) partial[program, K] = sum d pre. The products are summed over the tiles
    elementwise and over the rows once at the end (a reduction across warps per tile and tap
    cost more than the rest of the kernel). Launched once per group of four taps (J0 = 0, 4,
    ...); the first group writes d pre.

    With K <= 4 (one group) the weights and bias are loaded once per program, not per tile (in
    the general path's per-tile pre they were 4 x 8 scalar loads a thread and tile, strided by
    K), and each tap's inputs once per tile, for pre and for their product."""
    b, pt, pf = _tile_of_program()
    f = pf * BF + tl.arange(0, BF)
    fm = f < F
    a0 = tl.zeros((BT, BF), dtype=tl.float32)
    a1 = tl.zeros((BT, BF), dtype=tl.float32)
    a2 = tl.zeros((BT, BF), dtype=tl.float32)
    a3 = tl.zeros((BT, BF), dtype=tl.float32)
    ab = tl.zeros((BT, BF), dtype=tl.float32)
    if K <= 4:      # (1, BF) rows, in the weights' dtype (registers); zeros for missing taps
        w0 = tl.load(w_ptr + f * K, mask=fm, other=0.0)[None, :]
        w1 = tl.load(w_ptr + f * K + 1, mask=fm & (K > 1), other=0.0)[None, :]
        w2 = tl.load(w_ptr + f * K + 2, mask=fm & (K > 2), other=0.0)[None, :]
        w3 = tl.load(w_ptr + f * K + 3, mask=fm & (K > 3), other=0.0)[None, :]
        bias = tl.load(b_ptr + f, mask=fm & HAS_BIAS, other=0.0)[None, :]
    for it in range(TILES):
        t = (pt * TILES + it) * BT + tl.arange(0, BT)
        mask = (t < S)[:, None] & fm[None, :]
        first, seq = _sequence_of(cu_ptr, NSEQ, STEPS, b, t, S, VARLEN)
        dy = tl.load(dy_ptr + (b * S + t.to(tl.int64))[:, None] * F + f[None, :], mask=mask, other=0.0).to(tl.float32)
        if K <= 4:
            v0 = _tap_or_zeros(x_ptr, s_xb, s_xs, st_ptr, b, t, first, seq, f, S, F, 0, K, HAS_STATE, BT, BF)
            v1 = _tap_or_zeros(x_ptr, s_xb, s_xs, st_ptr, b, t, first, seq, f, S, F, 1, K, HAS_STATE, BT, BF)
            v2 = _tap_or_zeros(x_ptr, s_xb, s_xs, st_ptr, b, t, first, seq, f, S, F, 2, K, HAS_STATE, BT, BF)
            v3 = _tap_or_zeros(x_ptr, s_xb, s_xs, st_ptr, b, t, first, seq, f, S, F, 3, K, HAS_STATE, BT, BF)
        dpre = dy
        if SILU:
            if K <= 4:
                pre = (bias.to(tl.float32) + v0 * w0.to(tl.float32) + v1 * w1.to(tl.float32)
                       + v2 * w2.to(tl.float32) + v3 * w3.to(tl.float32))
            else:
                pre = conv_pre_activation(x_ptr, s_xb, s_xs, st_ptr, w_ptr, b_ptr, b, t, first, seq, f, S, F, K, BT,
                                          BF, HAS_STATE, HAS_BIAS)
            sig = 1.0 / (1.0 + tl.exp(-pre))
            dpre = dy * sig * (1.0 + pre * (1.0 - sig))
        dpre = tl.where(mask, dpre, 0.0)
        if J0 == 0:
            tl.store(dpre_ptr + (b * S + t.to(tl.int64))[:, None] * F + f[None, :],
                     dpre.to(dpre_ptr.dtype.element_ty), mask=mask)
            ab += dpre
        if K <= 4:
            a0 += dpre * v0
            a1 += dpre * v1
            a2 += dpre * v2
            a3 += dpre * v3
        else:
            a0 = _tap_product(a0, dpre, x_ptr, s_xb, s_xs, st_ptr, b, t, first, seq, f, S, F, J0, K, HAS_STATE)
            a1 = _tap_product(a1, dpre, x_ptr, s_xb, s_xs, st_ptr, b, t, first, seq, f, S, F, J0 + 1, K, HAS_STATE)
            a2 = _tap_product(a2, dpre, x_ptr, s_xb, s_xs, st_ptr, b, t, first, seq, f, S, F, J0 + 2, K, HAS_STATE)
            a3 = _tap_product(a3, dpre, x_ptr, s_xb, s_xs, st_ptr, b, t, first, seq, f, S, F, J0 + 3, K, HAS_STATE)
    row = (b * tl.num_programs(1) + pt) * (K + 1) + J0
    tl.store(partial_ptr + row * F + f, tl.sum(a0, axis=0), mask=fm)
    if J0 + 1 < K:
        tl.store(partial_ptr + (row + 1) * F + f, tl.sum(a1, axis=0), mask=fm)
    if J0 + 2 < K:
        tl.store(partial_ptr + (row + 2) * F + f, tl.sum(a2, axis=0), mask=fm)
    if J0 + 3 < K:
        tl.store(partial_ptr + (row + 3) * F + f, tl.sum(a3, axis=0), mask=fm)
    if J0 == 0:
        tl.store(partial_ptr + (row + K) * F + f, tl.sum(ab, axis=0), mask=fm)


@triton.jit
def conv_input_grad(dpre_ptr, w_ptr, t, end, f, F, K: tl.constexpr, BT: tl.constexpr, BF: tl.constexpr):
    """sum_j w[f, j] d pre[t + K - 1 - j] over the steps before `end` (each t's sequence end),
    float32 (BT, BF), of d pre rows F wide from dpre_ptr (a batch row's, or flattened rows with
    `end` per row)."""
    fm = f < F
    acc = tl.zeros((BT, BF), dtype=tl.float32)
    for j in tl.static_range(K):
        dst = t + (K - 1) - j
        d = tl.load(dpre_ptr + dst.to(tl.int64)[:, None] * F + f[None, :], mask=(dst < end)[:, None] & fm[None, :],
                    other=0.0).to(tl.float32)
        acc += d * tl.load(w_ptr + f * K + j, mask=fm, other=0.0).to(tl.float32)[None, :]
    return acc


@cached_launch
@triton.jit(do_not_specialize=["NSEQ", "STEPS"])
def causal_conv1d_bwd_dx_kernel(dpre_ptr, w_ptr, cu_ptr, NSEQ, STEPS, dx_ptr, s_dxb, s_dxs, S, F, K: tl.constexpr,
                                BT: tl.constexpr, BF: tl.constexpr, VARLEN: tl.constexpr, ACCUMULATE: tl.constexpr):
    """dx[t] (+)= sum_j w[f, j] d pre[t + K - 1 - j], over the steps of t's own sequence (VARLEN:
    those before the end of t's sequence)."""
    b, pt, pf = _tile_of_program()
    t = pt * BT + tl.arange(0, BT)
    f = pf * BF + tl.arange(0, BF)
    fm = f < F
    end = t * 0 + S
    if VARLEN:           # the largest j with cu[j] <= t: its sequence ends at cu[j + 1] > t
        end = tl.load(cu_ptr + packed_sequence(cu_ptr, NSEQ, STEPS, t, S)[0] + 1)
    acc = conv_input_grad(dpre_ptr + b * S * F, w_ptr, t, end, f, F, K, BT, BF)
    dx_ptrs = dx_ptr + b * s_dxb + t.to(tl.int64)[:, None] * s_dxs + f[None, :]
    if ACCUMULATE:
        acc += tl.load(dx_ptrs, mask=(t < S)[:, None] & fm[None, :], other=0.0).to(tl.float32)
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=(t < S)[:, None] & fm[None, :])


# Warps of the backward's two kernels (8 warps at the old 64 x 128 tiles: 483 against 271 us
# for the whole backward on an H200, bench/NOTES.md).
BWD_NUM_WARPS = 4
# The backward's first kernel: tiles of BWD_ROWS x BWD_COLS, up to BWD_TILES of them (down the
# rows) per program; its second kernel: tiles of 64 rows x BWD_COLS. H100, B x S = 16,384,
# F = 2,048, the whole backward: 279.6 us before (64 x 128 tiles, one per program in the
# first kernel); 16 x 128 x 8 tiles 272.7; 16 x 64 x 4 296.7, x 8 251.7, x 16 230.6; then x 64:
# the first kernel 148 -> 131 us (bench/NOTES.md).
BWD_ROWS, BWD_COLS, BWD_TILES = 16, 64, 64
# Registers of the first kernel's K <= 4 path: the weights it keeps across its tiles took it from
# 126 to 165 registers (sm_90, Triton 3.6), three programs an SM instead of four, two waves of the
# paper layer's 512 programs on an H100 instead of one; at 128 it has no spills on 3.6 (8 bytes
# of stack on 3.9). None: the compiler's choice.
BWD_PRE_MAXNREG = 128


def _tiles(S: int, F: int) -> tuple[int, int]:
    return min(64, max(16, next_power_of_2(S))), min(128, max(16, next_power_of_2(F)))


def _grid(B: int, row_tiles: int, col_tiles: int) -> tuple[int, int, int]:
    """The launch grid of B x row tiles x column tiles programs (`_tile_of_program`)."""
    return (col_tiles, row_tiles, B)


def _bwd_pre_tiles(S: int, F: int) -> tuple[int, int, int]:
    """(rows per tile, tiles per program, columns) of the backward's first kernel."""
    BT = min(BWD_ROWS, max(16, next_power_of_2(S)))
    return BT, max(1, min(BWD_TILES, cdiv(S, BT))), min(BWD_COLS, max(16, next_power_of_2(F)))


def _varlen_args(x: torch.Tensor, cu_seqlens: Optional[torch.Tensor]) -> tuple:
    """The kernels' packed-sequence arguments (`utils.packed_kernel_args`): the offsets as
    int32 on x's device (no copy when they are already)."""
    cu = None if cu_seqlens is None else cu_seqlens.to(device=x.device, dtype=torch.int32)
    return packed_kernel_args(cu, x)


@kernel_op("xlstm_triton::causal_conv1d")
def _causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   state: Optional[torch.Tensor], silu: bool, cu_seqlens: Optional[torch.Tensor]) -> torch.Tensor:
    B, S, F = x.shape
    K = weight.shape[1]
    y = new_empty((B, S, F), x.dtype, x.device)
    BT, BF = _tiles(S, F)
    causal_conv1d_fwd_kernel[_grid(B, cdiv(S, BT), cdiv(F, BF))](
        x, x.stride(0), x.stride(1), state if state is not None else x, weight, bias if bias is not None else weight,
        *_varlen_args(x, cu_seqlens), y, S, F, K=K, BT=BT, BF=BF, HAS_STATE=state is not None,
        HAS_BIAS=bias is not None, SILU=silu, VARLEN=cu_seqlens is not None, num_warps=4)
    return y


@_causal_conv1d.register_fake
def _(x, weight, bias, state, silu, cu_seqlens):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def causal_conv1d_backward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                           state: Optional[torch.Tensor], dy: torch.Tensor, silu: bool,
                           cu_seqlens: Optional[torch.Tensor] = None, dx: Optional[torch.Tensor] = None,
                           accumulate: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernels of the backward, no autograd and no checks (arguments as `_causal_conv1d`'s
    forward, x with unit last stride): (dx, d weight, d bias or an empty tensor, d state or an
    empty tensor). `dx`, if given ((B, S, F) with unit last stride, x's dtype), is where dx goes;
    with `accumulate` it is added to what dx holds."""
    B, S, F = x.shape
    K = weight.shape[1]
    dpre, dw, db = causal_conv1d_backward_pre(x, weight, bias, state, dy, silu, cu_seqlens)
    BT, BF = _tiles(S, F)[0], _bwd_pre_tiles(S, F)[2]
    if dx is None:
        dx = new_empty((B, S, F), x.dtype, x.device)
    causal_conv1d_bwd_dx_kernel[_grid(B, cdiv(S, BT), cdiv(F, BF))](
        dpre, weight, *_varlen_args(x, cu_seqlens), dx, dx.stride(0), dx.stride(1), S, F, K=K, BT=BT, BF=BF,
        VARLEN=cu_seqlens is not None, ACCUMULATE=accumulate, num_warps=BWD_NUM_WARPS)
    dstate = _state_grad(dpre, weight, K, cu_seqlens) if state is not None else x.new_empty(0)
    return dx, dw, db, dstate


def causal_conv1d_backward_pre(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                               state: Optional[torch.Tensor], dy: torch.Tensor, silu: bool,
                               cu_seqlens: Optional[torch.Tensor] = None
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward's first kernel alone (arguments as `causal_conv1d_backward`'s): (d pre
    (B, S, F) contiguous in x's dtype, d weight, d bias or an empty tensor). dx is then
    sum_j weight[:, j] d pre[t + K - 1 - j] within t's sequence (`conv_input_grad`, which a
    caller's kernel can run where it writes its own gradient of x)."""
    B, S, F = x.shape
    K = weight.shape[1]
    dy = dy.contiguous()
    PT, TILES, BF = _bwd_pre_tiles(S, F)
    packed = _varlen_args(x, cu_seqlens)
    dpre = new_empty((B, S, F), x.dtype, x.device)
    pre_grid = (B, cdiv(S, PT * TILES), cdiv(F, BF))
    partial = new_empty((B * pre_grid[1], K + 1, F), torch.float32, x.device)   # written whole
    for j0 in range(0, K, 4):        # groups of four taps; the first writes d pre, later ones recompute it
        causal_conv1d_bwd_pre_kernel[_grid(*pre_grid)](
            x, x.stride(0), x.stride(1), state if state is not None else x, weight,
            bias if bias is not None else weight, *packed, dy, dpre, partial, S, F, K=K, J0=j0, BT=PT, TILES=TILES,
            BF=BF, HAS_STATE=state is not None, HAS_BIAS=bias is not None, SILU=silu,
            VARLEN=cu_seqlens is not None, num_warps=BWD_NUM_WARPS, maxnreg=BWD_PRE_MAXNREG if K <= 4 else None)
    sums = partial.sum(0)                                         # (K + 1, F)
    dw = sums[:K].t().to(weight.dtype, memory_format=torch.contiguous_format, copy=True)   # no view of sums
    db = sums[K].to(weight.dtype, copy=True) if bias is not None else weight.new_empty(0)
    return dpre, dw, db


def causal_conv1d_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                          silu: bool, cu_seqlens: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The forward kernel from a zero state, no autograd and no checks: x (B, S, F) with unit
    last stride, weight (F, K) and bias (F,) or None contiguous, in x's dtype; packed
    sequences with checked offsets `cu_seqlens`."""
    return _causal_conv1d(x, weight, bias, None, silu, cu_seqlens)


@kernel_op("xlstm_triton::causal_conv1d_bwd")
def _causal_conv1d_bwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                       state: Optional[torch.Tensor], dy: torch.Tensor, silu: bool,
                       cu_seqlens: Optional[torch.Tensor]
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return causal_conv1d_backward(x, weight, bias, state, dy, silu, cu_seqlens)


def _state_grad(dpre: torch.Tensor, weight: torch.Tensor, K: int,
                cu_seqlens: Optional[torch.Tensor] = None) -> torch.Tensor:
    """d state[s, i] = sum_{j <= i} weight[:, j] d pre[step i - j of sequence s] (state row i is
    K - 1 - i steps before the sequence's start). The sequences: the batch rows, or the packed
    ones of `cu_seqlens`. Returns (B or N, K - 1, F)."""
    S = dpre.shape[1]
    if cu_seqlens is None:
        head = F.pad(dpre[:, :K - 1], (0, 0, 0, max(0, K - 1 - S)))             # (B, K - 1, F)
    else:
        cu = cu_seqlens.to(device=dpre.device, dtype=torch.long)
        idx = cu[:-1, None] + torch.arange(K - 1, device=dpre.device)            # (N, K - 1)
        head = dpre[0, idx.clamp(max=S - 1)] * (idx < cu[1:, None])[..., None]
    head, w = head.float(), weight.float()
    rows = [sum(head[:, i - j] * w[:, j] for j in range(i + 1)) for i in range(K - 1)]
    return torch.stack(rows, dim=1).to(dpre.dtype)


@_causal_conv1d_bwd.register_fake
def _(x, weight, bias, state, dy, silu, cu_seqlens):
    B, S, F = x.shape
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(weight),
            weight.new_empty(F if bias is not None else 0),
            x.new_empty(state.shape if state is not None else (0,)))


def _setup_context(ctx, inputs, output):
    x, weight, bias, state, silu, cu_seqlens = inputs
    ctx.save_for_backward(x, weight, bias, state, cu_seqlens)
    ctx.silu = silu


def _backward(ctx, dy):
    x, weight, bias, state, cu_seqlens = ctx.saved_tensors
    dx, dw, db, dstate = _causal_conv1d_bwd(x, weight, bias, state, dy, ctx.silu, cu_seqlens)
    return dx, dw, db if bias is not None else None, dstate if state is not None else None, None, None


_causal_conv1d.register_autograd(_backward, setup_context=_setup_context)


def causal_conv1d_torch(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                        state: Optional[torch.Tensor] = None, silu: bool = True,
                        cu_seqlens: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The PyTorch spelling: the state (or zeros) before x, a grouped conv1d, SiLU; packed
    sequences (`cu_seqlens`) one by one, each from its own state row."""
    if cu_seqlens is not None:
        bounds = host_offsets(cu_seqlens)
        return torch.cat([causal_conv1d_torch(x[:, a:b], weight, bias, None if state is None else state[n:n + 1], silu)
                          for n, (a, b) in enumerate(zip(bounds, bounds[1:]))], dim=1)
    B, S, Fd = x.shape
    K = weight.shape[1]
    if S == 0:
        return x.new_empty(B, 0, Fd)
    xs = F.pad(x, (0, 0, K - 1, 0)) if state is None else torch.cat([state.to(x.dtype), x], dim=1)
    y = F.conv1d(xs.transpose(1, 2), weight[:, None, :].to(x.dtype), None if bias is None else bias.to(x.dtype),
                 groups=Fd).transpose(1, 2)
    return F.silu(y) if silu else y


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  state: Optional[torch.Tensor] = None, silu: bool = True,
                  cu_seqlens: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Causal depthwise conv1d over time (+ SiLU) from a state (module docstring).

    x: (B, S, F), last dim contiguous; weight: (F, K), K >= 1; bias: (F,) or None; state:
    (B, K - 1, F) or None (zeros), the K - 1 inputs before x, oldest first. weight, bias and
    state in x's dtype and on its device. Returns (B, S, F) in x's dtype.

    Packed sequences: `cu_seqlens` (N + 1,) int32 / int64, the offsets of N sequences laid end
    to end in x (1, S, F) (`checks.check_cu_seqlens`); no window reaches into the sequence
    before, and state (N, K - 1, F), if given, holds each sequence's own K - 1 inputs before it.
    """
    check_tensor("x", x, ndim=3, doc="(B, S, F)")
    B, S, Fd = x.shape
    if cu_seqlens is not None:
        B = check_cu_seqlens(cu_seqlens, S, B, x.device)      # state rows: one per sequence
        cu_seqlens = cu_seqlens.to(x.device)
    check_tensor("weight", weight, ndim=2, doc="(F, K)", dtypes=(x.dtype,), device=x.device, device_of="x")
    if weight.shape[0] != Fd or weight.shape[1] < 1:
        raise ValueError(f"weight: expected shape (F, K) with F = {Fd} and K >= 1, got {tuple(weight.shape)}")
    K = weight.shape[1]
    check_tensor("bias", bias, (Fd,), doc="(F,)", dtypes=(x.dtype,), device=x.device, device_of="x",
                 allow_none=True)
    check_tensor("state", state, (B, K - 1, Fd), doc="(N, K - 1, F)" if cu_seqlens is not None else "(B, K - 1, F)",
                 dtypes=(x.dtype,), device=x.device,
                 device_of="x", allow_none=True)
    if not use_kernels(x) or K == 1 and state is not None:
        return causal_conv1d_torch(x, weight, bias, state, silu, cu_seqlens)
    if x.stride(-1) != 1:
        x = x.contiguous()
    return _causal_conv1d(x, weight.contiguous(), None if bias is None else bias.contiguous(),
                          None if state is None or K == 1 else state.contiguous(), bool(silu), cu_seqlens)
