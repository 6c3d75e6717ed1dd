"""The sLSTM in PyTorch, same contract as the Triton op (CPU tensors without TRITON_INTERPRET=1).

A loop over time (the recurrence is sequential), each step vectorized over batch and heads;
gradients by autograd. Gate math, states and the recurrent matmul in float32 (float64 for float64
inputs; the kernels round h_{t-1} to wx's dtype first); h returned in wx's dtype, the state in
the compute dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .fwd import F_EXP_MAX


def slstm_cell_torch(pre, c, n, m):
    """One step from pre-activations (B, 4, NH, DH) and state tiles (B, NH, DH), all in the
    compute dtype. Returns h, c, n, m. m carries no gradient; f' exponent capped as in the kernels."""
    i_pre, f_pre, z_pre, o_pre = pre.unbind(1)
    logf = F.logsigmoid(f_pre)
    m = m.detach()
    with torch.no_grad():
        m_new = torch.where(n == 0, i_pre, torch.maximum(i_pre, logf + m))
    i_act = torch.exp(i_pre - m_new)
    f_act = torch.exp(torch.clamp(logf + m - m_new, max=F_EXP_MAX))
    c = f_act * c + i_act * torch.tanh(z_pre)
    n = f_act * n + i_act
    h = torch.sigmoid(o_pre) * c / n
    return h, c, n, m_new


def _compute_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _recurrent_weights(R):
    """R (4, NH, DH_out, DH_in) -> (NH, DH_in, 4 * DH_out) in the compute dtype, for a batched
    matmul."""
    G, NH, DO, DI = R.shape
    return R.to(_compute_dtype(R)).permute(1, 3, 0, 2).reshape(NH, DI, G * DO)


def _step(wx_t, Rt, bias, h, c, n, m):
    B, _, NH, DH = wx_t.shape
    rec = torch.bmm(h.transpose(0, 1), Rt).view(NH, B, 4, DH).permute(1, 2, 0, 3)  # (B, 4, NH, DH)
    return slstm_cell_torch(wx_t.to(rec.dtype) + rec + bias, c, n, m)


def slstm_torch(wx, R, b, initial_state=None):
    """wx (B, T, 4, NH, DH), R (4, NH, DH, DH), b (4, NH, DH), initial_state (4, B, NH, DH) or
    None. Returns h (B, T, NH, DH) in wx's dtype and the last state (4, B, NH, DH) in the
    compute dtype."""
    B, T, _, NH, DH = wx.shape
    cdt = _compute_dtype(wx)
    if initial_state is None:
        initial_state = torch.zeros(4, B, NH, DH, dtype=cdt, device=wx.device)
    h, c, n, m = initial_state.to(cdt).unbind(0)
    Rt, bias = _recurrent_weights(R), b.to(cdt)
    hs = []
    for t in range(T):
        h, c, n, m = _step(wx[:, t], Rt, bias, h, c, n, m)
        hs.append(h)
    return torch.stack(hs, dim=1).to(wx.dtype), torch.stack([h, c, n, m])


def slstm_step_torch(wx_t, R, b, state):
    """One step: wx_t (B, 4, NH, DH), state (4, B, NH, DH). Returns h (B, NH, DH) in wx_t's
    dtype and the new state (4, B, NH, DH) in the compute dtype."""
    cdt = _compute_dtype(wx_t)
    h, c, n, m = _step(wx_t, _recurrent_weights(R), b.to(cdt), *state.to(cdt).unbind(0))
    return h.to(wx_t.dtype), torch.stack([h, c, n, m])
