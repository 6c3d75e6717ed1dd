"""Training helpers for both model families: compile block by block, capture a step.

    compile_blocks(model)             torch.compile each block (identical blocks share a graph)
    replay = capture_step(fwd_bwd, model.parameters())   a CUDA graph of fwd_bwd; replay() reruns it

An eager training step launches over a thousand small kernels; where the host launches them more
slowly than the GPU runs them, either helper takes the host out of the step.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

__all__ = ["capture_step", "compile_blocks"]


def model_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks of an `xLSTMLarge` or `xLSTMLMModel` (or their stacks): the modules with a
    `forward_residual`, the unit of `compile_blocks` and of `parallel.shard_blocks`."""
    return [m for m in model.modules() if hasattr(m, "forward_residual")]


def compile_blocks(model: torch.nn.Module, **compile_kwargs) -> torch.nn.Module:
    """Regional compilation: `torch.compile` each block's `forward_residual` of an xLSTM model
    (`xLSTMLarge`, `xLSTMLMModel` or their stacks), in place; returns the model.

    Identical blocks share one compiled graph (two in all: the first block, which has no branch
    to add yet, and the rest), so compile time does not grow with the depth, where
    `torch.compile(model)` unrolls every block into one graph (minutes for a 24-block model).
    The embedding and the loss stay eager (the loss is one fused kernel each way anyway).
    `compile_kwargs` go to `torch.compile` (e.g. mode="max-autotune-no-cudagraphs")."""
    blocks = model_blocks(model)
    if not blocks:
        raise ValueError(f"compile_blocks: {type(model).__name__} has no blocks with forward_residual "
                         "(expected an xLSTMLarge or xLSTMLMModel)")
    for block in blocks:
        block.forward_residual = torch.compile(block.forward_residual, **compile_kwargs)
    return model


def capture_step(fwd_bwd: Callable[[], object], params: Iterable[torch.nn.Parameter],
                 warmup: int = 2) -> Callable[[], object]:
    """Capture `fwd_bwd()` (a forward and backward on static input tensors, e.g.
    `lambda: model(ids, labels=ids).backward()`) in one CUDA graph; returns `replay()`, which
    reruns its kernels and returns what the captured call returned (static tensors, overwritten
    by each replay).

    Runs fwd_bwd `warmup` times on a side stream first (Triton compiles, the allocator warms
    up), then captures with the gradients of `params` (the model's parameters) unset, so their
    `.grad` become the graph's static buffers: call the optimizer after each replay and leave
    the gradients in place (each replay writes them afresh, it does not accumulate). Change the
    inputs by copying into the captured tensors. Needs a step without host syncs (set
    `model.check_token_range = False`).

    `replay` holds `fwd_bwd`, and with it what fwd_bwd closes over (the model, the input
    tensors): the graph reads those tensors' memory on every replay, and a tensor freed after
    the capture would hand its block to the next allocation (the optimizer's state, say) while
    the graph goes on reading it."""
    params = list(params)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            for p in params:
                p.grad = None
            fwd_bwd()
    torch.cuda.current_stream().wait_stream(side)
    for p in params:
        p.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fwd_bwd()

    def replay():
        graph.replay()
        return out
    replay.fwd_bwd = fwd_bwd    # keeps the graph's inputs alive as long as replay
    return replay
