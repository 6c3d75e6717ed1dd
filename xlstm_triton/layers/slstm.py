"""The sLSTM layer of the xLSTM paper's post-up-projection block, on `slstm` / `slstm_step`.

    x (B, S, E);  x_c = SiLU(conv1d(x))   (or x_c = x without a conv)
    wx = (fgate(x_c), igate(x_c), zgate(x), ogate(x))      headwise DH x DH maps, no bias
    h = sLSTM(wx, R, b);  y = group_norm(dropout(h))        per-head norm, (B, S, E)

Slots: as in the `xlstm` package, the module named `fgate` produces the INPUT-gate slot and
`igate` the FORGET-gate slot of the cell (gate order i, f, z, o). The names are kept so that
checkpoints load; the slot mapping is kept so that they compute the same thing.

Parameters of the cell (`slstm_cell`): `_recurrent_kernel_` (NH, DH_in, 4 * DH_out) and the flat
`_bias_` (NH * 4 * DH, head-major), the layout of the `xlstm` package's `cuda` backend.
Checkpoints saved with its `vanilla` backend go through `convert_xlstm_state_dict` first.

State (`sLSTMLayerState`): the cell's (h, c, n, m) stacked (4, B, NH, DH) in float32 and the
conv's last K-1 inputs. A sequence of length 1 runs `slstm_step`, longer ones `slstm`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..checks import check_embedding_dim, check_layer_input, check_tensor
from ..modules import CausalConv1d, LinearHeadwise, MultiHeadLayerNorm, small_init_
from ..ops.slstm import bias_from_xlstm, recurrent_from_xlstm, slstm, slstm_step
from .config import sLSTMLayerConfig
from .state import check_state_tuple, sLSTMLayerState

__all__ = ["sLSTMCell", "sLSTMLayer", "sLSTMLayerState", "refuse_context_parallel"]


_UNSUPPORTED = (  # (field, value this implementation computes, what it means)
    ("function", "slstm", "the cell function (an LSTM cell is not implemented)"),
    ("num_gates", 4, "the number of gates"),
    ("num_states", 4, "the number of states"),
    ("gradient_recurrent_cut", False, "cutting the recurrent gradient"),
    ("gradient_recurrent_clipval", None, "clipping the recurrent gradient"),
    ("forward_clipval", None, "clipping h in the forward pass"),
)


class sLSTMCell(nn.Module):
    """The sLSTM cell's parameters (cuda-backend layout, see module docstring) and recurrence.
    forward(wx (B, S, 4, NH, DH), state (4, B, NH, DH) or None) -> h (B, S, NH, DH)."""

    def __init__(self, config: sLSTMLayerConfig):
        super().__init__()
        for name, value, what in _UNSUPPORTED:
            if getattr(config, name) != value:
                raise ValueError(f"sLSTM config: {name}={getattr(config, name)!r} is not supported "
                                 f"({what}); only {name}={value!r}")
        if config.bias_init not in ("powerlaw_blockdependent", "small_init", "standard", "zeros"):
            raise ValueError(f"sLSTM config: unknown bias_init {config.bias_init!r}")
        if config.recurrent_weight_init not in ("zeros", "standard"):
            raise ValueError(f"sLSTM config: unknown recurrent_weight_init {config.recurrent_weight_init!r}")
        H, NH = config.hidden_size, config.num_heads
        if H <= 0 or H % NH:
            raise ValueError(f"sLSTM config: num_heads={NH} must divide hidden_size (embedding_dim)={H}")
        self.config = config
        self.hidden_size, self.num_heads, self.head_dim = H, NH, H // NH
        DH = self.head_dim
        self._recurrent_kernel_ = nn.Parameter(torch.empty(NH, DH, 4 * DH))
        self._bias_ = nn.Parameter(torch.empty(NH * 4 * DH))
        self.reset_parameters()

    # External (per-gate) views of the stored parameters, as the xlstm package indexes them.
    def _kernel_ext(self, t):      # [head, in, gate, out]
        return t.view(self.num_heads, self.head_dim, 4, self.head_dim)

    def _bias_ext(self, t):        # [head, gate, d]
        return t.view(self.num_heads, 4, self.head_dim)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        cfg, NH, DH = self.config, self.num_heads, self.head_dim
        kernel, bias = self._kernel_ext(self._recurrent_kernel_), self._bias_ext(self._bias_)
        bound = 1.0 / math.sqrt(self.hidden_size)
        # Per head and gate in this order, so that random inits draw like the xlstm package's.
        for h in range(NH):
            for g in range(4):
                if cfg.recurrent_weight_init == "zeros":
                    kernel[h, :, g, :].zero_()
                else:
                    kernel[h, :, g, :].uniform_(-bound, bound)
        num_blocks = cfg._num_blocks if cfg._num_blocks is not None else 1
        block_idx = cfg._block_idx if cfg._block_idx is not None else 0
        for h in range(NH):
            for g in range(4):
                if cfg.bias_init == "powerlaw_blockdependent":
                    if g == 1:   # forget gate: from +5 down to -7 over the head dim
                        ratio = block_idx / (num_blocks - 1) if num_blocks > 1 else 0.0
                        x = torch.arange(DH) / max(DH - 1, 1)
                        bias[h, g] = -(-5.0 + 12.0 * x ** (0.3 + 1.3 * ratio))
                    else:
                        bias[h, g].zero_()
                elif cfg.bias_init == "small_init":
                    if g == 1:
                        bias[h, g] = torch.linspace(3.0, 6.0, DH)
                    else:
                        bias[h, g].zero_()
                elif cfg.bias_init == "zeros":
                    bias[h, g].zero_()
                else:   # "standard"
                    bias[h, g].uniform_(-bound, bound)

    def weights(self):
        """R (4, NH, DH_out, DH_in) and b (4, NH, DH) in the op's layout, re-laid out from the
        stored parameters on each call (differentiable; a copy of 4 * NH * DH^2 elements)."""
        return (recurrent_from_xlstm(self._recurrent_kernel_, "cuda"),
                bias_from_xlstm(self._bias_, self.num_heads, "cuda"))

    def zero_state(self, batch_size: int, device=None) -> torch.Tensor:
        device = device if device is not None else self._bias_.device
        return torch.zeros(4, batch_size, self.num_heads, self.head_dim, device=device,
                           dtype=torch.float32)

    def forward(self, wx: torch.Tensor, state: Optional[torch.Tensor] = None,
                return_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None):
        B, S = wx.shape[:2]
        R, b = self.weights()
        if cu_seqlens is not None:       # packed sequences (B = 1), each from a zero state
            return slstm(wx, R, b, cu_seqlens=cu_seqlens)
        if S == 1:
            if state is None:
                state = self.zero_state(B, wx.device)
            h, new = slstm_step(wx[:, 0], R, b, state)
            h = h[:, None]
        else:
            h, new = slstm(wx, R, b, state, return_last_state=True)
        return (h, new) if return_state else h

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "_recurrent_kernel_"
        NH, DH = self.num_heads, self.head_dim
        k = state_dict.get(key)
        if isinstance(k, torch.Tensor) and tuple(k.shape) == (NH, 4 * DH, DH):
            error_msgs.append(
                f"{key}: shape {tuple(k.shape)} is the xlstm package's 'vanilla' sLSTM layout; these "
                f"modules store the 'cuda' layout {(NH, DH, 4 * DH)}. Load "
                f"xlstm_triton.nn.convert_xlstm_state_dict(state_dict, slstm_layout='vanilla') instead.")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, num_heads={self.num_heads}"


class sLSTMLayer(nn.Module):
    """sLSTM layer with the `xlstm` package's parameters (names, shapes, init); see the module
    docstring. `forward(x, state=None, return_state=False)`; `step(x, state)` is
    `forward(x, state, return_state=True)`."""

    config_class = sLSTMLayerConfig

    def __init__(self, config: sLSTMLayerConfig):
        super().__init__()
        self.config = config
        E = check_embedding_dim(config)
        if config.hidden_size != E:
            config.__post_init__()
        NH = config.num_heads
        if E % NH:
            raise ValueError(f"sLSTMLayerConfig.num_heads={NH} must divide embedding_dim={E}")
        if config.conv1d_kernel_size < 0:
            raise ValueError(f"sLSTMLayerConfig.conv1d_kernel_size must be >= 0, got "
                             f"{config.conv1d_kernel_size}")
        self.num_heads, self.head_dim = NH, E // NH
        # Creation order = the xlstm package's (seeded constructions draw the same numbers).
        if config.conv1d_kernel_size > 0:
            self.conv1d = CausalConv1d(E, config.conv1d_kernel_size)
        self.fgate = LinearHeadwise(E, NH, bias=False)    # -> input-gate slot
        self.igate = LinearHeadwise(E, NH, bias=False)    # -> forget-gate slot
        self.zgate = LinearHeadwise(E, NH, bias=False)
        self.ogate = LinearHeadwise(E, NH, bias=False)
        self.slstm_cell = sLSTMCell(config)
        self.group_norm = MultiHeadLayerNorm(ndim=E, weight=config.group_norm_weight)
        self.dropout = nn.Dropout(config.dropout)
        # Like the xlstm package, the layer keeps its components' own init here; blocks call
        # reset_parameters() (which uses the embedding dim for the gate projections).

    @property
    def _conv_len(self) -> int:
        return max(self.config.conv1d_kernel_size - 1, 0)

    def reset_parameters(self) -> None:
        self.slstm_cell.reset_parameters()
        self.group_norm.reset_parameters()
        E = self.config.embedding_dim
        for proj in (self.igate, self.fgate, self.zgate, self.ogate):
            small_init_(proj.weight, dim=E)

    def zero_state(self, batch_size: int, device=None, dtype=None) -> sLSTMLayerState:
        """The empty state (what `state=None` means), e.g. as static buffers for decoding."""
        device = device if device is not None else self.zgate.weight.device
        dtype = dtype if dtype is not None else self.zgate.weight.dtype
        conv = torch.zeros(batch_size, self._conv_len, self.config.embedding_dim, device=device,
                           dtype=dtype)
        return sLSTMLayerState(self.slstm_cell.zero_state(batch_size, device), conv)

    def _check_state(self, state, B) -> sLSTMLayerState:
        """Validate a state for batch size B: an sLSTMLayerState or any sequence of the two
        tensors (slstm, conv). Returns it as an sLSTMLayerState."""
        check_state_tuple(state, sLSTMLayerState._fields, "sLSTMLayer state", "sLSTMLayerState")
        check_tensor("sLSTMLayerState.slstm", state[0], (4, B, self.num_heads, self.head_dim), dtypes=None)
        check_tensor("sLSTMLayerState.conv", state[1], (B, self._conv_len, self.config.embedding_dim),
                     dtypes=None)
        return sLSTMLayerState(*state)

    def forward(self, x: torch.Tensor, state: Optional[sLSTMLayerState] = None,
                return_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None, cp_group=None):
        """x (B, S, E). Returns y (B, S, E) and, with `return_state`, the new sLSTMLayerState.
        `cu_seqlens` (N + 1,): packed documents along S (B = 1), each from a zero state (no
        state in or out). `cp_group` is refused: see the error."""
        refuse_context_parallel(cp_group)
        E = self.config.embedding_dim
        check_layer_input("sLSTMLayer", x, E)
        B, S, _ = x.shape
        if cu_seqlens is not None:
            if state is not None or return_state:
                raise ValueError("cu_seqlens: packed sequences run from zero states, without a state in or out")
            x_c = self.conv1d(x, silu=True, cu_seqlens=cu_seqlens) if self.config.conv1d_kernel_size > 0 else x
            wx = torch.stack([self.fgate(x_c), self.igate(x_c), self.zgate(x), self.ogate(x)], dim=2)
            h = self.slstm_cell(wx.view(B, S, 4, self.num_heads, self.head_dim), cu_seqlens=cu_seqlens)
            return self.group_norm(self.dropout(h))
        if state is not None:
            state = self._check_state(state, B)
        conv_state = None if state is None else state.conv
        if self.config.conv1d_kernel_size > 0:
            if return_state:
                x_c, conv_state = self.conv1d(x, conv_state, return_state=True, silu=True)
            else:
                x_c = self.conv1d(x, conv_state, silu=True)
        else:
            x_c = x
            if return_state:
                conv_state = x.new_zeros(B, 0, E)
        wx = torch.stack([self.fgate(x_c), self.igate(x_c), self.zgate(x), self.ogate(x)], dim=2)
        wx = wx.view(B, S, 4, self.num_heads, self.head_dim)
        out = self.slstm_cell(wx, None if state is None else state.slstm, return_state=return_state)
        h, hcnm = out if return_state else (out, None)
        y = self.group_norm(self.dropout(h))
        return (y, sLSTMLayerState(hcnm, conv_state)) if return_state else y

    def step(self, x: torch.Tensor, state: Optional[sLSTMLayerState] = None):
        return self.forward(x, state, return_state=True)


def refuse_context_parallel(cp_group) -> None:
    """ValueError where `cp_group` is given: the sLSTM's sequence cannot be split over ranks."""
    if cp_group is not None:
        raise ValueError("cp_group: the sLSTM cannot be split over ranks along the sequence (its recurrence "
                         "mixes h_t nonlinearly into every later step, so a piece cannot start before the "
                         "pieces before it have run); context parallelism needs mLSTM blocks only")
