"""`CausalConv1d`: the causal depthwise convolution of the xLSTM layers, with a state (the
kernels are in `causal_conv1d.py`)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_context_parallel_call
from ..ops.mlstm.context_parallel import gather_pieces
from .causal_conv1d import causal_conv1d

__all__ = ["CausalConv1d", "context_parallel_halo"]


class CausalConv1d(nn.Module):
    """Causal depthwise convolution over time with a bias: y_t = b + sum_j w_j * x_{t-K+1+j}.

    Input and output (B, S, F). The parameters live in `self.conv` (an `nn.Conv1d` with
    groups=F: weight (F, 1, K), bias (F)), as in the `xlstm` package. The state is the last
    K-1 inputs, (B, K-1, F), oldest first; zeros (the default) mean "no history".
    `kernel_size=0` is the identity (no parameters, empty state).
    """

    def __init__(self, feature_dim: int, kernel_size: int = 4, bias: bool = True):
        super().__init__()
        if feature_dim <= 0:
            raise ValueError(f"CausalConv1d: feature_dim must be > 0, got {feature_dim}")
        if kernel_size < 0:
            raise ValueError(f"CausalConv1d: kernel_size must be >= 0, got {kernel_size}")
        self.feature_dim, self.kernel_size = feature_dim, kernel_size
        if kernel_size == 0:
            self.conv = None
        else:
            self.conv = nn.Conv1d(feature_dim, feature_dim, kernel_size, groups=feature_dim, bias=bias)
            # The xlstm package initializes this conv twice (constructor, then reset); doing the
            # same keeps seeded constructions identical.
            self.reset_parameters()

    @property
    def state_len(self) -> int:
        return max(self.kernel_size - 1, 0)

    def reset_parameters(self) -> None:
        if self.conv is not None:
            self.conv.reset_parameters()

    def zero_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        ref = self.conv.weight if self.conv is not None else None
        device = device if device is not None else (ref.device if ref is not None else None)
        dtype = dtype if dtype is not None else (ref.dtype if ref is not None else torch.float32)
        return torch.zeros(batch_size, self.state_len, self.feature_dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, state: Optional[torch.Tensor] = None,
                return_state: bool = False, silu: bool = False, cu_seqlens: Optional[torch.Tensor] = None,
                cp_group=None):
        """x (B, S, F), state (B, K-1, F) or None. Returns y (B, S, F) (SiLU applied with `silu`),
        and with `return_state` also the new state (the last K-1 inputs). Sequences run the
        fused kernel of `causal_conv1d.py` where the Triton kernels run.

        Packed sequences: `cu_seqlens` (N + 1,) offsets of N sequences in x (1, S, F) (see
        `causal_conv1d`); state and new state are then (N, K-1, F), one row per sequence.

        Context parallelism: with `cp_group`, x is this rank's piece of sequences split in
        contiguous pieces over the group in rank order; the window's K-1 inputs before the piece
        come from the ranks before it (`context_parallel_halo`; no state in or out)."""
        B, S, Fd = x.shape
        K = self.kernel_size
        if cp_group is not None:
            check_context_parallel_call(cp_group, state, return_state, cu_seqlens)
            if K > 1:
                state = context_parallel_halo(x, K - 1, cp_group)
        rows = B if cu_seqlens is None else cu_seqlens.numel() - 1
        if state is not None and tuple(state.shape) != (rows, self.state_len, Fd):
            what = "(B, K-1, F)" if cu_seqlens is None else "(N, K-1, F)"
            raise ValueError(f"conv state: expected shape {what} = {(rows, self.state_len, Fd)}, "
                             f"got {tuple(state.shape)}")
        if cu_seqlens is not None:
            return self._packed(x, state, return_state, silu, cu_seqlens)
        if K == 0:
            y = F.silu(x) if silu else x
            return (y, x.new_zeros(B, 0, Fd)) if return_state else y
        w = self.conv.weight[:, 0, :].to(x.dtype)                       # (F, K)
        b = None if self.conv.bias is None else self.conv.bias.to(x.dtype)
        state = None if state is None else state.to(x.dtype)
        if S == 1:   # decoding: one weighted sum over the window, no conv launch
            xs = self._with_history(x, state)
            y = torch.einsum("bkf,fk->bf", xs, w)[:, None]
            if b is not None:
                y = y + b
            y = F.silu(y) if silu else y
        else:
            y = causal_conv1d(x, w, b, state, silu)
        if not return_state:
            return y
        if S >= K - 1:
            new_state = x[:, S - (K - 1):]
        else:
            new_state = self._with_history(x, state)[:, S:]
        return y, new_state

    def _packed(self, x, state, return_state, silu, cu_seqlens):
        """`forward` over packed sequences: the conv kernel with `cu_seqlens`; the new state of
        each sequence is its last K-1 inputs, reaching into its old state row where it is shorter."""
        K, N = self.kernel_size, cu_seqlens.numel() - 1
        state = None if state is None else state.to(x.dtype)
        if K == 0:
            y = F.silu(x) if silu else x
        else:
            b = None if self.conv.bias is None else self.conv.bias.to(x.dtype)
            y = causal_conv1d(x, self.conv.weight[:, 0, :].to(x.dtype), b, state, silu, cu_seqlens=cu_seqlens)
        if not return_state:
            return y
        cu = cu_seqlens.to(device=x.device, dtype=torch.long)
        idx = cu[1:, None] - self.state_len + torch.arange(self.state_len, device=x.device)    # (N, K-1)
        from_x = (idx >= cu[:-1, None])[..., None]
        prior = state if state is not None else x.new_zeros(N, self.state_len, x.shape[2])
        row = (idx - cu[:-1, None] + self.state_len).clamp(0, max(self.state_len - 1, 0))
        old = prior.gather(1, row[..., None].expand(-1, -1, x.shape[2]))
        recent = x[0, idx.clamp(0, x.shape[1] - 1)] if x.shape[1] else old
        new_state = torch.where(from_x, recent, old)
        return y, new_state

    def _with_history(self, x: torch.Tensor, state: Optional[torch.Tensor]) -> torch.Tensor:
        """The K-1 inputs before x (the state, or zeros) followed by x: (B, K-1+S, F)."""
        prev = state if state is not None else x.new_zeros(x.shape[0], self.state_len, x.shape[2])
        return torch.cat([prev, x], dim=1)

    def extra_repr(self) -> str:
        return f"feature_dim={self.feature_dim}, kernel_size={self.kernel_size}"


def context_parallel_halo(x: torch.Tensor, length: int, group) -> torch.Tensor:
    """The `length` inputs before this rank's piece x (B, S, F) of sequences split in contiguous
    pieces over `group` in rank order, oldest first: (B, length, F), zeros where the sequences
    have fewer (rank 0). One all-gather of every rank's last `length` inputs, with a flag per
    row telling inputs from padding, so pieces shorter than `length` are bridged by the ranks
    before them; no host read. Differentiable: the halo's gradient reaches the ranks whose
    inputs it holds."""
    B, S, Fd = x.shape
    rows = torch.cat([x.new_zeros(B, length, Fd), x], dim=1)[:, -length:]
    real = (torch.arange(length, device=x.device) >= length - min(S, length)).to(x.dtype)
    every = gather_pieces(torch.cat([rows, real.expand(B, length)[..., None]], dim=-1), group)
    rank = torch.distributed.get_rank(group)
    if rank == 0:     # nothing before; tied to the gather so that its backward runs here too
        return x.new_zeros(B, length, Fd) + every[:0].sum()
    before = every[:rank].transpose(0, 1).reshape(B, rank * length, Fd + 1)   # ranks before, in order
    inputs, is_real = before[..., :Fd], before[0, :, Fd] > 0
    # A real row's slot in the halo: length minus the number of real rows from it to the end.
    from_end = is_real.flip(0).to(torch.int64).cumsum(0).flip(0)
    slot = length - from_end
    pick = is_real[None, :] & (slot[None, :] == torch.arange(length, device=x.device)[:, None])
    return torch.einsum("sr,brf->bsf", pick.to(x.dtype), inputs)
