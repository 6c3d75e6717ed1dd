"""Small helpers shared by the ops: output allocation (poisonable for tests), dispatch, the
registration of kernel launchers as custom ops (`kernel_op`), and the NaN-propagating minimum
and maximum of the kernels."""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Optional

import torch
import triton
import triton.language as tl

_POISON_OUTPUTS = False
_PLAIN_TENSORS = frozenset((torch.Tensor, torch.nn.Parameter))


class KernelOp:
    """A kernel launcher registered as the custom op `name` (what `torch.compile` and
    `torch.library.opcheck` see: `.op`), called directly where that is the same thing.

    In eager mode with plain tensors and no dispatch mode active, a call runs the launcher
    itself, and with autograd a plain `torch.autograd.Function` built from the same
    `setup_context` and `backward` (classic style: `Function.apply` with a separate
    `setup_context` binds the signature with `inspect` on every call). The custom-op dispatcher
    and that binding cost 25-100 us of host time per call (measured on an H200 machine's host:
    `head_norm_gate` forward with grad 204 us through the op, 104 us direct), more than many
    of these kernels take on the GPU, and an eager training step runs hundreds of them. Under `torch.compile`, tracing, a dispatch
    mode or tensor subclasses, a call goes through the registered op. Arguments are positional.
    """

    def __init__(self, name: str, fn, mutates_args=()):
        self.fn = fn
        self.op = torch.library.custom_op(name, fn, mutates_args=mutates_args)
        self._function = None
        self.__doc__, self.__name__ = fn.__doc__, fn.__name__

    def register_fake(self, fake):
        self.op.register_fake(fake)
        return fake

    def register_autograd(self, backward, *, setup_context) -> None:
        self.op.register_autograd(backward, setup_context=setup_context)
        fn = self.fn

        def forward(ctx, *args):      # not a separate setup_context: that binds the signature per call
            out = fn(*args)
            setup_context(ctx, args, out)
            return out
        self._function = type(self.__name__.lstrip("_") + "Function", (torch.autograd.Function,), dict(
            forward=staticmethod(forward), backward=staticmethod(backward)))

    def __call__(self, *args):
        if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack():
            return self.op(*args)
        grad = False                 # one pass over the arguments (a training step makes ~150 calls)
        for a in args:
            if isinstance(a, torch.Tensor):
                if type(a) not in _PLAIN_TENSORS:
                    return self.op(*args)
                grad = grad or a.requires_grad
        if grad and self._function is not None and torch.is_grad_enabled():
            return self._function.apply(*args)
        return self.fn(*args)


def kernel_op(name: str, mutates_args=()):
    """Decorator: `KernelOp(name, fn)` (its docstring); use like `torch.library.custom_op`."""
    return lambda fn: KernelOp(name, fn, mutates_args)


def soft_cap(x: torch.Tensor, cap: Optional[float]) -> torch.Tensor:
    """cap * tanh(x / cap): smooth clamp to (-cap, cap) (xLSTM-7B's gates and logits); None:
    identity. The PyTorch spelling; the kernels use `soft_cap_jit`."""
    return x if cap is None else cap * torch.tanh(x / cap)


def next_power_of_2(n: int) -> int:
    """The smallest power of 2 >= n (0 for n <= 0), for launch parameters on the host. Triton's
    `triton.next_power_of_2` and `triton.cdiv` are constexpr functions: each Python call went
    through Triton's argument unwrapping, ~2,500 calls and ~10 ms of host time per eager
    training step of the paper LM (H200 host)."""
    return 0 if n <= 0 else 1 << (n - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for ints, on the host (see `next_power_of_2`)."""
    return -(-a // b)


def as_dtype(t: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    """t in `dtype` (t itself when it already is; None stays None): `Tensor.to` costs a few us of
    host time even when it returns its input, and a training step makes hundreds of such calls."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


def new_empty(shape, dtype, device) -> torch.Tensor:
    """Allocate a buffer a kernel will overwrite completely.

    Normally `torch.empty`; inside `poison_outputs()` it is filled with NaN (integers: their
    most negative value), so a test sees every element a kernel failed to write.
    """
    if _POISON_OUTPUTS:
        fill = float("nan") if dtype.is_floating_point else torch.iinfo(dtype).min
        return torch.full(shape, fill, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def packed_sequence_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """For packed sequences with offsets `cu_seqlens` (N + 1,) over `total` steps: each step's
    sequence index, int32 (total,). No host sync. For PyTorch-side gathers (the sLSTM's
    padding); kernels search the offsets themselves (`packed_sequence`) and keep no index."""
    cu = cu_seqlens.to(torch.int32)
    return torch.repeat_interleave(torch.arange(cu.numel() - 1, dtype=torch.int32, device=cu.device),
                                   cu[1:] - cu[:-1], output_size=total)


def packed_kernel_args(cu_seqlens: Optional[torch.Tensor], dummy: torch.Tensor) -> tuple:
    """The three arguments a packed-sequence kernel takes for `packed_sequence`: the offsets
    (int32, on the kernel's device), the number of sequences N and the binary search's rounds
    (N - 1).bit_length(); for no packing `dummy` (any tensor, unread), 1 and 0. No host sync:
    N is the offsets' length."""
    if cu_seqlens is None:
        return dummy, 1, 0
    n = cu_seqlens.shape[0] - 1
    return cu_seqlens, n, max(n - 1, 0).bit_length()


@triton.jit
def packed_sequence(cu_ptr, NSEQ, STEPS, pos, S):
    """Packed sequences with offsets cu (NSEQ + 1,) int32: for each step in `pos` (steps past S
    count as S - 1), the index of its sequence and that sequence's first step. A branch-free
    binary search of STEPS = (NSEQ - 1).bit_length() rounds over the offsets (a few hundred
    bytes, cached): the largest j < NSEQ with cu[j] <= pos, so empty sequences are skipped."""
    p = tl.minimum(pos, S - 1)
    seq = p * 0
    for r in range(STEPS):
        cand = seq + (1 << (STEPS - 1 - r))
        inside = cand < NSEQ
        take = inside & (tl.load(cu_ptr + tl.where(inside, cand, 0)) <= p)
        seq = tl.where(take, cand, seq)
    return seq, tl.load(cu_ptr + seq)


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Offsets (N + 1,) int32 of the packed documents of `position_ids` (1, S) (or (S,)) that
    restart at 0 at each document (transformers' packing collators): one host read of the
    starts (a sync on a GPU), once per step. A row not starting at 0 raises ValueError."""
    if not isinstance(position_ids, torch.Tensor) or position_ids.dim() not in (1, 2) or \
            (position_ids.dim() == 2 and position_ids.shape[0] != 1) or position_ids.numel() == 0:
        got = tuple(position_ids.shape) if isinstance(position_ids, torch.Tensor) else type(position_ids).__name__
        raise ValueError(f"position_ids: expected shape (1, S) with S >= 1 for packed documents, got {got}")
    pos = position_ids.reshape(-1)
    if int(pos[0]) != 0:
        raise ValueError(f"position_ids: packed documents start at position 0, got {int(pos[0])} first")
    starts = torch.nonzero(pos == 0).flatten()
    total = torch.tensor([pos.numel()], device=pos.device, dtype=starts.dtype)
    return torch.cat([starts, total]).to(torch.int32)


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
    return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


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


@triton.jit
def soft_cap_jit(x, cap):
    """cap * tanh(x / cap) (xLSTM-7B's gate soft cap), tanh from one exp; NaN stays NaN. Its
    derivative is 1 - (result / cap)**2."""
    t = tl.exp(-2.0 * tl.abs(x) / cap)
    return tl.where(x < 0, -cap, cap) * (1.0 - t) / (1.0 + t)


def dot_precision(dtype: torch.dtype, device: torch.device) -> str:
    """float32 inputs: 3xTF32 (about float32 accuracy on tensor cores); 16-bit inputs: native
    (the option is ignored); in the interpreter, 16-bit operands are upcast (see `mma`)."""
    if device.type != "cuda" and dtype != torch.float32:
        return "upcast"
    return "tf32x3" if dtype == torch.float32 else "ieee"


@triton.jit
def mma(a, b, acc, DOT_PREC: tl.constexpr):
    """acc + a @ b with float32 accumulation. DOT_PREC "upcast" (interpreter, 16-bit inputs):
    multiply in float32, the same values (products of 16-bit floats are exact in float32); Triton's
    interpreter multiplies the raw bits of bfloat16 operands."""
    if DOT_PREC == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=DOT_PREC)
