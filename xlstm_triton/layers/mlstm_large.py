"""The mLSTM layer of the xLSTM-7B architecture.

    q, k = x W_q, x W_k (E -> qk_dim);  v, o = x W_v, x W_o (E -> v_dim)
    i, f = cap_15(x W_i + b_i), cap_15(x W_f + b_f)   (E -> NH)
    h = mLSTM(q, k, v, i, f) per head                 (DQK = qk_dim / NH, DV = v_dim / NH)
    y = out_proj(sigmoid(o) * MultiHeadLayerNorm(h))

with cap_c(x) = c * tanh(x / c), applied inside the mLSTM kernels (training, prefill and the
decoding step). The config is an `xLSTMLargeConfig` (any object with its fields). State: one
`mLSTMState(c, n, m)`, float32. Where the Triton kernels run, the head norm with the output gate
is one kernel each way (`modules.head_norm_gate`, training too).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..checks import check_layer_input
from ..modules import MultiHeadLayerNorm, head_norm_gate
from ..utils import use_kernels
from .mlstm import mlstm_recurrence
from .state import check_mlstm_state, mLSTMState, zero_mlstm_state

__all__ = ["mLSTMLargeLayer"]


class mLSTMLargeLayer(nn.Module):
    """The mLSTM layer of xLSTM-7B (module docstring). x (B, S, E) -> y (B, S, E).

    Weights, single mode: q, k (qk_dim, E); v, ogate_preact (v_dim, E); igate_preact,
    fgate_preact (NH, E) + bias (NH); fused mode: qkv_opreact (2 qk_dim + 2 v_dim, E) with rows
    q|k|v|o, ifgate_preact (2 NH, E) + bias (2 NH) with rows i|f. Both: multihead_norm.weight
    (v_dim), out_proj (E, v_dim); biases of the projections only with `use_bias`.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        E, NH, bias = config.embedding_dim, config.num_heads, config.use_bias
        self.qk_dim, self.v_dim, self.num_heads = config.qk_dim, config.v_dim, NH
        self.fused = config.weight_mode == "fused"
        if self.fused:
            self.qkv_opreact = nn.Linear(E, 2 * self.qk_dim + 2 * self.v_dim, bias=bias)
            self.ifgate_preact = nn.Linear(E, 2 * NH, bias=True)
        else:
            self.q = nn.Linear(E, self.qk_dim, bias=bias)
            self.k = nn.Linear(E, self.qk_dim, bias=bias)
            self.v = nn.Linear(E, self.v_dim, bias=bias)
            self.ogate_preact = nn.Linear(E, self.v_dim, bias=bias)
            self.igate_preact = nn.Linear(E, NH, bias=True)
            self.fgate_preact = nn.Linear(E, NH, bias=True)
        # Per-head LayerNorm whose weight is the scale itself (no "1 + w" offset).
        self.multihead_norm = MultiHeadLayerNorm(ndim=self.v_dim, weight=True, bias=bias,
                                                 eps=config.norm_eps, residual_weight=False)
        self.out_proj = nn.Linear(self.v_dim, E, bias=bias)

    def zero_state(self, batch_size: int, device=None) -> mLSTMState:
        NH = self.num_heads
        device = device if device is not None else self.out_proj.weight.device
        return zero_mlstm_state(batch_size, NH, self.qk_dim // NH, self.v_dim // NH, device)

    def check_state(self, state, batch_size: int, name: str = "state") -> mLSTMState:
        """Validate a (c, n, m) triple for batch size B; returns it as an mLSTMState."""
        NH = self.num_heads
        return check_mlstm_state(state, batch_size, NH, self.qk_dim // NH, self.v_dim // NH, name)

    def _projections(self, x):
        """q, k, v, o and the uncapped gate pre-activations i, f."""
        if self.fused:
            q, k, v, o = self.qkv_opreact(x).split([self.qk_dim, self.qk_dim, self.v_dim, self.v_dim], dim=-1)
            i, f = self.ifgate_preact(x).split(self.num_heads, dim=-1)
        else:
            q, k, v, o = self.q(x), self.k(x), self.v(x), self.ogate_preact(x)
            i, f = self.igate_preact(x), self.fgate_preact(x)
        return q, k, v, o, i, f

    def forward(self, x: torch.Tensor, state: Optional[mLSTMState] = None, return_state: bool = False,
                update_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None, cp_group=None):
        """x (B, S, E); state (c, n, m) or None (zeros). Returns y (B, S, E) and, with
        `return_state`, the new mLSTMState (float32). `update_state` writes the new state into
        the given one (static buffers, e.g. for CUDA-graph decoding; no autograd).
        `cu_seqlens` (N + 1,): packed documents along S (B = 1), each from a zero state.
        `cp_group`: x is this rank's piece of sequences split over the group (context
        parallelism, `mlstm_chunkwise`), from a zero state."""
        E = self.config.embedding_dim
        check_layer_input("mLSTMLargeLayer", x, E)
        B, S, _ = x.shape
        NH = self.num_heads
        if update_state and state is None:
            raise ValueError("update_state=True needs a state to update (e.g. layer.zero_state(B))")
        q, k, v, o, i, f = self._projections(x)
        # (B, S, NH * D) -> (B, NH, S, D) views; the ops take strided inputs.
        q, k, v = (t.unflatten(-1, (NH, -1)).transpose(1, 2) for t in (q, k, v))
        i, f = i.transpose(1, 2), f.transpose(1, 2)                       # (B, NH, S)
        out = mlstm_recurrence(q, k, v, i, f, state, return_state=return_state, eps=self.config.eps,
                               chunk_size=self.config.chunk_size, inplace=update_state,
                               gate_soft_cap=self.config.gate_soft_cap, cu_seqlens=cu_seqlens, cp_group=cp_group)
        h, new = out if return_state else (out, None)
        h = h.transpose(1, 2)                                             # (B, S, NH, DV)
        if use_kernels(x):
            norm = self.multihead_norm                                    # float32 inside, one rounding
            y = self.out_proj(head_norm_gate(h, o, norm.weight_proxy, norm.bias, norm.eps, act="sigmoid"))
            return (y, new) if return_state else y
        if self.config.norm_reduction_force_float32:
            h = self.multihead_norm(h.float()).to(x.dtype)
        else:
            h = self.multihead_norm(h)
        y = self.out_proj(torch.sigmoid(o) * h)
        return (y, new) if return_state else y

