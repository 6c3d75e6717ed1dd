"""Small helpers shared by the ops: output allocation (poisonable for tests) and dispatch."""

from __future__ import annotations

import contextlib
import os

import torch

_POISON_OUTPUTS = False


def new_empty(shape, dtype, device) -> torch.Tensor:
    """Allocate a buffer a kernel will overwrite completely.

    Normally `torch.empty`; inside `poison_outputs()` it is filled with NaN, so a test sees
    every element a kernel failed to write.
    """
    if _POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


@contextlib.contextmanager
def poison_outputs():
    """Within this block, buffers from `new_empty` start as NaN (for tests)."""
    global _POISON_OUTPUTS
    old, _POISON_OUTPUTS = _POISON_OUTPUTS, True
    try:
        yield
    finally:
        _POISON_OUTPUTS = old


def triton_interpret() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(t: torch.Tensor) -> bool:
    """Dispatch rule: CUDA tensors run the Triton kernels; CPU tensors run them in the Triton
    interpreter when TRITON_INTERPRET=1, and the PyTorch path otherwise."""
    return t.is_cuda or (t.device.type == "cpu" and triton_interpret())


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (a very large number elsewhere: no limit)."""
    if device.type != "cuda":
        return 1 << 30
    return torch.cuda.get_device_properties(device).multi_processor_count
