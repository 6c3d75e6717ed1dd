"""The recurrent states of the layers: one type per cell, one check for each.

    mLSTMState(c, n, m)           the mLSTM cell, float32: c (B, NH, DQK, DV), n (B, NH, DQK),
                                  m (B, NH, 1); the memory is c * exp(m). The xLSTM-7B layer's
                                  state, and the first three fields of:
    mLSTMLayerState(c, n, m, conv)   the paper mLSTM layer: the cell's state and the convolution's
                                  last K-1 inputs, conv (B, K-1, inner) in the activations' dtype
    sLSTMLayerState(slstm, conv)  the paper sLSTM layer: (h, c, n, m) stacked (4, B, NH, DH) in
                                  float32, and the convolution's window (B, K-1, E)

They are NamedTuples of tensors, so they pass through torch.compile and can live in static
buffers for CUDA graphs. Wherever a state goes in, any sequence of the right tensors (a plain
tuple or list, e.g. one rebuilt by a comprehension) is accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from ..checks import check_tensor

__all__ = ["mLSTMState", "mLSTMLayerState", "sLSTMLayerState", "is_state_sequence", "check_state_tuple",
           "check_mlstm_state", "zero_mlstm_state"]


class mLSTMState(NamedTuple):
    """State of an mLSTM cell, float32: c (B, NH, DQK, DV), n (B, NH, DQK), m (B, NH, 1)."""
    c: torch.Tensor
    n: torch.Tensor
    m: torch.Tensor


class mLSTMLayerState(NamedTuple):
    """State of a paper mLSTM layer: the cell's (c, n, m) as in `mLSTMState` (float32), and
    conv (B, K-1, inner), the last K-1 inputs of the convolution (the activations' dtype)."""
    c: torch.Tensor
    n: torch.Tensor
    m: torch.Tensor
    conv: torch.Tensor

    @property
    def cell(self) -> mLSTMState:
        return mLSTMState(self.c, self.n, self.m)


class sLSTMLayerState(NamedTuple):
    """State of a paper sLSTM layer. slstm (4, B, NH, DH) float32: (h, c, n, m), zeros for a fresh
    start; conv (B, K-1, E): the last K-1 inputs of the convolution (empty without one)."""
    slstm: torch.Tensor
    conv: torch.Tensor


def is_state_sequence(state) -> bool:
    """A state may be any sequence of tensors (NamedTuple, tuple, list), not a string."""
    return isinstance(state, Sequence) and not isinstance(state, (str, bytes))


def check_state_tuple(state, fields: Sequence[str], name: str, type_name: str) -> None:
    """Raise a TypeError unless `state` is a sequence of len(fields) entries."""
    if not is_state_sequence(state) or len(state) != len(fields):
        got = (f"a {type(state).__name__} of length {len(state)}" if is_state_sequence(state)
               else type(state).__name__)
        raise TypeError(f"{name}: expected an {type_name} ({', '.join(fields)}) or a sequence of those "
                        f"{len(fields)} tensors, got {got}")


def check_mlstm_state(state, B: int, NH: int, DQK: int, DV: int, name: str = "state") -> mLSTMState:
    """Validate an mLSTM cell state (c, n, m) for these sizes; returns it as an mLSTMState."""
    check_state_tuple(state, mLSTMState._fields, name, "mLSTMState")
    for part, t, shape in zip("cnm", state, ((B, NH, DQK, DV), (B, NH, DQK), (B, NH, 1))):
        check_tensor(f"{name}.{part}", t, shape)
    return mLSTMState(*state)


def zero_mlstm_state(B: int, NH: int, DQK: int, DV: int, device) -> mLSTMState:
    """The empty mLSTM cell state (what `state=None` means), float32 zeros."""
    z = dict(device=device, dtype=torch.float32)
    return mLSTMState(torch.zeros(B, NH, DQK, DV, **z), torch.zeros(B, NH, DQK, **z),
                      torch.zeros(B, NH, 1, **z))
