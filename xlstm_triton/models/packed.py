"""Packed documents in a model step: the offsets from `cu_seqlens` or `position_ids`.

Training on packed data lays many documents end to end in one row of input_ids (1, S). A model
takes their offsets `cu_seqlens` (N + 1,) (flash-attention's convention) or `position_ids`
(1, S) that restart at 0 at each document (transformers' packing collators), checks them once
per step (one host read of the offsets, or none when they are a CPU tensor) and hands the
checked device offsets to every layer: the mLSTM, sLSTM and conv kernels restart at each
document's first step, and the loss does not score a document's last position against the
next document's first token.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..checks import checked_cu_seqlens
from ..utils import cu_seqlens_from_position_ids

__all__ = ["packed_offsets"]


def packed_offsets(input_ids: torch.Tensor, cu_seqlens: Optional[torch.Tensor],
                   position_ids: Optional[torch.Tensor], state=None, return_state: bool = False
                   ) -> Optional[torch.Tensor]:
    """The checked int32 offsets on input_ids' device for a packed step, or None for a plain
    one. Errors (ValueError, naming the argument) for offsets that do not cover input_ids'
    length, a batch other than 1, both arguments at once, or a state in or out."""
    if cu_seqlens is None and position_ids is None:
        return None
    if cu_seqlens is not None and position_ids is not None:
        raise ValueError("cu_seqlens, position_ids: give one of them for packed documents, not both")
    if state is not None or return_state:
        raise ValueError("cu_seqlens / position_ids: packed documents run from zero states, without a state "
                         "in or out")
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids: packed documents need a batch of 1, (1, S), got {tuple(input_ids.shape)}")
    if position_ids is not None:
        if tuple(position_ids.shape) not in ((1, input_ids.shape[1]), (input_ids.shape[1],)):
            raise ValueError(f"position_ids: expected shape (1, {input_ids.shape[1]}) (input_ids'), got "
                             f"{tuple(position_ids.shape)}")
        cu_seqlens = cu_seqlens_from_position_ids(position_ids).cpu()    # (read once already)
    return checked_cu_seqlens(cu_seqlens, input_ids.shape[1], input_ids.device)
