"""The residual stream of both model families' pre-norm stacks.

Each block's `forward_residual(x, branch, state, ...)` takes the stream x and the previous
block's last branch output not yet added, adds it inside its first norm (`add_forward`, one
fused kernel each way) and returns (stream, its own last branch output, new state). The stack
adds the last branch inside the final norm, or plainly when there is none.
"""

from __future__ import annotations

import torch

__all__ = ["run_residual_stream"]


def run_residual_stream(x: torch.Tensor, blocks, states, final_norm, **block_kwargs):
    """Returns (the final norm's output, tuple of the blocks' new states (None entries where
    they return none))."""
    new_states, branch = [], None
    for block, state in zip(blocks, states):
        x, branch, state = block.forward_residual(x, branch, state, **block_kwargs)
        new_states.append(state)
    x = final_norm.add_forward(x, branch)[0] if hasattr(final_norm, "add_forward") else x + branch
    return x, tuple(new_states)
