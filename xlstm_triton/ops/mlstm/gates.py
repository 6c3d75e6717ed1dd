"""Gate preparation for the chunkwise mLSTM: everything that depends on the gates alone.

The stabilizer m_t of docs/mlstm.md is a function of the gates only:

    F_t = sum_{j<=t} logsigmoid(f_j)                  (log forget product, global cumsum)
    m_t = F_t + max(m_0, max_{s<=t} (i_s - F_s))      (the recurrent m_t, unrolled)

so it is computed once here, in float64 (F reaches -1e5 over long sequences with closed forget
gates; float32 would lose the small differences the weights are made of), and every kernel reads
the resulting per-step and per-chunk weights. With chunk c covering steps [cL, cL + L),
b_t = F_t - F_{cL-1} the chunk-local cumsum, mc_c the stabilizer of the state at the chunk's
start (mc_0 = m_0, mc_NC = m after the last step):

    intra-chunk weight   W[t, s] = exp(b_t - b_s + i_s - m_t) = exp2(u_t + r_s),  s <= t
    inter-chunk weight   g_t     = exp(b_t + mc_c - m_t)            (applied to the state C_c)
    state input weight   w_s     = exp(b_L - b_s + i_s - mc_{c+1})  (k_s v_s^T into C_{c+1})
    state decay          decay_c = exp(b_L + mc_c - mc_{c+1})

All of these are <= 1 by construction of m. The sequence is padded to whole chunks with i = -inf
and logsigmoid(f) = 0, so padded steps change nothing.

logsigmoid(f) is floored at LOGF_FLOOR = -1000 (a weight exp(-1000) is 0 in float64): a forget
gate of -inf, "forget everything", then forgets exactly as in the recurrence, where the
differences of an unfloored F would be -inf - (-inf) = NaN. The floor acts like a clamp: below
it (f < -1000) the forget gate gets no gradient.

`chunkwise_gates` runs two Triton kernels where the Triton kernels run, both with one program per
(chunk, row) and in float64 (a row walking its chunks in order was latency-bound: few programs,
a long sequential loop). `chunk_gate_summary_kernel` reduces each chunk to two numbers, its
b_L and max_t (i_t - b_t); `chunkwise_gates_kernel` combines the summaries of the earlier chunks
of its row into F_{cL-1} and max_{s<cL} (i_s - F_s) (the part of m's running max before the
chunk: per earlier chunk c', its max_t (i_t - b_t) - F_{c'L-1}), then computes its chunk as the
recurrence does. The PyTorch spelling, `chunkwise_gates_torch`, is the CPU path and the
kernels' test oracle; it is some forty small ops, which at a few thousand steps cost more host
time than the whole layer's GPU work (a 2k-token prefill of xLSTM-7B was host-bound on them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ...launch import cached_launch
from ...utils import (maximum_nan, minimum_nan, new_empty, next_power_of_2, packed_kernel_args, packed_sequence,
                      soft_cap_jit, use_triton)
from ...utils import soft_cap as apply_soft_cap

LOG2E = 1.0 / math.log(2.0)
LOGF_FLOOR = -1000.0


def floored_logsigmoid(f: torch.Tensor) -> torch.Tensor:
    """logsigmoid(f) floored at LOGF_FLOOR (NaN stays NaN); differentiable like a clamp."""
    return torch.clamp(F.logsigmoid(f), min=LOGF_FLOOR)


@dataclass
class ChunkGates:
    """Per-step arrays are (B*NH, S_pad) float32; per-chunk arrays (B*NH, NC) float32 (float64
    from the PyTorch spelling for float64 gates)."""
    u2: torch.Tensor      # (b_t - m_t) * log2(e)
    r2: torch.Tensor      # (i_s - b_s) * log2(e); -inf on padding
    g: torch.Tensor       # inter-chunk weight of row t
    w: torch.Tensor       # state input weight of column s
    m: torch.Tensor       # stabilizer m_t
    decay: torch.Tensor   # (B*NH, NC)
    m_last: torch.Tensor  # (B, NH, 1) float64: m after the last real step (None when unpacked)
    num_chunks: int
    padded_len: int
    steps: torch.Tensor | None = None   # (5, B*NH, S_pad): u2, r2, g, w, m are its views

    def pack(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(steps, decay): what a backward needs to rebuild the gates without recomputing them."""
        steps = self.steps if self.steps is not None else torch.stack([self.u2, self.r2, self.g, self.w, self.m])
        return steps, self.decay

    @classmethod
    def unpack(cls, steps: torch.Tensor, decay: torch.Tensor) -> "ChunkGates":
        u2, r2, g, w, m = steps.unbind(0)
        return cls(u2=u2, r2=r2, g=g, w=w, m=m, decay=decay, m_last=None, num_chunks=decay.shape[1],
                   padded_len=steps.shape[2], steps=steps)


def chunkwise_gates(i: torch.Tensor, f: torch.Tensor, m_initial: torch.Tensor | None,
                    chunk_size: int, soft_cap: float | None = None,
                    cu_seqlens: torch.Tensor | None = None) -> ChunkGates:
    """i, f: (B, NH, S) gate pre-activations, any strides; m_initial: (B, NH, 1) or None
    (zeros); soft_cap: the gates are cap * tanh(x / cap) of i and f if given. cu_seqlens:
    packed sequences (B = 1): their offsets (N + 1,) int32 on i's device (the kernels only)."""
    if use_triton(i) and i.numel() > 0:
        return chunkwise_gates_triton(i, f, m_initial, chunk_size, soft_cap, cu_seqlens)
    if cu_seqlens is not None:
        raise ValueError("chunkwise_gates: packed sequences (cu_seqlens) run on the Triton kernels only")
    return chunkwise_gates_torch(i, f, m_initial, chunk_size, soft_cap)


@triton.jit
def gate_rows(i_ptr, f_ptr, row, s_ib, s_ih, s_fb, s_fh, NH):
    """Pointers to row `row` = b * NH + h of the (B, NH, S) gate tensors i and f."""
    b, h = row // NH, row % NH
    return i_ptr + b * s_ib + h * s_ih, f_ptr + b * s_fb + h * s_fh


@triton.jit
def _chunk_gates(i_ptr, f_ptr, row, c, S, s_ib, s_ih, s_it, s_fb, s_fh, s_ft, NH, cap, L: tl.constexpr,
                 SOFT_CAP: tl.constexpr):
    """Chunk c of a row: positions, input gates and the chunk-local cumsum b of the floored
    logsigmoid(f), in float64; padding i = -inf, logsigmoid(f) = 0."""
    pos = c * L + tl.arange(0, L)
    real = pos < S
    i_row, f_row = gate_rows(i_ptr, f_ptr, row, s_ib, s_ih, s_fb, s_fh, NH)
    ig = tl.load(i_row + pos * s_it, mask=real, other=float("-inf")).to(tl.float64)
    fg = tl.load(f_row + pos * s_ft, mask=real, other=0.0).to(tl.float64)
    if SOFT_CAP:
        ig = tl.where(real, soft_cap_jit(ig, cap), ig)
        fg = soft_cap_jit(fg, cap)
    logf = minimum_nan(fg, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(fg)))      # logsigmoid
    logf = tl.where(real, maximum_nan(logf, -1000.0), 0.0)              # -1000.0 = LOGF_FLOOR
    b = tl.cumsum(logf, axis=0)                          # chunk-local F_t - F_{cL-1}
    return pos, ig, logf, b


@triton.jit
def segment_first(cu_ptr, NSEQ, STEPS, pos, S, VARLEN: tl.constexpr):
    """The first step of each position's packed sequence (VARLEN: offsets cu (NSEQ + 1,),
    searched by `packed_sequence`; positions past S belong to the last one), else 0: the
    sequence is the whole row."""
    if VARLEN:
        return packed_sequence(cu_ptr, NSEQ, STEPS, pos, S)[1]
    else:
        return pos * 0


@triton.jit
def same_sequence(first_rows, first_cols, VARLEN: tl.constexpr):
    """(len(rows), len(cols)) mask from the `segment_first` of rows and of columns: the two
    steps are in one packed sequence (all True without VARLEN). The kernels' intra-chunk
    weights are selected by it."""
    if VARLEN:
        return first_rows[:, None] == first_cols[None, :]
    else:
        return (first_rows[:, None] >= 0) & (first_cols[None, :] >= 0)


@triton.jit
def carries(cu_ptr, NSEQ, STEPS, c, S, L: tl.constexpr):
    """Packed sequences: whether C_{c+1} continues C_c, i.e. chunk c's last step is in the
    sequence of its first step, begun before the chunk, and the next chunk does not start a
    sequence. Where it is False the state recurrence restarts (the kernels' segment ends)."""
    first = c * L
    nxt = first + L
    seq_last = segment_first(cu_ptr, NSEQ, STEPS, nxt - 1, S, True)
    whole = (segment_first(cu_ptr, NSEQ, STEPS, nxt, S, True) != nxt) | (nxt >= S)
    return tl.where(whole, seq_last < first, False)


@triton.jit
def chain_end(cu_ptr, NSEQ, STEPS, c0, S, NC, L: tl.constexpr, UP: tl.constexpr, BLOCK: tl.constexpr = 64):
    """Packed sequences: where the chain of chunks through c0 ends, BLOCK chunks' flags at a time.
    Chunk c uses the state of chunk c - 1 where `carries(c)`, so the forward chain beginning at
    c0 (UP) runs to the last e such that every chunk in (c0, e] carries, and the backward one
    from c0 down to the first b such that every chunk in [b, c0) carries."""
    if UP:
        end = NC - 1
        base = c0 + 1
        while base <= end:
            c = base + tl.arange(0, BLOCK)
            stop = (c < NC) & (carries(cu_ptr, NSEQ, STEPS, c, S, L) == 0)
            end = tl.minimum(end, tl.min(tl.where(stop, c, NC), axis=0) - 1)
            base += BLOCK
    else:
        end = 0
        top = c0 - 1
        while top >= end:
            c = top - tl.arange(0, BLOCK)
            stop = (c >= 0) & (carries(cu_ptr, NSEQ, STEPS, tl.maximum(c, 0), S, L) == 0)
            end = tl.maximum(end, tl.max(tl.where(stop, c, -1), axis=0) + 1)
            top -= BLOCK
    return end


@cached_launch
@triton.jit(do_not_specialize=["S", "NC", "NSEQ", "STEPS"])
def chain_starts_kernel(cu_ptr, NSEQ, STEPS, chains_ptr, count_ptr, S, NC, L: tl.constexpr, TOPS: tl.constexpr,
                        BLOCK: tl.constexpr, LONGEST_FIRST: tl.constexpr):
    """Packed sequences, one program: the chunks where the state recurrences' chains begin and
    their count: the chunks that do not carry (the forward walks up from each) or, TOPS, those
    and the last chunk (the backward walks down from each). In order of position, or
    (LONGEST_FIRST, all chunks in one BLOCK) the longest chains first, so that the programs
    sharing them out (chain j goes to program j mod P) finish together."""
    count = tl.zeros((), dtype=tl.int32)
    for base in range(0, NC, BLOCK):
        c = base + tl.arange(0, BLOCK)
        flag = (c < NC) & (carries(cu_ptr, NSEQ, STEPS, c, S, L) == 0)
        if TOPS:
            flag = flag | (c == NC - 1)
        flag = flag.to(tl.int32)
        tl.store(chains_ptr + count + tl.cumsum(flag, axis=0) - flag, c, mask=flag != 0)
        count += tl.sum(flag, axis=0)
    tl.store(count_ptr, count)
    if LONGEST_FIRST:
        tl.debug_barrier()                    # the list above, stored by other threads
        j = tl.arange(0, BLOCK)
        valid = j < count
        here = tl.load(chains_ptr + j, mask=valid, other=0)
        if TOPS:                              # down to the chunk above the previous top
            length = here - tl.load(chains_ptr + j - 1, mask=valid & (j > 0), other=-1)
        else:                                 # up to the chunk below the next start
            length = tl.load(chains_ptr + j + 1, mask=valid & (j + 1 < count), other=NC) - here
        key = tl.sort(tl.where(valid, length * BLOCK + here, -1), 0, descending=True)
        tl.debug_barrier()                    # every load above done before the stores
        tl.store(chains_ptr + j, key % BLOCK, mask=valid)


CHAIN_SLOTS = 64     # programs per head (and state tile) that share a packed row's chains


def chain_starts(cu_seqlens: torch.Tensor, total: int, num_chunks: int, chunk_size: int, tops: bool = False):
    """The state kernels' work list over a packed row of `total` steps with offsets `cu_seqlens`
    (int32, on the device) (`chain_starts_kernel`): int32 chunk indices (num_chunks,), the
    first `count` of them valid (the longest chains first, up to 1,024 chunks; in order
    beyond), and count (1,) int32, on the device (no host sync); and the number of programs per
    head that walk them."""
    chains = new_empty((num_chunks,), torch.int32, cu_seqlens.device)
    count = new_empty((1,), torch.int32, cu_seqlens.device)
    block = min(1024, max(16, next_power_of_2(num_chunks)))
    chain_starts_kernel[(1,)](*packed_kernel_args(cu_seqlens, None), chains, count, total, num_chunks, L=chunk_size,
                              TOPS=tops, BLOCK=block, LONGEST_FIRST=block >= num_chunks, num_warps=4)
    return chains, count, min(num_chunks, CHAIN_SLOTS)


@triton.jit
def _segmented_sum(fa, va, fb, vb):
    """Scan combine of (restart flag, value): a sum that restarts where the flag is set."""
    return fa | fb, tl.where(fb != 0, vb, va + vb)


@triton.jit
def _segmented_max(fa, va, fb, vb):
    return fa | fb, tl.where(fb != 0, vb, maximum_nan(va, vb))


@cached_launch
@triton.jit(do_not_specialize=["NSEQ", "STEPS"])
def chunk_gate_summary_kernel(i_ptr, f_ptr, cu_ptr, NSEQ, STEPS, b_end_ptr, lmax_ptr, S, NC, row0, s_ib, s_ih, s_it, s_fb,
                              s_fh, s_ft, NH, cap, L: tl.constexpr, SOFT_CAP: tl.constexpr,
                              VARLEN: tl.constexpr):
    """Program (c, row): b_end = b at the chunk's last step, lmax = max_t (i_t - b_t), both
    over the chunk's last packed sequence only (VARLEN: from its first step in the chunk on),
    the part later chunks of that sequence build on."""
    c = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64) + row0
    pos, ig, logf, b = _chunk_gates(i_ptr, f_ptr, row, c, S, s_ib, s_ih, s_it, s_fb, s_fh, s_ft, NH, cap,
                                    L, SOFT_CAP)
    if VARLEN:
        tail = pos >= segment_first(cu_ptr, NSEQ, STEPS, c * L + L - 1, S, True)
        b = tl.cumsum(tl.where(tail, logf, 0.0), axis=0)
        ig = tl.where(tail, ig, float("-inf"))
    b_end = tl.sum(tl.where(tl.arange(0, L) == L - 1, b, 0.0), axis=0)
    lmax = tl.reduce(ig - b, 0, maximum_nan)
    tl.store(b_end_ptr + row * NC + c, b_end)
    tl.store(lmax_ptr + row * NC + c, lmax)


@cached_launch
@triton.jit(do_not_specialize=["NSEQ", "STEPS"])
def chunkwise_gates_kernel(i_ptr, f_ptr, m0_ptr, cu_ptr, NSEQ, STEPS, b_end_ptr, lmax_ptr, u2_ptr, r2_ptr, g_ptr, w_ptr, m_ptr,
                           decay_ptr, m_last_ptr, S, S_pad, NC, row0, s_ib, s_ih, s_it, s_fb, s_fh, s_ft, NH,
                           cap, L: tl.constexpr, BLOCK: tl.constexpr, HAS_M0: tl.constexpr,
                           SOFT_CAP: tl.constexpr, VARLEN: tl.constexpr):
    """Program (c, row): the outputs of chunk c, from the summaries of chunks 0..c.

    VARLEN (packed sequences, offsets `cu_ptr` (NSEQ + 1,), see `segment_first`): everything restarts at each
    sequence's first step, from m_0 = 0. The prefixes run over the chunks of the sequence of the
    chunk's first step (for the chunk's start) and of its last step (for the next chunk's), on
    the summaries of each chunk's last sequence; g is 0 for steps of sequences that start inside
    the chunk (their state is not C_c), w is 0 for steps not in the sequence of C_{c+1}, decay
    is 0 where C_{c+1} is not C_c's sequence. Pairs of steps of different sequences inside a
    chunk get weights from u2, r2 that the kernels select out (`same_sequence`)."""
    c = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64) + row0
    m0 = tl.zeros((), dtype=tl.float64)
    if HAS_M0:
        m0 = tl.load(m0_ptr + row).to(tl.float64)
    first = c * L
    last = first + L - 1
    seq_first = segment_first(cu_ptr, NSEQ, STEPS, first, S, VARLEN)         # the chunk's first step's sequence
    seq_last = segment_first(cu_ptr, NSEQ, STEPS, last, S, VARLEN)           # and its last step's
    c0 = seq_first // L                  # the prefixes cover chunks c0 .. c - 1 and c0_next .. c
    c0_next = seq_last // L
    # Prefixes over the earlier chunks, for k = c (f_prev, run_max) and k = c + 1 (f_next,
    # run_next): F_{kL-1} = sum_{c' < k} b_end_{c'} and max_{s < kL} (i_s - F_s) =
    # max_{c' < k} (lmax_{c'} - F_{c'L-1}). Masked, so a NaN in chunk c' >= k stays out of the
    # prefixes of k. Program c + 1 forms its (f_prev, run_max) by this same code over the same
    # values (an extra, fully masked block adds exactly 0 and -inf), so the state stabilizer
    # mc_{c+1} is bitwise the same in both programs.
    f_prev = tl.zeros((), dtype=tl.float64)
    f_next = tl.zeros((), dtype=tl.float64)
    run_max = tl.full((), float("-inf"), tl.float64)
    run_next = tl.full((), float("-inf"), tl.float64)
    for start in range(0, c + 1, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        upto = (idx <= c) & (idx >= c0_next)
        before = (idx < c) & (idx >= c0)
        b_end_k = tl.load(b_end_ptr + row * NC + idx, mask=idx <= c, other=0.0)
        lmax_k = tl.load(lmax_ptr + row * NC + idx, mask=idx <= c, other=float("-inf"))
        be = tl.where(before, b_end_k, 0.0)
        shifted = lmax_k - (f_prev + tl.cumsum(be, axis=0) - be)      # max_t (i_t - F_t) over chunk idx
        run_max = maximum_nan(run_max, tl.reduce(tl.where(before, shifted, float("-inf")), 0, maximum_nan))
        f_prev += tl.sum(be, axis=0)
        be = tl.where(upto, b_end_k, 0.0)
        shifted = lmax_k - (f_next + tl.cumsum(be, axis=0) - be)
        run_next = maximum_nan(run_next, tl.reduce(tl.where(upto, shifted, float("-inf")), 0, maximum_nan))
        f_next += tl.sum(be, axis=0)
    mc = f_prev + maximum_nan(m0, run_max)               # stabilizer at the chunk start (m0 for c = 0)
    mc_next = f_next + maximum_nan(m0, run_next)         # = m at the chunk's last step

    pos, ig, logf, b = _chunk_gates(i_ptr, f_ptr, row, c, S, s_ib, s_ih, s_it, s_fb, s_fh, s_ft, NH, cap,
                                    L, SOFT_CAP)
    log2e = 1.4426950408889634
    if VARLEN:
        seq = segment_first(cu_ptr, NSEQ, STEPS, pos, S, VARLEN)
        carried = seq <= first                           # in the sequence of C_c (started before)
        restart = ((seq == pos) & (pos > first)).to(tl.int32)
        _, b = tl.associative_scan((restart, logf), 0, _segmented_sum)     # b restarts with each sequence
        cum = tl.where(carried, f_prev + b, b)
        _, run = tl.associative_scan((restart, ig - cum), 0, _segmented_max)
        run = tl.where(carried, maximum_nan(run, run_max), run)
        nxt = last + 1
        whole = (segment_first(cu_ptr, NSEQ, STEPS, nxt, S, VARLEN) != nxt) | (nxt >= S)   # C_{c+1} not started empty
        feeds = tl.where(whole, seq == seq_last, False)    # the steps that enter C_{c+1}
        keeps = tl.where(whole, seq_last < first, False)   # C_c carried into C_{c+1} (`carries`)
    else:
        cum = f_prev + b
        run = maximum_nan(tl.associative_scan(ig - cum, 0, maximum_nan), run_max)
        carried = pos >= 0
        feeds = pos >= 0
        keeps = c >= 0
    m = cum + maximum_nan(m0, run)
    b_end = tl.sum(tl.where(tl.arange(0, L) == L - 1, b, 0.0), axis=0)
    out = row * S_pad + pos
    tl.store(u2_ptr + out, ((b - m) * log2e).to(tl.float32))
    tl.store(r2_ptr + out, ((ig - b) * log2e).to(tl.float32))
    tl.store(g_ptr + out, tl.where(carried, tl.exp(b + mc - m), 0.0).to(tl.float32))
    tl.store(w_ptr + out, tl.where(feeds, tl.exp(b_end - b + ig - mc_next), 0.0).to(tl.float32))
    tl.store(m_ptr + out, m.to(tl.float32))
    tl.store(decay_ptr + row * NC + c, tl.where(keeps, tl.exp(b_end + mc - mc_next), 0.0).to(tl.float32))
    if c == NC - 1:
        tl.store(m_last_ptr + row, mc_next)


MAX_GRID_Y = 65535          # CUDA's limit on grid dimension 1: rows are launched in slices of it
SUMMARY_BLOCK = 1024        # chunk summaries a program of chunkwise_gates_kernel loads at a time


def chunkwise_gates_triton(i, f, m_initial, chunk_size, soft_cap=None, cu_seqlens=None) -> ChunkGates:
    B, NH, S = i.shape
    L = chunk_size
    NC = -(-S // L)
    S_pad = NC * L
    rows = B * NH
    gate_args = (*i.stride(), *f.stride(), NH, 1.0 if soft_cap is None else float(soft_cap))
    m0 = None if m_initial is None else m_initial.reshape(rows).contiguous()
    steps = new_empty((5, rows, S_pad), torch.float32, i.device)
    step = steps.unbind(0)
    decay = new_empty((rows, NC), torch.float32, i.device)
    m_last = new_empty((B, NH, 1), torch.float64, i.device)
    b_end = torch.empty((rows, NC), dtype=torch.float64, device=i.device)    # per-chunk summaries
    lmax = torch.empty((rows, NC), dtype=torch.float64, device=i.device)
    block = min(max(next_power_of_2(NC), 16), SUMMARY_BLOCK)
    for row0 in range(0, rows, MAX_GRID_Y):
        grid = (NC, min(rows - row0, MAX_GRID_Y))
        packed = packed_kernel_args(cu_seqlens, i)
        chunk_gate_summary_kernel[grid](i, f, *packed, b_end, lmax, S, NC, row0, *gate_args, L=L,
                                        SOFT_CAP=soft_cap is not None, VARLEN=cu_seqlens is not None, num_warps=4)
        chunkwise_gates_kernel[grid](i, f, m0 if m0 is not None else i, *packed, b_end, lmax, *step, decay, m_last,
                                     S, S_pad, NC, row0, *gate_args, L=L, BLOCK=block, HAS_M0=m0 is not None,
                                     SOFT_CAP=soft_cap is not None, VARLEN=cu_seqlens is not None, num_warps=4)
    u2, r2, g, w, m = step
    return ChunkGates(u2=u2, r2=r2, g=g, w=w, m=m, decay=decay, m_last=m_last, num_chunks=NC, padded_len=S_pad,
                      steps=steps)


@torch.no_grad()
def chunkwise_gates_torch(i: torch.Tensor, f: torch.Tensor, m_initial: torch.Tensor | None,
                          chunk_size: int, soft_cap: float | None = None) -> ChunkGates:
    """The PyTorch spelling (CPU path, oracle of the kernel)."""
    B, NH, S = i.shape
    L = chunk_size
    NC = -(-S // L)
    S_pad = NC * L
    ig, fg = i.double(), f.double()
    if soft_cap is not None:
        ig, fg = apply_soft_cap(ig, soft_cap), apply_soft_cap(fg, soft_cap)
    logf = floored_logsigmoid(fg)
    if S_pad > S:
        ig = F.pad(ig, (0, S_pad - S), value=float("-inf"))
        logf = F.pad(logf, (0, S_pad - S), value=0.0)
    m0 = i.new_zeros(B, NH, 1, dtype=torch.float64) if m_initial is None else m_initial.double()
    cum = torch.cumsum(logf, dim=-1)                                   # F_t
    m = cum + torch.maximum(m0, torch.cummax(ig - cum, dim=-1).values)  # recurrent m_t
    f_bound = F.pad(cum[..., L - 1::L], (1, 0))                        # F at chunk boundaries (NC+1)
    m_bound = torch.cat([m0, m[..., L - 1::L]], dim=-1)                # mc_0 .. mc_NC
    per_step = lambda x: x.repeat_interleave(L, dim=-1)                # (.., NC) -> (.., S_pad)
    b = cum - per_step(f_bound[..., :-1])
    b_end = f_bound[..., 1:] - f_bound[..., :-1]                       # b at each chunk's end
    g = torch.exp(b + per_step(m_bound[..., :-1]) - m)
    w = torch.exp(per_step(b_end) - b + ig - per_step(m_bound[..., 1:]))
    decay = torch.exp(b_end + m_bound[..., :-1] - m_bound[..., 1:])

    out_dtype = torch.float64 if i.dtype == torch.float64 else torch.float32   # float64 path: exact

    def flat(x):
        return x.reshape(B * NH, x.shape[-1]).to(out_dtype).contiguous()

    return ChunkGates(u2=flat((b - m) * LOG2E), r2=flat((ig - b) * LOG2E), g=flat(g), w=flat(w),
                      m=flat(m), decay=flat(decay), m_last=m_bound[..., -1:],
                      num_chunks=NC, padded_len=S_pad)
