"""dR and db of the sLSTM, after the sequential backward: products over all B*T rows.

    dR[g, n, o, i] = sum_{b,t} dwx[b, t, g, n, o] h_{t-1}[b, n, i],   db[g, n, o] = sum_{b,t} dwx[b, t, g, n, o]

with h_{-1} the initial state's h. Two implementations, by head size (H100, bf16, B=16, T=1024,
bench/NOTES.md): heads up to 128 as a Triton kernel of 64 x 64 tiles split over batch rows and
time, float32 atomics (0.11 / 0.20 ms at 12x64 / 6x128, where cuBLAS takes 0.26: its per-gate
products of NH small tiles with K = B*T occupy 12-24 SMs); larger heads as one batched cuBLAS
product per gate (0.27 / 0.31 / 0.56 ms at 3x256 / 1x768 / 4x512, against the kernel's 0.39 /
1.11 / 1.97).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...launch import cached_launch
from ...utils import cdiv, dot_precision, mma, next_power_of_2, num_sms
from .fwd import mask_if

SMALL_HEAD = 128   # head sizes up to this run the Triton kernel


def slstm_dr_db(dwx, h, state0):
    """dR (4, NH, DH, DH) and db (4, NH, DH), float32, from dwx (B, T, 4, NH, DH), h (B, T, NH, DH)
    (contiguous, same dtype) and the initial state (4, B, NH, DH) float32."""
    if dwx.shape[-1] <= SMALL_HEAD:
        return dr_db_triton(dwx, h, state0)
    return dr_db_cublas(dwx, h, state0)


def dr_db_cublas(dwx, h, state0):
    """`slstm_dr_db` as one batched matmul per gate over the heads, with the B*T rows as its
    reduction dimension (float32 accumulation, rounded once to the inputs' dtype, as a linear
    layer's weight gradient is)."""
    B, T, _, NH, DH = dwx.shape
    # h_{t-1}: the initial state's h at t == 0, then h shifted by one step; a (NH, B*T, DH) view
    h_prev = torch.cat([state0[0, :, None].to(h.dtype), h[:, :-1]], dim=1)
    h_prev = h_prev.view(B * T, NH, DH).transpose(0, 1)
    d = dwx.view(B * T, 4, NH, DH)
    dR = torch.empty((4, NH, DH, DH), dtype=torch.float32, device=dwx.device)
    for g in range(4):
        dR[g] = torch.bmm(d[:, g].permute(1, 2, 0), h_prev)  # (NH, DH, B*T) @ (NH, B*T, DH)
    db = dwx.sum(dim=(0, 1), dtype=torch.float32)
    return dR, db


@cached_launch
@triton.jit(do_not_specialize=["B", "T", "t_per_split"])
def slstm_dr_db_kernel(
    dwx_ptr, h_ptr, state0_ptr, dR_ptr, db_ptr, B, T, t_per_split,
    NH: tl.constexpr, DH: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr,
    BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """dR[g, head, o, i] += sum_t dwx[b, t, g, head, o] h_{t-1}[b, head, i] and
    db[g, head, o] += sum_t dwx[b, t, g, head, o] over one batch row b and one range of t.
    grid: (4 * NH, o blocks * i blocks, B * time splits); dR (4, NH, DH, DH) and db (4, NH, DH)
    float32, zeroed before. h_{t-1} is the output h (B, T, NH, DH) at t - 1, or the initial
    state's h (float32, (B, NH, DH)) at t == 0."""
    g = tl.program_id(0) // NH
    head = tl.program_id(0) % NH
    n_i_blocks: tl.constexpr = (DH + BLOCK_I - 1) // BLOCK_I
    ob = tl.program_id(1) // n_i_blocks
    ib = tl.program_id(1) % n_i_blocks
    n_splits = tl.cdiv(T, t_per_split)
    b = tl.program_id(2) // n_splits
    t_start = (tl.program_id(2) % n_splits) * t_per_split
    t_end = tl.minimum(t_start + t_per_split, T)
    HD: tl.constexpr = NH * DH
    b64 = tl.cast(b, tl.int64)
    T64 = tl.cast(T, tl.int64)
    dwx_b = dwx_ptr + b64 * T64 * (4 * HD) + g * HD + head * DH  # this batch row, gate and head
    h_b = h_ptr + b64 * T64 * HD + head * DH
    h0_b = state0_ptr + b64 * HD + head * DH
    o = ob * BLOCK_O + tl.arange(0, BLOCK_O)
    i = ib * BLOCK_I + tl.arange(0, BLOCK_I)
    mo = o < DH
    mi = i < DH
    acc = tl.zeros((BLOCK_O, BLOCK_I), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_O,), dtype=tl.float32)
    for t0 in range(t_start, t_end, BLOCK_N):
        t = t0 + tl.arange(0, BLOCK_N)
        mt = t < t_end
        a = tl.load(dwx_b + t[:, None] * (4 * HD) + o[None, :], mask=mt[:, None] & mo[None, :], other=0.0)
        mh = mt[:, None] & mi[None, :]
        hp = tl.load(h_b + (t[:, None] - 1) * HD + i[None, :], mask=mh & (t[:, None] > 0), other=0.0)
        h0 = tl.load(h0_b + i[None, :] + 0 * t[:, None], mask=mh & (t[:, None] == 0), other=0.0)
        hp = tl.where(t[:, None] > 0, hp, h0.to(hp.dtype))
        acc = mma(tl.trans(a), hp, acc, DOT_PREC)
        acc_b += tl.sum(a.to(tl.float32), axis=0)
    gh = g * NH + head
    tl.atomic_add(dR_ptr + gh * DH * DH + o[:, None] * DH + i[None, :], acc,
                  mask=mo[:, None] & mi[None, :], sem="relaxed")
    tl.atomic_add(db_ptr + gh * DH + o, acc_b, mask=mask_if(mo, ib == 0), sem="relaxed")


def dr_db_triton(dwx, h, state0):
    """`slstm_dr_db` as slstm_dr_db_kernel: float32 accumulation, partial tiles added with float32
    atomics (the summation order, and the last bits, can vary from run to run)."""
    B, T, _, NH, DH = dwx.shape
    dR = torch.zeros((4, NH, DH, DH), dtype=torch.float32, device=dwx.device)
    db = torch.zeros((4, NH, DH), dtype=torch.float32, device=dwx.device)
    block = min(64, next_power_of_2(DH))
    block_n = 64 if dwx.is_cuda else 16
    tiles = 4 * NH * cdiv(DH, block) ** 2
    # about two waves of programs on the GPU; each split at least 4 row blocks
    want = cdiv(2 * num_sms(dwx.device), tiles * B) if dwx.is_cuda else 2
    splits = max(1, min(want, cdiv(T, 4 * block_n)))
    t_per_split = cdiv(cdiv(T, splits), block_n) * block_n
    splits = cdiv(T, t_per_split)
    slstm_dr_db_kernel[(4 * NH, cdiv(DH, block) ** 2, B * splits)](
        dwx, h, state0, dR, db, B, T, t_per_split, NH=NH, DH=DH, BLOCK_O=block, BLOCK_I=block,
        BLOCK_N=block_n, DOT_PREC=dot_precision(dwx.dtype, dwx.device), num_warps=4)
    return dR, db
