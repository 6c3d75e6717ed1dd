"""Chunkwise mLSTM forward: the states at chunk boundaries, then the outputs.

Two kernels (weights from `gates.py`; C_c is the state at the start of chunk c, stabilized by mc_c):

`chunkwise_fwd_states_kernel`: grid (DQK/BK, DV/BV, B*NH), sequential over chunks (packed
sequences: (DQK/BK, DV/BV, NH*P), P programs of a head sharing the chains of chunks):
    C_{c+1} = decay_c C_c + sum_{s in c} w_s k_s v_s^T        n_{c+1} likewise with k_s
    stores C_c for every chunk (the backward recomputes them with this same kernel) and the
    final state in float32.

`chunkwise_fwd_output_kernel`: grid (DV/BV, S/BT, B*NH), one tile of BT rows each:
    num_t = g_t C_c^T q^_t + sum_{s <= t, s in c} W[t, s] (q^_t . k_s) v_s      (q^ = q / sqrt(DQK))
    nq_t  = g_t n_c . q^_t  + sum_{s <= t, s in c} W[t, s] (q^_t . k_s)
    h_t   = num_t / (max(|nq_t|, exp(-m_t)) + eps)
    The chunk (size L) is walked in key tiles of BT, so the state granularity L and the
    tile size are independent. Also stores, per row, 1/den and the sign the normalizer's
    gradient takes (0 where exp(-m_t) wins the max): the backward needs nothing else.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...launch import cached_launch
from ...utils import cdiv, maximum_nan, new_empty, new_empty_bhsd, packed_kernel_args
from .gates import chain_end, chain_starts, same_sequence, segment_first


@cached_launch
@triton.jit(do_not_specialize=["NH", "S", "NC", "P", "NSEQ", "STEPS"])
def chunkwise_fwd_states_kernel(
    k_ptr, v_ptr, w_ptr, decay_ptr, c0_ptr, n0_ptr, cu_ptr, NSEQ, STEPS, chains_ptr, count_ptr,
    states_ptr, nstates_ptr, c_last_ptr, n_last_ptr,
    s_kb, s_kh, s_kt, s_vb, s_vh, s_vt,
    NH, S, S_pad, NC, P,
    DQK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BT: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, HAS_C0: tl.constexpr, HAS_N0: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, VARLEN: tl.constexpr,
):
    """C_{c+1} = decay_c C_c + sum_s w_s k_s v_s^T (and n). VARLEN (packed sequences): C_{c+1}
    holds the sequence of the chunk's last step only, selected (rows of other sequences and
    the old state are left out, not multiplied by a zero weight: a NaN in one sequence stays
    there); empty where the next chunk starts a sequence. No final state is written then (a
    packed row has none: c_last, n_last are left as allocated)."""
    pid_k, pid_v, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    if VARLEN:          # programs (k block, v block, head * P + slot): chains slot, slot + P, ... (below)
        slot = bh % P
        bh = bh // P
    b, h = bh // NH, bh % NH
    offs_k = pid_k * BK + tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < DQK, offs_v < DV
    mask_kv = mask_k[:, None] & mask_v[None, :]
    kv_offs = offs_k[:, None] * DV + offs_v[None, :]
    k_base = k_ptr + b.to(tl.int64) * s_kb + h.to(tl.int64) * s_kh
    v_base = v_ptr + b.to(tl.int64) * s_vb + h.to(tl.int64) * s_vh
    row_base = bh.to(tl.int64) * S_pad
    first_v = (offs_k * 0 + pid_v) == 0       # one column block owns the normalizer state n

    C = tl.zeros((BK, BV), dtype=tl.float32)
    n = tl.zeros((BK,), dtype=tl.float32)
    if HAS_C0:
        C = tl.load(c0_ptr + bh.to(tl.int64) * DQK * DV + kv_offs, mask=mask_kv, other=0.0).to(tl.float32)
    if HAS_N0:
        n = tl.load(n0_ptr + bh.to(tl.int64) * DQK + offs_k, mask=mask_k, other=0.0).to(tl.float32)

    if VARLEN:
        # Chunk c continues the state of chunk c - 1 only where `carries(c)`; elsewhere the
        # recurrence restarts, so the chunks form independent chains, each beginning at a chunk
        # that does not carry (listed by `chain_starts`). The programs of a head share them out.
        for j in range(slot, tl.load(count_ptr), P):
            c0 = tl.load(chains_ptr + j)
            # Only a chain's first chunk has rows of other sequences: C_{c0+1} holds those of
            # the sequence of its last step, from `lo` on (none where the next chunk starts a
            # sequence). C_{c0} is the chain before's (stored by it; zero for chunk 0).
            nxt = c0 * L + L
            whole = (segment_first(cu_ptr, NSEQ, STEPS, nxt, S, VARLEN) != nxt) | (nxt >= S)
            lo = tl.where(whole, segment_first(cu_ptr, NSEQ, STEPS, nxt - 1, S, VARLEN), S)
            C = tl.zeros((BK, BV), dtype=tl.float32)
            n = tl.zeros((BK,), dtype=tl.float32)
            chunk = bh.to(tl.int64) * NC + c0
            tl.store(states_ptr + chunk * DQK * DV + kv_offs, C.to(states_ptr.dtype.element_ty),
                     mask=tl.where(c0 == 0, mask_kv, False))
            tl.store(nstates_ptr + chunk * DQK + offs_k, n, mask=tl.where(c0 == 0, mask_k & first_v, False))
            C, n = _states_chunk(k_base, v_base, w_ptr, row_base, c0, lo, C, n, offs_k, offs_v, mask_k, mask_v,
                                 s_kt, s_vt, S, L, BT, DOT_DTYPE, PRECISION)
            # The rest of the chain carries: the batch walk's steps, then C_{last+1}, the first
            # state of the next chain.
            last = chain_end(cu_ptr, NSEQ, STEPS, c0, S, NC, L, True)
            C, n = _states_walk(k_base, v_base, w_ptr, decay_ptr, states_ptr, nstates_ptr, bh, row_base, c0 + 1,
                                last + 1, C, n, kv_offs, offs_k, offs_v, mask_k, mask_v, mask_kv, first_v,
                                s_kt, s_vt, S, NC, DQK, DV, L, BT, DOT_DTYPE, PRECISION)
            chunk = bh.to(tl.int64) * NC + last + 1
            more = last + 1 < NC
            tl.store(states_ptr + chunk * DQK * DV + kv_offs, C.to(states_ptr.dtype.element_ty),
                     mask=tl.where(more, mask_kv, False))
            tl.store(nstates_ptr + chunk * DQK + offs_k, n, mask=tl.where(more, mask_k & first_v, False))
    else:
        C, n = _states_walk(k_base, v_base, w_ptr, decay_ptr, states_ptr, nstates_ptr, bh, row_base, 0, NC,
                            C, n, kv_offs, offs_k, offs_v, mask_k, mask_v, mask_kv, first_v,
                            s_kt, s_vt, S, NC, DQK, DV, L, BT, DOT_DTYPE, PRECISION)
        tl.store(c_last_ptr + bh.to(tl.int64) * DQK * DV + kv_offs, C, mask=mask_kv)
        tl.store(n_last_ptr + bh.to(tl.int64) * DQK + offs_k, n, mask=mask_k & first_v)


@triton.jit
def _states_walk(k_base, v_base, w_ptr, decay_ptr, states_ptr, nstates_ptr, bh, row_base, c_from, c_to, C, n,
                 kv_offs, offs_k, offs_v, mask_k, mask_v, mask_kv, first_v, s_kt, s_vt, S, NC,
                 DQK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BT: tl.constexpr,
                 DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """Chunks c_from .. c_to - 1: store C_c, then C_{c+1} = decay_c C_c + chunk c's terms. The
    loop Triton pipelines."""
    for c in range(c_from, c_to):
        chunk = bh.to(tl.int64) * NC + c
        tl.store(states_ptr + chunk * DQK * DV + kv_offs, C.to(states_ptr.dtype.element_ty), mask=mask_kv)
        tl.store(nstates_ptr + chunk * DQK + offs_k, n, mask=mask_k & first_v)
        decay = tl.load(decay_ptr + bh.to(tl.int64) * NC + c)
        C, n = _states_chunk(k_base, v_base, w_ptr, row_base, c, 0, C * decay, n * decay, offs_k, offs_v,
                             mask_k, mask_v, s_kt, s_vt, S, L, BT, DOT_DTYPE, PRECISION)
    return C, n


@triton.jit
def _states_chunk(k_base, v_base, w_ptr, row_base, c, lo, C, n, offs_k, offs_v, mask_k, mask_v, s_kt, s_vt, S,
                  L: tl.constexpr, BT: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """C + sum_s w_s k_s v_s^T and n + sum_s w_s k_s over chunk c's steps s >= lo (and < S)."""
    for tt in tl.static_range(L // BT):    # unrolled: the chunk loop is the pipelined one
        t = c * L + tt * BT + tl.arange(0, BT)
        mask_t = (t < S) & (t >= lo)
        k = tl.load(k_base + t[:, None] * s_kt + offs_k[None, :], mask=mask_t[:, None] & mask_k[None, :], other=0.0)
        v = tl.load(v_base + t[:, None] * s_vt + offs_v[None, :], mask=mask_t[:, None] & mask_v[None, :], other=0.0)
        w = tl.load(w_ptr + row_base + t)
        # Scale the values, not the keys: k then feeds the matrix unit as loaded (measured 30%
        # faster on H100 than scaling k, bench/NOTES.md).
        vw = (v.to(tl.float32) * w[:, None]).to(DOT_DTYPE)
        C = tl.dot(tl.trans(k.to(DOT_DTYPE)), vw, acc=C, input_precision=PRECISION)
        n += tl.sum(k.to(tl.float32) * w[:, None], axis=0)
    return C, n


@triton.jit
def head_base(ptr, bh, NH, s_b, s_h):
    """Where head bh = b * NH + h of a (B, NH, ...) tensor with batch and head strides s_b, s_h
    starts."""
    return ptr + (bh // NH).to(tl.int64) * s_b + (bh % NH).to(tl.int64) * s_h


@triton.jit
def row_products(a_base, ra, s_a, b_base, rb, s_b, S, D: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr,
                 DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """(BT, BT) float32: a[ra] . b[rb] over D features, BD at a time, for two tiles of rows
    (row t of a at a_base + t * s_a; rows at or past S read as zeros): a chunk's scores q . k,
    score gradients dh . v, and their transposes."""
    acc = tl.zeros((BT, BT), dtype=tl.float32)
    for d0 in range(0, D, BD):
        d = d0 + tl.arange(0, BD)
        a = tl.load(a_base + ra[:, None] * s_a + d[None, :], mask=(ra < S)[:, None] & (d < D)[None, :], other=0.0)
        b = tl.load(b_base + rb[:, None] * s_b + d[None, :], mask=(rb < S)[:, None] & (d < D)[None, :], other=0.0)
        acc += tl.dot(a.to(DOT_DTYPE), tl.trans(b.to(DOT_DTYPE)), input_precision=PRECISION)
    return acc


@cached_launch
@triton.jit(do_not_specialize=["NH", "S", "NSEQ", "STEPS"])
def chunkwise_fwd_scores_kernel(
    q_ptr, k_ptr, nstates_ptr, u2_ptr, r2_ptr, g_ptr, cu_ptr, NSEQ, STEPS, p_ptr, nq_ptr,
    s_qb, s_qh, s_qt, s_kb, s_kh, s_kt,
    NH, S, S_pad, NC,
    DQK: tl.constexpr, L: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, VARLEN: tl.constexpr,
):
    """The chunk's weighted scores once, for the output kernel's DV blocks (which otherwise each
    form them again): p[bh, t, s - cL] = W[t, s] (q_t . k_s) for the key tiles of t's chunk up
    to t's tile (0 for s > t and across sequences) in the dtype the product with v takes them
    in; and the normalizer's dot before the scale, nq[bh, t] = g_t (q_t . n_c) (0 where C_c is
    not t's sequence) + the float32 row sums of p, which the DV blocks would each form again.
    p (B*NH, S_pad, L), tiles after the diagonal not written (not read); nq (B*NH, S_pad)."""
    tile, bh = tl.program_id(0), tl.program_id(1)
    chunk = tile // (L // BT)
    t = tile * BT + tl.arange(0, BT)
    q_base, k_base = head_base(q_ptr, bh, NH, s_qb, s_qh), head_base(k_ptr, bh, NH, s_kb, s_kh)
    row_base = bh.to(tl.int64) * S_pad
    u2 = tl.load(u2_ptr + row_base + t)
    t_first = segment_first(cu_ptr, NSEQ, STEPS, t, S, VARLEN)
    nq = tl.zeros((BT,), dtype=tl.float32)
    for j in range(chunk * (L // BT), tile + 1):
        s = j * BT + tl.arange(0, BT)
        scores = row_products(q_base, t, s_qt, k_base, s, s_kt, S, DQK, BK, BT, DOT_DTYPE, PRECISION)
        r2 = tl.load(r2_ptr + row_base + s)
        causal = (s[None, :] <= t[:, None]) & same_sequence(t_first, segment_first(cu_ptr, NSEQ, STEPS, s, S, VARLEN),
                                                                 VARLEN)
        scores = tl.where(causal, scores * tl.exp2(u2[:, None] + r2[None, :]), 0.0)
        nq += tl.sum(scores, axis=1)
        tl.store(p_ptr + (row_base + t)[:, None] * L + (s - chunk * L)[None, :], scores.to(p_ptr.dtype.element_ty))
    nq_state = _state_normalizer_dot(q_base, nstates_ptr + (bh.to(tl.int64) * NC + chunk) * DQK, t, s_qt, S,
                                     DQK, BK)
    g = tl.load(g_ptr + row_base + t)
    if VARLEN:          # rows of sequences that start inside the chunk: C_c is not theirs (selected out)
        nq_state = tl.where(t_first <= chunk * L, nq_state * g, 0.0)
    else:
        nq_state = nq_state * g
    tl.store(nq_ptr + row_base + t, nq_state + nq)


@triton.jit
def _state_normalizer_dot(q_base, n_base, t, s_qt, S, DQK: tl.constexpr, BK: tl.constexpr):
    """(BT,) float32: q_t . n over DQK, BK at a time (rows t at or past S read as zeros)."""
    nq = tl.zeros(t.shape, dtype=tl.float32)
    for kb in range(0, DQK, BK):
        offs_k = kb + tl.arange(0, BK)
        mask_k = offs_k < DQK
        q = tl.load(q_base + t[:, None] * s_qt + offs_k[None, :], mask=(t < S)[:, None] & mask_k[None, :], other=0.0)
        n = tl.load(n_base + offs_k, mask=mask_k, other=0.0)
        nq += tl.sum(q.to(tl.float32) * n[None, :], axis=1)
    return nq


@cached_launch
@triton.jit(do_not_specialize=["NH", "S", "NC", "NSEQ", "STEPS"])
def chunkwise_fwd_output_kernel(
    q_ptr, k_ptr, v_ptr, states_ptr, nstates_ptr, u2_ptr, r2_ptr, g_ptr, m_ptr, cu_ptr, NSEQ, STEPS, p_ptr, nqi_ptr,
    h_ptr, inv_den_ptr, zsign_ptr,
    s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_hb, s_hh, s_ht,
    NH, S, S_pad, NC, scale, eps,
    DQK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BT: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    VARLEN: tl.constexpr, SCORES: tl.constexpr,
):
    """h of one DV block, and the row statistics. SCORES: the chunk's weighted scores and the
    normalizer's dot from `chunkwise_fwd_scores_kernel` (p_ptr, nqi_ptr) instead of formed here.

    A key tile's product with v runs as is, and again with the exact causal handling of
    non-finite values (below) only where its result is not all finite (a non-finite v entry
    makes its whole column non-finite, 0 x Inf being NaN): the same numbers, bit for bit, at a
    fraction of the instructions when everything is finite."""
    pid_v, tile, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, h = bh // NH, bh % NH
    TILES_PER_CHUNK: tl.constexpr = L // BT
    chunk = tile // TILES_PER_CHUNK
    offs_v = pid_v * BV + tl.arange(0, BV)
    mask_v = offs_v < DV
    t = tile * BT + tl.arange(0, BT)
    mask_t = t < S
    q_base = q_ptr + b.to(tl.int64) * s_qb + h.to(tl.int64) * s_qh
    k_base = k_ptr + b.to(tl.int64) * s_kb + h.to(tl.int64) * s_kh
    v_base = v_ptr + b.to(tl.int64) * s_vb + h.to(tl.int64) * s_vh
    row_base = bh.to(tl.int64) * S_pad
    state = bh.to(tl.int64) * NC + chunk
    u2 = tl.load(u2_ptr + row_base + t)
    g = tl.load(g_ptr + row_base + t)
    m = tl.load(m_ptr + row_base + t)
    t_first = segment_first(cu_ptr, NSEQ, STEPS, t, S, VARLEN)

    # Contribution of the state at the chunk's start.
    num = tl.zeros((BT, BV), dtype=tl.float32)
    nq = tl.zeros((BT,), dtype=tl.float32)
    for kb in range(0, DQK, BK):
        offs_k = kb + tl.arange(0, BK)
        mask_k = offs_k < DQK
        q = tl.load(q_base + t[:, None] * s_qt + offs_k[None, :],
                    mask=mask_t[:, None] & mask_k[None, :], other=0.0)
        C = tl.load(states_ptr + state * DQK * DV + offs_k[:, None] * DV + offs_v[None, :],
                    mask=mask_k[:, None] & mask_v[None, :], other=0.0)
        num += tl.dot(q.to(DOT_DTYPE), C.to(DOT_DTYPE), input_precision=PRECISION)
        if not SCORES:
            n = tl.load(nstates_ptr + state * DQK + offs_k, mask=mask_k, other=0.0)
            nq += tl.sum(q.to(tl.float32) * n[None, :], axis=1)
    if VARLEN:          # rows of sequences that start inside the chunk: C_c is not theirs (selected out)
        carried = t_first <= chunk * L
        num = tl.where(carried[:, None], num * g[:, None], 0.0)
        nq = tl.where(carried, nq * g, 0.0)
    else:
        num = num * g[:, None]
        nq = nq * g

    # Contributions inside the chunk, key tile by key tile up to the diagonal. Causality holds
    # for every value, finite or not: later keys are selected out (a zero weight times a NaN or
    # Inf score is NaN), values are multiplied with their non-finite entries zeroed (a zero score
    # times a NaN value is NaN in the product), and such an entry makes its own and the later
    # rows NaN in its column instead, as the recurrence would. The rows it reaches are counted
    # by a product with the causal mask (0/1 operands, exact float32 sums), in num's layout.
    for j in range(chunk * TILES_PER_CHUNK, tile + 1):
        s = j * BT + tl.arange(0, BT)
        if SCORES:
            scores = tl.load(p_ptr + (row_base + t)[:, None] * L + (s - chunk * L)[None, :])
        else:
            scores = row_products(q_base, t, s_qt, k_base, s, s_kt, S, DQK, BK, BT, DOT_DTYPE, PRECISION)
            r2 = tl.load(r2_ptr + row_base + s)
        causal = (s[None, :] <= t[:, None]) & same_sequence(t_first, segment_first(cu_ptr, NSEQ, STEPS, s, S, VARLEN),
                                                                 VARLEN)
        if not SCORES:
            scores = tl.where(causal, scores * tl.exp2(u2[:, None] + r2[None, :]), 0.0)
            nq += tl.sum(scores, axis=1)
        v = tl.load(v_base + s[:, None] * s_vt + offs_v[None, :],
                    mask=(s < S)[:, None] & mask_v[None, :], other=0.0)
        product = tl.dot(scores.to(DOT_DTYPE), v.to(DOT_DTYPE), input_precision=PRECISION)
        if tl.sum(tl.sum(product * 0.0, axis=1), axis=0) == 0.0:        # all finite
            num += product
        else:
            finite = tl.abs(v.to(tl.float32)) < float("inf")          # False for NaN and +-Inf
            reached = tl.dot(tl.where(causal, 1.0, 0.0).to(DOT_DTYPE),
                             tl.where(finite, 0.0, 1.0).to(DOT_DTYPE), input_precision=PRECISION)
            num += tl.dot(scores.to(DOT_DTYPE), tl.where(finite, v, 0.0).to(DOT_DTYPE),
                          input_precision=PRECISION)
            num = tl.where(reached > 0.5, float("nan"), num)

    if SCORES:
        nq = tl.load(nqi_ptr + row_base + t)           # the state's and the chunk's parts
    num = num * scale
    nq = nq * scale
    floor = tl.exp(-m)
    den = maximum_nan(tl.abs(nq), floor) + eps
    out = num / den[:, None]
    h_base = h_ptr + b.to(tl.int64) * s_hb + h.to(tl.int64) * s_hh
    tl.store(h_base + t[:, None] * s_ht + offs_v[None, :], out.to(h_ptr.dtype.element_ty),
             mask=mask_t[:, None] & mask_v[None, :])
    zsign = tl.where(tl.abs(nq) > floor, tl.where(nq >= 0, 1.0, -1.0), 0.0)
    first_v = (t * 0 + pid_v) == 0             # one column block writes the row statistics
    tl.store(inv_den_ptr + row_base + t, 1.0 / den, mask=first_v)
    tl.store(zsign_ptr + row_base + t, zsign, mask=first_v)


def intra_dtype(cfg) -> torch.dtype:
    """The dtype of the once-formed intra-chunk matrices (`cfg.scores`, `cfg.dscores`): the one
    the kernels' products take them in."""
    return torch.bfloat16 if cfg.dot_dtype == tl.bfloat16 else torch.float32


def varlen_maxnreg(cfg):
    """Register cap of the packed-sequence state kernels (forward and backward). With 64 x 64
    state tiles on 4 warps their chain loops take 217-227 registers a thread against 148-168
    for the batch walks (H200, Triton 3.6): 2 programs per SM instead of 3. Capped at 168 they
    fit 3 again, with a few spills (measured: the op's fwd+bwd 10.84 -> 10.52 ms,
    bench/NOTES.md). Other tiles keep Triton's choice."""
    small = cfg.block_k_states * cfg.block_v_states <= 64 * 64 and cfg.num_warps_states == 4
    return 168 if small else None


def chunkwise_fwd_states(k, v, gates, c_initial, n_initial, cfg, cu_seqlens=None):
    """States at the start of every chunk and the final state.

    k: (B, NH, S, DQK), v: (B, NH, S, DV), any strides with unit stride in the last dim.
    Returns states (B*NH, NC, DQK, DV) in cfg.state_dtype, nstates (B*NH, NC, DQK) float32,
    c_last (B, NH, DQK, DV) and n_last (B, NH, DQK) float32 (not written with `cu_seqlens`).
    """
    B, NH, S, DQK = k.shape
    DV = v.shape[-1]
    NC = gates.num_chunks
    states = new_empty((B * NH, NC, DQK, DV), cfg.state_dtype, k.device)
    nstates = new_empty((B * NH, NC, DQK), torch.float32, k.device)
    c_last = new_empty((B, NH, DQK, DV), torch.float32, k.device)
    n_last = new_empty((B, NH, DQK), torch.float32, k.device)
    chains, count, P = gates.w, gates.w, 1            # unread without cu_seqlens
    if cu_seqlens is not None:
        chains, count, P = chain_starts(cu_seqlens, S, NC, cfg.chunk_size)
    grid = (cdiv(DQK, cfg.block_k_states), cdiv(DV, cfg.block_v_states), B * NH * P)
    chunkwise_fwd_states_kernel[grid](
        k, v, gates.w, gates.decay, c_initial, n_initial, *packed_kernel_args(cu_seqlens, gates.w),
        chains, count, states, nstates, c_last, n_last,
        *k.stride()[:3], *v.stride()[:3],
        NH, S, gates.padded_len, NC, P,
        DQK=DQK, DV=DV, L=cfg.chunk_size, BT=cfg.tile_states, BK=cfg.block_k_states, BV=cfg.block_v_states,
        HAS_C0=c_initial is not None, HAS_N0=n_initial is not None, DOT_DTYPE=cfg.dot_dtype,
        PRECISION=cfg.precision, VARLEN=cu_seqlens is not None, num_warps=cfg.num_warps_states, num_stages=cfg.num_stages_states,
        maxnreg=varlen_maxnreg(cfg) if cu_seqlens is not None else None,
    )
    return states, nstates, c_last, n_last


def chunkwise_fwd_output(q, k, v, states, nstates, gates, eps, cfg, seq_major=False, cu_seqlens=None):
    """Outputs h (B, NH, S, DV) in q's dtype (laid out as (B, S, NH, DV) if `seq_major`), the
    row statistics 1/den and the normalizer sign, each (B*NH, S_pad) float32, and with
    `cfg.scores` the chunks' weighted scores p (B*NH, S_pad, L) (`chunkwise_fwd_scores_kernel`;
    the backward can read them instead of forming them again), else None. `cu_seqlens`
    (packed sequences: offsets (N + 1,) int32 on q's device): keys of other sequences in a chunk are masked out."""
    B, NH, S, DQK = q.shape
    DV = v.shape[-1]
    S_pad = gates.padded_len
    h = new_empty_bhsd(B, NH, S, DV, q.dtype, q.device, seq_major)
    inv_den = new_empty((B * NH, S_pad), torch.float32, q.device)
    zsign = new_empty((B * NH, S_pad), torch.float32, q.device)
    packed = packed_kernel_args(cu_seqlens, gates.m)
    p = nq = gates.m                                  # unread without cfg.scores
    scores = None
    if cfg.scores:
        p = scores = new_empty((B * NH, S_pad, cfg.chunk_size), intra_dtype(cfg), q.device)
        nq = new_empty((B * NH, S_pad), torch.float32, q.device)
        chunkwise_fwd_scores_kernel[(S_pad // cfg.tile, B * NH)](
            q, k, nstates, gates.u2, gates.r2, gates.g, *packed, p, nq, *q.stride()[:3], *k.stride()[:3], NH, S, S_pad,
            gates.num_chunks,
            DQK=DQK, L=cfg.chunk_size, BT=cfg.tile, BK=cfg.block_k, DOT_DTYPE=cfg.dot_dtype, PRECISION=cfg.precision,
            VARLEN=cu_seqlens is not None, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    grid = (cdiv(DV, cfg.block_v), S_pad // cfg.tile, B * NH)
    chunkwise_fwd_output_kernel[grid](
        q, k, v, states, nstates, gates.u2, gates.r2, gates.g, gates.m, *packed, p, nq, h, inv_den, zsign,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *h.stride()[:3],
        NH, S, S_pad, gates.num_chunks, DQK**-0.5, eps,
        DQK=DQK, DV=DV, L=cfg.chunk_size, BT=cfg.tile, BK=cfg.block_k, BV=cfg.block_v,
        DOT_DTYPE=cfg.dot_dtype, PRECISION=cfg.precision, VARLEN=cu_seqlens is not None, SCORES=cfg.scores,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages_output,
    )
    return h, inv_den, zsign, scores
