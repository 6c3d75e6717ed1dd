"""The xLSTM-7B layer's output: per-head LayerNorm of h, gated by sigmoid(o), as one kernel.

    gated_head_norm(h, o, weight, bias, eps) = sigmoid(o) * (LayerNorm_per_head(h) * weight + bias)
        h (B, S, NH, DH), o (B, S, NH * DH) -> (B, S, NH * DH) in o's dtype

Decoding one token runs this as several PyTorch kernels, and at batch 1 each launch costs about
as much as it computes; the kernel computes in float32 and rounds once. It serves inference only
(no autograd): the layer calls it where `use_fused` holds and composes `MultiHeadLayerNorm`
and the gate in PyTorch otherwise. `gated_head_norm_torch` spells out the composition (the
tests' reference).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..utils import new_empty, use_triton

__all__ = ["gated_head_norm", "gated_head_norm_torch"]


@triton.jit
def gated_head_norm_kernel(h_ptr, o_ptr, w_ptr, b_ptr, y_ptr,
                           s_hb, s_hs, s_hh, s_ob, s_os, S, NH, eps,
                           DH: tl.constexpr, BLOCK: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    """One program per (b, s, head): normalize DH features of h, scale, shift, gate by sigmoid(o)."""
    pid = tl.program_id(0)
    hd = pid % NH
    bs = pid // NH
    b, s = bs // S, bs % S
    d = tl.arange(0, BLOCK)
    mask = d < DH
    h = tl.load(h_ptr + b.to(tl.int64) * s_hb + s.to(tl.int64) * s_hs + hd * s_hh + d,
                mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(h, axis=0) / DH
    xc = tl.where(mask, h - mean, 0.0)
    var = tl.sum(xc * xc, axis=0) / DH
    y = xc / tl.sqrt(var + eps)
    col = hd * DH + d
    if HAS_W:
        y = y * tl.load(w_ptr + col, mask=mask, other=0.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(b_ptr + col, mask=mask, other=0.0).to(tl.float32)
    o = tl.load(o_ptr + b.to(tl.int64) * s_ob + s.to(tl.int64) * s_os + col, mask=mask, other=0.0).to(tl.float32)
    y = y / (1.0 + tl.exp(-o))
    tl.store(y_ptr + bs.to(tl.int64) * (NH * DH) + col, y.to(y_ptr.dtype.element_ty), mask=mask)


def gated_head_norm_torch(h, o, weight=None, bias=None, eps=1e-6):
    """The composition the kernel fuses (float32 inside, o's dtype out)."""
    NH, DH = h.shape[-2:]
    y = F.layer_norm(h.float(), (DH,), eps=eps)
    if weight is not None:
        y = y * weight.float().view(NH, DH)
    if bias is not None:
        y = y + bias.float().view(NH, DH)
    return (torch.sigmoid(o.float()) * y.flatten(-2)).to(o.dtype)


def gated_head_norm(h: torch.Tensor, o: torch.Tensor, weight: Optional[torch.Tensor] = None,
                    bias: Optional[torch.Tensor] = None, eps: float = 1e-6) -> torch.Tensor:
    """sigmoid(o) * (per-head LayerNorm(h) * weight + bias).

    h: (B, S, NH, DH), last dim contiguous; o: (B, S, NH * DH), last dim contiguous;
    weight, bias: (NH * DH,) or None. Returns (B, S, NH * DH) in o's dtype.
    """
    if h.dim() != 4 or o.shape != (*h.shape[:2], h.shape[2] * h.shape[3]):
        raise ValueError(f"gated_head_norm: expected h (B, S, NH, DH) and o (B, S, NH * DH), got "
                         f"{tuple(h.shape)} and {tuple(o.shape)}")
    if not use_triton(h):
        return gated_head_norm_torch(h, o, weight, bias, eps)
    B, S, NH, DH = h.shape
    if h.stride(-1) != 1:
        h = h.contiguous()
    if o.stride(-1) != 1:
        o = o.contiguous()
    y = new_empty((B, S, NH * DH), o.dtype, o.device)
    gated_head_norm_kernel[(B * S * NH,)](
        h, o, weight if weight is not None else o, bias if bias is not None else o, y,
        h.stride(0), h.stride(1), h.stride(2), o.stride(0), o.stride(1), S, NH, eps,
        DH=DH, BLOCK=triton.next_power_of_2(DH), HAS_W=weight is not None, HAS_B=bias is not None,
        num_warps=4)
    return y
