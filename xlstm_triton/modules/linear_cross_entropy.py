"""The language-model loss without the logits: linear head + soft cap + cross-entropy, fused.

    loss = mean over t with labels[t] != ignore_index of
           logsumexp_v(z[t, v]) - z[t, labels[t]],   z = cap * tanh((hidden @ weight^T) / cap)
    hidden (N, E) (or (..., E)), weight (V, E), labels (N,) (or (...)) int64 / int32 -> float32 scalar

The plain spelling keeps float32 logits of the whole batch (16,384 tokens x 50,304 words is
3.3 GB) and passes over them five times (cast, cap, log-softmax and the backward of each). Here
the tokens are walked in chunks of rows: a chunk's logits are one matmul (in the input dtype), a
row kernel turns them into their loss and, in place, into d loss / d logits (softmax minus the
one-hot, times the cap's derivative, divided by the number of counted tokens), and two more
matmuls give the chunk's rows of d hidden and its share of d weight (accumulated in float32).
Only one chunk of logits is alive at a time, and the backward has nothing left to do but scale
the saved gradients by the incoming one (the loss is a scalar).

`linear_cross_entropy` is a custom op (`xlstm_triton::linear_cross_entropy`, so the models
compile with fullgraph=True); on CPU without TRITON_INTERPRET=1 and for float64 it runs
`linear_cross_entropy_torch`, the plain spelling, which is also the tests' reference.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import nn

from ..checks import check_features, check_tensor
from ..launch import cached_launch
from ..utils import kernel_op, next_power_of_2, use_kernels
from .activations import soft_cap as apply_soft_cap

__all__ = ["linear_cross_entropy", "linear_cross_entropy_torch", "LinearCrossEntropyLoss"]


@triton.jit
def _capped(x, cap, HAS_CAP: tl.constexpr):
    """(cap * tanh(x / cap), d/dx of it); tanh through exp (exact limits: +-1 for large |x|)."""
    if HAS_CAP:
        t = 1.0 - 2.0 / (tl.exp(2.0 * x / cap) + 1.0)
        return cap * t, 1.0 - t * t
    else:
        return x, x * 0.0 + 1.0


@cached_launch
@triton.jit
def cross_entropy_rows_kernel(z_ptr, s_z, labels_ptr, loss_ptr, count_ptr, V, ignore_index, cap,
                              HAS_CAP: tl.constexpr, BLOCK: tl.constexpr):
    """One program per row of logits: the row's loss, and the row overwritten by its gradient."""
    row = tl.program_id(0).to(tl.int64)
    base = z_ptr + row * s_z
    label = tl.load(labels_ptr + row).to(tl.int64)
    counted = label != ignore_index
    # Pass 1: running max and sum of exp over the capped logits.
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.zeros((), dtype=tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(base + cols, mask=cols < V, other=0.0).to(tl.float32)
        z, _ = _capped(x, cap, HAS_CAP)
        z = tl.where(cols < V, z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    in_vocab = counted & (label >= 0) & (label < V)
    x_label = tl.load(base + tl.where(in_vocab, label, 0)).to(tl.float32)
    z_label, _ = _capped(x_label, cap, HAS_CAP)
    # A label outside [0, V) that is not ignore_index gives NaN (the models check labels first).
    loss = tl.where(counted, tl.where(in_vocab, lse - z_label, float("nan")), 0.0)
    tl.store(loss_ptr + row, loss)
    # Pass 2: d loss / d x = (softmax(z) - onehot(label)) * dz/dx / count, over the same memory.
    scale = tl.where(counted, 1.0 / tl.load(count_ptr), 0.0)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < V
        x = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
        z, dz = _capped(x, cap, HAS_CAP)
        g = (tl.exp(z - lse) - tl.where(cols == label, 1.0, 0.0)) * dz * scale
        tl.store(base + cols, g.to(z_ptr.dtype.element_ty), mask=mask)


def default_chunk_rows(N: int, E: int, V: int) -> int:
    """Rows per chunk: a chunk's logits about four times the size of the hidden states of all N
    rows, so the chunk count stays near V / (4 E) (~12 at V = 50k, E = 1024), a power of two."""
    rows = max(1, (4 * N * E) // max(V, 1))
    return min(next_power_of_2(N), max(16, 1 << (rows.bit_length() - 1)))


def _accumulate(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """acc + a @ b into the float32 `acc`: for bf16 / fp16 operands one matmul with a float32
    output where the build has it (CUDA), else through float32 copies of the operands. The
    product is added in place (`out=acc`: no copy of acc, which an out-of-place addmm makes
    before its matmul, 206 MB per chunk at V = 50k, E = 1024), or out of place where this
    call's operands are refused in place (decided per call: one refused layout must not turn
    the in-place form off for the others)."""
    if a.dtype == torch.float32:
        return acc.addmm_(a, b)
    if a.is_cuda:
        try:
            return torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
        except (RuntimeError, TypeError):
            pass
        try:
            return torch.addmm(acc, a, b, out_dtype=torch.float32)
        except (RuntimeError, TypeError):
            pass
    return acc.addmm_(a.float(), b.float())


def _fused(hidden, weight, labels, soft_cap, ignore_index, chunk_rows, compute_grads):
    N, E = hidden.shape
    V = weight.shape[0]
    count = (labels != ignore_index).sum().to(torch.float32)
    loss_rows = torch.empty(N, dtype=torch.float32, device=hidden.device)
    grad_h = torch.empty_like(hidden) if compute_grads else hidden.new_empty(0)
    grad_w = torch.zeros(V, E, dtype=torch.float32, device=hidden.device) if compute_grads else hidden.new_empty(0)
    scale = count.clamp(min=1.0)
    BLOCK = min(4096, next_power_of_2(V))
    for start in range(0, N, chunk_rows):
        h = hidden[start:start + chunk_rows]
        z = h @ weight.t()                                    # (rows, V), the input dtype
        cross_entropy_rows_kernel[(h.shape[0],)](
            z, z.stride(0), labels[start:start + chunk_rows], loss_rows[start:start + chunk_rows], scale,
            V, ignore_index, 1.0 if soft_cap is None else float(soft_cap),
            HAS_CAP=soft_cap is not None, BLOCK=BLOCK, num_warps=8)
        if compute_grads:                                     # z now holds d loss / d logits
            torch.mm(z, weight, out=grad_h[start:start + chunk_rows])
            grad_w = _accumulate(grad_w, z.t(), h)
    return loss_rows.sum() / count, grad_h, grad_w.to(weight.dtype) if compute_grads else grad_w


@kernel_op("xlstm_triton::linear_cross_entropy")
def _linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          soft_cap: Optional[float], ignore_index: int, chunk_rows: int, compute_grads: bool
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _fused(hidden, weight, labels, soft_cap, ignore_index, chunk_rows, compute_grads)


@_linear_cross_entropy.register_fake
def _(hidden, weight, labels, soft_cap, ignore_index, chunk_rows, compute_grads):
    loss = hidden.new_empty((), dtype=torch.float32)
    if not compute_grads:
        return loss, hidden.new_empty(0), hidden.new_empty(0)
    return loss, torch.empty_like(hidden), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    _, grad_h, grad_w = output
    ctx.save_for_backward(grad_h, grad_w)


def _backward(ctx, d_loss, d_grad_h, d_grad_w):
    grad_h, grad_w = ctx.saved_tensors
    if grad_h.numel() == 0 and grad_w.numel() == 0:
        raise RuntimeError("linear_cross_entropy: backward of a call made without gradients "
                           "(the inputs did not require grad when it ran)")
    d_loss = d_loss.to(grad_h.dtype)
    return grad_h * d_loss, grad_w * d_loss.to(grad_w.dtype), None, None, None, None, None


_linear_cross_entropy.register_autograd(_backward, setup_context=_setup_context)


def linear_cross_entropy_torch(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                               soft_cap: Optional[float] = None, ignore_index: int = -100) -> torch.Tensor:
    """The plain spelling: float32 (float64 for float64 inputs) logits of every row at once."""
    logits = hidden @ weight.t()
    logits = logits.double() if logits.dtype == torch.float64 else logits.float()
    return F.cross_entropy(apply_soft_cap(logits, soft_cap), labels.long(), ignore_index=ignore_index)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         soft_cap: Optional[float] = None, ignore_index: int = -100,
                         chunk_rows: Optional[int] = None) -> torch.Tensor:
    """Mean cross-entropy of `labels` under logits soft_cap(hidden @ weight^T), without keeping
    the logits (module docstring).

    hidden: (..., E) float; weight: (V, E), the LM head, same dtype and device; labels: the
    leading shape of hidden, int64 or int32, each in [0, V) or equal to `ignore_index` (not
    counted). soft_cap: cap * tanh(logits / cap), or None. chunk_rows: rows per chunk (None: see
    `default_chunk_rows`). Returns a float32 scalar (float64 for float64 inputs); NaN when no
    token is counted, as `F.cross_entropy` gives. Gradients flow to hidden and weight.
    """
    E = check_features("hidden", hidden, "(..., E)")
    check_tensor("weight", weight, ndim=2, doc="(V, E)", dtypes=(hidden.dtype,), device=hidden.device,
                 device_of="hidden")
    if weight.shape[1] != E or weight.shape[0] < 1:
        raise ValueError(f"weight: expected shape (V, E) with E = {E} (hidden's last dim), got {tuple(weight.shape)}")
    check_tensor("labels", labels, tuple(hidden.shape[:-1]), doc="hidden's leading shape",
                 dtypes=(torch.int64, torch.int32), device=hidden.device, device_of="hidden")
    if soft_cap is not None and not soft_cap > 0:
        raise ValueError(f"soft_cap: expected None or a number > 0, got {soft_cap!r}")
    hidden2, labels1 = hidden.reshape(-1, E), labels.reshape(-1)
    if not use_kernels(hidden2):
        return linear_cross_entropy_torch(hidden2, weight, labels1, soft_cap, ignore_index)
    N, V = hidden2.shape[0], weight.shape[0]
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(N, E, V)
    if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1:
        raise ValueError(f"chunk_rows: expected None or an int >= 1, got {chunk_rows!r}")
    compute_grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    loss, _, _ = _linear_cross_entropy(hidden2.contiguous(), weight.contiguous(), labels1.contiguous(),
                                       None if soft_cap is None else float(soft_cap), int(ignore_index),
                                       chunk_rows, compute_grads)
    return loss


class LinearCrossEntropyLoss(nn.Module):
    """`linear_cross_entropy` as a module: forward(hidden (..., E), weight (V, E), labels (...))."""

    def __init__(self, soft_cap: Optional[float] = None, ignore_index: int = -100):
        super().__init__()
        self.soft_cap, self.ignore_index = soft_cap, ignore_index

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return linear_cross_entropy(hidden, weight, labels, self.soft_cap, self.ignore_index)

    def extra_repr(self) -> str:
        return f"soft_cap={self.soft_cap}, ignore_index={self.ignore_index}"
