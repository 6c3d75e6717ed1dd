"""sLSTM cell, written for a reader: the test oracle (docs/slstm.md).

Layout (FlashRNN's):
    wx (B, T, 4, NH, DH)   input pre-activations, gate order (i, f, z, o)
    R  (4, NH, DH, DH)     recurrent weights [gate, head, out, in], block-diagonal over heads
    b  (4, NH, DH)         biases
    state (4, B, NH, DH)   ordered (h, c, n, m)
    h  (B, T, NH, DH)      outputs

The stabilizer m gets no gradient: it is computed on detached values. Everything else is plain
autograd, in any floating dtype (float64 included).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["slstm_recurrent", "slstm_recurrent_step"]


def slstm_recurrent_step(wx, R, b, state):
    """One time step. wx: (B, 4, NH, DH); state: (4, B, NH, DH). Returns h (B, NH, DH), state."""
    h, c, n, m = state.unbind(0)
    m = m.detach()
    # pre[b, g, head, out] = wx + sum_in R[g, head, out, in] * h[b, head, in] + b
    pre = wx + torch.einsum("ghoi,bhi->bgho", R, h) + b
    i_pre, f_pre, z_pre, o_pre = pre.unbind(1)
    logf = F.logsigmoid(f_pre)
    with torch.no_grad():
        m_new = torch.where(n == 0, i_pre, torch.maximum(i_pre, logf + m))
    i_act = torch.exp(i_pre - m_new)
    f_act = torch.exp(logf + m - m_new)
    c = f_act * c + i_act * torch.tanh(z_pre)
    n = f_act * n + i_act
    h = torch.sigmoid(o_pre) * c / n
    return h, torch.stack([h, c, n, m_new])


def slstm_recurrent(wx, R, b, initial_state=None, return_last_state: bool = False):
    """Loop over time. Returns h (B, T, NH, DH), and with `return_last_state` the state
    (4, B, NH, DH) after the last step. `initial_state` defaults to all zeros."""
    B, T, _, NH, DH = wx.shape
    state = wx.new_zeros(4, B, NH, DH) if initial_state is None else initial_state.to(wx.dtype)
    hs = []
    for t in range(T):
        h, state = slstm_recurrent_step(wx[:, t], R, b, state)
        hs.append(h)
    h = torch.stack(hs, dim=1)
    return (h, state) if return_last_state else h
