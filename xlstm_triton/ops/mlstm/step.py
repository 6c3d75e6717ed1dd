"""One mLSTM time step for decoding: the state is read once and written once.

`mlstm_step_kernel`: grid (DV/BV, B*NH). Each program owns a block of BV value columns of one
head; it walks DQK in blocks of BK, updating its slice of C and accumulating the numerator, and
recomputes the normalizer n (DQK floats, cheap) so no program waits for another. The program
of the first column block writes the new n and m. The state is read in its own dtype (a
bfloat16 cache needs no conversion pass) and the new one written in the dtype of the output
buffers; C may be updated in place (each program reads and then writes only its own block).

    (optionally i, f = cap * tanh(i / cap), cap * tanh(f / cap) first: xLSTM-7B's gate soft cap)
    m' = max(logsigmoid(f) + m, i);  f' = exp(logsigmoid(f) + m - m');  i' = exp(i - m')
    C' = f' C + i' k v^T;  n' = f' n + i' k;  h = C'^T q^ / (max(|n'^T q^|, exp(-m')) + eps)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ...launch import cached_launch
from ...utils import cdiv, maximum_nan, minimum_nan, new_empty, next_power_of_2, num_sms, soft_cap, soft_cap_jit


@cached_launch
@triton.jit(do_not_specialize=["NH"])
def mlstm_step_kernel(
    q_ptr, k_ptr, v_ptr, i_ptr, f_ptr, c_ptr, n_ptr, m_ptr,
    h_ptr, c_new_ptr, n_new_ptr, m_new_ptr,
    s_qb, s_qh, s_kb, s_kh, s_vb, s_vh, s_ib, s_ih, s_fb, s_fh,
    NH, scale, eps, cap,
    DQK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, SOFT_CAP: tl.constexpr,
):
    pid_v, bh = tl.program_id(0), tl.program_id(1)
    b, hd = bh // NH, bh % NH
    offs_v = pid_v * BV + tl.arange(0, BV)
    mask_v = offs_v < DV
    i_pre = tl.load(i_ptr + b * s_ib + hd * s_ih).to(tl.float32)
    f_pre = tl.load(f_ptr + b * s_fb + hd * s_fh).to(tl.float32)
    if SOFT_CAP:
        i_pre = soft_cap_jit(i_pre, cap)
        f_pre = soft_cap_jit(f_pre, cap)
    logf = minimum_nan(f_pre, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(f_pre)))     # logsigmoid, stable
    m = tl.load(m_ptr + bh).to(tl.float32)
    m_new = maximum_nan(logf + m, i_pre)
    f_act = tl.exp(logf + m - m_new)
    i_act = tl.exp(i_pre - m_new)
    v = tl.load(v_ptr + b.to(tl.int64) * s_vb + hd * s_vh + offs_v, mask=mask_v, other=0.0).to(tl.float32)
    q_base = q_ptr + b.to(tl.int64) * s_qb + hd * s_qh
    k_base = k_ptr + b.to(tl.int64) * s_kb + hd * s_kh
    state = bh.to(tl.int64) * DQK * DV
    first_v = pid_v == 0

    num = tl.zeros((BV,), dtype=tl.float32)
    nq = tl.zeros((BK,), dtype=tl.float32)
    for kb in range(0, DQK, BK):
        offs_k = kb + tl.arange(0, BK)
        mask_k = offs_k < DQK
        q = tl.load(q_base + offs_k, mask=mask_k, other=0.0).to(tl.float32) * scale
        k = tl.load(k_base + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        n_old = tl.load(n_ptr + bh.to(tl.int64) * DQK + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        n = f_act * n_old + i_act * k
        tl.store(n_new_ptr + bh.to(tl.int64) * DQK + offs_k, n.to(n_new_ptr.dtype.element_ty), mask=mask_k & (offs_k * 0 + pid_v == 0))
        nq += n * q
        mask = mask_k[:, None] & mask_v[None, :]
        offs = state + offs_k[:, None] * DV + offs_v[None, :]
        C = f_act * tl.load(c_ptr + offs, mask=mask, other=0.0).to(tl.float32) + i_act * k[:, None] * v[None, :]
        tl.store(c_new_ptr + offs, C.to(c_new_ptr.dtype.element_ty), mask=mask)
        num += tl.sum(C * q[:, None], axis=0)
    den = maximum_nan(tl.abs(tl.sum(nq, axis=0)), tl.exp(-m_new)) + eps
    tl.store(h_ptr + bh.to(tl.int64) * DV + offs_v, (num / den).to(h_ptr.dtype.element_ty), mask=mask_v)
    if first_v:
        tl.store(m_new_ptr + bh, m_new.to(m_new_ptr.dtype.element_ty))


def mlstm_step_triton(q, k, v, i, f, c, n, m, eps=1e-6, inplace=False, gate_soft_cap=None):
    """Launcher. New state in float32, or with `inplace` written into c, n, m (any float dtype,
    contiguous): c by the kernel itself, n and m (read by every column block of a head) through
    small buffers copied back after it."""
    B, NH, DQK = q.shape
    DV = v.shape[-1]
    dev = q.device
    h = new_empty((B, NH, DV), q.dtype, dev)
    if inplace:
        c_new, n_new, m_new = c, new_empty(n.shape, n.dtype, dev), new_empty(m.shape, m.dtype, dev)
    else:
        c, n, m = c.contiguous(), n.contiguous(), m.contiguous()
        c_new = new_empty((B, NH, DQK, DV), torch.float32, dev)
        n_new = new_empty((B, NH, DQK), torch.float32, dev)
        m_new = new_empty((B, NH, 1), torch.float32, dev)
    # value block: 64 columns, halved (down to 16) while the grid would not give every SM two
    # programs: at batch 1 a step is a few microseconds and bound by how many SMs stream the state
    # (one compiled variant per block size, so at most three)
    BV = min(64, max(16, next_power_of_2(DV)))
    while BV > 16 and cdiv(DV, BV) * B * NH < 2 * num_sms(dev):
        BV //= 2
    BK = min(64, max(16, next_power_of_2(DQK)))
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    i, f = i.reshape(B, NH), f.reshape(B, NH)
    mlstm_step_kernel[(cdiv(DV, BV), B * NH)](
        q, k, v, i, f, c, n, m, h, c_new, n_new, m_new,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        i.stride(0), i.stride(1), f.stride(0), f.stride(1),
        NH, DQK**-0.5, eps, 1.0 if gate_soft_cap is None else float(gate_soft_cap),
        DQK=DQK, DV=DV, BK=BK, BV=BV, SOFT_CAP=gate_soft_cap is not None, num_warps=4)
    if inplace:
        n.copy_(n_new)
        m.copy_(m_new)
        return h, (c, n, m)
    return h, (c_new, n_new, m_new)


def mlstm_step_torch(q, k, v, i, f, c, n, m, eps=1e-6, gate_soft_cap=None):
    """The same step in PyTorch (differentiable; m gets no gradient)."""
    out_dtype = q.dtype
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v = q.to(dt), k.to(dt), v.to(dt)
    i, f = i.to(dt).reshape(m.shape), f.to(dt).reshape(m.shape)
    if gate_soft_cap is not None:
        i, f = soft_cap(i, gate_soft_cap), soft_cap(f, gate_soft_cap)
    c, n, m = c.to(dt), n.to(dt), m.to(dt).detach()
    logf = F.logsigmoid(f)
    m_new = torch.maximum(logf + m, i).detach()
    f_act, i_act = torch.exp(logf + m - m_new), torch.exp(i - m_new)
    c_new = f_act[..., None] * c + i_act[..., None] * k[..., :, None] * v[..., None, :]
    n_new = f_act * n + i_act * k
    qs = q * q.shape[-1] ** -0.5
    num = torch.einsum("bhkv,bhk->bhv", c_new, qs)
    den = torch.maximum((n_new * qs).sum(-1, keepdim=True).abs(), torch.exp(-m_new)) + eps
    return (num / den).to(out_dtype), (c_new, n_new, m_new)
