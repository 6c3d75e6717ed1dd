"""sLSTM backward of whole heads (heads up to 128, one program per (batch block, head)): the
sequential chain from precomputed step coefficients, then dR/db (dr_db.py).

The step is bwd.py's. Everything of a step that does not depend on dh (the activations, c_t,
1 / n_t, and their products) comes precomputed as nine coefficients per element and step
(recompute.py, COEFFICIENTS), so the chain is the recurrent term and a few multiply-adds
(`head_step`). Two kernels form the recurrent term differently:

slstm_bwd_head_kernel (the default): tiles (BB, BO), the term as sum_g dpre_g @ R_g with
R_g (BO, BO) held on chip. With M = BB = 16 the sm_90 code is a chain of warp-level products
over N = BO split between the warps, so every warp needs the step's whole dpre as its left
operand: each gate's tile goes through shared memory (a layout conversion, two barriers) every
step, 20 barriers a step at DH = 128.

slstm_bwd_head_batch_last_kernel (config bwd_batch_last): every tile transposed, (BO, BB), and
the term as R_stack^T @ dpre_stack^T, R_stack^T (BO, 4 BO) the four R_g side by side, the
four gates' dpre^T stacked into one (4 BO, BB) operand: M = BO, which the sm_90 code runs as
one chain of warpgroup products reading R from shared memory (3 barriers a step at DH = 128).
For vector loads and stores in that orientation, its per-step tensors are batch-last,
(T, ., NH, DH, Bp) with the batch padded to Bp (padded_batch, a multiple of BATCH_BLOCK, so
no batch mask): the coefficients (recompute.py writes them so), dh (a float32 copy made here,
the last state's dh added to its last step, so the kernel reads no state-layout tile inside the
loop) and dpre (copied into dwx's layout after).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...launch import cached_launch
from ...utils import cdiv, dot_precision, mma, new_empty
from .dr_db import slstm_dr_db
from .fwd import BATCH_BLOCK, SLSTMConfig, padded_batch
from .fwd_head import batch_last_tiles


@triton.jit
def load_r_gate(R_ptr, g: tl.constexpr, head, NH: tl.constexpr, DH: tl.constexpr, BO: tl.constexpr):
    """R_g of the head as (BO, BO), [o, i] = R[g, head, o, i] (zero outside DH)."""
    o = tl.arange(0, BO)[:, None]
    i = tl.arange(0, BO)[None, :]
    return tl.load(R_ptr + g * (NH * DH * DH) + head * DH * DH + o * DH + i,
                   mask=(o < DH) & (i < DH), other=0.0)


@triton.jit
def load_r_stack_t(R_ptr, head, NH: tl.constexpr, DH: tl.constexpr, BO: tl.constexpr):
    """The head's four R_g side by side, transposed: (BO, 4 BO), [i, g BO + o] = R[g, head, o, i]
    (zero outside DH)."""
    i = tl.arange(0, BO)[:, None]
    c = tl.arange(0, 4 * BO)[None, :]
    return tl.load(R_ptr + (c // BO) * (NH * DH * DH) + head * DH * DH + (c % BO) * DH + i,
                   mask=(i < DH) & (c % BO < DH), other=0.0)


@triton.jit
def stack_gates(g_i, g_f, g_z, g_o):
    """Four (BO, BB) gate tiles as one (BO, BB, 2, 2) tile: [o, b, v, u] is gate 2 v + u."""
    return tl.join(tl.join(g_i, g_z), tl.join(g_f, g_o))


@triton.jit
def recurrent_head(p_i, p_f, p_z, p_o, R_i, R_f, R_z, R_o, DOT_PREC: tl.constexpr):
    """sum_g dpre_g @ R_g (BB, BO) float32. (Written as four products into one accumulator or as
    four sums, the sm_90 code is the same chain: the compiler merges them.)"""
    acc = mma(p_i, R_i, tl.zeros(p_i.shape, dtype=tl.float32), DOT_PREC)
    acc = mma(p_f, R_f, acc, DOT_PREC)
    acc = mma(p_z, R_z, acc, DOT_PREC)
    return mma(p_o, R_o, acc, DOT_PREC)


@triton.jit
def recurrent_head_t(p4, R_t, DOT_PREC: tl.constexpr):
    """The recurrent term transposed, (BO, BB) float32: R_stack^T (BO, 4 BO) (load_r_stack_t)
    times the stacked dpre^T, p4 (BO, BB, 2, 2) (stack_gates) as (4 BO, BB)."""
    BO: tl.constexpr = p4.shape[0]
    BB: tl.constexpr = p4.shape[1]
    p = tl.reshape(tl.permute(p4, (2, 3, 0, 1)), (4 * BO, BB))     # rows (gate, o)
    return mma(R_t, p, tl.zeros((BO, BB), dtype=tl.float32), DOT_PREC)


@triton.jit
def load_coefficients(coef_ptr, t, s_slot, off, mask):
    """The nine coefficient tiles of step t (recompute.py, COEFFICIENTS); s_slot: the elements
    of one slot of a step."""
    q = coef_ptr + tl.cast(t, tl.int64) * (9 * s_slot) + off
    return (tl.load(q, mask=mask, other=0.0), tl.load(q + s_slot, mask=mask, other=0.0),
            tl.load(q + 2 * s_slot, mask=mask, other=0.0), tl.load(q + 3 * s_slot, mask=mask, other=0.0),
            tl.load(q + 4 * s_slot, mask=mask, other=0.0), tl.load(q + 5 * s_slot, mask=mask, other=0.0),
            tl.load(q + 6 * s_slot, mask=mask, other=0.0), tl.load(q + 7 * s_slot, mask=mask, other=0.0),
            tl.load(q + 8 * s_slot, mask=mask, other=0.0))


@triton.jit
def head_step(dh, dc, dn, a, q, p, d, i_act, f_z, g_c, g_n, f_act):
    """One step from its coefficients (recompute.py): dh (the output's gradient plus the
    recurrent term) and the carry (dc, dn) -> the carry to step t - 1 and the gate gradients
    (g_i, g_f, g_z, g_o), float32."""
    dc = dc + dh * a
    dn = dn - dh * q
    g_o = dh * p
    g_i = dc * d + dn * i_act
    g_z = dc * f_z
    g_f = dc * g_c + dn * g_n
    return dc * f_act, dn * f_act, g_i, g_f, g_z, g_o


@cached_launch
@triton.jit(do_not_specialize=["B", "T"])
def slstm_bwd_head_kernel(
    R_ptr, coef_ptr, dh_ptr, dstate_in_ptr, dwx_ptr, dstate_out_ptr, B, T,
    NH: tl.constexpr, DH: tl.constexpr, BB: tl.constexpr, BO: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """The whole backward of one (batch block, head), t = T - 1 down to 0, from the step
    coefficients coef (T, 9, B, NH, DH) float32 (recompute.py): per step the recurrent term
    sum_g dpre_g,t+1 @ R_g (four products, R held on chip) and multiply-adds.

    dh (B, T, NH, DH): gradient of the output h. dstate_in (4, B, NH, DH) float32: gradient of
    the last state (its dh slot is added at t == T - 1). dwx (B, T, 4, NH, DH) output.
    dstate_out (4, B, NH, DH) float32: the gradient of the initial state (dh, dc, dn, 0)."""
    group = tl.program_id(0)
    head = group % NH
    rb = (group // NH) * BB + tl.arange(0, BB)
    mask_b = rb < B
    rb64 = rb.to(tl.int64)
    cols = tl.arange(0, BO)
    mask = mask_b[:, None] & (cols < DH)[None, :]
    dtype = R_ptr.dtype.element_ty
    HD: tl.constexpr = NH * DH
    T64 = tl.cast(T, tl.int64)
    s_state = tl.cast(B, tl.int64) * HD
    off_st = rb[:, None] * HD + head * DH + cols[None, :]
    off_dh = rb64[:, None] * (T64 * HD) + head * DH + cols[None, :]
    off_dwx = rb64[:, None] * (T64 * 4 * HD) + head * DH + cols[None, :]

    R_i = load_r_gate(R_ptr, 0, head, NH, DH, BO)
    R_f = load_r_gate(R_ptr, 1, head, NH, DH, BO)
    R_z = load_r_gate(R_ptr, 2, head, NH, DH, BO)
    R_o = load_r_gate(R_ptr, 3, head, NH, DH, BO)
    dc = tl.load(dstate_in_ptr + s_state + off_st, mask=mask, other=0.0)
    dn = tl.load(dstate_in_ptr + 2 * s_state + off_st, mask=mask, other=0.0)
    dh_last = tl.load(dstate_in_ptr + off_st, mask=mask, other=0.0)
    # dpre_{t+1} of the four gates (zero before the first step), in the matmul dtype
    p_i = tl.zeros((BB, BO), dtype=dtype)
    p_f = tl.zeros((BB, BO), dtype=dtype)
    p_z = tl.zeros((BB, BO), dtype=dtype)
    p_o = tl.zeros((BB, BO), dtype=dtype)

    # the step's inputs do not depend on the chain: software-pipelined ahead of it
    for k in tl.range(0, T, num_stages=2):
        t = T - 1 - k
        a, q, p, d, i_act, f_z, g_c, g_n, f_act = load_coefficients(coef_ptr, t, s_state, off_st, mask)
        dh_out = tl.load(dh_ptr + off_dh + tl.cast(t, tl.int64) * HD, mask=mask, other=0.0)

        dh = dh_out.to(tl.float32) + recurrent_head(p_i, p_f, p_z, p_o, R_i, R_f, R_z, R_o, DOT_PREC)
        dh += tl.where(t == T - 1, dh_last, 0.0)
        dc, dn, g_i, g_f, g_z, g_o = head_step(dh, dc, dn, a, q, p, d, i_act, f_z, g_c, g_n, f_act)

        p_i, p_f, p_z, p_o = g_i.to(dtype), g_f.to(dtype), g_z.to(dtype), g_o.to(dtype)
        w = dwx_ptr + off_dwx + tl.cast(t, tl.int64) * (4 * HD)
        tl.store(w, p_i, mask=mask)
        tl.store(w + HD, p_f, mask=mask)
        tl.store(w + 2 * HD, p_z, mask=mask)
        tl.store(w + 3 * HD, p_o, mask=mask)

    # gradient of the initial state: (R^T dpre_0, dc, dn, 0)
    dh0 = recurrent_head(p_i, p_f, p_z, p_o, R_i, R_f, R_z, R_o, DOT_PREC)
    tl.store(dstate_out_ptr + off_st, dh0, mask=mask)
    tl.store(dstate_out_ptr + s_state + off_st, dc, mask=mask)
    tl.store(dstate_out_ptr + 2 * s_state + off_st, dn, mask=mask)
    tl.store(dstate_out_ptr + 3 * s_state + off_st, tl.zeros((BB, BO), dtype=tl.float32), mask=mask)


@cached_launch
@triton.jit(do_not_specialize=["B", "T"])
def slstm_bwd_head_batch_last_kernel(
    R_ptr, coef_ptr, dh_ptr, dstate_in_ptr, dpre_ptr, dstate_out_ptr, B, T,
    NH: tl.constexpr, DH: tl.constexpr, BB: tl.constexpr, BO: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """slstm_bwd_head_kernel's chain with (BO, BB) tiles and batch-last per-step tensors (the
    module docstring), Bp = B padded to a multiple of BB: coef (T, 9, NH, DH, Bp) float32, dh
    (T, NH, DH, Bp) float32 with the last state's dh added at T - 1 (dstate_in's dh slot is not
    read), dpre (T, 4, NH, DH, Bp) output in R's dtype. dstate_in (its dc, dn slots) and
    dstate_out (4, B, NH, DH) float32 as in slstm_bwd_head_kernel."""
    head, rb, off_st, mask, off_step, mask_step, s_state, s_slot, Bp = batch_last_tiles(B, NH, DH, BB, BO)
    dtype = R_ptr.dtype.element_ty
    gate4 = 2 * tl.arange(0, 2)[None, None, :, None] + tl.arange(0, 2)[None, None, None, :]
    off_dpre4 = off_step[:, :, None, None] + gate4 * s_slot    # stack_gates' (BO, BB, 2, 2) order
    mask4 = tl.broadcast_to(mask_step[:, :, None, None], (BO, BB, 2, 2))

    R_t = load_r_stack_t(R_ptr, head, NH, DH, BO)
    dc = tl.load(dstate_in_ptr + s_state + off_st, mask=mask, other=0.0)
    dn = tl.load(dstate_in_ptr + 2 * s_state + off_st, mask=mask, other=0.0)
    p4 = tl.zeros((BO, BB, 2, 2), dtype=dtype)       # dpre_{t+1} stacked (zero before the first step)

    # the step's inputs do not depend on the chain: software-pipelined ahead of it
    for k in tl.range(0, T, num_stages=2):
        t = T - 1 - k
        a, q, p, d, i_act, f_z, g_c, g_n, f_act = load_coefficients(coef_ptr, t, s_slot, off_step, mask_step)
        dh = tl.load(dh_ptr + off_step + tl.cast(t, tl.int64) * s_slot, mask=mask_step, other=0.0)

        dh += recurrent_head_t(p4, R_t, DOT_PREC)
        dc, dn, g_i, g_f, g_z, g_o = head_step(dh, dc, dn, a, q, p, d, i_act, f_z, g_c, g_n, f_act)

        p4 = stack_gates(g_i.to(dtype), g_f.to(dtype), g_z.to(dtype), g_o.to(dtype))
        # one store of the four gates: one layout conversion (four would take two barriers each)
        tl.store(dpre_ptr + tl.cast(t, tl.int64) * (4 * s_slot) + off_dpre4, p4, mask=mask4)

    # gradient of the initial state: (R^T dpre_0, dc, dn, 0)
    tl.store(dstate_out_ptr + off_st, recurrent_head_t(p4, R_t, DOT_PREC), mask=mask)
    tl.store(dstate_out_ptr + s_state + off_st, dc, mask=mask)
    tl.store(dstate_out_ptr + 2 * s_state + off_st, dn, mask=mask)
    tl.store(dstate_out_ptr + 3 * s_state + off_st, tl.zeros((BO, BB), dtype=tl.float32), mask=mask)


def slstm_bwd_head(dh, dlast, R, h, state0, coef, cfg: SLSTMConfig):
    """Gradients of the sLSTM, whole-head configs (cfg.ncb == 1), from the step coefficients
    (recompute.py, in the layout of cfg.bwd_batch_last). Arguments and results as bwd.py's
    `slstm_bwd`."""
    B, T, NH, DH = h.shape
    dev, dtype = h.device, h.dtype
    if cfg.ncb != 1:
        raise ValueError(f"slstm_bwd_head: whole-head configs only (ncb == 1), got {cfg}")
    dstate0 = new_empty((4, B, NH, DH), torch.float32, dev)
    grid = (NH * cdiv(B, BATCH_BLOCK),)
    meta = dict(NH=NH, DH=DH, BB=BATCH_BLOCK, BO=cfg.bo, DOT_PREC=dot_precision(dtype, dev),
                num_warps=cfg.bwd_num_warps)
    if cfg.bwd_batch_last:
        Bp = padded_batch(B)
        dh_t = dh.new_zeros((T, NH, DH, Bp), dtype=torch.float32)
        dh_t[..., :B] = dh.permute(1, 2, 3, 0)
        dh_t[T - 1, ..., :B] += dlast[0].permute(1, 2, 0)
        dpre = new_empty((T, 4, NH, DH, Bp), dtype, dev)
        slstm_bwd_head_batch_last_kernel[grid](R, coef, dh_t, dlast, dpre, dstate0, B, T, **meta)
        dwx = dpre[..., :B].permute(4, 0, 1, 2, 3).contiguous()
    else:
        dwx = new_empty((B, T, 4, NH, DH), dtype, dev)
        slstm_bwd_head_kernel[grid](R, coef, dh, dlast, dwx, dstate0, B, T, **meta)
    dR, db = slstm_dr_db(dwx, h, state0)
    return dwx, dR, db, dstate0
