"""Small helpers shared by the ops: output allocation (poisonable for tests), dispatch, and the
NaN-propagating minimum and maximum of the kernels."""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

_POISON_OUTPUTS = False


def new_empty(shape, dtype, device) -> torch.Tensor:
    """Allocate a buffer a kernel will overwrite completely.

    Normally `torch.empty`; inside `poison_outputs()` it is filled with NaN, so a test sees
    every element a kernel failed to write.
    """
    if _POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def is_seq_major(x: torch.Tensor) -> bool:
    """Whether a (B, NH, S, D) tensor lies in memory as (B, S, NH, D): a transposed view of a
    (B, S, NH * D) projection, as the layers pass q, k, v."""
    return x.shape[1] > 1 and x.shape[2] > 1 and x.stride(1) < x.stride(2)


def new_empty_bhsd(B: int, NH: int, S: int, D: int, dtype, device, seq_major: bool) -> torch.Tensor:
    """A `new_empty` (B, NH, S, D) buffer, laid out as (B, S, NH, D) in memory if `seq_major`:
    then a layer's `transpose(1, 2).flatten(-2)` of it is free, and so is the gradient of a
    seq-major input."""
    if seq_major:
        return new_empty((B, S, NH, D), dtype, device).transpose(1, 2)
    return new_empty((B, NH, S, D), dtype, device)


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


def use_kernels(t: torch.Tensor) -> bool:
    """The ops' dispatch: the Triton kernels where `use_triton(t)`, except for float64 tensors
    (the PyTorch path computes in float64, what `gradcheck` needs) and empty ones (a batch or
    head count of 0: nothing to launch, the PyTorch path returns the empty result)."""
    return use_triton(t) and t.dtype != torch.float64 and t.numel() > 0


def use_fused(t: torch.Tensor) -> bool:
    """The fused inference kernels of `xlstm_triton.modules` run where the Triton kernels run
    and autograd is off."""
    return use_triton(t) and not torch.is_grad_enabled()


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (a very large number elsewhere: no limit)."""
    if device.type != "cuda":
        return 1 << 30
    return torch.cuda.get_device_properties(device).multi_processor_count


@triton.jit
def maximum_nan(a, b):
    """max(a, b), NaN where either is NaN. `tl.maximum` (and the `tl.max` reduction) return the
    other operand instead, which let a NaN input vanish from a stabilizer: the kernels use this
    one for every maximum, and `tl.reduce(x, axis, maximum_nan)` for reductions."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def minimum_nan(a, b):
    """min(a, b), NaN where either is NaN (see `maximum_nan`)."""
    return tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)
