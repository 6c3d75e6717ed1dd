"""sLSTM forward: one Triton kernel that loops over time (docs/slstm.md).

Shapes (B batch, T time, NH heads, DH head size, gate order i, f, z, o):
    wx (B, T, 4, NH, DH)  input pre-activations, any float dtype (the "matmul dtype")
    R  (4, NH, DH, DH)    recurrent weights [gate, head, out, in], same dtype as wx
    b  (4, NH, DH)        biases, same dtype as wx
    state (4, B, NH, DH)  float32, ordered (h, c, n, m)
    h  (B, T, NH, DH)     outputs in the dtype of wx

Program decomposition. A program owns BB batch rows (a fixed block, masked: the batch size is a
runtime argument, so no batch size recompiles) and BO output columns of one head, for all four
gates. Its (c, n, m) tile stays in registers over the whole time range. The four gates are one
matrix product per step: acc (BB, 4 * BO), column g * BO + j holding gate g of column j, =
wx_t + b + h_{t-1} (BB, DH) @ RT (DH, 4 * BO); `split_gates` then takes the four (BB, BO) tiles
apart (one layout change per step instead of one per gate). Per step a program needs the full
h_{t-1} of its head:

* whole-head mode (NCB == 1, heads up to 128): one program owns the head; RT is loaded once and
  kept in shared memory, h_{t-1} never leaves the chip. No cross-program synchronization.
* split mode (NCB > 1 column blocks per head): programs exchange h through the output tensor h
  itself (step t-1 is read back, in the matmul dtype, from global memory with L1-bypassing loads).
  RT is either held in shared memory (RESIDENT; the contraction as two power-of-2 row blocks, KA
  and KB, e.g. 768 = 512 + 256, since Triton's tiles are powers of 2) or re-read from L2 per
  step in BK-row chunks. Two ways to order the steps across programs:
  - SYNC: one launch over the whole time range; after storing h_t every program of a
    (batch block, head) group increments a per-group int32 counter (release, GPU scope) and before
    reading h_{t-1} spins until the counter reaches (steps done) x NCB (acquire loads). This needs
    every program of the launch co-resident: the launcher uses it only when the grid is at most
    the SM count, with a cooperative launch (the driver refuses rather than hangs if co-residency
    is impossible). Validated on GPU only: Triton's interpreter runs programs one after another.
  - per step: one launch per time step (t_start = t, t_end = t + 1); the kernel boundary is the
    barrier and (c, n, m) are carried between launches through the state_out buffer. This is the
    same kernel code the SYNC path runs, minus the counter; CI runs it in the interpreter.

Gate math runs in float32 with exponentials as 2^(x log2 e); on the GPU (FAST_MATH) exp2, log2
and reciprocals are single MUFU instructions (.approx.ftz), which cut the instructions per step by
about a third; the interpreter has no inline assembly and runs Triton's functions.

What is stored for the backward (SAVE; split heads only, `SLSTMConfig.saves_steps`), time-major
so that a tile has the same offsets as in the state: the gate pre-activations wx + R h_{t-1} + b,
pre (T, 4, B, NH, DH), and (c, n, m) after each step, cnm (T, 3, B, NH, DH), both float32: 7
floats = 28 bytes per element and step (B=16, T=1024, hidden 768: 352 MB). The backward
recomputes the activations, m_t, c_t and n_t from them and re-reads h_{t-1} from the output. A
whole head stores nothing: its backward recomputes from wx and h on every SM (recompute.py).
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from dataclasses import astuple, dataclass, fields
from typing import Optional

import torch
import triton
import triton.language as tl

from ...launch import cached_launch
from ...utils import cdiv, dot_precision, maximum_nan, minimum_nan, mma, new_empty, next_power_of_2, num_sms

# Exponent cap of the forget-gate factor f' = exp(logf + m_{t-1} - m_t). The exponent is <= 0
# whenever n_{t-1} != 0 (m_t >= logf + m_{t-1}); it can be large only at a fresh state (n == 0,
# m_t = i~), where f' multiplies c_{t-1} and n_{t-1} (usually 0): the cap keeps 0 * exp(100) from
# becoming NaN in float32.
F_EXP_MAX = 60.0


# log2(e) = 1.4426950408889634 and ln(2) = 0.6931471805599453 are written out in the kernels
# (literals: a tl.constexpr global times a tensor misbehaves in Triton 3.9's interpreter).


@triton.jit
def fast_exp2(x, FAST: tl.constexpr):
    """2^x. FAST (GPU): one MUFU instruction (ex2.approx.ftz, ~2 ulp; results below 2^-126
    flush to 0). Else (the interpreter: no inline assembly) Triton's exp2."""
    if FAST:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.exp2(x)


@triton.jit
def fast_log2(x, FAST: tl.constexpr):
    """log2(x), x > 0: lg2.approx.ftz (absolute error ~2^-22) where FAST."""
    if FAST:
        return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=f,f", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.log2(x)


@triton.jit
def fast_rcp(x, FAST: tl.constexpr):
    """1 / x: rcp.approx.ftz (1 ulp) where FAST."""
    if FAST:
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        return 1.0 / x


@triton.jit
def fast_sigmoid(x, FAST: tl.constexpr):
    """1 / (1 + e^-x) (0 for x -> -inf, 1 for x -> inf)."""
    return fast_rcp(1.0 + fast_exp2(-x * 1.4426950408889634, FAST), FAST)


@triton.jit
def gate_activations(i_pre, f_pre, z_pre, o_pre, n_prev, m_prev, FAST: tl.constexpr):
    """One step's gates in float32: returns (i', f', tanh(z~), sigmoid(o~), m_t).
    Exponentials as 2^(x log2 e): one MUFU instruction each on the GPU (FAST)."""
    logf = minimum_nan(f_pre, 0.0) - 0.6931471805599453 * fast_log2(1.0 + fast_exp2(-tl.abs(f_pre) * 1.4426950408889634, FAST), FAST)
    m_new = tl.where(n_prev == 0.0, i_pre, maximum_nan(i_pre, logf + m_prev))
    i_act = fast_exp2((i_pre - m_new) * 1.4426950408889634, FAST)
    f_act = fast_exp2(minimum_nan(logf + m_prev - m_new, 60.0) * 1.4426950408889634, FAST)  # 60.0 = F_EXP_MAX
    e = fast_exp2(-2.0 * 1.4426950408889634 * tl.abs(z_pre), FAST)
    z_abs = (1.0 - e) * fast_rcp(1.0 + e, FAST)
    z_act = tl.where(z_pre < 0.0, -z_abs, z_abs)
    o_act = fast_sigmoid(o_pre, FAST)
    return i_act, f_act, z_act, o_act, m_new


@triton.jit
def mask_if(mask, cond):
    """mask & cond for a scalar cond (written as a select: the interpreter mistypes bool & scalar)."""
    return tl.where(cond, mask, False)


@triton.jit
def group_arrive(counter_ptr):
    """Split-phase barrier, first half: publish this program's stores of the step (GPU only)."""
    tl.debug_barrier()  # every thread's stores are issued before thread 0's release
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")


# diagnostic switch (read at import): poll the counter with plain acquire loads (every thread,
# no read-modify-write on the contended line) or with acquire atomics
POLL_WITH_LOAD = tl.constexpr(os.environ.get("XLSTM_TRITON_POLL", "load") == "load")


@triton.jit
def load_acquire(ptr):
    """ld.acquire.gpu of one int32 (every thread of the program loads it; a load, not an RMW)."""
    v = tl.inline_asm_elementwise("ld.global.acquire.gpu.b32 $0, [$1];", "=r,l",
                                  [ptr + tl.arange(0, 1)], dtype=tl.int32, is_pure=False, pack=1)
    return tl.max(v, axis=0)


BARRIER_BROKEN = 1 << 30  # added to a group's counter by a wait that gave up (see group_wait)


@triton.jit
def group_wait(counter_ptr, target, MAX_POLLS: tl.constexpr = 1 << 24):
    """Split-phase barrier, second half: spin until `target` arrivals are visible (GPU only).
    A wait never hangs: after MAX_POLLS polls (seconds; a working barrier needs microseconds)
    it adds BARRIER_BROKEN to the counter, which also releases every later wait, so the kernel
    ends with wrong results that `check_barrier` reports."""
    if POLL_WITH_LOAD:
        seen = load_acquire(counter_ptr)
    else:
        seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    polls = 0
    while (seen < target) & (polls < MAX_POLLS):
        if POLL_WITH_LOAD:
            seen = load_acquire(counter_ptr)
        else:
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
def split_gates(x, BB: tl.constexpr, BO: tl.constexpr):
    """(BB, 4 * BO) with columns (gate, j) -> the four (BB, BO) gate tiles i, f, z, o."""
    x = tl.permute(tl.reshape(x, (BB, 2, 2, BO)), (0, 3, 1, 2))  # (b, j, g // 2, g % 2)
    even, odd = tl.split(x)  # gates (0, 2) and (1, 3)
    g_i, g_z = tl.split(even)
    g_f, g_o = tl.split(odd)
    return g_i, g_f, g_z, g_o


@triton.jit
def load_rt(R_ptr, head, col0, k0, NH: tl.constexpr, DH: tl.constexpr, BO: tl.constexpr,
            K: tl.constexpr):
    """The right operand of the fused-gate product, rows k0 <= k < k0 + K of the contraction:
    RT[k, g * BO + j] = R[g, head, col0 + j, k] (zero for k >= DH or col0 + j >= DH)."""
    cc = tl.arange(0, 4 * BO)
    o = col0 + cc % BO
    k = k0 + tl.arange(0, K)
    p = R_ptr + (cc // BO) * (NH * DH * DH) + head * DH * DH + o[None, :] * DH + k[:, None]
    return tl.load(p, mask=(k < DH)[:, None] & (o < DH)[None, :], other=0.0)


@triton.jit
def split_recurrent(h_ptr, h0_ptr, R_ptr, RT_a, RT_b, acc, t, T, rb64, mask_b, head, col0,
                    NH: tl.constexpr, DH: tl.constexpr, BO: tl.constexpr, KA: tl.constexpr,
                    KB: tl.constexpr, BK: tl.constexpr, RESIDENT: tl.constexpr,
                    H0_IS_STATE: tl.constexpr, DOT_PREC: tl.constexpr):
    """acc + h_{t-1} @ RT over the whole head, h_{t-1} read from global memory (split mode).
    Resident: RT held as rows [0, KA) and [KA, KA + KB) (powers of 2; KB may be 0). Streamed:
    RT re-read from L2 in chunks of BK rows."""
    if RESIDENT:
        k = tl.arange(0, KA)
        ha = load_h_prev(h_ptr, h0_ptr, t, T, rb64[:, None], mask_b[:, None], k[None, :],
                         (k < DH)[None, :], NH, DH, head, H0_IS_STATE)
        acc = mma(ha, RT_a, acc, DOT_PREC)
        if KB > 0:
            k = KA + tl.arange(0, KB)
            hb = load_h_prev(h_ptr, h0_ptr, t, T, rb64[:, None], mask_b[:, None], k[None, :],
                             (k < DH)[None, :], NH, DH, head, H0_IS_STATE)
            acc = mma(hb, RT_b, acc, DOT_PREC)
    else:
        for k0 in range(0, DH, BK):
            k = k0 + tl.arange(0, BK)
            hk = load_h_prev(h_ptr, h0_ptr, t, T, rb64[:, None], mask_b[:, None], k[None, :],
                             (k < DH)[None, :], NH, DH, head, H0_IS_STATE)
            acc = mma(hk, load_rt(R_ptr, head, col0, k0, NH, DH, BO, BK), acc, DOT_PREC)
    return acc


@cached_launch
@triton.jit(do_not_specialize=["B", "T", "t_start", "t_end"])
def slstm_fwd_kernel(
    wx_ptr, R_ptr, b_ptr, state_in_ptr, h0_ptr, h_ptr, state_out_ptr, pre_ptr, cnm_ptr, sync_ptr,
    B, T, t_start, t_end,
    s_wx_b, s_wx_t, s_wx_g, s_wx_h,
    NH: tl.constexpr, DH: tl.constexpr, BB: tl.constexpr, BO: tl.constexpr, NCB: tl.constexpr,
    KA: tl.constexpr, KB: tl.constexpr, BK: tl.constexpr, RESIDENT: tl.constexpr,
    SAVE: tl.constexpr, SYNC: tl.constexpr, H0_IS_STATE: tl.constexpr, DOT_PREC: tl.constexpr,
    FAST_MATH: tl.constexpr,
):
    """Steps t_start <= t < t_end of the sLSTM for one (batch block, head, column block).

    state_in/state_out (4, B, NH, DH) float32: (h, c, n, m) before t_start / after t_end - 1 (may
    be the same buffer: each program reads and writes only its own tile). h0 (B, NH, DH): the
    initial h in the matmul dtype (split mode; with H0_IS_STATE, a single step, it is state_in).
    h (B, T, NH, DH) output.
    pre (T, 4, B, NH, DH) and cnm (T, 3, B, NH, DH) float32, written when SAVE. sync: int32
    counters, one per (batch block, head), zero at launch, used when SYNC.

    The four gates are one product: acc (BB, 4 * BO), column g * BO + j = gate g of the own
    column col0 + j, = h_{t-1} (BB, DH) @ RT (DH, 4 * BO).
    """
    pid = tl.program_id(0)
    cb = pid % NCB
    group = pid // NCB  # = batch_block * NH + head; a group's programs are adjacent
    head = group % NH
    rb = (group // NH) * BB + tl.arange(0, BB)
    mask_b = rb < B
    rb64 = rb.to(tl.int64)
    col0 = cb * BO
    cols = col0 + tl.arange(0, BO)
    mask = mask_b[:, None] & (cols < DH)[None, :]
    dtype = R_ptr.dtype.element_ty
    HD: tl.constexpr = NH * DH
    T64 = tl.cast(T, tl.int64)
    s_state = tl.cast(B, tl.int64) * HD  # slot stride of the (4, B, NH, DH) state

    # fused-gate columns: gate g and head column o
    cc = tl.arange(0, 4 * BO)
    g4 = cc // BO
    o4 = col0 + cc % BO
    mask4 = mask_b[:, None] & (o4 < DH)[None, :]
    bias = tl.load(b_ptr + g4 * HD + head * DH + o4, mask=o4 < DH, other=0.0).to(tl.float32)[None, :]
    RT_a, RT_b = 0, 0  # placeholders when R is streamed
    if RESIDENT:  # loaded once; the compiler keeps loop-invariant dot operands in shared memory
        RT_a = load_rt(R_ptr, head, col0, 0, NH, DH, BO, KA)
        if KB > 0:
            RT_b = load_rt(R_ptr, head, col0, KA, NH, DH, BO, KB)

    # carried state of the own tile; the same int32 offsets address pre and cnm (time-major)
    off_st = rb[:, None] * HD + head * DH + cols[None, :]
    h = tl.load(state_in_ptr + off_st, mask=mask, other=0.0)
    c = tl.load(state_in_ptr + s_state + off_st, mask=mask, other=0.0)
    n = tl.load(state_in_ptr + 2 * s_state + off_st, mask=mask, other=0.0)
    m = tl.load(state_in_ptr + 3 * s_state + off_st, mask=mask, other=0.0)
    off_pre = rb[:, None] * HD + g4[None, :] * s_state + head * DH + o4[None, :]

    off_wx = rb64[:, None] * s_wx_b + g4[None, :] * s_wx_g + head * s_wx_h + o4[None, :]
    off_h = rb64[:, None] * (T64 * HD) + head * DH + cols[None, :]

    # wx of the next step is loaded one step ahead (its latency hides behind the step)
    nx = tl.load(wx_ptr + off_wx + tl.cast(t_start, tl.int64) * s_wx_t, mask=mask4, other=0.0)
    # num_stages=1: the h_{t-1} loads must not be software-pipelined ahead of the barrier
    for t in tl.range(t_start, t_end, num_stages=1):
        acc = nx.to(tl.float32) + bias
        nx = tl.load(wx_ptr + off_wx + tl.cast(t + 1, tl.int64) * s_wx_t,
                     mask=mask_if(mask4, t + 1 < t_end), other=0.0)

        if NCB == 1:  # whole head in this program: h_{t-1} is in registers
            acc = mma(h.to(dtype), RT_a, acc, DOT_PREC)
        else:
            if SYNC:
                group_wait(sync_ptr + group, (t - t_start) * NCB)
            acc = split_recurrent(h_ptr, h0_ptr, R_ptr, RT_a, RT_b, acc, t, T, rb64, mask_b, head,
                                  col0, NH, DH, BO, KA, KB, BK, RESIDENT, H0_IS_STATE, DOT_PREC)

        t64 = tl.cast(t, tl.int64)
        if SAVE:
            tl.store(pre_ptr + t64 * (4 * s_state) + off_pre, acc, mask=mask4)
        g_i, g_f, g_z, g_o = split_gates(acc, BB, BO)
        i_act, f_act, z_act, o_act, m = gate_activations(g_i, g_f, g_z, g_o, n, m, FAST_MATH)
        c = f_act * c + i_act * z_act
        n = f_act * n + i_act
        h = o_act * c * fast_rcp(n, FAST_MATH)

        tl.store(h_ptr + off_h + t64 * HD, h.to(dtype), mask=mask)
        if SAVE:
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
    padded head size when ncb == 1). resident: R's slice held on chip as two row blocks of the
    contraction, ka and kb rows (powers of 2, ka + kb >= DH, kb may be 0); otherwise streamed from
    L2 in chunks of bk rows. sync: allow the persistent barrier path (GPU, co-resident grid) in
    split mode; else one launch per step. num_warps / bwd_num_warps: of the forward and the
    backward kernel. fwd_batch_last / bwd_batch_last (whole heads): the forward's / backward's
    batch-last kernel, tiles (BO, BB) and per-step tensors (T, ., NH, DH, B padded to 16), the
    recurrent product with R on the left (fwd_head.py, bwd_head.py)."""

    ncb: int
    bo: int
    ka: int
    kb: int
    bk: int
    resident: bool
    num_warps: int
    sync: bool = True
    bwd_num_warps: int = 8
    fwd_batch_last: bool = False
    bwd_batch_last: bool = False

    @property
    def saves_steps(self) -> bool:
        """Whether a training forward stores the per-step pre-activations and (c, n, m) for the
        backward (split heads: many SMs share the stores) or the backward recomputes them
        (whole heads: the stores would cost the head's one SM more than the recomputation
        costs all of them; recompute.py)."""
        return self.ncb > 1

    def as_ints(self) -> list[int]:
        """The fields as a list of ints (how the custom ops take a config)."""
        return [int(x) for x in astuple(self)]

    @classmethod
    def from_ints(cls, values) -> "SLSTMConfig":
        return cls(**{f.name: (bool(v) if f.type in (bool, "bool") else int(v)) for f, v in zip(fields(cls), values)})


# Test and tuning hook, set by op.config_override for the code inside its `with` block (a context
# variable: other threads and contexts keep the heuristic).
CONFIG_OVERRIDE: ContextVar[Optional[dict]] = ContextVar("slstm_config_override", default=None)


def _largest_pow2_divisor(x: int, cap: int) -> int:
    d = 16
    while d * 2 <= cap and x % (d * 2) == 0:
        d *= 2
    return d


def contraction_blocks(DH: int) -> tuple[int, int]:
    """DH as ka + kb rows with ka, kb powers of 2 (kb = 0 if DH is one; else kb padded up):
    768 -> (512, 256), 640 -> (512, 128), 896 -> (512, 512)."""
    ka = 1 << (DH.bit_length() - 1)
    rest = DH - ka
    return ka, (next_power_of_2(rest) if rest else 0)


SMEM_FOR_R = 160 * 1024  # bytes of shared memory a program may spend on its slice of R


def _config(DH, bo, resident, bk=None, num_warps=None, sync=True, bwd_num_warps=None, fwd_batch_last=False,
            bwd_batch_last=False):
    dhp = next_power_of_2(DH)
    if bo >= dhp:  # whole head: R held, one block of the padded head size
        # the batch-last kernels: a warpgroup (4 warps) per 64 columns (bench.tools.sm90_code: at
        # DH = 64, 3 barriers a step with 4 warps, 6 with 8)
        nw = num_warps or ((8 if dhp >= 128 else 4) if fwd_batch_last else (4 if dhp <= 32 else 8))
        bwd_nw = bwd_num_warps or ((8 if dhp >= 128 else 4) if bwd_batch_last else (4 if dhp <= 32 else 8))
        return SLSTMConfig(ncb=1, bo=dhp, ka=dhp, kb=0, bk=dhp, resident=True, num_warps=nw, sync=sync,
                           bwd_num_warps=bwd_nw, fwd_batch_last=fwd_batch_last, bwd_batch_last=bwd_batch_last)
    if fwd_batch_last or bwd_batch_last:
        raise ValueError("config override: fwd_batch_last and bwd_batch_last are for whole heads (bo >= DH)")
    ka, kb = contraction_blocks(DH) if resident else (0, 0)
    return SLSTMConfig(ncb=DH // bo, bo=bo, ka=ka, kb=kb, bk=bk or _largest_pow2_divisor(DH, 64),
                       resident=resident, num_warps=num_warps or 4, sync=sync,
                       bwd_num_warps=bwd_num_warps or 8)


def padded_batch(B: int) -> int:
    """The batch of the whole-head kernels' batch-last layouts (`SLSTMConfig.fwd_batch_last`,
    `bwd_batch_last`): B rounded up to a multiple of BATCH_BLOCK."""
    return cdiv(B, BATCH_BLOCK) * BATCH_BLOCK


def r_bytes(DH: int, bo: int, dtype: torch.dtype) -> int:
    """Shared memory for one program's resident slice of R (4 gates x bo columns x contraction);
    float32 runs as 3xTF32, which keeps two parts of each operand."""
    elt = 8 if dtype == torch.float32 else 2
    return sum(contraction_blocks(DH)) * 4 * bo * elt


def pick_config(NH: int, DH: int, B: int, dtype: torch.dtype, device: torch.device) -> SLSTMConfig:
    """Heuristic choice, from register and shared-memory use of the sm_90 compile and H100
    timings (bench/NOTES.md). `config_override` replaces it.

    Whole head in one program while R fits in shared memory (head size up to 128). Larger heads:
    the columns split over programs that synchronize every step, the smallest column block (least
    work per step) whose grid fits the SMs; R held in shared memory when it fits, else streamed
    from L2."""
    dhp = next_power_of_2(DH)
    override = CONFIG_OVERRIDE.get()
    if override is not None:
        o = dict(override)
        bo = o.pop("bo", dhp)
        if bo < dhp and DH % bo:
            raise ValueError(f"config override: bo={bo} must divide DH={DH}")
        if (o.get("fwd_batch_last") or o.get("bwd_batch_last")) and device.type == "cuda" and dtype.itemsize != 2:
            # float32's 3xTF32 keeps two parts of R and of the operand: 560 KB of shared memory
            # at DH = 128, spills at 64 (bench.tools.sm90_code)
            raise ValueError(f"config override: fwd_batch_last / bwd_batch_last take 16-bit inputs on the GPU, "
                             f"got {dtype}")
        return _config(DH, bo, o.pop("resident", bo >= dhp), **o)
    if dhp <= 128 and r_bytes(dhp, dhp, dtype) <= SMEM_FOR_R:
        return _config(DH, dhp, True)
    groups = NH * cdiv(B, BATCH_BLOCK)
    sms = num_sms(device)
    bo = 16
    while DH % (bo * 2) == 0 and bo < 64 and groups * (DH // bo) > sms:
        bo *= 2
    return _config(DH, bo, r_bytes(DH, bo, dtype) <= SMEM_FOR_R)


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


def fast_math(device: torch.device) -> bool:
    """MUFU approximations (ex2/lg2/rcp .approx.ftz) on the GPU; the interpreter has no inline
    assembly and runs the plain functions."""
    return device.type == "cuda"


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
    grid = NH * cfg.ncb * cdiv(B, BATCH_BLOCK)
    sync = use_sync(cfg, grid, dev)
    counters = torch.zeros(grid // cfg.ncb if sync else 1, dtype=torch.int32, device=dev)
    meta = dict(NH=NH, DH=DH, BB=BATCH_BLOCK, BO=cfg.bo, NCB=cfg.ncb, KA=cfg.ka, KB=cfg.kb,
                BK=cfg.bk, RESIDENT=cfg.resident, SAVE=save, DOT_PREC=dot_precision(dtype, dev),
                FAST_MATH=fast_math(dev), num_warps=cfg.num_warps)

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
