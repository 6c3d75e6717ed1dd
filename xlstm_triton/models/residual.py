"""The residual stream of both model families' pre-norm stacks.

Each block's `forward_residual(x, branch, state, ...)` takes the stream x and the previous
block's last branch output not yet added, adds it inside its first norm (`add_forward`, one
fused kernel each way) and returns (stream, its own last branch output, new state). The stack
adds the last branch inside the final norm, or plainly when there is none.
"""

from __future__ import annotations

import torch

__all__ = ["compile_blocks", "run_residual_stream"]


def run_residual_stream(x: torch.Tensor, blocks, states, final_norm, **block_kwargs):
    """Returns (the final norm's output, tuple of the blocks' new states (None entries where
    they return none))."""
    new_states, branch = [], None
    for block, state in zip(blocks, states):
        x, branch, state = block.forward_residual(x, branch, state, **block_kwargs)
        new_states.append(state)
    x = final_norm.add_forward(x, branch)[0] if hasattr(final_norm, "add_forward") else x + branch
    return x, tuple(new_states)


def compile_blocks(model: torch.nn.Module, **compile_kwargs) -> torch.nn.Module:
    """Regional compilation: `torch.compile` each block's `forward_residual` of an xLSTM model
    (`xLSTMLarge`, `xLSTMLMModel` or their stacks), in place; returns the model.

    Identical blocks share one compiled graph (two in all: the first block, which has no branch
    to add yet, and the rest), so compile time does not grow with the depth, where
    `torch.compile(model)` unrolls every block into one graph (minutes for a 24-block model).
    The embedding and the loss stay eager (the loss is one fused kernel each way anyway).
    `compile_kwargs` go to `torch.compile` (e.g. mode="max-autotune-no-cudagraphs")."""
    blocks = [m for m in model.modules() if hasattr(m, "forward_residual")]
    if not blocks:
        raise ValueError(f"compile_blocks: {type(model).__name__} has no blocks with forward_residual "
                         "(expected an xLSTMLarge or xLSTMLMModel)")
    for block in blocks:
        block.forward_residual = torch.compile(block.forward_residual, **compile_kwargs)
    return model

