"""sLSTM backward, first stage for whole-head configs: what the forward did not save, recomputed.

In whole-head mode (one program per head, heads up to 128) the forward runs on one SM per
(batch block, head), and storing the per-step tensors the backward reads, pre (T, 4, B, NH, DH)
and cnm (T, 3, B, NH, DH) float32, costs that one SM most of a step's time (28 bytes per element
and step through one SM's store path). So the training forward saves nothing but its output h
(and keeps wx), and the backward rebuilds both here, on every SM:

    slstm_pre_kernel    pre_t = wx_t + b + h_{t-1} R^T, the forward's fused-gate product, with
                        h_{t-1} read from the output (no recurrence left: parallel over time blocks)
    slstm_cnm_kernel    (c, n, m)_t from pre_t and (c, n, m)_{t-1}: elementwise, a scan over time
                        per element, parallel over the B * NH * DH elements

Both use the forward's own code (the product's operands and precision, `gate_activations` with
the same fast math), so the values match what the forward computed up to float32 summation order.
Shapes as in fwd.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...launch import cached_launch
from ...utils import cdiv, dot_precision, mma, new_empty
from .fwd import BATCH_BLOCK, SLSTMConfig, fast_math, gate_activations, load_h_prev, load_rt

TIME_BLOCK = 16      # steps per program of slstm_pre_kernel
ELEMENT_BLOCK = 128  # elements per program of slstm_cnm_kernel


@cached_launch
@triton.jit(do_not_specialize=["B", "T"])
def slstm_pre_kernel(
    wx_ptr, R_ptr, b_ptr, h0_ptr, h_ptr, pre_ptr, B, T,
    s_wx_b, s_wx_t, s_wx_g, s_wx_h,
    NH: tl.constexpr, DH: tl.constexpr, BB: tl.constexpr, BO: tl.constexpr, BT: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """pre[t] = wx[:, t] + b + h_{t-1} @ RT for BT steps of one (batch block, head), as the
    whole-head forward computes it (BO: the padded head size). grid: (batch blocks * NH, time
    blocks). h0 (B, NH, DH) is the initial h in the matmul dtype."""
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
    off_pre = rb[:, None] * HD + g4[None, :] * s_state + head * DH + o4[None, :]
    off_wx = rb64[:, None] * s_wx_b + g4[None, :] * s_wx_g + head * s_wx_h + o4[None, :]
    k = tl.arange(0, BO)
    t0 = tl.program_id(1) * BT
    for t in range(t0, tl.minimum(t0 + BT, T)):
        t64 = tl.cast(t, tl.int64)
        acc = tl.load(wx_ptr + off_wx + t64 * s_wx_t, mask=mask4, other=0.0).to(tl.float32) + bias
        hp = load_h_prev(h_ptr, h0_ptr, t, T, rb64[:, None], mask_b[:, None], k[None, :],
                         (k < DH)[None, :], NH, DH, head, False)
        acc = mma(hp, RT, acc, DOT_PREC)
        tl.store(pre_ptr + t64 * (4 * s_state) + off_pre, acc, mask=mask4)


@cached_launch
@triton.jit(do_not_specialize=["B", "T"])
def slstm_cnm_kernel(pre_ptr, state0_ptr, cnm_ptr, B, T, NH: tl.constexpr, DH: tl.constexpr,
                     BLOCK: tl.constexpr, FAST_MATH: tl.constexpr):
    """cnm[t] = (c, n, m) after step t for BLOCK of the B * NH * DH elements, from pre and the
    initial state (4, B, NH, DH) float32 (slots h, c, n, m)."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    n_el = tl.cast(B, tl.int64) * (NH * DH)
    mask = e < n_el
    c = tl.load(state0_ptr + n_el + e, mask=mask, other=0.0)
    n = tl.load(state0_ptr + 2 * n_el + e, mask=mask, other=0.0)
    m = tl.load(state0_ptr + 3 * n_el + e, mask=mask, other=0.0)
    for t in tl.range(0, T, num_stages=3):   # the loads do not depend on the carry: pipelined
        p = pre_ptr + tl.cast(t, tl.int64) * (4 * n_el) + e
        i_act, f_act, z_act, _o, m = gate_activations(
            tl.load(p, mask=mask, other=0.0), tl.load(p + n_el, mask=mask, other=0.0),
            tl.load(p + 2 * n_el, mask=mask, other=0.0), tl.load(p + 3 * n_el, mask=mask, other=0.0),
            n, m, FAST_MATH)
        c = f_act * c + i_act * z_act
        n = f_act * n + i_act
        q = cnm_ptr + tl.cast(t, tl.int64) * (3 * n_el) + e
        tl.store(q, c, mask=mask)
        tl.store(q + n_el, n, mask=mask)
        tl.store(q + 2 * n_el, m, mask=mask)


def slstm_recompute(wx, R, b, h, state0, cfg: SLSTMConfig):
    """pre (T, 4, B, NH, DH) and cnm (T, 3, B, NH, DH), float32, as the whole-head forward of
    `cfg` (ncb == 1) would have saved them. wx (B, T, 4, NH, DH) (last dim contiguous), R
    (4, NH, DH, DH) and b (4, NH, DH) contiguous in wx's dtype; h (B, T, NH, DH) the forward's
    output; state0 (4, B, NH, DH) float32 contiguous."""
    B, T, _, NH, DH = wx.shape
    dev, dtype = wx.device, wx.dtype
    if cfg.ncb != 1:
        raise ValueError(f"slstm_recompute: whole-head configs only (ncb == 1), got {cfg}")
    pre = new_empty((T, 4, B, NH, DH), torch.float32, dev)
    cnm = new_empty((T, 3, B, NH, DH), torch.float32, dev)
    h0 = state0[0].to(dtype)   # the forward multiplies the initial h in the matmul dtype
    slstm_pre_kernel[(cdiv(B, BATCH_BLOCK) * NH, cdiv(T, TIME_BLOCK))](
        wx, R, b, h0, h, pre, B, T, wx.stride(0), wx.stride(1), wx.stride(2), wx.stride(3),
        NH=NH, DH=DH, BB=BATCH_BLOCK, BO=cfg.bo, BT=TIME_BLOCK, DOT_PREC=dot_precision(dtype, dev),
        num_warps=cfg.num_warps)
    slstm_cnm_kernel[(cdiv(B * NH * DH, ELEMENT_BLOCK),)](
        pre, state0, cnm, B, T, NH=NH, DH=DH, BLOCK=ELEMENT_BLOCK, FAST_MATH=fast_math(dev),
        num_warps=4)
    return pre, cnm
