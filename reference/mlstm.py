"""mLSTM cell, written for a reader: the test oracle (docs/mlstm.md).

Layout (the one `mlstm_kernels`, `transformers` and `xlstm` use):
    q, k  (B, NH, S, DQK)      v (B, NH, S, DV)      i, f (B, NH, S)   gate pre-activations
    c     (B, NH, DQK, DV)     n (B, NH, DQK)        m (B, NH, 1)      stabilized state

The state (C, n, m) is stabilized: the true matrix memory is C * exp(m). Start from
C = 0, n = 0, m = 0 unless an initial state is given.

The stabilizer m gets no gradient (it cancels in exact arithmetic), so every function here
computes it on detached values. Everything else is plain autograd: these functions run in
any floating dtype, float64 included, and are differentiable in every input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["mlstm_recurrent", "mlstm_parallel", "mlstm_recurrent_step"]


def _initial_state(q, v, c_initial, n_initial, m_initial):
    B, NH, _, DQK = q.shape
    DV = v.shape[-1]
    c = q.new_zeros(B, NH, DQK, DV) if c_initial is None else c_initial.to(q.dtype)
    n = q.new_zeros(B, NH, DQK) if n_initial is None else n_initial.to(q.dtype)
    m = q.new_zeros(B, NH, 1) if m_initial is None else m_initial.detach().to(q.dtype)
    return c, n, m


def mlstm_recurrent_step(q, k, v, i, f, c, n, m, eps: float = 1e-6):
    """One time step for every batch row and head.

    q, k: (B, NH, DQK); v: (B, NH, DV); i, f: (B, NH); c: (B, NH, DQK, DV); n: (B, NH, DQK);
    m: (B, NH, 1). Returns h (B, NH, DV) and the new state (c, n, m).
    """
    dqk = q.shape[-1]
    m = m.detach()
    logf = F.logsigmoid(f)[..., None]                      # (B, NH, 1)
    i = i[..., None]
    with torch.no_grad():
        m_new = torch.maximum(logf + m, i)
    f_act = torch.exp(logf + m - m_new)                    # (B, NH, 1)
    i_act = torch.exp(i - m_new)
    c = f_act[..., None] * c + i_act[..., None] * (k[..., :, None] * v[..., None, :])
    n = f_act * n + i_act * k
    q_scaled = q * dqk**-0.5
    num = torch.einsum("bhkv,bhk->bhv", c, q_scaled)
    qn = (n * q_scaled).sum(-1, keepdim=True)
    den = torch.maximum(qn.abs(), torch.exp(-m_new)) + eps
    return num / den, (c, n, m_new)


def mlstm_recurrent(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None,
                    return_last_states: bool = False, eps: float = 1e-6):
    """Step-by-step loop over the sequence: the definition itself.

    Returns h (B, NH, S, DV), and with `return_last_states` also (c, n, m) after the last step.
    """
    c, n, m = _initial_state(q, v, c_initial, n_initial, m_initial)
    hs = []
    for t in range(q.shape[2]):
        h, (c, n, m) = mlstm_recurrent_step(q[:, :, t], k[:, :, t], v[:, :, t],
                                            i[:, :, t], f[:, :, t], c, n, m, eps)
        hs.append(h)
    h = torch.stack(hs, dim=2) if hs else v.new_zeros(*v.shape[:2], 0, v.shape[3])    # S = 0: the state passes
    return (h, (c, n, m)) if return_last_states else h


def mlstm_parallel(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None,
                   return_last_states: bool = False, eps: float = 1e-6):
    """Quadratic (attention-like) form, stabilized by the exact per-row maximum.

    Row t mixes every step s <= t with log weight  logD[t, s] = sum_{j=s+1..t} logf_j + i_s,
    and the initial state with log weight  sum_{j=1..t} logf_j + m_initial. The row stabilizer
    is the maximum over all of these, which is exactly the recurrent m_t, so this form equals
    `mlstm_recurrent` to rounding, eps term included.
    """
    c0, n0, m0 = _initial_state(q, v, c_initial, n_initial, m_initial)
    S, dqk = q.shape[2], q.shape[-1]
    logf = F.logsigmoid(f)
    cum = torch.cumsum(logf, dim=-1)                                    # (B, NH, S): sum_{j<=t}
    log_d = cum[..., :, None] - cum[..., None, :] + i[..., None, :]    # (B, NH, S, S)
    causal = torch.ones(S, S, dtype=torch.bool, device=q.device).tril()
    log_d = log_d.masked_fill(~causal, float("-inf"))
    log_init = cum + m0                                                 # (B, NH, S)
    with torch.no_grad():
        m = torch.maximum(log_d.max(dim=-1).values, log_init)           # (B, NH, S)
    q_scaled = q * dqk**-0.5
    weights = torch.exp(log_d - m[..., None])                           # 0 above the diagonal
    w_init = torch.exp(log_init - m)                                    # (B, NH, S)
    scores = (q_scaled @ k.transpose(-1, -2)) * weights
    num = scores @ v + w_init[..., None] * (q_scaled @ c0)
    qn = scores.sum(-1) + w_init * (q_scaled * n0[..., None, :]).sum(-1)
    den = torch.maximum(qn.abs(), torch.exp(-m)) + eps
    h = num / den[..., None]
    if not return_last_states:
        return h
    # Final state: the row S-1 weights, applied to k v^T instead of q k^T.
    m_last = m[..., -1:]                                                # (B, NH, 1)
    w_last = weights[..., -1, :]                                        # (B, NH, S)
    c = w_init[..., -1, None, None] * c0 + (k * w_last[..., None]).transpose(-1, -2) @ v
    n = w_init[..., -1, None] * n0 + (k * w_last[..., None]).sum(-2)
    return h, (c, n, m_last)
