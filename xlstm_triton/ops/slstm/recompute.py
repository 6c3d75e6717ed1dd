"""sLSTM backward, first stage for whole-head configs: what the forward did not save, recomputed.

In whole-head mode (one program per head, heads up to 128) the forward runs on one SM per
(batch block, head), and storing per-step tensors for the backward (28 bytes per element and
step) costs that one SM a large part of a step's time. So the training forward saves nothing but its output h (and keeps
wx), and the backward first rebuilds what it needs here, on every SM:

    slstm_pre_kernel    pre_t = wx_t + b + h_{t-1} R^T, the forward's fused-gate product, with
                        h_{t-1} read from the output (no recurrence left: parallel over time blocks)
    slstm_coef_kernel   (c, n, m)_t from pre_t and (c, n, m)_{t-1}, a scan over time per element
                        (parallel over the B * NH * DH elements), and from them the coefficients
                        of each step's gradient (COEFFICIENTS), so that the sequential backward
                        does multiply-adds only: no exponentials, no reciprocals on its chain

Both use the forward's own code (the product's operands and precision, `gate_activations` with
the same fast math), so the values match what the forward computed up to float32 summation order.
Shapes as in fwd.py; for a config with `bwd_batch_last`, pre and the coefficients are batch-last
instead, (T, 4 or COEFFICIENTS, NH, DH, Bp) with the batch padded to Bp, a multiple of
BATCH_BLOCK (the padding rows computed from zero inputs and a zero state: finite, unused).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...launch import cached_launch
from ...utils import cdiv, dot_precision, mma, new_empty
from .fwd import (BATCH_BLOCK, SLSTMConfig, fast_math, fast_rcp, fast_sigmoid, gate_activations,
                  load_h_prev, load_rt, padded_batch)

TIME_BLOCK = 16      # steps per program of slstm_pre_kernel
ELEMENT_BLOCK = 32   # elements per program (one warp) of slstm_coef_kernel: a scan is latency-bound, many warps hide it


@cached_launch
@triton.jit(do_not_specialize=["B", "T"])
def slstm_pre_kernel(
    wx_ptr, R_ptr, b_ptr, h0_ptr, h_ptr, pre_ptr, B, T,
    s_wx_b, s_wx_t, s_wx_g, s_wx_h,
    NH: tl.constexpr, DH: tl.constexpr, BB: tl.constexpr, BO: tl.constexpr, BT: tl.constexpr,
    DOT_PREC: tl.constexpr, BATCH_LAST: tl.constexpr,
):
    """pre[t] = wx[:, t] + b + h_{t-1} @ RT for BT steps of one (batch block, head), as the
    whole-head forward computes it (BO: the padded head size). grid: (batch blocks * NH, time
    blocks). h0 (B, NH, DH) is the initial h in the matmul dtype. BATCH_LAST: pre is
    (T, 4, NH, DH, Bp), the padding rows written too."""
    group = tl.program_id(0)
    head = group % NH
    rb = (group // NH) * BB + tl.arange(0, BB)
    mask_b = rb < B
    rb64 = rb.to(tl.int64)
    HD: tl.constexpr = NH * DH
    s_state = tl.cast(B, tl.int64) * HD
    cc = tl.arange(0, 4 * BO)
    g4 = cc // BO
    o4 = cc % BO
    mask4 = mask_b[:, None] & (o4 < DH)[None, :]
    bias = tl.load(b_ptr + g4 * HD + head * DH + o4, mask=o4 < DH, other=0.0).to(tl.float32)[None, :]
    RT = load_rt(R_ptr, head, 0, 0, NH, DH, BO, BO)
    if BATCH_LAST:
        Bp = tl.cdiv(B, BB) * BB
        s_state = tl.cast(Bp, tl.int64) * HD
        off_pre = (head * DH + o4[None, :]) * Bp + g4[None, :] * s_state + rb[:, None]
        mask_pre = (rb < Bp)[:, None] & (o4 < DH)[None, :]
    else:
        off_pre = rb[:, None] * HD + g4[None, :] * s_state + head * DH + o4[None, :]
        mask_pre = mask4
    off_wx = rb64[:, None] * s_wx_b + g4[None, :] * s_wx_g + head * s_wx_h + o4[None, :]
    k = tl.arange(0, BO)
    t0 = tl.program_id(1) * BT
    for t in range(t0, tl.minimum(t0 + BT, T)):
        t64 = tl.cast(t, tl.int64)
        acc = tl.load(wx_ptr + off_wx + t64 * s_wx_t, mask=mask4, other=0.0).to(tl.float32) + bias
        hp = load_h_prev(h_ptr, h0_ptr, t, T, rb64[:, None], mask_b[:, None], k[None, :],
                         (k < DH)[None, :], NH, DH, head, False)
        acc = mma(hp, RT, acc, DOT_PREC)
        tl.store(pre_ptr + t64 * (4 * s_state) + off_pre, acc, mask=mask_pre)


# Slots of the per-step coefficients (coef (T, COEFFICIENTS, B, NH, DH), float32) that turn one
# backward step of an element into multiply-adds (bwd_head.py):
#   A = o / n_t            dc += dh A
#   Q = A c_t / n_t        dn -= dh Q
#   P = A c_t (1 - o)      do~ = dh P
#   D = z i',  I = i'      di~ = dc D + dn I
#   F = i' (1 - z^2)       dz~ = dc F
#   G = c_{t-1} f' s,  H = n_{t-1} f' s  (s = sigmoid(-f~))   df~ = dc G + dn H
#   FG = f'                dc, dn *= FG  (the carry to step t - 1)
COEFFICIENTS = 9


@cached_launch
@triton.jit(do_not_specialize=["B", "T"])
def slstm_coef_kernel(pre_ptr, state0_ptr, coef_ptr, B, T, NH: tl.constexpr, DH: tl.constexpr,
                      BLOCK: tl.constexpr, FAST_MATH: tl.constexpr, BATCH_LAST: tl.constexpr, BB: tl.constexpr):
    """coef[t] (slots above) for BLOCK of the elements of a step, (B, NH, DH) flat or with
    BATCH_LAST (NH, DH, Bp) flat (Bp: B padded to a multiple of BB): the forward's (c, n, m) run
    again from pre and the initial state (4, B, NH, DH) float32 (slots h, c, n, m)."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    n_b = tl.cast(B, tl.int64) * (NH * DH)            # elements of a slot of the initial state
    if BATCH_LAST:
        Bp = tl.cdiv(B, BB) * BB
        n_el = tl.cast(Bp, tl.int64) * (NH * DH)
        mask = e < n_el
        st = (e % Bp) * (NH * DH) + e // Bp              # the element's place in the initial state
        mask_st = mask & (e % Bp < B)
    else:
        n_el = n_b
        mask = e < n_el
        st = e
        mask_st = mask
    c = tl.load(state0_ptr + n_b + st, mask=mask_st, other=0.0)
    n = tl.load(state0_ptr + 2 * n_b + st, mask=mask_st, other=0.0)
    m = tl.load(state0_ptr + 3 * n_b + st, mask=mask_st, other=0.0)
    # the loads do not depend on the carry: pipelined several steps ahead of the latency-bound scan
    for t in tl.range(0, T, num_stages=8):
        p = pre_ptr + tl.cast(t, tl.int64) * (4 * n_el) + e
        f_pre = tl.load(p + n_el, mask=mask, other=0.0)
        i_act, f_act, z_act, o_act, m = gate_activations(
            tl.load(p, mask=mask, other=0.0), f_pre, tl.load(p + 2 * n_el, mask=mask, other=0.0),
            tl.load(p + 3 * n_el, mask=mask, other=0.0), n, m, FAST_MATH)
        c_t = f_act * c + i_act * z_act
        n_t = f_act * n + i_act
        inv_n = fast_rcp(n_t, FAST_MATH)
        a = o_act * inv_n
        s = f_act * fast_sigmoid(-f_pre, FAST_MATH)
        q = coef_ptr + tl.cast(t, tl.int64) * (9 * n_el) + e   # 9 = COEFFICIENTS
        tl.store(q, a, mask=mask)
        tl.store(q + n_el, a * c_t * inv_n, mask=mask)
        tl.store(q + 2 * n_el, a * c_t * (1.0 - o_act), mask=mask)
        tl.store(q + 3 * n_el, z_act * i_act, mask=mask)
        tl.store(q + 4 * n_el, i_act, mask=mask)
        tl.store(q + 5 * n_el, i_act * (1.0 - z_act * z_act), mask=mask)
        tl.store(q + 6 * n_el, c * s, mask=mask)
        tl.store(q + 7 * n_el, n * s, mask=mask)
        tl.store(q + 8 * n_el, f_act, mask=mask)
        c = c_t
        n = n_t


def recompute_pre(wx, R, b, h, state0, cfg: SLSTMConfig) -> torch.Tensor:
    """pre (T, 4, B, NH, DH) float32, the gate pre-activations a whole-head forward of `cfg`
    (ncb == 1) computed: wx (B, T, 4, NH, DH) (last dim contiguous), R (4, NH, DH, DH) and b
    (4, NH, DH) contiguous in wx's dtype; h (B, T, NH, DH) the forward's output; state0
    (4, B, NH, DH) float32 contiguous."""
    B, T, _, NH, DH = wx.shape
    dev, dtype = wx.device, wx.dtype
    if cfg.ncb != 1:
        raise ValueError(f"recompute_pre: whole-head configs only (ncb == 1), got {cfg}")
    shape = (T, 4, NH, DH, padded_batch(B)) if cfg.bwd_batch_last else (T, 4, B, NH, DH)
    pre = new_empty(shape, torch.float32, dev)
    h0 = state0[0].to(dtype)   # the forward multiplies the initial h in the matmul dtype
    slstm_pre_kernel[(cdiv(B, BATCH_BLOCK) * NH, cdiv(T, TIME_BLOCK))](
        wx, R, b, h0, h, pre, B, T, wx.stride(0), wx.stride(1), wx.stride(2), wx.stride(3),
        NH=NH, DH=DH, BB=BATCH_BLOCK, BO=cfg.bo, BT=TIME_BLOCK, DOT_PREC=dot_precision(dtype, dev),
        BATCH_LAST=cfg.bwd_batch_last, num_warps=4 if cfg.bo <= 32 else 8)   # the default whole-head forward's
    return pre


def step_coefficients(pre: torch.Tensor, state0: torch.Tensor, batch_last: bool = False) -> torch.Tensor:
    """coef (T, COEFFICIENTS, B, NH, DH) float32 from pre (T, 4, B, NH, DH) float32 and the
    initial state (4, B, NH, DH) float32, both contiguous; `batch_last`: pre and coef are
    (T, ., NH, DH, Bp)."""
    _, B, NH, DH = state0.shape
    T, el = pre.shape[0], pre[0, 0].numel()
    coef = new_empty((T, COEFFICIENTS) + tuple(pre.shape[2:]), torch.float32, pre.device)
    block = ELEMENT_BLOCK if pre.is_cuda else 1024     # the interpreter: few wide programs
    slstm_coef_kernel[(cdiv(el, block),)](
        pre, state0, coef, B, T, NH=NH, DH=DH, BLOCK=block, FAST_MATH=fast_math(pre.device),
        BATCH_LAST=batch_last, BB=BATCH_BLOCK, num_warps=1)
    return coef


def slstm_step_coefficients(wx, R, b, h, state0, cfg: SLSTMConfig) -> torch.Tensor:
    """`step_coefficients` of `recompute_pre`: what the whole-head backward reads."""
    return step_coefficients(recompute_pre(wx, R, b, h, state0, cfg), state0, cfg.bwd_batch_last)
