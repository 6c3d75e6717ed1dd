"""sLSTM backward: Triton kernels that run time in reverse, then a parallel dR/db reduction.

Shapes as in fwd.py. Per step t (float32, one element; dh includes the recurrent term
R^T dpre_{t+1}):
    recompute  i', f', z = tanh(z~), o = sigmoid(o~), m_t from pre_t and (n, m)_{t-1};
               c_t = f' c_{t-1} + i' z,  n_t = f' n_{t-1} + i'
    dc += dh o / n_t;   dn -= dh o c_t / n_t^2
    do~ = dh c_t / n_t o (1 - o);  di~ = (dc z + dn) i';  dz~ = dc i' (1 - z^2)
    df~ = (dc c_{t-1} + dn n_{t-1}) f' sigmoid(-f~)
    dc_{t-1} = dc f';  dn_{t-1} = dn f'          (m carries no gradient)
The gate gradients dpre_t are dwx[:, t]. After step 0, dh_init = R^T dpre_0.

Whole heads (NCB == 1) run bwd_head.py's kernels (the step from precomputed coefficients).

Split heads (NCB > 1), slstm_bwd_kernel: the forward's program decomposition; a program owns BB
batch rows and BO columns of one head, reads pre (T, 4, B, NH, DH) and cnm (T, 3, B, NH, DH)
saved by the forward as fused (BB, 4 * BO) tiles, recomputes the step, and computes dpre for its
columns. The recurrent term (R^T dpre_{t+1})[own columns] needs dpre of the whole head; instead of
reading all of it (4 * DH values a row, in every program), each program multiplies its own dpre
(BB, 4 * BO) by its rows of R (4 * BO, DH), stores that share for every input of the head into a
partials buffer (2 slots by the step's parity, in dpre's dtype), and after a per-group barrier
(or one launch per step, see fwd.py) sums the NCB shares of its own columns: a reduce-scatter,
DH values a row read instead of 4 * DH, and a product with K = 4 * BO (short tensor-core chains).

dR_g = sum_{b,t} dpre_g[b, t]^T h_{t-1}[b] and db_g = sum_{b,t} dpre_g[b, t] are not on the
sequential path: dr_db.py computes them afterwards from dwx and h as a product over the B*T
rows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...launch import cached_launch
from ...utils import cdiv, new_empty
from .dr_db import slstm_dr_db
from .fwd import (BATCH_BLOCK, SLSTMConfig, check_barrier, cooperative_launch_kwargs,
                  dot_precision, fast_math, fast_rcp, fast_sigmoid, gate_activations, group_arrive,
                  group_wait, mask_if, mma, split_gates, use_sync)


@triton.jit
def load_r_own(R_ptr, head, col0, i0, NH: tl.constexpr, DH: tl.constexpr, BO: tl.constexpr, N: tl.constexpr):
    """The own columns' rows of R for the inputs i0 <= i < i0 + N, transposed: (N, 4 * BO),
    [i, g * BO + j] = R[g, head, col0 + j, i0 + i] (zero for i0 + i >= DH)."""
    i = i0 + tl.arange(0, N)[:, None]
    c = tl.arange(0, 4 * BO)[None, :]
    return tl.load(R_ptr + (c // BO) * (NH * DH * DH) + head * DH * DH + (col0 + c % BO) * DH + i,
                   mask=(i < DH) & (col0 + c % BO < DH), other=0.0)


@triton.jit
def store_partial(part_slot, dp4, RpT, i0, rb64, mask_b, NH: tl.constexpr, DH: tl.constexpr, N: tl.constexpr,
                  DOT_PREC: tl.constexpr):
    """This program's share of R^T dpre for the inputs i0 <= i < i0 + N: RpT (N, 4 * BO) @ its
    dpre transposed (4 * BO, BB), stored in dpre's dtype into its partial slot part_slot
    (B, NH, DH) (head offset applied). R on the left: where N is a multiple of 64 the sm_90 code
    is a warpgroup product with R from shared memory (with R on the right, M = BB = 16, Triton
    kept R in registers and spilled)."""
    HD: tl.constexpr = NH * DH
    part = mma(RpT, tl.trans(dp4), tl.zeros((N, dp4.shape[0]), dtype=tl.float32), DOT_PREC)   # (N, BB)
    i = i0 + tl.arange(0, N)
    tl.store(part_slot + rb64[None, :] * HD + i[:, None], part.to(dp4.dtype), mask=mask_b[None, :] & (i < DH)[:, None])


@triton.jit
def sum_partials(part_ptr, t, B, rb64, mask_b, head, col0, NH: tl.constexpr, DH: tl.constexpr, BO: tl.constexpr,
                 NCB: tl.constexpr):
    """(R^T dpre_t)[rows, own columns], float32 (BB, BO): the sum of the head's NCB partials of
    step t in part (2, NCB, B, NH, DH) (slot t % 2), NCB independent (BB, BO) loads (unrolled:
    one tile of all of them would take hundreds of registers of addresses). Bypasses L1: other
    SMs wrote them."""
    HD: tl.constexpr = NH * DH
    s_part = tl.cast(B, tl.int64) * HD
    j = col0 + tl.arange(0, BO)[None, :]
    mask = mask_b[:, None] & (j < DH)
    p = part_ptr + tl.cast(t % 2, tl.int64) * (NCB * s_part) + rb64[:, None] * HD + head * DH + j
    acc = tl.load(p, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)
    for q in tl.static_range(1, NCB):
        acc += tl.load(p + q * s_part, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)
    return acc


@triton.jit
def join_gates(g_i, g_f, g_z, g_o, BB: tl.constexpr, BO: tl.constexpr):
    """Four (BB, BO) gate tiles -> (BB, 4 * BO) with columns (gate, j); inverse of split_gates."""
    x = tl.join(tl.join(g_i, g_z), tl.join(g_f, g_o))  # (b, j, g // 2, g % 2)
    return tl.reshape(tl.permute(x, (0, 2, 3, 1)), (BB, 4 * BO))


@triton.jit
def load_step_inputs(pre_ptr, cnm_ptr, state0_ptr, dh_ptr, t, s_state, off4, mask4, off_dh, mask,
                     HD: tl.constexpr, BO: tl.constexpr):
    """pre_t (BB, 4 * BO) gates fused, (c, n, m)_{t-1} as a (BB, 4 * BO) tile of slots c, n, m
    and an empty fourth (the initial state's slots at t == 0), and dh_t (BB, BO), as stored."""
    pre4 = tl.load(pre_ptr + tl.cast(t, tl.int64) * (4 * s_state) + off4, mask=mask4, other=0.0)
    base = tl.where(t > 0, cnm_ptr + tl.cast(t - 1, tl.int64) * (3 * s_state), state0_ptr + s_state)
    slot = tl.arange(0, 4 * BO)[None, :] // BO
    cnm4 = tl.load(base + off4, mask=mask4 & (slot < 3), other=0.0)
    dh = tl.load(dh_ptr + off_dh + tl.cast(t, tl.int64) * HD, mask=mask, other=0.0)
    return pre4, cnm4, dh


@cached_launch
@triton.jit(do_not_specialize=["B", "T", "t_lo", "t_hi"])
def slstm_bwd_kernel(
    R_ptr, pre_ptr, cnm_ptr, state0_ptr, dh_ptr, dstate_in_ptr, dwx_ptr, dstate_out_ptr, part_ptr, sync_ptr,
    B, T, t_lo, t_hi,
    NH: tl.constexpr, DH: tl.constexpr, BB: tl.constexpr, BO: tl.constexpr, NCB: tl.constexpr,
    KA: tl.constexpr, KB: tl.constexpr, BK: tl.constexpr,
    RESIDENT: tl.constexpr, SYNC: tl.constexpr, FINALIZE: tl.constexpr, DOT_PREC: tl.constexpr,
    FAST_MATH: tl.constexpr,
):
    """Steps t_hi - 1 down to t_lo of the backward for one (batch block, head, column block).

    dh (B, T, NH, DH): gradient of the output h. dstate_in (4, B, NH, DH) float32: its (dc, dn)
    slots are the carry before step t_hi - 1; its dh slot (the gradient of the last state's h) is
    added at t == T - 1. dwx (B, T, 4, NH, DH) output. dstate_out (4, B, NH, DH) float32: the
    (dc, dn) carry after step t_lo and, with FINALIZE (t_lo == 0), the gradient of the initial
    state (dh, dc, dn, 0). Either buffer may be the same (each program touches its own tile).
    part (2, NCB, B, NH, DH) in dpre's dtype: each program's share of R^T dpre of a step, slot by
    the step's parity.
    """
    pid = tl.program_id(0)
    cb = pid % NCB
    group = pid // NCB
    head = group % NH
    rb = (group // NH) * BB + tl.arange(0, BB)
    mask_b = rb < B
    rb64 = rb.to(tl.int64)
    cols = cb * BO + tl.arange(0, BO)
    mask_c = cols < DH
    mask = mask_b[:, None] & mask_c[None, :]
    dtype = R_ptr.dtype.element_ty
    HD: tl.constexpr = NH * DH
    T64 = tl.cast(T, tl.int64)
    s_state = tl.cast(B, tl.int64) * HD
    off_st = rb[:, None] * HD + head * DH + cols[None, :]
    off_dh = rb64[:, None] * (T64 * HD) + head * DH + cols[None, :]

    col0 = cb * BO
    R_a, R_b = 0, 0  # placeholders when R is streamed
    if RESIDENT:  # the own columns' rows of R, inputs as two blocks [0, KA) and [KA, KA + KB)
        R_a = load_r_own(R_ptr, head, col0, 0, NH, DH, BO, KA)
        if KB > 0:
            R_b = load_r_own(R_ptr, head, col0, KA, NH, DH, BO, KB)
    part_own = part_ptr + cb * s_state + head * DH   # a partial has the state's (B, NH, DH) shape

    dc = tl.load(dstate_in_ptr + s_state + off_st, mask=mask, other=0.0)
    dn = tl.load(dstate_in_ptr + 2 * s_state + off_st, mask=mask, other=0.0)
    dh_last = tl.load(dstate_in_ptr + off_st, mask=mask_if(mask, t_hi == T), other=0.0)
    # fused-gate tiles (columns gate * BO + j), as in the forward: pre, (c, n, m), dwx
    cc = tl.arange(0, 4 * BO)
    o4 = col0 + cc % BO
    mask4 = mask_b[:, None] & (o4 < DH)[None, :]
    off4 = rb[:, None] * HD + (cc // BO)[None, :] * s_state + head * DH + o4[None, :]
    off_dwx4 = rb64[:, None] * (T64 * 4 * HD) + (cc // BO)[None, :] * HD + head * DH + o4[None, :]
    # inputs of a step are loaded one step ahead
    nx_pre, nx_cnm, nx_dh = load_step_inputs(pre_ptr, cnm_ptr, state0_ptr, dh_ptr, t_hi - 1, s_state,
                                             off4, mask_if(mask4, t_hi > t_lo), off_dh,
                                             mask_if(mask, t_hi > t_lo), HD, BO)
    for k in tl.range(0, t_hi - t_lo, num_stages=1):
        t = t_hi - 1 - k
        pre4, cnm4, dh_out = nx_pre, nx_cnm, nx_dh
        nx_pre, nx_cnm, nx_dh = load_step_inputs(pre_ptr, cnm_ptr, state0_ptr, dh_ptr, t - 1, s_state,
                                                 off4, mask_if(mask4, t - 1 >= t_lo), off_dh,
                                                 mask_if(mask, t - 1 >= t_lo), HD, BO)

        # recurrent gradient (R^T dpre_{t+1})[own columns]: the sum of the programs' partials
        dh = dh_out.to(tl.float32) + tl.where(t == T - 1, dh_last, 0.0)
        if SYNC:
            group_wait(sync_ptr + group, k * NCB)
        if t + 1 < T:
            dh += sum_partials(part_ptr, t + 1, B, rb64, mask_b, head, col0, NH, DH, BO, NCB)

        pre_i, pre_f, pre_z, pre_o = split_gates(pre4, BB, BO)
        c_p, n_p, m_p, _unused = split_gates(cnm4, BB, BO)
        i_act, f_act, z_act, o_act, m_new = gate_activations(pre_i, pre_f, pre_z, pre_o, n_p, m_p,
                                                             FAST_MATH)
        c_t = f_act * c_p + i_act * z_act
        inv_n = fast_rcp(f_act * n_p + i_act, FAST_MATH)
        dh_o = dh * o_act * inv_n
        dc = dc + dh_o
        dn = dn - dh_o * c_t * inv_n
        g_o = dh_o * c_t * (1.0 - o_act)
        g_i = (dc * z_act + dn) * i_act
        g_z = dc * i_act * (1.0 - z_act * z_act)
        g_f = (dc * c_p + dn * n_p) * f_act * fast_sigmoid(-pre_f, FAST_MATH)
        dc = dc * f_act
        dn = dn * f_act

        dp4 = join_gates(g_i, g_f, g_z, g_o, BB, BO).to(dtype)
        # this program's share of R^T dpre_t for every input of the head
        part_slot = part_own + tl.cast(t % 2, tl.int64) * (NCB * s_state)
        if RESIDENT:
            store_partial(part_slot, dp4, R_a, 0, rb64, mask_b, NH, DH, KA, DOT_PREC)
            if KB > 0:
                store_partial(part_slot, dp4, R_b, KA, rb64, mask_b, NH, DH, KB, DOT_PREC)
        else:
            for i0 in range(0, DH, BK):
                store_partial(part_slot, dp4, load_r_own(R_ptr, head, col0, i0, NH, DH, BO, BK), i0, rb64, mask_b,
                              NH, DH, BK, DOT_PREC)
        tl.store(dwx_ptr + off_dwx4 + tl.cast(t, tl.int64) * (4 * HD), dp4, mask=mask4)
        if SYNC:
            group_arrive(sync_ptr + group)

    tl.store(dstate_out_ptr + s_state + off_st, dc, mask=mask)
    tl.store(dstate_out_ptr + 2 * s_state + off_st, dn, mask=mask)
    if FINALIZE:  # gradient of the initial h: R^T dpre_0
        if SYNC:
            group_wait(sync_ptr + group, (t_hi - t_lo) * NCB)
        dh0 = sum_partials(part_ptr, t_lo, B, rb64, mask_b, head, col0, NH, DH, BO, NCB)
        tl.store(dstate_out_ptr + off_st, dh0, mask=mask)
        tl.store(dstate_out_ptr + 3 * s_state + off_st, tl.zeros((BB, BO), dtype=tl.float32), mask=mask)


def slstm_bwd(dh, dlast, R, h, state0, pre, cnm, cfg: SLSTMConfig):
    """Gradients of the sLSTM, split-head configs (cfg.ncb > 1). dh (B, T, NH, DH) gradient of
    the output (contiguous, wx's dtype); dlast (4, B, NH, DH) float32 gradient of the last state;
    R (4, NH, DH, DH); h the forward output; state0 the float32 initial state; pre, cnm saved by
    the forward.
    Returns dwx (B, T, 4, NH, DH) in wx's dtype, dR (4, NH, DH, DH) and db (4, NH, DH) float32,
    and the gradient of the initial state (4, B, NH, DH) float32 (m slot 0)."""
    B, T, NH, DH = h.shape
    dev, dtype = h.device, h.dtype
    if cfg.ncb == 1:
        raise ValueError(f"slstm_bwd: split-head configs only (ncb > 1), got {cfg}; whole heads: slstm_bwd_head")
    dwx = new_empty((B, T, 4, NH, DH), dtype, dev)
    dstate0 = new_empty((4, B, NH, DH), torch.float32, dev)
    grid = NH * cfg.ncb * cdiv(B, BATCH_BLOCK)
    sync = use_sync(cfg, grid, dev)
    counters = torch.zeros(grid // cfg.ncb if sync else 1, dtype=torch.int32, device=dev)
    partials = new_empty((2, cfg.ncb, B, NH, DH), dtype, dev)   # every element written before it is read
    meta = dict(NH=NH, DH=DH, BB=BATCH_BLOCK, BO=cfg.bo, NCB=cfg.ncb, KA=cfg.ka, KB=cfg.kb, BK=cfg.bk,
                RESIDENT=cfg.resident, DOT_PREC=dot_precision(dtype, dev), FAST_MATH=fast_math(dev),
                num_warps=cfg.bwd_num_warps)

    def run(dstate_in, t_lo, t_hi, sync_flag, finalize, **extra):
        slstm_bwd_kernel[(grid,)](
            R, pre, cnm, state0, dh, dstate_in, dwx, dstate0, partials, counters, B, T, t_lo, t_hi,
            SYNC=sync_flag, FINALIZE=finalize, **meta, **extra)

    if sync:
        run(dlast, 0, T, True, True, **cooperative_launch_kwargs())
        check_barrier(counters, "backward")
    else:  # one launch per step, (dc, dn) carried in dstate0; then dh_init from dpre_0
        for t in range(T - 1, -1, -1):
            run(dlast if t == T - 1 else dstate0, t, t + 1, False, False)
        run(dstate0, 0, 0, False, True)
    dR, db = slstm_dr_db(dwx, h, state0)
    return dwx, dR, db, dstate0
