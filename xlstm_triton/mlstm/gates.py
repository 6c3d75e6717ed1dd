"""Gate preparation for the chunkwise mLSTM: everything that depends on the gates alone.

The stabilizer m_t of SPEC section 1 is a function of the gates only:

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOG2E = 1.0 / math.log(2.0)


@dataclass
class ChunkGates:
    """Per-step arrays are (B*NH, S_pad) float32; per-chunk arrays (B*NH, NC) float32."""
    u2: torch.Tensor      # (b_t - m_t) * log2(e)
    r2: torch.Tensor      # (i_s - b_s) * log2(e); -inf on padding
    g: torch.Tensor       # inter-chunk weight of row t
    w: torch.Tensor       # state input weight of column s
    m: torch.Tensor       # stabilizer m_t
    decay: torch.Tensor   # (B*NH, NC)
    m_last: torch.Tensor  # (B, NH, 1) float64: m after the last real step
    num_chunks: int
    padded_len: int


@torch.no_grad()
def chunkwise_gates(i: torch.Tensor, f: torch.Tensor, m_initial: torch.Tensor | None,
                    chunk_size: int) -> ChunkGates:
    """i, f: (B, NH, S) gate pre-activations; m_initial: (B, NH, 1) or None (zeros)."""
    B, NH, S = i.shape
    L = chunk_size
    NC = -(-S // L)
    S_pad = NC * L
    ig = i.double()
    logf = F.logsigmoid(f.double())
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

    def flat(x):
        return x.reshape(B * NH, -1).float().contiguous()

    return ChunkGates(u2=flat((b - m) * LOG2E), r2=flat((ig - b) * LOG2E), g=flat(g), w=flat(w),
                      m=flat(m), decay=flat(decay), m_last=m_bound[..., -1:],
                      num_chunks=NC, padded_len=S_pad)
