"""Chunkwise mLSTM backward kernels.

Upstream: dh (B, NH, S, DV) and optionally dC, dn of the final state. With den_t and the
normalizer sign z_t saved by the forward (z_t = 0 where exp(-m_t) won the max, since m gets no
gradient), the output h_t = num_t / den_t sends back

    dO_t = dh_t / den_t                       to the numerator num_t
    dz_t = -(dh_t . h_t) z_t / den_t          to the normalizer nq_t,

which act like one more value column: the normalizer is the numerator of a value that is 1.
In the chunk-local weights of `gates.py`, with dS[t, s] = dO_t . v_s + dz_t:

    dC_c  = decay_c dC_{c+1} + sum_{t in c} g_t q^_t dO_t^T        (dn_c: dz_t instead of dO_t)
    dq_t  = scale [ g_t (C_c dO_t + dz_t n_c) + sum_{s <= t in c} W[t, s] dS[t, s] k_s ]
    dk_s  = w_s (dC_{c+1} v_s + dn_{c+1}) + scale sum_{t >= s in c} W[t, s] dS[t, s] q_t
    dv_s  = w_s dC_{c+1}^T k_s + sum_{t >= s in c} W[t, s] (q^_t . k_s) dO_t

The gates: every weight is exp(F_t - F_s + i_s - const), so with G the gradient of each
log-weight, di_s = sum_t G[t, s] = k_s . dk_s and dF_t = q_t . dq_t - k_t . dk_t (plus, at the
last step, <dC_last, C_last> + <dn_last, n_last>); dlogsigmoid(f)_j = sum_{t >= j} dF_t. The
kernels return the row dots q . dq and k . dk (one partial per DQK block) for that.

Kernels (grids): `chunkwise_bwd_dz_kernel` (S/BT, B*NH); `chunkwise_bwd_dstates_kernel`
(DQK/BK, DV/BV, B*NH), reverse over chunks; `chunkwise_bwd_dv_kernel` (DV/BV, S/BT, B*NH);
`chunkwise_bwd_dq_kernel` and `chunkwise_bwd_dk_kernel` (DQK/BK, S/BT, B*NH); each forms the
chunk's W dS (dq, dk) or weighted scores (dv) for every one of its feature blocks or, with
`dscores` in the config, reads them from `chunkwise_bwd_dscores_kernel` (S/BT, B*NH), which
forms them once into two (B*NH, S_pad, L) buffers;
`chunkwise_bwd_gates_kernel` (B*NH,), reverse over the steps (packed sequences: (B*NH, S/BS)):
di, and df from the suffix sums.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...launch import cached_launch
from ...utils import cdiv, minimum_nan, new_empty, new_empty_bhsd, next_power_of_2, packed_kernel_args, soft_cap_jit
from .fwd import chunkwise_fwd_states, head_base, intra_dtype, row_products, varlen_maxnreg
from .gates import chain_end, chain_starts, gate_rows, same_sequence, segment_first


@cached_launch
@triton.jit(do_not_specialize=["NH", "S"])
def chunkwise_bwd_dz_kernel(
    h_ptr, dh_ptr, dot_ptr, inv_den_ptr, zsign_ptr, dz_ptr,
    s_hb, s_hh, s_ht, s_db, s_dh, s_dt, s_ob, s_oh, s_ot,
    NH, S, S_pad,
    DV: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, DOT_GIVEN: tl.constexpr,
):
    """dz_t = -(h_t . dh_t) zsign_t / den_t; with DOT_GIVEN the dots h_t . dh_t are read (the
    caller formed them where it wrote dh) instead of formed from h and dh."""
    tile, bh = tl.program_id(0), tl.program_id(1)
    t = tile * BT + tl.arange(0, BT)
    mask_t = t < S
    if DOT_GIVEN:
        dot = tl.load(head_base(dot_ptr, bh, NH, s_ob, s_oh) + t * s_ot, mask=mask_t, other=0.0)
    else:
        h_base, dh_base = head_base(h_ptr, bh, NH, s_hb, s_hh), head_base(dh_ptr, bh, NH, s_db, s_dh)
        dot = tl.zeros((BT,), dtype=tl.float32)
        for vb in range(0, DV, BV):
            offs_v = vb + tl.arange(0, BV)
            mask = mask_t[:, None] & (offs_v < DV)[None, :]
            h = tl.load(h_base + t[:, None] * s_ht + offs_v[None, :], mask=mask, other=0.0)
            dh = tl.load(dh_base + t[:, None] * s_dt + offs_v[None, :], mask=mask, other=0.0)
            dot += tl.sum(h.to(tl.float32) * dh.to(tl.float32), axis=1)
    row = bh.to(tl.int64) * S_pad + t
    dz = -dot * tl.load(zsign_ptr + row) * tl.load(inv_den_ptr + row)
    tl.store(dz_ptr + row, tl.where(mask_t, dz, 0.0))


@cached_launch
@triton.jit(do_not_specialize=["NH", "S", "NC", "P", "NSEQ", "STEPS"])
def chunkwise_bwd_dstates_kernel(
    q_ptr, dh_ptr, g_ptr, inv_den_ptr, dz_ptr, decay_ptr, dc_last_ptr, dn_last_ptr, cu_ptr, NSEQ, STEPS, chains_ptr, count_ptr,
    dstates_ptr, dnstates_ptr, dc0_ptr, dn0_ptr,
    s_qb, s_qh, s_qt, s_db, s_dh, s_dt,
    NH, S, S_pad, NC, P, scale,
    DQK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BT: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, HAS_DC_LAST: tl.constexpr, HAS_DN_LAST: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, VARLEN: tl.constexpr,
):
    """dC_c = decay_c dC_{c+1} + sum_{t in c} g_t q^_t dO_t^T, from the last chunk down; VARLEN
    (packed sequences): the chains of chunks between restarts of the forward recurrence
    (`carries`), shared out as in the forward (programs (k block, v block, head * P + slot)); no
    initial state's gradient is written then (packed rows start from zeros)."""
    pid_k, pid_v, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    if VARLEN:
        slot = bh % P
        bh = bh // P
    b, hd = bh // NH, bh % NH
    offs_k = pid_k * BK + tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < DQK, offs_v < DV
    mask_kv = mask_k[:, None] & mask_v[None, :]
    kv_offs = offs_k[:, None] * DV + offs_v[None, :]
    q_base = q_ptr + b.to(tl.int64) * s_qb + hd.to(tl.int64) * s_qh
    dh_base = dh_ptr + b.to(tl.int64) * s_db + hd.to(tl.int64) * s_dh
    row_base = bh.to(tl.int64) * S_pad
    first_v = (offs_k * 0 + pid_v) == 0      # one column block owns dn

    dC = tl.zeros((BK, BV), dtype=tl.float32)
    dn = tl.zeros((BK,), dtype=tl.float32)
    if HAS_DC_LAST:
        dC = tl.load(dc_last_ptr + bh.to(tl.int64) * DQK * DV + kv_offs, mask=mask_kv, other=0.0).to(tl.float32)
    if HAS_DN_LAST:
        dn = tl.load(dn_last_ptr + bh.to(tl.int64) * DQK + offs_k, mask=mask_k, other=0.0).to(tl.float32)

    if VARLEN:
        # Chunk c's step ignores the gradient coming from above where it does not carry (the
        # forward restarted there): the chains run down from such chunks and from the last one
        # (listed by `chain_starts`) over the chunks below that carry (`chain_end`).
        for j in range(slot, tl.load(count_ptr), P):
            c_top = tl.load(chains_ptr + j)
            # The top's dstates, the gradient of C_{c_top+1}, is the chain above's (zero above
            # the last chunk: a packed row has no final state); its own step starts from zero.
            dC = tl.zeros((BK, BV), dtype=tl.float32)
            dn = tl.zeros((BK,), dtype=tl.float32)
            chunk = bh.to(tl.int64) * NC + c_top
            top_row = c_top == NC - 1
            tl.store(dstates_ptr + chunk * DQK * DV + kv_offs, dC.to(dstates_ptr.dtype.element_ty),
                     mask=tl.where(top_row, mask_kv, False))
            tl.store(dnstates_ptr + chunk * DQK + offs_k, dn, mask=tl.where(top_row, mask_k & first_v, False))
            dC, dn = _dstates_chunk(q_base, dh_base, g_ptr, inv_den_ptr, dz_ptr, row_base, c_top, dC, dn, offs_k,
                                    offs_v, mask_k, mask_v, s_qt, s_dt, S, scale, L, BT, DOT_DTYPE, PRECISION)
            # The chunks below the top carry: the batch walk's steps, then dstates[bottom - 1],
            # the gradient of C_bottom, the top of the chain below.
            bottom = chain_end(cu_ptr, NSEQ, STEPS, c_top, S, NC, L, False)
            dC, dn = _dstates_walk(q_base, dh_base, g_ptr, inv_den_ptr, dz_ptr, decay_ptr, dstates_ptr, dnstates_ptr,
                                   bh, row_base, c_top - 1, bottom, dC, dn, kv_offs, offs_k, offs_v, mask_k, mask_v,
                                   mask_kv, first_v, s_qt, s_dt, S, NC, scale, DQK, DV, L, BT, DOT_DTYPE, PRECISION)
            below = bh.to(tl.int64) * NC + tl.maximum(bottom - 1, 0)
            tl.store(dstates_ptr + below * DQK * DV + kv_offs, dC.to(dstates_ptr.dtype.element_ty),
                     mask=tl.where(bottom > 0, mask_kv, False))
            tl.store(dnstates_ptr + below * DQK + offs_k, dn, mask=tl.where(bottom > 0, mask_k & first_v, False))
    else:
        dC, dn = _dstates_walk(q_base, dh_base, g_ptr, inv_den_ptr, dz_ptr, decay_ptr, dstates_ptr, dnstates_ptr,
                               bh, row_base, NC - 1, 0, dC, dn, kv_offs, offs_k, offs_v, mask_k, mask_v,
                               mask_kv, first_v, s_qt, s_dt, S, NC, scale, DQK, DV, L, BT, DOT_DTYPE, PRECISION)
        tl.store(dc0_ptr + bh.to(tl.int64) * DQK * DV + kv_offs, dC, mask=mask_kv)
        tl.store(dn0_ptr + bh.to(tl.int64) * DQK + offs_k, dn, mask=mask_k & first_v)


@triton.jit
def _dstates_walk(q_base, dh_base, g_ptr, inv_den_ptr, dz_ptr, decay_ptr, dstates_ptr, dnstates_ptr, bh, row_base,
                  c_top, c_bottom, dC, dn, kv_offs, offs_k, offs_v, mask_k, mask_v, mask_kv, first_v, s_qt, s_dt,
                  S, NC, scale, DQK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BT: tl.constexpr,
                  DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """Chunks c_top down to c_bottom: store dstates[c] (the gradient of C_{c+1}), then
    dC_c = decay_c dC_{c+1} + chunk c's terms. The loop Triton pipelines."""
    for cc in range(c_top + 1 - c_bottom):
        c = c_top - cc
        chunk = bh.to(tl.int64) * NC + c
        tl.store(dstates_ptr + chunk * DQK * DV + kv_offs, dC.to(dstates_ptr.dtype.element_ty), mask=mask_kv)
        tl.store(dnstates_ptr + chunk * DQK + offs_k, dn, mask=mask_k & first_v)
        decay = tl.load(decay_ptr + bh.to(tl.int64) * NC + c)
        dC, dn = _dstates_chunk(q_base, dh_base, g_ptr, inv_den_ptr, dz_ptr, row_base, c, dC * decay, dn * decay,
                                offs_k, offs_v, mask_k, mask_v, s_qt, s_dt, S, scale, L, BT, DOT_DTYPE, PRECISION)
    return dC, dn


@triton.jit
def _dstates_chunk(q_base, dh_base, g_ptr, inv_den_ptr, dz_ptr, row_base, c, dC, dn, offs_k, offs_v, mask_k, mask_v,
                   s_qt, s_dt, S, scale, L: tl.constexpr, BT: tl.constexpr, DOT_DTYPE: tl.constexpr,
                   PRECISION: tl.constexpr):
    """dC, dn plus chunk c's terms sum_t g_t q^_t dO_t^T and sum_t g_t q^_t dz_t."""
    for tt in tl.static_range(L // BT):    # unrolled: the chunk loop is the pipelined one
        t = c * L + tt * BT + tl.arange(0, BT)
        mask_t = t < S
        q = tl.load(q_base + t[:, None] * s_qt + offs_k[None, :],
                    mask=mask_t[:, None] & mask_k[None, :], other=0.0)
        dh = tl.load(dh_base + t[:, None] * s_dt + offs_v[None, :],
                     mask=mask_t[:, None] & mask_v[None, :], other=0.0)
        gq = tl.load(g_ptr + row_base + t) * scale
        coef = gq * tl.load(inv_den_ptr + row_base + t)          # dO_t = dh_t / den_t
        dhw = (dh.to(tl.float32) * coef[:, None]).to(DOT_DTYPE)    # scale dh, not q (as in fwd)
        dC = tl.dot(tl.trans(q.to(DOT_DTYPE)), dhw, acc=dC, input_precision=PRECISION)
        dn += tl.sum(q.to(tl.float32) * (gq * tl.load(dz_ptr + row_base + t))[:, None], axis=0)
    return dC, dn




@cached_launch
@triton.jit(do_not_specialize=["NH", "S", "NC", "NSEQ", "STEPS"])
def chunkwise_bwd_dv_kernel(
    q_ptr, k_ptr, dh_ptr, dstates_ptr, u2_ptr, r2_ptr, w_ptr, inv_den_ptr, cu_ptr, NSEQ, STEPS, p_ptr, dv_ptr,
    s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_db, s_dh, s_dt, s_gb, s_gh, s_gt,
    NH, S, S_pad, NC, scale,
    DQK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BT: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    VARLEN: tl.constexpr, DSCORES: tl.constexpr, P_FORWARD: tl.constexpr,
):
    """dv of one DV block. DSCORES: the chunk's weighted scores from
    `chunkwise_bwd_dscores_kernel` (p_ptr, read transposed) instead of formed here over DQK;
    P_FORWARD: those of the forward (`chunkwise_fwd_scores_kernel`: W (q . k), without the
    scale / den_t, which are applied here as they are read)."""
    pid_v, tile, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, hd = bh // NH, bh % NH
    TILES_PER_CHUNK: tl.constexpr = L // BT
    chunk = tile // TILES_PER_CHUNK
    offs_v = pid_v * BV + tl.arange(0, BV)
    mask_v = offs_v < DV
    s = tile * BT + tl.arange(0, BT)          # this program's keys
    mask_s = s < S
    q_base = q_ptr + b.to(tl.int64) * s_qb + hd.to(tl.int64) * s_qh
    k_base = k_ptr + b.to(tl.int64) * s_kb + hd.to(tl.int64) * s_kh
    dh_base = dh_ptr + b.to(tl.int64) * s_db + hd.to(tl.int64) * s_dh
    row_base = bh.to(tl.int64) * S_pad
    state = bh.to(tl.int64) * NC + chunk
    r2 = tl.load(r2_ptr + row_base + s)
    s_first = segment_first(cu_ptr, NSEQ, STEPS, s, S, VARLEN)

    # Through the state at the chunk's end: w_s dC_{c+1}^T k_s.
    dv = tl.zeros((BT, BV), dtype=tl.float32)
    for kb in range(0, DQK, BK):
        offs_k = kb + tl.arange(0, BK)
        mask_k = offs_k < DQK
        k = tl.load(k_base + s[:, None] * s_kt + offs_k[None, :],
                    mask=mask_s[:, None] & mask_k[None, :], other=0.0)
        dC = tl.load(dstates_ptr + state * DQK * DV + offs_k[:, None] * DV + offs_v[None, :],
                     mask=mask_k[:, None] & mask_v[None, :], other=0.0)
        dv += tl.dot(k.to(DOT_DTYPE), dC.to(DOT_DTYPE), input_precision=PRECISION)
    dv = dv * tl.load(w_ptr + row_base + s)[:, None]

    # Inside the chunk: query tiles from the diagonal to the chunk's end.
    for i in range(tile, (chunk + 1) * TILES_PER_CHUNK):
        t = i * BT + tl.arange(0, BT)
        mask_t = t < S
        if DSCORES:
            scores_t = tl.load(p_ptr + (row_base + t)[None, :] * L + (s - chunk * L)[:, None])     # [s, t]
            if P_FORWARD:
                scores_t = scores_t.to(tl.float32) * (scale * tl.load(inv_den_ptr + row_base + t))[None, :]
        else:
            scores_t = row_products(k_base, s, s_kt, q_base, t, s_qt, S, DQK, BK, BT, DOT_DTYPE, PRECISION)  # [s, t]
            u2 = tl.load(u2_ptr + row_base + t)
            inv_den = tl.load(inv_den_ptr + row_base + t)
            # Selected, not multiplied by a zero weight: a non-finite score stays out of the product.
            scores_t = tl.where((t[None, :] >= s[:, None]) &
                                same_sequence(s_first, segment_first(cu_ptr, NSEQ, STEPS, t, S, VARLEN), VARLEN),
                                scores_t * tl.exp2(r2[:, None] + u2[None, :]) * (scale * inv_den)[None, :],
                                0.0)                                     # dO_t = dh_t / den_t
        dh = tl.load(dh_base + t[:, None] * s_dt + offs_v[None, :],
                     mask=mask_t[:, None] & mask_v[None, :], other=0.0)
        dv += tl.dot(scores_t.to(DOT_DTYPE), dh.to(DOT_DTYPE), input_precision=PRECISION)

    dv_base = dv_ptr + b.to(tl.int64) * s_gb + hd.to(tl.int64) * s_gh
    tl.store(dv_base + s[:, None] * s_gt + offs_v[None, :], dv.to(dv_ptr.dtype.element_ty),
             mask=mask_s[:, None] & mask_v[None, :])


@cached_launch
@triton.jit(do_not_specialize=["NH", "S", "NSEQ", "STEPS"])
def chunkwise_bwd_dscores_kernel(
    q_ptr, k_ptr, v_ptr, dh_ptr, u2_ptr, r2_ptr, inv_den_ptr, dz_ptr, cu_ptr, NSEQ, STEPS, ds_ptr, p_ptr,
    s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_db, s_dh, s_dt,
    NH, S, S_pad, scale,
    DQK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, VARLEN: tl.constexpr,
    FORM_P: tl.constexpr,
):
    """The chunk's intra-chunk matrices once, for the kernels that otherwise each form them again
    for every feature block: ds[bh, t, s - cL] = W[t, s] dS[t, s] (module docstring; for dq and
    dk) and, with FORM_P (where the forward's are not at hand), p[bh, t, s - cL] = W[t, s] scale
    (q_t . k_s) / den_t (for dv), for the key tiles of t's chunk up to t's tile (0 for s > t
    and across sequences), in the dtype the products take them in. ds, p (B*NH, S_pad, L);
    tiles after the diagonal are not written (not read)."""
    tile, bh = tl.program_id(0), tl.program_id(1)
    chunk = tile // (L // BT)
    t = tile * BT + tl.arange(0, BT)
    q_base, k_base = head_base(q_ptr, bh, NH, s_qb, s_qh), head_base(k_ptr, bh, NH, s_kb, s_kh)
    v_base, dh_base = head_base(v_ptr, bh, NH, s_vb, s_vh), head_base(dh_ptr, bh, NH, s_db, s_dh)
    row_base = bh.to(tl.int64) * S_pad
    u2 = tl.load(u2_ptr + row_base + t)
    inv_den = tl.load(inv_den_ptr + row_base + t)
    dz = tl.load(dz_ptr + row_base + t)
    t_first = segment_first(cu_ptr, NSEQ, STEPS, t, S, VARLEN)
    for j in range(chunk * (L // BT), tile + 1):
        s = j * BT + tl.arange(0, BT)
        dS = row_products(dh_base, t, s_dt, v_base, s, s_vt, S, DV, BV, BT, DOT_DTYPE, PRECISION)        # [t, s]
        r2 = tl.load(r2_ptr + row_base + s)
        weight = tl.exp2(u2[:, None] + r2[None, :])
        # Selected, not multiplied by a zero weight: a non-finite entry stays out of the products.
        inside = (s[None, :] <= t[:, None]) & \
            same_sequence(t_first, segment_first(cu_ptr, NSEQ, STEPS, s, S, VARLEN), VARLEN)
        dS = tl.where(inside, (dS * inv_den[:, None] + dz[:, None]) * weight, 0.0)
        out = (row_base + t)[:, None] * L + (s - chunk * L)[None, :]
        tl.store(ds_ptr + out, dS.to(ds_ptr.dtype.element_ty))
        if FORM_P:
            scores = row_products(q_base, t, s_qt, k_base, s, s_kt, S, DQK, BK, BT, DOT_DTYPE, PRECISION)  # [t, s]
            scores = tl.where(inside, scores * weight * (scale * inv_den)[:, None], 0.0)
            tl.store(p_ptr + out, scores.to(p_ptr.dtype.element_ty))


@cached_launch
@triton.jit(do_not_specialize=["NH", "S", "NC", "NSEQ", "STEPS"])
def chunkwise_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, dh_ptr, states_ptr, nstates_ptr, u2_ptr, r2_ptr, g_ptr, inv_den_ptr, dz_ptr,
    cu_ptr, NSEQ, STEPS, ds_ptr, dq_ptr, qdq_ptr,
    s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_db, s_dh, s_dt, s_gb, s_gh, s_gt,
    NH, S, S_pad, NC, scale,
    DQK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BT: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    VARLEN: tl.constexpr, DSCORES: tl.constexpr,
):
    """dq and the partial row dots q . dq of one DQK block. DSCORES: the chunk's W dS from
    `chunkwise_bwd_dscores_kernel` (ds_ptr) instead of formed here over DV."""
    pid_k, tile, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, hd = bh // NH, bh % NH
    TILES_PER_CHUNK: tl.constexpr = L // BT
    chunk = tile // TILES_PER_CHUNK
    offs_k = pid_k * BK + tl.arange(0, BK)
    mask_k = offs_k < DQK
    t = tile * BT + tl.arange(0, BT)          # this program's queries
    mask_t = t < S
    k_base = k_ptr + b.to(tl.int64) * s_kb + hd.to(tl.int64) * s_kh
    v_base = v_ptr + b.to(tl.int64) * s_vb + hd.to(tl.int64) * s_vh
    dh_base = dh_ptr + b.to(tl.int64) * s_db + hd.to(tl.int64) * s_dh
    row_base = bh.to(tl.int64) * S_pad
    state = bh.to(tl.int64) * NC + chunk
    u2 = tl.load(u2_ptr + row_base + t)
    inv_den = tl.load(inv_den_ptr + row_base + t)
    dz = tl.load(dz_ptr + row_base + t)
    t_first = segment_first(cu_ptr, NSEQ, STEPS, t, S, VARLEN)

    # Through the state at the chunk's start: g_t (C_c dO_t + dz_t n_c).
    dq = tl.zeros((BT, BK), dtype=tl.float32)
    for vb in range(0, DV, BV):
        offs_v = vb + tl.arange(0, BV)
        mask_v = offs_v < DV
        dh = tl.load(dh_base + t[:, None] * s_dt + offs_v[None, :],
                     mask=mask_t[:, None] & mask_v[None, :], other=0.0)
        C = tl.load(states_ptr + state * DQK * DV + offs_k[:, None] * DV + offs_v[None, :],
                    mask=mask_k[:, None] & mask_v[None, :], other=0.0)
        dq += tl.dot(dh.to(DOT_DTYPE), tl.trans(C.to(DOT_DTYPE)), input_precision=PRECISION)
    n = tl.load(nstates_ptr + state * DQK + offs_k, mask=mask_k, other=0.0)
    dq = dq * inv_den[:, None] + dz[:, None] * n[None, :]
    dq = dq * tl.load(g_ptr + row_base + t)[:, None]

    # Inside the chunk: key tiles from the chunk's start to the diagonal.
    for j in range(chunk * TILES_PER_CHUNK, tile + 1):
        s = j * BT + tl.arange(0, BT)
        mask_s = s < S
        if DSCORES:
            dS = tl.load(ds_ptr + (row_base + t)[:, None] * L + (s - chunk * L)[None, :])
        else:
            dS = row_products(dh_base, t, s_dt, v_base, s, s_vt, S, DV, BV, BT, DOT_DTYPE, PRECISION)    # [t, s]
            r2 = tl.load(r2_ptr + row_base + s)
            dS = tl.where((s[None, :] <= t[:, None]) &
                          same_sequence(t_first, segment_first(cu_ptr, NSEQ, STEPS, s, S, VARLEN), VARLEN),
                          (dS * inv_den[:, None] + dz[:, None]) * tl.exp2(u2[:, None] + r2[None, :]), 0.0)
        k = tl.load(k_base + s[:, None] * s_kt + offs_k[None, :],
                    mask=mask_s[:, None] & mask_k[None, :], other=0.0)
        dq += tl.dot(dS.to(DOT_DTYPE), k.to(DOT_DTYPE), input_precision=PRECISION)

    dq = dq * scale
    q_base = q_ptr + b.to(tl.int64) * s_qb + hd.to(tl.int64) * s_qh
    q = tl.load(q_base + t[:, None] * s_qt + offs_k[None, :], mask=mask_t[:, None] & mask_k[None, :], other=0.0)
    tl.store(qdq_ptr + (pid_k * tl.num_programs(2) + bh).to(tl.int64) * S_pad + t,
             tl.sum(q.to(tl.float32) * dq, axis=1))
    tl.store(dq_ptr + b.to(tl.int64) * s_gb + hd.to(tl.int64) * s_gh + t[:, None] * s_gt + offs_k[None, :],
             dq.to(dq_ptr.dtype.element_ty), mask=mask_t[:, None] & mask_k[None, :])


@cached_launch
@triton.jit(do_not_specialize=["NH", "S", "NC", "NSEQ", "STEPS"])
def chunkwise_bwd_dk_kernel(
    q_ptr, k_ptr, v_ptr, dh_ptr, dstates_ptr, dnstates_ptr, u2_ptr, r2_ptr, w_ptr, inv_den_ptr, dz_ptr,
    cu_ptr, NSEQ, STEPS, ds_ptr, dk_ptr, kdk_ptr,
    s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_db, s_dh, s_dt, s_gb, s_gh, s_gt,
    NH, S, S_pad, NC, scale,
    DQK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BT: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    VARLEN: tl.constexpr, DSCORES: tl.constexpr,
):
    """dk and the partial row dots k . dk of one DQK block. DSCORES: the chunk's W dS from
    `chunkwise_bwd_dscores_kernel` (ds_ptr, read transposed) instead of formed here over DV."""
    pid_k, tile, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, hd = bh // NH, bh % NH
    TILES_PER_CHUNK: tl.constexpr = L // BT
    chunk = tile // TILES_PER_CHUNK
    offs_k = pid_k * BK + tl.arange(0, BK)
    mask_k = offs_k < DQK
    s = tile * BT + tl.arange(0, BT)          # this program's keys
    mask_s = s < S
    q_base = q_ptr + b.to(tl.int64) * s_qb + hd.to(tl.int64) * s_qh
    v_base = v_ptr + b.to(tl.int64) * s_vb + hd.to(tl.int64) * s_vh
    dh_base = dh_ptr + b.to(tl.int64) * s_db + hd.to(tl.int64) * s_dh
    row_base = bh.to(tl.int64) * S_pad
    state = bh.to(tl.int64) * NC + chunk
    r2 = tl.load(r2_ptr + row_base + s)
    s_first = segment_first(cu_ptr, NSEQ, STEPS, s, S, VARLEN)

    # Through the state at the chunk's end: w_s (dC_{c+1} v_s + dn_{c+1}).
    dk = tl.zeros((BT, BK), dtype=tl.float32)
    for vb in range(0, DV, BV):
        offs_v = vb + tl.arange(0, BV)
        mask_v = offs_v < DV
        v = tl.load(v_base + s[:, None] * s_vt + offs_v[None, :],
                    mask=mask_s[:, None] & mask_v[None, :], other=0.0)
        dC = tl.load(dstates_ptr + state * DQK * DV + offs_k[:, None] * DV + offs_v[None, :],
                     mask=mask_k[:, None] & mask_v[None, :], other=0.0)
        dk += tl.dot(v.to(DOT_DTYPE), tl.trans(dC.to(DOT_DTYPE)), input_precision=PRECISION)
    dn = tl.load(dnstates_ptr + state * DQK + offs_k, mask=mask_k, other=0.0)
    dk = (dk + dn[None, :]) * tl.load(w_ptr + row_base + s)[:, None]

    # Inside the chunk: query tiles from the diagonal to the chunk's end.
    for i in range(tile, (chunk + 1) * TILES_PER_CHUNK):
        t = i * BT + tl.arange(0, BT)
        mask_t = t < S
        if DSCORES:
            dS_t = tl.load(ds_ptr + (row_base + t)[None, :] * L + (s - chunk * L)[:, None])
        else:
            dS_t = row_products(v_base, s, s_vt, dh_base, t, s_dt, S, DV, BV, BT, DOT_DTYPE, PRECISION)  # [s, t]
            u2 = tl.load(u2_ptr + row_base + t)
            inv_den = tl.load(inv_den_ptr + row_base + t)
            dz = tl.load(dz_ptr + row_base + t)
            dS_t = tl.where((t[None, :] >= s[:, None]) &
                            same_sequence(s_first, segment_first(cu_ptr, NSEQ, STEPS, t, S, VARLEN), VARLEN),
                            (dS_t * inv_den[None, :] + dz[None, :]) * tl.exp2(r2[:, None] + u2[None, :]), 0.0)
        q = tl.load(q_base + t[:, None] * s_qt + offs_k[None, :],
                    mask=mask_t[:, None] & mask_k[None, :], other=0.0)
        dk += tl.dot(dS_t.to(DOT_DTYPE), q.to(DOT_DTYPE), input_precision=PRECISION) * scale

    k_base = k_ptr + b.to(tl.int64) * s_kb + hd.to(tl.int64) * s_kh
    k = tl.load(k_base + s[:, None] * s_kt + offs_k[None, :], mask=mask_s[:, None] & mask_k[None, :], other=0.0)
    tl.store(kdk_ptr + (pid_k * tl.num_programs(2) + bh).to(tl.int64) * S_pad + s,
             tl.sum(k.to(tl.float32) * dk, axis=1))
    tl.store(dk_ptr + b.to(tl.int64) * s_gb + hd.to(tl.int64) * s_gh + s[:, None] * s_gt + offs_k[None, :],
             dk.to(dk_ptr.dtype.element_ty), mask=mask_s[:, None] & mask_k[None, :])


GATE_BLOCK = 1024        # steps per block of the gate-gradient kernel (tests make it small)
# At most this many programs a row share its blocks without packed sequences (8 at the paper
# LM's S = 8,192: 0.052 -> 0.019 ms per layer on an H100 against one program walking the row;
# tests make it small).
GATE_SPLIT = 16


@triton.jit
def _suffix_until_end(fa, va, fb, vb):
    """Scan combine over a flipped row of (sequence end flag, value): b (earlier steps) adds what
    a (later steps) summed unless b holds a sequence's last step."""
    return fa | fb, tl.where(fb != 0, vb, va + vb)


@triton.jit
def _gate_steps(qdq_ptr, kdk_ptr, extra_ptr, cu_ptr, NSEQ, STEPS, row, t, S, S_pad, ROWS, NKB: tl.constexpr,
                HAS_EXTRA: tl.constexpr, VARLEN: tl.constexpr):
    """At steps t of a row: dF_t (float64), k . dk (float32), and (VARLEN) whether t is the last
    step of its sequence (the row's last step always is)."""
    real = t < S
    qdq = tl.zeros(t.shape, dtype=tl.float32)
    kdk = tl.zeros(t.shape, dtype=tl.float32)
    for j in range(NKB):
        off = (j * ROWS + row) * S_pad + t
        qdq += tl.load(qdq_ptr + off, mask=real, other=0.0)
        kdk += tl.load(kdk_ptr + off, mask=real, other=0.0)
    d_f = qdq.to(tl.float64) - kdk.to(tl.float64)
    if HAS_EXTRA:
        d_f += tl.where(t == S - 1, tl.load(extra_ptr + row), 0.0)
    ends = t >= S - 1
    if VARLEN:
        after = t + 1
        ends = ends | (segment_first(cu_ptr, NSEQ, STEPS, after, S, True) == after)
    return d_f, kdk, ends.to(tl.int32)


@cached_launch
@triton.jit(do_not_specialize=["S", "S_pad", "NSEQ", "STEPS", "BPP"])
def chunkwise_bwd_gates_kernel(qdq_ptr, kdk_ptr, i_ptr, f_ptr, extra_ptr, cu_ptr, NSEQ, STEPS, di_ptr, df_ptr, S, S_pad, ROWS,
                               s_ib, s_ih, s_it, s_fb, s_fh, s_ft, NH, cap, BPP, NKB: tl.constexpr,
                               BS: tl.constexpr, HAS_EXTRA: tl.constexpr, SOFT_CAP: tl.constexpr,
                               VARLEN: tl.constexpr):
    """di_s = k_s . dk_s and df_j = sigmoid(-f_j) sum_{t >= j} dF_t (0 where the logsigmoid floor
    clamps), dF_t = q_t . dq_t - k_t . dk_t (+ extra at the last step), from the per-DQK-block
    partial dots (NKB, ROWS, S_pad); suffix sums in float64. With the soft cap, both times its
    derivative 1 - (x_cap / cap)^2.

    Programs (row, group of blocks of BS steps). VARLEN (packed sequences): a group is one
    block, and the suffix sums stop at each sequence's last step, so it needs its own steps and
    those after it up to the end of its last step's sequence, which it reads itself (a few
    blocks for long sequences). Otherwise BPP consecutive blocks (`GATE_SPLIT` groups a row at
    most, so the reads stay linear in S): the program sums dF over the blocks after its group,
    then walks its own blocks backwards."""
    row = tl.program_id(0).to(tl.int64)
    i_row, f_row = gate_rows(i_ptr, f_ptr, row, s_ib, s_ih, s_fb, s_fh, NH)
    grp = tl.program_id(1)
    if VARLEN:
        t = grp * BS + tl.arange(0, BS)
        d_f, kdk, ends = _gate_steps(qdq_ptr, kdk_ptr, extra_ptr, cu_ptr, NSEQ, STEPS, row, t, S, S_pad, ROWS, NKB,
                                     HAS_EXTRA, VARLEN)
        # What the steps after the block add to the sequence of its last step: the blocks after
        # it, each up to its first sequence end.
        carry = tl.zeros((), dtype=tl.float64)
        nxt = grp + 1
        open_end = tl.sum(tl.where(tl.arange(0, BS) == BS - 1, ends, 0), axis=0) == 0
        while open_end:
            d_n, _, ends_n = _gate_steps(qdq_ptr, kdk_ptr, extra_ptr, cu_ptr, NSEQ, STEPS, row, nxt * BS + tl.arange(0, BS),
                                         S, S_pad, ROWS, NKB, HAS_EXTRA, VARLEN)
            first_end = tl.min(tl.where(ends_n != 0, tl.arange(0, BS), BS), axis=0)
            carry += tl.sum(tl.where(tl.arange(0, BS) <= first_end, d_n, 0.0), axis=0)
            open_end = first_end == BS
            nxt += 1
        # Inside the block: a forward scan over the flipped block (each step meets the steps
        # after it) with a sum that restarts at each sequence's last step.
        reached, suffix = tl.associative_scan((tl.flip(ends, 0), tl.flip(d_f, 0)), 0, _suffix_until_end)
        reached, suffix = tl.flip(reached, 0), tl.flip(suffix, 0)
        d_logf = suffix + tl.where(reached != 0, 0.0, carry)      # sum over s >= t in t's sequence
        _store_gate_grads(d_logf, kdk, t, i_row, f_row, row, di_ptr, df_ptr, S, s_it, s_ft, cap, SOFT_CAP)
    else:
        blocks = tl.cdiv(S, BS)
        lo = grp * BPP
        hi = tl.minimum(lo + BPP, blocks)
        carry = tl.zeros((), dtype=tl.float64)
        for nxt in range(hi, blocks):
            d_n, _, _ = _gate_steps(qdq_ptr, kdk_ptr, extra_ptr, cu_ptr, NSEQ, STEPS, row, nxt * BS + tl.arange(0, BS),
                                    S, S_pad, ROWS, NKB, HAS_EXTRA, VARLEN)
            carry += tl.sum(d_n, axis=0)
        for blk in range(hi - 1, lo - 1, -1):
            t = blk * BS + tl.arange(0, BS)
            d_f, kdk, _ = _gate_steps(qdq_ptr, kdk_ptr, extra_ptr, cu_ptr, NSEQ, STEPS, row, t, S, S_pad, ROWS, NKB,
                                      HAS_EXTRA, VARLEN)
            total = tl.sum(d_f, axis=0)
            d_logf = carry + total - tl.cumsum(d_f, axis=0) + d_f       # sum over s >= t
            carry += total
            _store_gate_grads(d_logf, kdk, t, i_row, f_row, row, di_ptr, df_ptr, S, s_it, s_ft, cap, SOFT_CAP)


@triton.jit
def _store_gate_grads(d_logf, kdk, t, i_row, f_row, row, di_ptr, df_ptr, S, s_it, s_ft, cap, SOFT_CAP: tl.constexpr):
    """di and df at steps t from d logsigmoid(f) and k . dk (the soft cap's derivative applied)."""
    real = t < S
    fg = tl.load(f_row + t * s_ft, mask=real, other=0.0).to(tl.float64)
    d_ig = kdk
    if SOFT_CAP:
        fg = soft_cap_jit(fg, cap)
        ig = soft_cap_jit(tl.load(i_row + t * s_it, mask=real, other=0.0).to(tl.float32), cap)
        d_ig = d_ig * (1.0 - (ig / cap) * (ig / cap))
    logf = minimum_nan(fg, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(fg)))
    d_fg = tl.where(logf < -1000.0, 0.0, d_logf / (1.0 + tl.exp(fg)))    # -1000.0 = LOGF_FLOOR
    if SOFT_CAP:
        d_fg = d_fg * (1.0 - (fg / cap) * (fg / cap))
    # via float32: the interpreter turns float64 -> bfloat16 into NaN
    tl.store(df_ptr + row * S + t, d_fg.to(tl.float32).to(df_ptr.dtype.element_ty), mask=real)
    tl.store(di_ptr + row * S + t, d_ig.to(di_ptr.dtype.element_ty), mask=real)


def chunkwise_bwd(q, k, v, i, f, h, dh, dc_last, dn_last, c_initial, n_initial, gates, inv_den, zsign, cfg,
                  seq_major=False, soft_cap=None, out=None, cu_seqlens=None, h_dot_dh=None, scores=None):
    """Gradients of q, k, v, i, f, c_initial, n_initial.

    `scores`: the forward's weighted scores (`chunkwise_fwd_output`'s, (B*NH, S_pad, L)) or
    None (or the forward op's one-element placeholder): with `cfg.dscores` the dv kernel reads
    them (scaled as it reads them) instead of the backward forming them again over DQK.

    `h_dot_dh`: optional (B, NH, S) float32 (any strides): h_t . dh_t per step and head, where
    the caller formed it with dh; h and dh are then not read for it.

    `cu_seqlens`: packed sequences (B = 1), their offsets (N + 1,) int32 on q's device, with
    `gates` made for them (no initial or final state terms then: dc0, dn0 come back unwritten).

    `out`: optional (dq, dk, dv) tensors of q's, k's and v's shapes, unit stride in the last dim,
    that the kernels write (e.g. views of one buffer the caller reads next), else fresh ones.

    q, k, v, f, h and dh may have any strides with unit stride in the last dim (dq, dk, dv come
    back laid out as (B, S, NH, D) if `seq_major`); dc_last (B, NH,
    DQK, DV) and dn_last (B, NH, DQK) may be None. The chunk states are recomputed (the forward
    keeps none), and each of the states and their gradients is alive only while it is needed.
    """
    B, NH, S, DQK = q.shape
    DV = v.shape[-1]
    S_pad, NC = gates.padded_len, gates.num_chunks
    dev = q.device
    L, BT = cfg.chunk_size, cfg.tile
    common = dict(DOT_DTYPE=cfg.dot_dtype, PRECISION=cfg.precision, VARLEN=cu_seqlens is not None,
                  num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    packed = packed_kernel_args(cu_seqlens, gates.u2)      # unread without VARLEN
    scale = DQK**-0.5
    q_st, k_st, v_st, dh_st = q.stride()[:3], k.stride()[:3], v.stride()[:3], dh.stride()[:3]

    dz = new_empty((B * NH, S_pad), torch.float32, dev)
    given = h_dot_dh is not None
    chunkwise_bwd_dz_kernel[(S_pad // BT, B * NH)](
        h, dh, h_dot_dh if given else dz, inv_den, zsign, dz, *h.stride()[:3], *dh_st,
        *(h_dot_dh.stride() if given else (0, 0, 0)), NH, S, S_pad, DV=DV, BT=BT, BV=cfg.block_v, DOT_GIVEN=given,
        num_warps=cfg.num_warps)

    states, nstates, c_last, n_last = chunkwise_fwd_states(k, v, gates, c_initial, n_initial, cfg, cu_seqlens)
    nkb = cdiv(DQK, cfg.block_k_grad)
    dq_out, dk_out, dv_out = out if out is not None else (None, None, None)
    dq = dq_out if dq_out is not None else new_empty_bhsd(B, NH, S, DQK, q.dtype, dev, seq_major)
    qdq = new_empty((nkb, B * NH, S_pad), torch.float32, dev)
    ds = p = gates.u2                             # unread without cfg.dscores
    p_forward = cfg.dscores and scores is not None and scores.shape == (B * NH, S_pad, L)
    if cfg.dscores:
        if p_forward:
            ds, p = new_empty((B * NH, S_pad, L), intra_dtype(cfg), dev), scores
        else:
            ds, p = new_empty((2, B * NH, S_pad, L), intra_dtype(cfg), dev).unbind(0)
        chunkwise_bwd_dscores_kernel[(S_pad // BT, B * NH)](
            q, k, v, dh, gates.u2, gates.r2, inv_den, dz, *packed, ds, p, *q_st, *k_st, *v_st, *dh_st,
            NH, S, S_pad, scale, DQK=DQK, DV=DV, L=L, BT=BT, BK=cfg.block_k_grad, BV=cfg.block_v_grad,
            FORM_P=not p_forward, **common)
    chunkwise_bwd_dq_kernel[(nkb, S_pad // BT, B * NH)](
        q, k, v, dh, states, nstates, gates.u2, gates.r2, gates.g, inv_den, dz, *packed, ds, dq, qdq,
        *q_st, *k_st, *v_st, *dh_st, *dq.stride()[:3], NH, S, S_pad, NC, scale,
        DQK=DQK, DV=DV, L=L, BT=BT, BK=cfg.block_k_grad, BV=cfg.block_v_grad, DSCORES=cfg.dscores, **common)
    del states, nstates

    dstates = new_empty((B * NH, NC, DQK, DV), cfg.state_dtype, dev)
    dnstates = new_empty((B * NH, NC, DQK), torch.float32, dev)
    dc0 = new_empty((B, NH, DQK, DV), torch.float32, dev)
    dn0 = new_empty((B, NH, DQK), torch.float32, dev)
    chains, count, P = gates.u2, gates.u2, 1      # unread without cu_seqlens
    if cu_seqlens is not None:
        chains, count, P = chain_starts(cu_seqlens, S, NC, L, tops=True)
    chunkwise_bwd_dstates_kernel[(cdiv(DQK, cfg.block_k_states), cdiv(DV, cfg.block_v_states), B * NH * P)](
        q, dh, gates.g, inv_den, dz, gates.decay, dc_last, dn_last, *packed, chains, count, dstates, dnstates, dc0, dn0,
        *q_st, *dh_st, NH, S, S_pad, NC, P, scale,
        DQK=DQK, DV=DV, L=L, BT=cfg.tile_states, BK=cfg.block_k_states, BV=cfg.block_v_states,
        HAS_DC_LAST=dc_last is not None, HAS_DN_LAST=dn_last is not None, DOT_DTYPE=cfg.dot_dtype,
        PRECISION=cfg.precision, VARLEN=cu_seqlens is not None, num_warps=cfg.num_warps_states,
        num_stages=cfg.num_stages_states, maxnreg=varlen_maxnreg(cfg) if cu_seqlens is not None else None)

    dv = dv_out if dv_out is not None else new_empty_bhsd(B, NH, S, DV, v.dtype, dev, seq_major)
    chunkwise_bwd_dv_kernel[(cdiv(DV, cfg.block_v), S_pad // BT, B * NH)](
        q, k, dh, dstates, gates.u2, gates.r2, gates.w, inv_den, *packed, p, dv,
        *q_st, *k_st, *dh_st, *dv.stride()[:3], NH, S, S_pad, NC, scale,
        DQK=DQK, DV=DV, L=L, BT=BT, BK=cfg.block_k, BV=cfg.block_v, DSCORES=cfg.dscores, P_FORWARD=p_forward,
        **common)

    dk = dk_out if dk_out is not None else new_empty_bhsd(B, NH, S, DQK, k.dtype, dev, seq_major)
    kdk = new_empty((nkb, B * NH, S_pad), torch.float32, dev)
    chunkwise_bwd_dk_kernel[(nkb, S_pad // BT, B * NH)](
        q, k, v, dh, dstates, dnstates, gates.u2, gates.r2, gates.w, inv_den, dz, *packed, ds, dk, kdk,
        *q_st, *k_st, *v_st, *dh_st, *dk.stride()[:3], NH, S, S_pad, NC, scale,
        DQK=DQK, DV=DV, L=L, BT=BT, BK=cfg.block_k_grad, BV=cfg.block_v_grad, DSCORES=cfg.dscores, **common)
    del dstates, dnstates, ds, p

    # Gates (module docstring): the final state's terms enter dF at the last step, so every
    # suffix sum; they are rare (a state passed on with a gradient), kept in PyTorch.
    extra = None
    if dc_last is not None:
        extra = (dc_last.double() * c_last.double()).sum((-2, -1)).reshape(B * NH)
    if dn_last is not None:
        dn_term = (dn_last.double() * n_last.double()).sum(-1).reshape(B * NH)
        extra = dn_term if extra is None else extra + dn_term
    di = new_empty((B, NH, S), f.dtype, dev)
    df = new_empty((B, NH, S), f.dtype, dev)
    BS = min(GATE_BLOCK, max(16, next_power_of_2(S)))
    blocks = cdiv(S, BS)
    per_program = 1 if cu_seqlens is not None or blocks <= GATE_SPLIT else cdiv(blocks, GATE_SPLIT)
    groups = cdiv(blocks, per_program)
    if cu_seqlens is None:
        groups = max(1, groups)             # one program a row even for S = 0 (it writes nothing)
    chunkwise_bwd_gates_kernel[(B * NH, groups)](
        qdq, kdk, i, f, extra if extra is not None else qdq, *packed, di, df, S, S_pad, B * NH, *i.stride(), *f.stride(),
        NH, 1.0 if soft_cap is None else float(soft_cap), per_program, NKB=nkb, BS=BS,
        HAS_EXTRA=extra is not None, SOFT_CAP=soft_cap is not None, VARLEN=cu_seqlens is not None, num_warps=4)
    return dq, dk, dv, di, df, dc0, dn0
