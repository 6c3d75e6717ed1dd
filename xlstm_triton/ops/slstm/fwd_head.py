"""sLSTM forward of whole heads, batch-last variant (config fwd_batch_last; the default forward
of whole heads is fwd.py's kernel).

fwd.py's whole-head step multiplies h_{t-1} (BB, BO) by RT (BO, 4 BO): with M = BB = 16 the
sm_90 code is a chain of warp-level products over N split between the warps, so every warp
gathers the step's whole h through shared memory, and the fused-gate result is taken apart into
four tiles (layout conversions: 12 barriers a step at DH = 128). Here every tile is transposed,
(BO, BB), and the step is one product pre^T (4 BO, BB) = R_stack (4 BO, BO) @ h_{t-1}^T:
M = 4 BO, warpgroup products reading R from shared memory, whose result rows g BO + j fall in
the same thread for the four gates of column j (the layout repeats every 8 warps x 16 rows), so
the gates are taken apart in registers. The per-step tensors are batch-last for vector loads and
stores in that orientation: wx is copied to (T, 4, NH, DH, Bp) and h comes out of
(T, NH, DH, Bp), Bp the batch padded to a multiple of BATCH_BLOCK (fwd.padded_batch; the padding
rows run on zero inputs and states: finite, dropped). Nothing is stored for a backward (whole
heads recompute, recompute.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...launch import cached_launch
from ...utils import cdiv, dot_precision, mma, new_empty
from .fwd import BATCH_BLOCK, SLSTMConfig, fast_math, fast_rcp, gate_activations, padded_batch


@triton.jit
def load_r_stack(R_ptr, head, NH: tl.constexpr, DH: tl.constexpr, BO: tl.constexpr):
    """The head's four R_g stacked: (4 BO, BO), [g BO + o, i] = R[g, head, o, i] (zero outside DH)."""
    r = tl.arange(0, 4 * BO)[:, None]
    i = tl.arange(0, BO)[None, :]
    return tl.load(R_ptr + (r // BO) * (NH * DH * DH) + head * DH * DH + (r % BO) * DH + i,
                   mask=(r % BO < DH) & (i < DH), other=0.0)


@triton.jit
def unstack_gates(x, BO: tl.constexpr, BB: tl.constexpr):
    """(4 BO, BB) with rows (gate, j) -> the four (BO, BB) gate tiles i, f, z, o."""
    x = tl.permute(tl.reshape(x, (2, 2, BO, BB)), (2, 3, 0, 1))    # (j, b, g // 2, g % 2)
    even, odd = tl.split(x)                                          # gates (0, 2) and (1, 3)
    g_i, g_z = tl.split(even)
    g_f, g_o = tl.split(odd)
    return g_i, g_f, g_z, g_o


@triton.jit
def batch_last_tiles(B, NH: tl.constexpr, DH: tl.constexpr, BB: tl.constexpr, BO: tl.constexpr):
    """A batch-last whole-head kernel's program: its head, its (BO, BB) tile's offsets and masks
    in the state (4, B, NH, DH) (off_st, mask) and in a slot of a step of the batch-last tensors
    (T, ., NH, DH, Bp) (off_step, mask_step: padded rows exist, no batch mask), the state's and
    a batch-last slot's sizes (s_state, s_slot), and Bp (B padded to a multiple of BB). Index
    tensors are built in their orientation: a transposed arange loses its contiguity."""
    group = tl.program_id(0)
    head = group % NH
    rb = (group // NH) * BB + tl.arange(0, BB)
    cols = tl.arange(0, BO)
    HD: tl.constexpr = NH * DH
    Bp = tl.cdiv(B, BB) * BB
    mask = (cols < DH)[:, None] & (rb < B)[None, :]
    off_st = rb[None, :] * HD + head * DH + cols[:, None]
    off_step = (head * DH + cols[:, None]) * Bp + rb[None, :]
    mask_step = (cols < DH)[:, None] & (rb < Bp)[None, :]
    return head, rb, off_st, mask, off_step, mask_step, tl.cast(B, tl.int64) * HD, tl.cast(Bp, tl.int64) * HD, Bp


@cached_launch
@triton.jit(do_not_specialize=["B", "T"])
def slstm_fwd_head_batch_last_kernel(
    wx_ptr, R_ptr, b_ptr, state_in_ptr, h_ptr, state_out_ptr, B, T,
    NH: tl.constexpr, DH: tl.constexpr, BB: tl.constexpr, BO: tl.constexpr, DOT_PREC: tl.constexpr,
    FAST_MATH: tl.constexpr,
):
    """The whole forward of one (batch block, head), tiles (BO, BB). wx (T, 4, NH, DH, Bp) and
    h (T, NH, DH, Bp) output, batch-last in the matmul dtype (Bp = B padded to a multiple of BB);
    state_in / state_out (4, B, NH, DH) float32 (h, c, n, m) before the first / after the last
    step. The step as fwd.py's."""
    head, rb, off_st, mask, off_step, mask_step, s_state, s_slot, Bp = batch_last_tiles(B, NH, DH, BB, BO)
    dtype = R_ptr.dtype.element_ty
    HD: tl.constexpr = NH * DH
    r4 = tl.arange(0, 4 * BO)[:, None]                         # the stacked gates' rows (g, j)
    off_wx4 = (r4 // BO) * s_slot + (head * DH + r4 % BO) * Bp + rb[None, :]
    mask_wx4 = (r4 % BO < DH) & (rb < Bp)[None, :]
    bias = tl.load(b_ptr + (r4 // BO) * HD + head * DH + r4 % BO, mask=r4 % BO < DH, other=0.0).to(tl.float32)

    R_s = load_r_stack(R_ptr, head, NH, DH, BO)
    h = tl.load(state_in_ptr + off_st, mask=mask, other=0.0)
    c = tl.load(state_in_ptr + s_state + off_st, mask=mask, other=0.0)
    n = tl.load(state_in_ptr + 2 * s_state + off_st, mask=mask, other=0.0)
    m = tl.load(state_in_ptr + 3 * s_state + off_st, mask=mask, other=0.0)

    # the step's input does not depend on the chain: software-pipelined ahead of it
    for t in tl.range(0, T, num_stages=2):
        t64 = tl.cast(t, tl.int64)
        x = tl.load(wx_ptr + t64 * (4 * s_slot) + off_wx4, mask=mask_wx4, other=0.0).to(tl.float32) + bias
        pre = mma(R_s, h.to(dtype), x, DOT_PREC)                   # (4 BO, BB): gates stacked
        g_i, g_f, g_z, g_o = unstack_gates(pre, BO, BB)
        i_act, f_act, z_act, o_act, m = gate_activations(g_i, g_f, g_z, g_o, n, m, FAST_MATH)
        c = f_act * c + i_act * z_act
        n = f_act * n + i_act
        h = o_act * c * fast_rcp(n, FAST_MATH)
        tl.store(h_ptr + t64 * s_slot + off_step, h.to(dtype), mask=mask_step)

    tl.store(state_out_ptr + off_st, h, mask=mask)
    tl.store(state_out_ptr + s_state + off_st, c, mask=mask)
    tl.store(state_out_ptr + 2 * s_state + off_st, n, mask=mask)
    tl.store(state_out_ptr + 3 * s_state + off_st, m, mask=mask)


def slstm_fwd_head_batch_last(wx, R, b, state0, cfg: SLSTMConfig):
    """The forward of a whole-head config with fwd_batch_last (inputs as fwd.py's `slstm_fwd`):
    wx copied batch-last, the kernel, h copied back. Returns h (B, T, NH, DH) and the last state
    (4, B, NH, DH) float32."""
    B, T, _, NH, DH = wx.shape
    dev, dtype = wx.device, wx.dtype
    if cfg.ncb != 1:
        raise ValueError(f"slstm_fwd_head_batch_last: whole-head configs only (ncb == 1), got {cfg}")
    Bp = padded_batch(B)
    wx_t = wx.new_zeros((T, 4, NH, DH, Bp))
    wx_t[..., :B] = wx.permute(1, 2, 3, 4, 0)
    h_t = new_empty((T, NH, DH, Bp), dtype, dev)
    last = new_empty((4, B, NH, DH), torch.float32, dev)
    slstm_fwd_head_batch_last_kernel[(NH * cdiv(B, BATCH_BLOCK),)](
        wx_t, R, b, state0, h_t, last, B, T, NH=NH, DH=DH, BB=BATCH_BLOCK, BO=cfg.bo,
        DOT_PREC=dot_precision(dtype, dev), FAST_MATH=fast_math(dev), num_warps=cfg.num_warps)
    return h_t[..., :B].permute(3, 0, 1, 2).contiguous(), last
