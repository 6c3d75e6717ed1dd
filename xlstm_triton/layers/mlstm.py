"""The mLSTM dispatch of every layer, and the mLSTM layer of the paper architecture.

`mlstm_recurrence` runs the cell over a sequence from a state: `mlstm_step` for one token,
`mlstm_chunkwise` for more. The paper layer (`mLSTMLayer`, the `xlstm` package's
pre-up-projection block's layer) and the xLSTM-7B layer (`layers/mlstm_large.py`) both call it,
and so does the transformers backend.

Paper layer:

    x (B, S, E) -> proj_up -> (x_m, z), each (B, S, inner)
    x_c = SiLU(conv1d(x_m));  q = q_proj(x_c), k = k_proj(x_c), v = v_proj(x_m)   (headwise, blocks of 4)
    i, f = igate(cat(q, k, v)), fgate(cat(q, k, v))                               (one scalar per head)
    h = outnorm(mLSTM(q, k, v, i, f)) + learnable_skip * x_c
    y = dropout(proj_down(h * SiLU(z)))

State: `mLSTMLayerState` (the cell's (c, n, m) in float32 and the conv's last K-1 inputs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import (check_context_parallel_call, check_embedding_dim, check_layer_input, check_tensor,
                      checked_cu_seqlens)
from ..modules import (MAX_BLOCK, CausalConv1d, LinearHeadwise, MultiHeadLayerNorm, bias_linspace_init_,
                       head_norm_gate, linear_headwise_many, small_init_, wang_init_)
from ..ops.mlstm import mlstm_chunkwise, mlstm_step
from ..utils import use_kernels
from .config import mLSTMLayerConfig
from .mlstm_mix import cell_inputs, mlstm_layer_mix
from .state import (check_mlstm_state, check_state_tuple, mLSTMLayerState, mLSTMState, zero_mlstm_state)

__all__ = ["mlstm_recurrence", "mLSTMCell", "mLSTMLayer", "mLSTMLayerState"]


def mlstm_recurrence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor,
                     state: Optional[Sequence[torch.Tensor]] = None, *, return_state: bool = False,
                     eps: float = 1e-6, chunk_size: Optional[int] = None, inplace: bool = False,
                     gate_soft_cap: Optional[float] = None, cu_seqlens: Optional[torch.Tensor] = None,
                     cp_group=None):
    """The mLSTM cell over a sequence, from `state`: the one dispatch of every layer.

    q, k (B, NH, S, DQK), v (B, NH, S, DV), i, f (B, NH, S) gate pre-activations, any strides
    (views of projections are fine); state (c, n, m) as in `mLSTMState` or None (zeros; any of
    c, n, m may be None for S > 1). S == 1 runs `mlstm_step` (decoding: one kernel, no host
    sync), longer sequences `mlstm_chunkwise` (training, prefill); each picks the Triton kernels
    or the PyTorch path itself. `inplace` (no autograd) writes the new state into `state`
    (S == 1: by the step kernel; else copied) and returns it. `gate_soft_cap` caps the gates
    inside the kernels (cap * tanh(x / cap) of the given i, f). `cu_seqlens`: packed sequences
    along S (B = 1, `mlstm_chunkwise`'s argument; no state in or out). `cp_group`: this rank's
    piece of sequences split over a process group (`mlstm_chunkwise`'s context parallelism;
    from the sequences' zero state, no state in or out).

    Returns h (B, NH, S, DV) in q's dtype and, with `return_state`, the new mLSTMState.
    """
    B, NH, S, DQK = q.shape
    if cp_group is not None:
        if state is not None or return_state or inplace:
            raise ValueError("cp_group: a sequence split over ranks runs from a zero state, without a state in or out")
        return mlstm_chunkwise(q, k, v, i, f, eps=eps, chunk_size=chunk_size, gate_soft_cap=gate_soft_cap,
                               cu_seqlens=cu_seqlens, cp_group=cp_group)
    if cu_seqlens is not None:
        if state is not None or return_state or inplace:
            raise ValueError("cu_seqlens: packed sequences run from zero states, without a state in or out")
        return mlstm_chunkwise(q, k, v, i, f, eps=eps, chunk_size=chunk_size, gate_soft_cap=gate_soft_cap,
                               cu_seqlens=cu_seqlens)
    if S == 1:
        if state is None:
            state = zero_mlstm_state(B, NH, DQK, v.shape[-1], q.device)
        h, new = mlstm_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i, f, *state, eps=eps, inplace=inplace,
                            gate_soft_cap=gate_soft_cap)
        h = h[:, :, None]
    else:
        c, n, m = state if state is not None else (None, None, None)
        out = mlstm_chunkwise(q, k, v, i, f, c, n, m, return_last_states=return_state or inplace,
                              eps=eps, chunk_size=chunk_size, gate_soft_cap=gate_soft_cap)
        h, new = out if return_state or inplace else (out, None)
        if inplace:
            for dst, src in zip(state, new):
                dst.copy_(src)
            new = state
    return (h, mLSTMState(*new)) if return_state else h


class mLSTMCell(nn.Module):
    """Input and forget gates (`igate`, `fgate`: Linear(3 * inner -> NH) on cat(q, k, v), computed
    without building the concatenation: `mlstm_mix.cell_inputs`), the mLSTM recurrence, and the
    per-head norm `outnorm`. q, k, v (B, S, inner) -> (B, S, inner)."""

    def __init__(self, embedding_dim: int, num_heads: int):
        super().__init__()
        if num_heads <= 0 or embedding_dim % num_heads:
            raise ValueError(f"mLSTM: num_heads={num_heads} must be > 0 and divide the inner "
                             f"dim {embedding_dim}")
        self.embedding_dim, self.num_heads = embedding_dim, num_heads
        self.head_dim = embedding_dim // num_heads
        self.igate = nn.Linear(3 * embedding_dim, num_heads)
        self.fgate = nn.Linear(3 * embedding_dim, num_heads)
        self.outnorm = MultiHeadLayerNorm(ndim=embedding_dim, weight=True, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.outnorm.reset_parameters()
        nn.init.zeros_(self.fgate.weight)
        bias_linspace_init_(self.fgate.bias, start=3.0, end=6.0)
        nn.init.zeros_(self.igate.weight)
        nn.init.normal_(self.igate.bias, mean=0.0, std=0.1)

    def zero_state(self, batch_size: int, device=None) -> mLSTMState:
        device = device if device is not None else self.igate.weight.device
        return zero_mlstm_state(batch_size, self.num_heads, self.head_dim, self.head_dim, device)

    def forward(self, q, k, v, state: Optional[tuple] = None, return_state: bool = False, normalize: bool = True,
                cu_seqlens: Optional[torch.Tensor] = None, cp_group=None):
        """q, k, v (B, S, inner); state (c, n, m) or None. Returns h (B, S, inner) and, with
        `return_state`, the new mLSTMState. `normalize=False` leaves out `outnorm`: h is then the
        recurrence's output as a (B, S, NH, DH) view (for a fused norm downstream).
        `cu_seqlens`: packed sequences, `cp_group`: a piece of sequences split over ranks
        (`mlstm_recurrence`)."""
        out = mlstm_recurrence(*cell_inputs(q, k, v, self.igate.weight, self.igate.bias, self.fgate.weight,
                                            self.fgate.bias, self.num_heads), state, return_state=return_state,
                               cu_seqlens=cu_seqlens, cp_group=cp_group)
        h, new = out if return_state else (out, None)
        h = h.transpose(1, 2)                                             # (B, S, NH, DH) view
        if normalize:
            h = self.outnorm(h)                                           # -> (B, S, inner)
        return (h, new) if return_state else h


class mLSTMLayer(nn.Module):
    """mLSTM layer with the `xlstm` package's parameters (names, shapes, init); see the module
    docstring. `forward(x, state=None, return_state=False)`; `step(x, state)` is
    `forward(x, state, return_state=True)`."""

    config_class = mLSTMLayerConfig
    # Training where the kernels run (no state in or out): everything between proj_up and
    # proj_down except the mLSTM itself (conv, q/k/v, gates, output norm: memory-bound passes)
    # is recomputed in the backward instead of kept (`mlstm_mix.mlstm_layer_mix`, eager and
    # compiled): on an H200 the paper LM's peak went 20.6 -> 11.0 GB.
    # False keeps everything.
    recompute = True

    def __init__(self, config: mLSTMLayerConfig):
        super().__init__()
        self.config = config
        E = check_embedding_dim(config)
        if config._inner_embedding_dim is None:
            config.__post_init__()
        inner = config._inner_embedding_dim
        if config.num_heads <= 0 or inner % config.num_heads:
            raise ValueError(f"mLSTMLayerConfig.num_heads={config.num_heads} must divide the inner "
                             f"dim {inner} (= proj_factor {config.proj_factor} * embedding_dim {E}, "
                             f"rounded to {config.round_proj_up_to_multiple_of})")
        if config.qkv_proj_blocksize <= 0 or inner % config.qkv_proj_blocksize:
            raise ValueError(f"mLSTMLayerConfig.qkv_proj_blocksize={config.qkv_proj_blocksize} must "
                             f"divide the inner dim {inner}")
        if config.conv1d_kernel_size < 0:
            raise ValueError(f"mLSTMLayerConfig.conv1d_kernel_size must be >= 0, got "
                             f"{config.conv1d_kernel_size}")
        self.inner = inner
        # Creation order = the xlstm package's, so a seeded construction draws the same numbers.
        self.proj_up = nn.Linear(E, 2 * inner, bias=config.bias)
        blocks = inner // config.qkv_proj_blocksize
        self.q_proj = LinearHeadwise(inner, blocks, bias=config.bias)
        self.k_proj = LinearHeadwise(inner, blocks, bias=config.bias)
        self.v_proj = LinearHeadwise(inner, blocks, bias=config.bias)
        self.conv1d = CausalConv1d(inner, config.conv1d_kernel_size)
        self.mlstm_cell = mLSTMCell(inner, config.num_heads)
        self.learnable_skip = nn.Parameter(torch.ones(inner))
        self.proj_down = nn.Linear(inner, E, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        E = self.config.embedding_dim
        small_init_(self.proj_up.weight, dim=E)
        if self.proj_up.bias is not None:
            nn.init.zeros_(self.proj_up.bias)
        wang_init_(self.proj_down.weight, dim=E, num_blocks=self.config._num_blocks or 1)
        if self.proj_down.bias is not None:
            nn.init.zeros_(self.proj_down.bias)
        nn.init.ones_(self.learnable_skip)
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            small_init_(proj.weight, dim=E)        # the embedding dim, not the block size
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)
        self.mlstm_cell.reset_parameters()

    def zero_state(self, batch_size: int, device=None, dtype=None) -> mLSTMLayerState:
        """The empty state (what `state=None` means), e.g. as static buffers for decoding."""
        device = device if device is not None else self.proj_up.weight.device
        dtype = dtype if dtype is not None else self.proj_up.weight.dtype
        return mLSTMLayerState(*self.mlstm_cell.zero_state(batch_size, device),
                               self.conv1d.zero_state(batch_size, device, dtype))

    def _check_state(self, state, B) -> mLSTMLayerState:
        """Validate a state for batch size B: an mLSTMLayerState or any sequence of the four
        tensors (c, n, m, conv). Returns it as an mLSTMLayerState."""
        check_state_tuple(state, mLSTMLayerState._fields, "mLSTMLayer state", "mLSTMLayerState")
        DH = self.inner // self.config.num_heads
        check_mlstm_state(state[:3], B, self.config.num_heads, DH, DH, "mLSTMLayerState")
        check_tensor("mLSTMLayerState.conv", state[3], (B, self.conv1d.state_len, self.inner), dtypes=None)
        return mLSTMLayerState(*state)

    def forward(self, x: torch.Tensor, state: Optional[mLSTMLayerState] = None,
                return_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None, cp_group=None):
        """x (B, S, E). Returns y (B, S, E) and, with `return_state`, the new mLSTMLayerState.
        Training through the kernels recomputes the cheap intermediates (see `recompute`).
        `cu_seqlens` (N + 1,): packed documents along S (B = 1), each from a zero state (no
        state in or out): the conv window and the mLSTM restart at each document.
        `cp_group`: x is this rank's piece of sequences split in contiguous pieces over the
        group (context parallelism, no state in or out): the conv window reaches into the
        ranks before (`CausalConv1d`), the mLSTM starts from their state (`mlstm_chunkwise`)."""
        check_layer_input("mLSTMLayer", x, self.config.embedding_dim)
        B = x.shape[0]
        if cu_seqlens is not None and (state is not None or return_state):
            raise ValueError("cu_seqlens: packed sequences run from zero states, without a state in or out")
        if cp_group is not None:
            check_context_parallel_call(cp_group, state, return_state, cu_seqlens)
            x_m, z = self.proj_up(x).split(self.inner, dim=-1)
            return self.dropout(self.proj_down(self._mix(x_m, z, cp_group=cp_group)))
        if cu_seqlens is not None and not torch.compiler.is_compiling():
            # int32 on x's device, checked (nothing to do for a model's; compiled blocks get those)
            cu_seqlens = checked_cu_seqlens(cu_seqlens, x.shape[1], x.device)
        if state is not None:
            state = self._check_state(state, B)
        xz = self.proj_up(x)
        x_m, z = xz.split(self.inner, dim=-1)
        if (state is None and not return_state and self.recompute and use_kernels(x) and torch.is_grad_enabled()
                and self._fused()):
            return self.dropout(self.proj_down(mlstm_layer_mix(self, xz, cu_seqlens)))
        if not return_state:
            return self.dropout(self.proj_down(self._mix(x_m, z, state, cu_seqlens=cu_seqlens)))
        h, cnm, conv_state = self._mix(x_m, z, state, return_state=True)
        return self.dropout(self.proj_down(h)), mLSTMLayerState(*cnm, conv_state)

    def _inputs(self, x_m, conv_state=None, return_state=False, cu_seqlens=None, cp_group=None):
        """The cell's inputs from x_m: x_c = SiLU(conv(x_m)) (and the new conv state with
        `return_state`), q, k from x_c, v from x_m, each (B, S, inner)."""
        cp = {} if cp_group is None else dict(cp_group=cp_group)
        out = self.conv1d(x_m, conv_state, return_state=return_state, silu=True, cu_seqlens=cu_seqlens, **cp)
        x_c, conv_state = out if return_state else (out, None)
        q, k = linear_headwise_many(x_c, (self.q_proj, self.k_proj))      # one read of x_c
        v = self.v_proj(x_m)
        return x_c, q, k, v, conv_state

    def _fused(self) -> bool:
        """Whether `mlstm_layer_mix` covers this configuration: a conv and q, k, v of tiny
        square blocks (the fused kernels'); other configurations keep their intermediates."""
        bs = self.config.qkv_proj_blocksize
        return self.conv1d.kernel_size >= 1 and bs <= MAX_BLOCK and bs & (bs - 1) == 0

    def _output(self, h, z, x_c):
        """The fused output: outnorm(h) + skip * x_c, times SiLU(z); h (B, S, NH, DH)."""
        norm = self.mlstm_cell.outnorm
        return head_norm_gate(h, z, norm.weight_proxy, norm.bias, norm.eps, act="silu",
                              skip=self.learnable_skip, x_skip=x_c)

    def _mix(self, x_m, z, state=None, return_state=False, cu_seqlens=None, cp_group=None):
        """Everything between the up- and the down-projection: (x_m, z) -> the input of
        proj_down (B, S, inner); with `return_state` also the new cell state and conv state."""
        x_c, q, k, v, conv_state = self._inputs(x_m, None if state is None else state.conv, return_state,
                                                cu_seqlens, cp_group)
        cell_state = None if state is None else tuple(state[:3])
        fused = use_kernels(x_m)        # outnorm, the skip and the SiLU(z) gate as one kernel each way
        out = self.mlstm_cell(q, k, v, cell_state, return_state=return_state, normalize=not fused,
                              cu_seqlens=cu_seqlens, cp_group=cp_group)
        h, cnm = out if return_state else (out, None)
        if fused:
            h = self._output(h, z, x_c)
        else:
            h = (h + self.learnable_skip * x_c) * F.silu(z)
        return (h, cnm, conv_state) if return_state else h

    def step(self, x: torch.Tensor, state: Optional[mLSTMLayerState] = None):
        return self.forward(x, state, return_state=True)
