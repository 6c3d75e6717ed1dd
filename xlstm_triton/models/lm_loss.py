"""The training loss of the language models: `model(input_ids, labels=labels)`.

As in Hugging Face causal LMs, `labels` (B, S) is aligned with `input_ids` (usually a copy of
them) and the model shifts it: the output at position t is scored against labels[:, t + 1], the
last position against nothing, and labels equal to -100 are not counted. The loss is the mean
cross-entropy over the counted positions, computed by `modules.linear_cross_entropy` straight
from the last hidden states and the LM head's weight, so the logits of the batch are never
materialized.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..generation import check_token_ids, range_check_runs
from ..modules import linear_cross_entropy

__all__ = ["IGNORE_INDEX", "check_labels", "next_token_loss", "shifted_labels", "cp_next_token_loss"]

IGNORE_INDEX = -100


def check_labels(labels, input_ids: torch.Tensor, vocab_size: int, check_range: bool) -> None:
    """labels: int64 / int32 of input_ids' shape and device, each in [0, vocab_size) or -100.
    The range check syncs on a GPU, so it runs there only with `check_range` (as for the ids)."""
    if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != tuple(input_ids.shape):
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels: expected shape {tuple(input_ids.shape)} (input_ids' shape), got {got}")
    # The ids' checks (dtype, device); the range is checked below with -100 allowed.
    check_token_ids(labels, "labels", None, input_ids.device, check_range=False)
    if not range_check_runs(labels, check_range):
        return
    bad = ((labels < 0) | (labels >= vocab_size)) & (labels != IGNORE_INDEX)
    if bad.any():
        raise ValueError(f"labels: label {int(labels[bad][0])} is out of range for the vocabulary size "
                         f"{vocab_size} (expected 0 <= label < {vocab_size}, or {IGNORE_INDEX} to skip)")


def shifted_labels(labels: torch.Tensor, cu_seqlens: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The target of each position: labels[:, t + 1], -100 at the last position and, for packed
    documents (`cu_seqlens`, B = 1), at each document's last position (the next document's
    first token is not its continuation)."""
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    if cu_seqlens is not None:
        ends = cu_seqlens[1:].to(device=labels.device, dtype=torch.long) - 1   # -1: empty documents first
        at_end = torch.zeros(labels.shape[1], dtype=torch.int32, device=labels.device)
        at_end.index_add_(0, ends.clamp(min=0), (ends >= 0).to(torch.int32))     # no host sync
        shifted = torch.where(at_end[None] > 0, IGNORE_INDEX, shifted)
    return shifted


def next_token_loss(hidden: torch.Tensor, head_weight: torch.Tensor, labels: torch.Tensor,
                    soft_cap: Optional[float] = None, cu_seqlens: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean cross-entropy of `shifted_labels(labels, cu_seqlens)` under the logits
    soft_cap(hidden[:, t] @ head_weight^T). hidden (B, S, E), head_weight (V, E), labels (B, S).
    Returns a float32 scalar."""
    return linear_cross_entropy(hidden, head_weight, shifted_labels(labels, cu_seqlens), soft_cap=soft_cap,
                                ignore_index=IGNORE_INDEX)


def cp_next_token_loss(hidden: torch.Tensor, head_weight: torch.Tensor, labels: torch.Tensor,
                       soft_cap: Optional[float], group) -> torch.Tensor:
    """`next_token_loss` of sequences split over the ranks of `group` in contiguous pieces (context
    parallelism): hidden (B, S_rank, E) and labels (B, S_rank) are this rank's pieces. A piece's
    last position is scored against the next rank's first label (one all-gather of the first
    labels); the loss is the mean over the whole sequences' counted positions, the same value
    on every rank, while its gradient is this rank's part (sum the parameter gradients over the
    group: `models.cp_reduce_gradients`)."""
    import torch.distributed as dist
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    firsts = [torch.empty_like(labels[:, :1]) for _ in range(world)]
    dist.all_gather(firsts, labels[:, :1].contiguous(), group=group)
    after = firsts[rank + 1] if rank + 1 < world else torch.full_like(labels[:, :1], IGNORE_INDEX)
    targets = torch.cat([labels[:, 1:], after], dim=1)
    count = (targets != IGNORE_INDEX).sum().to(torch.float32)
    mean = linear_cross_entropy(hidden, head_weight, targets, soft_cap=soft_cap, ignore_index=IGNORE_INDEX)
    local = torch.where(count > 0, mean * count, 0.0)                       # this piece's sum
    totals = torch.stack([local.detach(), count])
    dist.all_reduce(totals, group=group)
    return (local + (totals[0] - local.detach())) / totals[1]
