"""Recompute the cheap part of a block in the backward instead of keeping its activations.

    y = recompute_cheap(fn, *tensors)

runs `fn(*tensors)` under activation checkpointing with a selective policy: the outputs of the
expensive ops inside (the mLSTM's chunkwise forward, matmuls) are kept from the forward; every
other op (convolutions, block-diagonal projections, norms, gates, elementwise kernels: each one
memory-bound pass) runs again in the backward to rebuild what its own backward reads. Kept
between the passes: fn's inputs and the kept outputs, instead of every intermediate.

Used by the paper mLSTM layer between its up- and down-projection, where the intermediates (the
conv output, q, k, v, the gates, the normalized output) would be ~6 tensors of (tokens x inner)
per block, most of a training step's activation memory.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from ..ops.mlstm import op as _mlstm_op

del _mlstm_op          # imported for its side effect: it registers xlstm_triton::mlstm_chunkwise_fwd

__all__ = ["recompute_cheap"]

EXPENSIVE_OPS = frozenset({torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
                           torch.ops.xlstm_triton.mlstm_chunkwise_fwd.default})


def _policy(ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE if op in EXPENSIVE_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def recompute_cheap(fn, *tensors):
    """fn(*tensors), its cheap intermediates recomputed in the backward (module docstring).
    Without autograd (inference, or no input or parameter needing gradients) it is fn itself."""
    if not torch.is_grad_enabled():
        return fn(*tensors)
    return checkpoint(fn, *tensors, use_reentrant=False,
                      context_fn=functools.partial(create_selective_checkpoint_contexts, _policy))
