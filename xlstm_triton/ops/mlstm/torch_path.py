"""Chunkwise mLSTM in plain PyTorch: the CPU path (same contract as the Triton kernels).

Vectorized over batch, heads and chunks; a Python loop over chunks carries the state. Autograd
differentiates it; the stabilizer comes from `gates.chunkwise_gates_torch` under no_grad, so m gets
no gradient, as in the kernels. Computes in float32 for 16-bit inputs, else in the input dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .gates import chunkwise_gates_torch, floored_logsigmoid


def mlstm_chunkwise_torch(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None,
                          return_last_states=False, eps=1e-6, chunk_size=64):
    B, NH, S, DQK = q.shape
    DV = v.shape[-1]
    L = chunk_size
    cdt = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    gates = chunkwise_gates_torch(i, f, m_initial, L)
    NC, S_pad = gates.num_chunks, gates.padded_len

    def chunks(x, value=0.0):                    # (B, NH, S, ...) -> (B, NH, NC, L, ...)
        x = x.to(cdt)
        pad = [0, 0] * (x.dim() - 3) + [0, S_pad - S]
        return F.pad(x, pad, value=value).reshape(B, NH, NC, L, *x.shape[3:])

    qc, kc, vc = chunks(q) * DQK**-0.5, chunks(k), chunks(v)
    ic = chunks(i, float("-inf"))
    # f made contiguous first: with a strided f (the layers pass a transposed view) the
    # compiled backward of the floor gave f's gradient a layout a later view could not take.
    b = torch.cumsum(chunks(floored_logsigmoid(f.to(cdt).contiguous())), dim=-1)   # chunk-local
    m = gates.m.reshape(B, NH, NC, L).to(cdt)                             # detached
    m_bound = torch.cat([torch.zeros(B, NH, 1, dtype=cdt, device=q.device) if m_initial is None
                         else m_initial.to(cdt).detach(),
                         m[..., -1]], dim=-1)                             # (B, NH, NC+1)
    m_start, m_end = m_bound[..., :-1, None], m_bound[..., 1:, None]

    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    log_w = b[..., :, None] - b[..., None, :] + ic[..., None, :] - m[..., :, None]
    weight = torch.exp(torch.where(causal, log_w, float("-inf")))        # (B, NH, NC, L, L)
    g = torch.exp(b + m_start - m)                                        # (B, NH, NC, L)
    w = torch.exp(b[..., -1:] - b + ic - m_end)
    decay = torch.exp(b[..., -1:] + m_start - m_end)                      # (B, NH, NC, 1)

    C = q.new_zeros(B, NH, DQK, DV, dtype=cdt) if c_initial is None else c_initial.to(cdt)
    n = q.new_zeros(B, NH, DQK, dtype=cdt) if n_initial is None else n_initial.to(cdt)
    Cs, ns = [], []
    for c in range(NC):
        Cs.append(C)
        ns.append(n)
        kw = kc[:, :, c] * w[:, :, c, :, None]
        C = decay[:, :, c, :, None] * C + kw.transpose(-1, -2) @ vc[:, :, c]
        n = decay[:, :, c] * n + kw.sum(-2)
    Cs, ns = torch.stack(Cs, dim=2), torch.stack(ns, dim=2)              # states at chunk starts

    # Causality for every value, finite or not: later keys are selected out (not multiplied by a
    # zero weight), and non-finite values are zeroed in the product and make their own and the
    # later rows NaN in their column instead, as the recurrence would.
    scores = torch.where(causal, (qc @ kc.transpose(-1, -2)) * weight, 0.0)
    finite = torch.isfinite(vc)
    reached = torch.cummax(~finite, dim=-2).values                      # (B, NH, NC, L, DV)
    num = scores @ torch.where(finite, vc, 0.0) + g[..., None] * (qc @ Cs)
    num = torch.where(reached, float("nan"), num)
    nq = scores.sum(-1) + g * (qc * ns[..., None, :]).sum(-1)
    den = torch.maximum(nq.abs(), torch.exp(-m)) + eps
    h = (num / den[..., None]).reshape(B, NH, S_pad, DV)[:, :, :S].to(q.dtype)
    if not return_last_states:
        return h
    sdt = torch.float64 if cdt == torch.float64 else torch.float32     # states: float32 (float64 in, float64 out)
    return h, (C.to(sdt), n.to(sdt), gates.m_last.to(device=q.device, dtype=sdt))
