"""sLSTM forward: one Triton kernel that loops over time (SPEC.md section 2).

Shapes (B batch, T time, NH heads, DH head size, gate order i, f, z, o):
    wx (B, T, 4, NH, DH)  input pre-activations, any float dtype (the "matmul dtype")
    R  (4, NH, DH, DH)    recurrent weights [gate, head, out, in], same dtype as wx
    b  (4, NH, DH)        biases, same dtype as wx
    state (4, B, NH, DH)  float32, ordered (h, c, n, m)
    h  (B, T, NH, DH)     outputs in the dtype of wx

Program decomposition. A program owns BB batch rows (a fixed block, masked: the batch size is a
runtime argument, so no batch size recompiles) and BO output columns of one head, for all four
gates. Its (c, n, m) tile stays in registers over the whole time range. Per step it needs the full
h_{t-1} of its head:

* whole-head mode (NCB == 1, small heads): one program owns the head; R (4 x DH x DH) is loaded once
  and held in registers, h_{t-1} never leaves the chip. No cross-program synchronization.
* split mode (NCB > 1 column blocks per head): programs exchange h through the output tensor h
  itself (step t-1 is read back, in the matmul dtype, from global memory with L1-bypassing loads).
  R is either held (RESIDENT) or re-read from L2 per step in BK-row chunks. Two ways to order the
  steps across programs:
  - SYNC: one launch over the whole time range; after storing h_t every program of a
    (batch block, head) group increments a per-group int32 counter (release, GPU scope) and before
    reading h_{t-1} spins until the counter reaches (steps done) x NCB (acquire). This needs every
    program of the launch co-resident: the launcher uses it only when the grid is at most the SM
    count, with a cooperative launch (the driver refuses rather than hangs if co-residency is
    impossible). Validated on GPU only: Triton's interpreter runs programs one after another.
  - per step: one launch per time step (t_start = t, t_end = t + 1); the kernel boundary is the
    barrier and (c, n, m) are carried between launches through the state_out buffer. This is the
    same kernel code the SYNC path runs, minus the counter; CI runs it in the interpreter.

What is stored for the backward (SAVE), time-major so that a tile has the same offsets as in the
state: the gate pre-activations wx + R h_{t-1} + b, pre (T, 4, B, NH, DH), and (c, n, m) after each
step, cnm (T, 3, B, NH, DH), both float32: 7 floats = 28 bytes per element and step (B=16, T=1024,
hidden 768: 352 MB). The backward recomputes the activations, m_t, c_t and n_t from them and
re-reads h_{t-1} from the output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..utils import new_empty

# Exponent cap of the forget-gate factor f' = exp(logf + m_{t-1} - m_t). The exponent is <= 0
# whenever n_{t-1} != 0 (m_t >= logf + m_{t-1}); it can be large only at a fresh state (n == 0,
# m_t = i~), where f' multiplies c_{t-1} and n_{t-1} (usually 0): the cap keeps 0 * exp(100) from
# becoming NaN in float32.
F_EXP_MAX = 60.0


@triton.jit
def gate_activations(i_pre, f_pre, z_pre, o_pre, n_prev, m_prev):
    """One step's gates in float32: returns (i', f', tanh(z~), sigmoid(o~), m_t)."""
    logf = tl.minimum(f_pre, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(f_pre)))
    m_new = tl.where(n_prev == 0.0, i_pre, tl.maximum(i_pre, logf + m_prev))
    i_act = tl.exp(i_pre - m_new)
    f_act = tl.exp(tl.minimum(logf + m_prev - m_new, 60.0))  # 60.0 = F_EXP_MAX
    e = tl.exp(-2.0 * tl.abs(z_pre))
    z_abs = (1.0 - e) / (1.0 + e)
    z_act = tl.where(z_pre < 0.0, -z_abs, z_abs)
    o_act = tl.sigmoid(o_pre)
    return i_act, f_act, z_act, o_act, m_new


@triton.jit
def mma(a, b, acc, DOT_PREC: tl.constexpr):
    """acc + a @ b with float32 accumulation. DOT_PREC "upcast" (interpreter, 16-bit inputs):
    multiply in float32, the same values (products of 16-bit floats are exact in float32); Triton's
    interpreter multiplies the raw bits of bfloat16 operands."""
    if DOT_PREC == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=DOT_PREC)


@triton.jit
def mask_if(mask, cond):
    """mask & cond for a scalar cond (written as a select: the interpreter mistypes bool & scalar)."""
    return tl.where(cond, mask, False)


@triton.jit
def group_arrive(counter_ptr):
    """Split-phase barrier, first half: publish this program's stores of the step (GPU only)."""
    tl.debug_barrier()  # every thread's stores are issued before thread 0's release
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")


BARRIER_BROKEN = 1 << 30  # added to a group's counter by a wait that gave up (see group_wait)


@triton.jit
def group_wait(counter_ptr, target, MAX_POLLS: tl.constexpr = 1 << 24):
    """Split-phase barrier, second half: spin until `target` arrivals are visible (GPU only).
    A wait never hangs: after MAX_POLLS polls (seconds; a working barrier needs microseconds)
    it adds BARRIER_BROKEN to the counter, which also releases every later wait, so the kernel
    ends with wrong results that `check_barrier` reports."""
    seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    polls = 0
    while (seen < target) & (polls < MAX_POLLS):
        seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
        polls += 1
    if polls >= MAX_POLLS:
        tl.atomic_add(counter_ptr, 1 << 30, sem="relaxed", scope="gpu")  # BARRIER_BROKEN
    tl.debug_barrier()


@triton.jit
def load_h_prev(h_ptr, h0_ptr, t, T, rows64, mask_rows, k, mask_k,
                NH: tl.constexpr, DH: tl.constexpr, head, H0_IS_STATE: tl.constexpr):
    """h_{t-1}[rows, k] of one head in the matmul dtype (rows and k broadcast against each other,
    any shape): the output h (B, T, NH, DH) at t - 1, or h0 (B, NH, DH) at t == 0, one load
    (the base pointer and row stride are selected). Bypasses L1: other SMs wrote h.
    H0_IS_STATE (single-step launches only): h0 is the float32 state's h slot, cast."""
    HD: tl.constexpr = NH * DH
    if H0_IS_STATE:
        x = tl.load(h0_ptr + rows64 * HD + head * DH + k, mask=mask_rows & mask_k, other=0.0)
        return x.to(h_ptr.dtype.element_ty)
    else:
        base = tl.where(t > 0, h_ptr + tl.cast(t - 1, tl.int64) * HD, h0_ptr)
        row_stride = tl.where(t > 0, tl.cast(T, tl.int64) * HD, HD)
        return tl.load(base + rows64 * row_stride + head * DH + k, mask=mask_rows & mask_k,
                       other=0.0, cache_modifier=".cg")


@triton.jit
def chunk_index(NKC: tl.constexpr, BK: tl.constexpr):
    """The contraction index k = kc * BK + kk of a left operand: (BK,) if NKC == 1, else a
    (NKC, 1, BK) tensor (chunks as a batch dimension)."""
    if NKC == 1:
        return tl.arange(0, BK)
    else:
        return tl.arange(0, NKC)[:, None, None] * BK + tl.arange(0, BK)[None, None, :]


@triton.jit
def load_r_chunks(R_ptr, head, cols, mask_c, NH: tl.constexpr, DH: tl.constexpr,
                  NKC: tl.constexpr, BK: tl.constexpr, K_IS_OUT: tl.constexpr):
    """R of one head for the own columns as right operands, contraction index k (zero for
    k >= DH): four (BK, BO) tiles if NKC == 1, else (NKC, BK, BO) with k = kc * BK + kk.
    Forward (K_IS_OUT False): [k, o] = R[g, head, cols[o], k]; backward: [k, i] = R[g, head, k,
    cols[i]]. Loaded before the time loop, the compiler keeps them in shared memory."""
    if NKC == 1:
        k = tl.arange(0, BK)[:, None]
        c = cols[None, :]
        mc = mask_c[None, :]
    else:
        k = tl.arange(0, NKC)[:, None, None] * BK + tl.arange(0, BK)[None, :, None]
        c = cols[None, None, :]
        mc = mask_c[None, None, :]
    if K_IS_OUT:
        p = R_ptr + head * DH * DH + k * DH + c
    else:
        p = R_ptr + head * DH * DH + c * DH + k
    m = (k < DH) & mc
    GS: tl.constexpr = NH * DH * DH
    return (tl.load(p, mask=m, other=0.0), tl.load(p + GS, mask=m, other=0.0),
            tl.load(p + 2 * GS, mask=m, other=0.0), tl.load(p + 3 * GS, mask=m, other=0.0))


@triton.jit
def split_k(x, NKC: tl.constexpr, BK: tl.constexpr):
    """(BB, NKC * BK) -> (NKC, BB, BK): the K chunks of a left operand as a batch dimension."""
    if NKC == 1:
        return x
    else:
        return tl.permute(tl.reshape(x, (x.shape[0], NKC, BK)), (1, 0, 2))


@triton.jit
def chunked_mm(x, R, acc, NKC: tl.constexpr, DOT_PREC: tl.constexpr):
    """acc + x @ R. NKC == 1: plain 2-D product, acc (BB, BO). Else x (NKC, BB, BK), R (NKC, BK,
    BO), acc (NKC, BB, BO): one product per chunk (chunks spread over warps, a split-K); the
    caller sums over axis 0."""
    return mma(x, R, acc, DOT_PREC)


@triton.jit
def chunk_sum(acc, NKC: tl.constexpr):
    if NKC == 1:
        return acc
    else:
        return tl.sum(acc, axis=0)


@triton.jit
def fwd_recurrent_split(h_ptr, h0_ptr, R_ptr, RT_i, RT_f, RT_z, RT_o,
                        acc_i, acc_f, acc_z, acc_o, t, T, rb64, mask_b, cols, head,
                        NH: tl.constexpr, DH: tl.constexpr, BB: tl.constexpr, BO: tl.constexpr,
                        NKC: tl.constexpr, BK: tl.constexpr, RESIDENT: tl.constexpr,
                        H0_IS_STATE: tl.constexpr, DOT_PREC: tl.constexpr):
    """acc_g += h_{t-1} @ R_g[cols, :]^T for the four gates, h_{t-1} read from global memory."""
    GS: tl.constexpr = NH * DH * DH  # gate stride of R
    if RESIDENT:  # R held in NKC chunks; h_{t-1} loaded chunked: (NKC, BB, BK) or (BB, BK)
        k = chunk_index(NKC, BK)
        if NKC == 1:
            hb = load_h_prev(h_ptr, h0_ptr, t, T, rb64[:, None], mask_b[:, None], k[None, :],
                             (k < DH)[None, :], NH, DH, head, H0_IS_STATE)
            acc_i = chunked_mm(hb, RT_i, acc_i, NKC, DOT_PREC)
            acc_f = chunked_mm(hb, RT_f, acc_f, NKC, DOT_PREC)
            acc_z = chunked_mm(hb, RT_z, acc_z, NKC, DOT_PREC)
            acc_o = chunked_mm(hb, RT_o, acc_o, NKC, DOT_PREC)
        else:
            hb = load_h_prev(h_ptr, h0_ptr, t, T, rb64[None, :, None], mask_b[None, :, None], k,
                             k < DH, NH, DH, head, H0_IS_STATE)
            z3 = tl.zeros((NKC, BB, BO), dtype=tl.float32)
            acc_i += tl.sum(chunked_mm(hb, RT_i, z3, NKC, DOT_PREC), axis=0)
            acc_f += tl.sum(chunked_mm(hb, RT_f, z3, NKC, DOT_PREC), axis=0)
            acc_z += tl.sum(chunked_mm(hb, RT_z, z3, NKC, DOT_PREC), axis=0)
            acc_o += tl.sum(chunked_mm(hb, RT_o, z3, NKC, DOT_PREC), axis=0)
    else:  # R streamed from L2 in BK-row chunks
        for k0 in range(0, DH, BK):
            kk = k0 + tl.arange(0, BK)
            hb = load_h_prev(h_ptr, h0_ptr, t, T, rb64[:, None], mask_b[:, None], kk[None, :],
                             (kk < DH)[None, :], NH, DH, head, H0_IS_STATE)
            # RT[k, o] = R[g, head, o, k]; BK divides DH and the columns are in range: no masks
            pr = R_ptr + head * DH * DH + cols[None, :] * DH + kk[:, None]
            acc_i = mma(hb, tl.load(pr), acc_i, DOT_PREC)
            acc_f = mma(hb, tl.load(pr + GS), acc_f, DOT_PREC)
            acc_z = mma(hb, tl.load(pr + 2 * GS), acc_z, DOT_PREC)
            acc_o = mma(hb, tl.load(pr + 3 * GS), acc_o, DOT_PREC)
    return acc_i, acc_f, acc_z, acc_o


@triton.jit(do_not_specialize=["B", "T", "t_start", "t_end"])
def slstm_fwd_kernel(
    wx_ptr, R_ptr, b_ptr, state_in_ptr, h0_ptr, h_ptr, state_out_ptr, pre_ptr, cnm_ptr, sync_ptr,
    B, T, t_start, t_end,
    s_wx_b, s_wx_t, s_wx_g, s_wx_h,
    NH: tl.constexpr, DH: tl.constexpr, BB: tl.constexpr, BO: tl.constexpr, NCB: tl.constexpr,
    NKC: tl.constexpr, BK: tl.constexpr, RESIDENT: tl.constexpr, SAVE: tl.constexpr,
    SYNC: tl.constexpr, H0_IS_STATE: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """Steps t_start <= t < t_end of the sLSTM for one (batch block, head, column block).

    state_in/state_out (4, B, NH, DH) float32: (h, c, n, m) before t_start / after t_end - 1 (may
    be the same buffer: each program reads and writes only its own tile). h0 (B, NH, DH): the
    initial h in the matmul dtype (split mode; with H0_IS_STATE, a single step, it is state_in).
    h (B, T, NH, DH) output.
    pre (T, 4, B, NH, DH) and cnm (T, 3, B, NH, DH) float32, written when SAVE. sync: int32
    counters, one per (batch block, head), zero at launch, used when SYNC.
    """
    pid = tl.program_id(0)
    cb = pid % NCB
    group = pid // NCB  # = batch_block * NH + head; a group's programs are adjacent
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
    s_state = tl.cast(B, tl.int64) * HD  # slot stride of the (4, B, NH, DH) state

    # biases (float32 rows) and, if held, the transposed weights RT_g[k, o] = R[g, head, o, k]
    pb = b_ptr + head * DH + cols
    b_i = tl.load(pb, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    b_f = tl.load(pb + HD, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    b_z = tl.load(pb + 2 * HD, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    b_o = tl.load(pb + 3 * HD, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    RT_i, RT_f, RT_z, RT_o = 0, 0, 0, 0  # placeholders when R is streamed
    if RESIDENT:  # loaded once; the compiler keeps loop-invariant dot operands in shared memory
        RT_i, RT_f, RT_z, RT_o = load_r_chunks(R_ptr, head, cols, mask_c, NH, DH, NKC, BK, False)

    # carried state of the own tile; the same int32 offsets address pre and cnm (time-major)
    off_st = rb[:, None] * HD + head * DH + cols[None, :]
    h = tl.load(state_in_ptr + off_st, mask=mask, other=0.0)
    c = tl.load(state_in_ptr + s_state + off_st, mask=mask, other=0.0)
    n = tl.load(state_in_ptr + 2 * s_state + off_st, mask=mask, other=0.0)
    m = tl.load(state_in_ptr + 3 * s_state + off_st, mask=mask, other=0.0)

    off_wx = rb64[:, None] * s_wx_b + head * s_wx_h + cols[None, :]
    off_h = rb64[:, None] * (T64 * HD) + head * DH + cols[None, :]

    # wx of the next step is loaded one step ahead (its latency hides behind the step)
    px = wx_ptr + off_wx + tl.cast(t_start, tl.int64) * s_wx_t
    nx_i = tl.load(px, mask=mask, other=0.0)
    nx_f = tl.load(px + s_wx_g, mask=mask, other=0.0)
    nx_z = tl.load(px + 2 * s_wx_g, mask=mask, other=0.0)
    nx_o = tl.load(px + 3 * s_wx_g, mask=mask, other=0.0)
    # num_stages=1: the h_{t-1} loads must not be software-pipelined ahead of the barrier
    for t in tl.range(t_start, t_end, num_stages=1):
        acc_i = nx_i.to(tl.float32) + b_i
        acc_f = nx_f.to(tl.float32) + b_f
        acc_z = nx_z.to(tl.float32) + b_z
        acc_o = nx_o.to(tl.float32) + b_o
        px = wx_ptr + off_wx + tl.cast(t + 1, tl.int64) * s_wx_t
        mnext = mask_if(mask, t + 1 < t_end)
        nx_i = tl.load(px, mask=mnext, other=0.0)
        nx_f = tl.load(px + s_wx_g, mask=mnext, other=0.0)
        nx_z = tl.load(px + 2 * s_wx_g, mask=mnext, other=0.0)
        nx_o = tl.load(px + 3 * s_wx_g, mask=mnext, other=0.0)

        if NCB == 1:  # whole head in this program: h_{t-1} is in registers
            hb = split_k(h.to(dtype), NKC, BK)
            if NKC == 1:
                acc_i = chunked_mm(hb, RT_i, acc_i, NKC, DOT_PREC)
                acc_f = chunked_mm(hb, RT_f, acc_f, NKC, DOT_PREC)
                acc_z = chunked_mm(hb, RT_z, acc_z, NKC, DOT_PREC)
                acc_o = chunked_mm(hb, RT_o, acc_o, NKC, DOT_PREC)
            else:
                z3 = tl.zeros((NKC, BB, BO), dtype=tl.float32)
                acc_i += tl.sum(chunked_mm(hb, RT_i, z3, NKC, DOT_PREC), axis=0)
                acc_f += tl.sum(chunked_mm(hb, RT_f, z3, NKC, DOT_PREC), axis=0)
                acc_z += tl.sum(chunked_mm(hb, RT_z, z3, NKC, DOT_PREC), axis=0)
                acc_o += tl.sum(chunked_mm(hb, RT_o, z3, NKC, DOT_PREC), axis=0)
        else:
            if SYNC:
                group_wait(sync_ptr + group, (t - t_start) * NCB)
            acc_i, acc_f, acc_z, acc_o = fwd_recurrent_split(
                h_ptr, h0_ptr, R_ptr, RT_i, RT_f, RT_z, RT_o, acc_i, acc_f, acc_z, acc_o,
                t, T, rb64, mask_b, cols, head, NH, DH, BB, BO, NKC, BK, RESIDENT, H0_IS_STATE,
                DOT_PREC)

        i_act, f_act, z_act, o_act, m = gate_activations(acc_i, acc_f, acc_z, acc_o, n, m)
        c = f_act * c + i_act * z_act
        n = f_act * n + i_act
        h = o_act * c / n

        t64 = tl.cast(t, tl.int64)
        tl.store(h_ptr + off_h + t64 * HD, h.to(dtype), mask=mask)
        if SAVE:
            pp = pre_ptr + t64 * (4 * s_state) + off_st
            tl.store(pp, acc_i, mask=mask)
            tl.store(pp + s_state, acc_f, mask=mask)
            tl.store(pp + 2 * s_state, acc_z, mask=mask)
            tl.store(pp + 3 * s_state, acc_o, mask=mask)
            pc = cnm_ptr + t64 * (3 * s_state) + off_st
            tl.store(pc, c, mask=mask)
            tl.store(pc + s_state, n, mask=mask)
            tl.store(pc + 2 * s_state, m, mask=mask)
        if SYNC:
            group_arrive(sync_ptr + group)

    tl.store(state_out_ptr + off_st, h, mask=mask)
    tl.store(state_out_ptr + s_state + off_st, c, mask=mask)
    tl.store(state_out_ptr + 2 * s_state + off_st, n, mask=mask)
    tl.store(state_out_ptr + 3 * s_state + off_st, m, mask=mask)


# ---------------------------------------------------------------------------------- launch config

BATCH_BLOCK = 16  # fixed: batch is a runtime argument, masked in blocks of 16 (tl.dot's minimum M)


@dataclass(frozen=True)
class SLSTMConfig:
    """How a head is split over programs (see the module docstring).

    ncb: column blocks per head (1: whole head in one program), bo: columns per program (the
    padded head size when ncb == 1). resident: R held on chip as nkc chunks of bk rows of the
    contraction (nkc * bk = head size padded to a power of 2; the chunks spread over warps);
    otherwise R is streamed from L2 in chunks of bk rows (nkc unused). sync: allow the persistent
    barrier path (GPU, co-resident grid) in split mode; else one launch per step."""

    ncb: int
    bo: int
    nkc: int
    bk: int
    resident: bool
    num_warps: int
    sync: bool = True


_CONFIG_OVERRIDE: dict | None = None  # test and tuning hook: see op.config_override


def _largest_pow2_divisor(x: int, cap: int) -> int:
    d = 16
    while d * 2 <= cap and x % (d * 2) == 0:
        d *= 2
    return d


def num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1 << 30
    return torch.cuda.get_device_properties(device).multi_processor_count


SMEM_FOR_R = 160 * 1024  # bytes of shared memory a program may spend on its slice of R


def _config(DH, dhp, bo, resident, bk=None, num_warps=None, sync=True):
    ncb = 1 if bo >= dhp else DH // bo
    bo = dhp if ncb == 1 else bo
    if resident:
        bk = bk or min(dhp, 128)
        nkc = dhp // bk
        num_warps = num_warps or max(4, min(8, nkc))
    else:
        bk = bk or _largest_pow2_divisor(DH, 64)
        nkc = 1
        num_warps = num_warps or 4
    return SLSTMConfig(ncb=ncb, bo=bo, nkc=nkc, bk=bk, resident=resident, num_warps=num_warps,
                       sync=sync)


def pick_config(NH: int, DH: int, B: int, dtype: torch.dtype, device: torch.device) -> SLSTMConfig:
    """Heuristic choice, from register and shared-memory use of the sm_90 compile (no register
    spills in any chosen variant); timing on the GPU may move it. `config_override` replaces it.

    Whole head in one program while R fits in shared memory and the tiles in registers (head
    size up to 128: 4, 8, 16 warps for 32, 64, 128). Larger heads: the columns split over
    programs that synchronize every step, the smallest column block (least work per step) whose
    grid fits the SMs; R held in shared memory (contraction in chunks of 128 spread over warps)
    when it fits, else streamed from L2."""
    dhp = triton.next_power_of_2(DH)
    if _CONFIG_OVERRIDE is not None:
        o = dict(_CONFIG_OVERRIDE)
        bo = o.pop("bo", dhp)
        if bo < dhp and DH % bo:
            raise ValueError(f"config override: bo={bo} must divide DH={DH}")
        return _config(DH, dhp, bo, o.pop("resident", bo >= dhp), **o)
    # bytes per held element of R: float32 runs as 3xTF32, which keeps two parts of each operand
    elt = 8 if dtype == torch.float32 else 2
    if dhp <= 128 and 4 * dhp * dhp * elt <= SMEM_FOR_R:
        return _config(DH, dhp, dhp, True, bk=dhp, num_warps={16: 4, 32: 4, 64: 8, 128: 16}[dhp])
    groups = NH * triton.cdiv(B, BATCH_BLOCK)
    sms = num_sms(device)
    bo = 16
    while DH % (bo * 2) == 0 and bo < 64 and groups * (DH // bo) > sms:
        bo *= 2
    return _config(DH, dhp, bo, 4 * dhp * bo * elt <= SMEM_FOR_R)


def cooperative_launch_kwargs() -> dict:
    """Ask the driver for a cooperative launch (all programs co-resident or an error, never a
    hang) where this Triton version has the option."""
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
        if "launch_cooperative_grid" in CUDAOptions.__dataclass_fields__:
            return {"launch_cooperative_grid": True}
    except Exception:  # noqa: BLE001 - an older or different backend: no option
        pass
    return {}


def dot_precision(dtype: torch.dtype, device: torch.device) -> str:
    """float32 inputs: 3xTF32 (about float32 accuracy on tensor cores); 16-bit inputs: native
    (the option is ignored); in the interpreter, 16-bit operands are upcast (see `mma`)."""
    if device.type != "cuda" and dtype != torch.float32:
        return "upcast"
    return "tf32x3" if dtype == torch.float32 else "ieee"


CHECK_BARRIER = False  # tests on the GPU: synchronize after each persistent launch and check


def check_barrier(counters: torch.Tensor, what: str) -> None:
    """With CHECK_BARRIER, raise if a program of the persistent launch gave up waiting."""
    if CHECK_BARRIER and int(counters.max()) >= BARRIER_BROKEN:
        raise RuntimeError(f"sLSTM {what}: the per-step barrier timed out (programs not co-resident?)")


def use_sync(cfg: SLSTMConfig, grid: int, device: torch.device) -> bool:
    """The persistent barrier path: split mode on a GPU, every program of the grid co-resident."""
    return cfg.ncb > 1 and cfg.sync and device.type == "cuda" and grid <= num_sms(device)


def slstm_fwd(wx, R, b, state0, cfg: SLSTMConfig, save: bool):
    """Launch the forward. wx (B, T, 4, NH, DH) (last dim contiguous), R (4, NH, DH, DH) and b
    (4, NH, DH) contiguous in wx's dtype, state0 (4, B, NH, DH) float32 contiguous.
    Returns h (B, T, NH, DH), last state (4, B, NH, DH) float32, and if `save` the pre-activations
    (T, 4, B, NH, DH) and states (T, 3, B, NH, DH), float32, for the backward (else None, None)."""
    B, T, _, NH, DH = wx.shape
    dev, dtype = wx.device, wx.dtype
    h = new_empty((B, T, NH, DH), dtype, dev)
    last = new_empty((4, B, NH, DH), torch.float32, dev)
    pre = new_empty((T, 4, B, NH, DH), torch.float32, dev) if save else h
    cnm = new_empty((T, 3, B, NH, DH), torch.float32, dev) if save else h
    grid = NH * cfg.ncb * triton.cdiv(B, BATCH_BLOCK)
    sync = use_sync(cfg, grid, dev)
    counters = torch.zeros(grid // cfg.ncb if sync else 1, dtype=torch.int32, device=dev)
    meta = dict(NH=NH, DH=DH, BB=BATCH_BLOCK, BO=cfg.bo, NCB=cfg.ncb, NKC=cfg.nkc, BK=cfg.bk,
                RESIDENT=cfg.resident, SAVE=save, DOT_PREC=dot_precision(dtype, dev),
                num_warps=cfg.num_warps)

    h0 = state0[0].to(dtype) if cfg.ncb > 1 else state0  # initial h in the matmul dtype

    def run(state_in, t0, t1, sync_flag, **extra):
        slstm_fwd_kernel[(grid,)](
            wx, R, b, state_in, h0, h, last, pre, cnm, counters, B, T, t0, t1,
            wx.stride(0), wx.stride(1), wx.stride(2), wx.stride(3), SYNC=sync_flag,
            H0_IS_STATE=False, **meta, **extra)

    if cfg.ncb == 1:
        run(state0, 0, T, False)
    elif sync:
        run(state0, 0, T, True, **cooperative_launch_kwargs())
        check_barrier(counters, "forward")
    else:  # one launch per step; (c, n, m) carried in `last`
        for t in range(T):
            run(state0 if t == 0 else last, t, t + 1, False)
    return h, last, (pre if save else None), (cnm if save else None)
