"""The mLSTM layers' output: per-head LayerNorm of h, the skip branch and the gate, one kernel each way.

    head_norm_gate(h, gate, weight, bias, eps, act=, skip=, x_skip=)
        = act(gate) * (LayerNorm_per_head(h) * weight + bias + skip * x_skip)
    h (B, S, NH, DH), gate (B, S, NH * DH), weight, bias, skip (NH * DH,) or None,
    x_skip (B, S, NH * DH) or None  ->  (B, S, NH * DH) in gate's dtype

The xLSTM-7B layer computes `out_proj(sigmoid(o) * MultiHeadLayerNorm(h))` (act "sigmoid", no
skip), the paper layer `proj_down((outnorm(h) + learnable_skip * x_c) * SiLU(z))` (act "silu",
weight = 1 + outnorm.weight, no bias). In PyTorch that is a norm of three or four passes, the
scale, the skip, the activation and the product, and as many again backwards; decoding one
token pays a launch for each. Here the forward reads h, gate and x_skip once and writes the
output and a float32 mean and 1/std per (row, head); the backward recomputes the normalized h
from them, reads h, gate, x_skip and the output gradient once and writes d h, d gate and
d x_skip once; d weight, d bias and d skip come from per-program partial sums. Statistics and
arithmetic are float32, the output is rounded once. h may be any strided view (the mLSTM ops
return (B, NH, S, DH) or (B, S, NH, DH) memory), gate and x_skip any (B, S, F) views (slices of
a fused projection); a last dim that is not unit-stride is copied. d h comes back contiguous
(B, S, NH, DH): seq-major memory for the mLSTM ops' backward, whatever h's layout.

`head_norm_gate` is a custom op pair; on CPU without TRITON_INTERPRET=1, for float64 and for
empty inputs it runs `head_norm_gate_torch`, the plain spelling and the tests' reference.
`gated_head_norm(h, o, weight, bias, eps)` is the 7B form (act "sigmoid", no skip).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..checks import check_tensor
from ..launch import cached_launch
from ..utils import cdiv, kernel_op, new_empty, next_power_of_2, num_sms, use_kernels

__all__ = ["head_norm_gate", "head_norm_gate_torch", "gated_head_norm", "gated_head_norm_torch"]

ACTS = ("sigmoid", "silu")


@cached_launch
@triton.jit
def head_norm_gate_fwd_kernel(h_ptr, g_ptr, w_ptr, b_ptr, k_ptr, xs_ptr, y_ptr, mean_ptr, rstd_ptr,
                              s_hb, s_hs, s_hh, s_gb, s_gs, s_xb, s_xs, S, NH, eps, w_offset,
                              DH: tl.constexpr, BLOCK: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                              HAS_SKIP: tl.constexpr, SILU: tl.constexpr):
    """One program per (row, head): normalize DH features of h, scale (by weight + w_offset),
    shift, add the skip, gate."""
    pid = tl.program_id(0)
    hd = pid % NH
    row = pid // NH
    b, s = (row // S).to(tl.int64), (row % S).to(tl.int64)
    d = tl.arange(0, BLOCK)
    mask = d < DH
    col = hd * DH + d
    h = tl.load(h_ptr + b * s_hb + s * s_hs + hd.to(tl.int64) * s_hh + d, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(h, axis=0) / DH
    xc = tl.where(mask, h - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / DH + eps)
    y = xc * rstd
    if HAS_W:
        y = y * (tl.load(w_ptr + col, mask=mask, other=0.0).to(tl.float32) + w_offset)
    if HAS_B:
        y = y + tl.load(b_ptr + col, mask=mask, other=0.0).to(tl.float32)
    if HAS_SKIP:
        xs = tl.load(xs_ptr + b * s_xb + s * s_xs + col, mask=mask, other=0.0).to(tl.float32)
        y = y + tl.load(k_ptr + col, mask=mask, other=0.0).to(tl.float32) * xs
    g = tl.load(g_ptr + b * s_gb + s * s_gs + col, mask=mask, other=0.0).to(tl.float32)
    a = 1.0 / (1.0 + tl.exp(-g))
    if SILU:
        a = g * a
    tl.store(y_ptr + row.to(tl.int64) * (NH * DH) + col, (a * y).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + pid, mean)
    tl.store(rstd_ptr + pid, rstd)


@cached_launch
@triton.jit
def head_norm_gate_bwd_kernel(h_ptr, g_ptr, w_ptr, b_ptr, k_ptr, xs_ptr, mean_ptr, rstd_ptr, dy_ptr,
                              dh_ptr, dg_ptr, dxs_ptr, partial_ptr, hdh_ptr,
                              s_hb, s_hs, s_hh, s_gb, s_gs, s_xb, s_xs, s_dg, N, S, NH, rows_per_program, w_offset,
                              eps,
                              DH: tl.constexpr, BLOCK: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                              HAS_SKIP: tl.constexpr, SILU: tl.constexpr, HAS_HDH: tl.constexpr):
    """Programs (row block, head). With n = h^ w + bias + skip x_skip (w = weight + w_offset) and dn = dy act(gate):
    d gate = dy n act'(gate); d x_skip = dn skip; d h = 1/std (w dn - mean(w dn) - h^ mean(w dn h^));
    partial sums over the block's rows of dn h^, dn, dn x_skip (d weight, d bias, d skip). HAS_HDH:
    also h . d h per (row, head) (the mLSTM backward's dz reads it), as eps rstd^2 sum(w dn h^):
    with sum h^ = 0 and sum h^2 = DH var rstd^2, the terms of h . d h cancel but for eps's share,
    so it needs no reduction of its own, and it is not the rounding noise of a dot of stored d h
    with h that cancels to it."""
    pid, hd = tl.program_id(0), tl.program_id(1)
    d = tl.arange(0, BLOCK)
    mask = d < DH
    col = hd * DH + d
    V = NH * DH
    w = tl.full((BLOCK,), 1.0, tl.float32)
    if HAS_W:
        w = tl.load(w_ptr + col, mask=mask, other=0.0).to(tl.float32) + w_offset
    if HAS_B:
        bias = tl.load(b_ptr + col, mask=mask, other=0.0).to(tl.float32)
    if HAS_SKIP:
        k = tl.load(k_ptr + col, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    db = tl.zeros((BLOCK,), dtype=tl.float32)
    dk = tl.zeros((BLOCK,), dtype=tl.float32)
    first = pid * rows_per_program
    for r in range(first, tl.minimum(first + rows_per_program, N)):
        row = tl.cast(r, tl.int64)
        b, s = row // S, row % S
        h = tl.load(h_ptr + b * s_hb + s * s_hs + hd.to(tl.int64) * s_hh + d, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + b * s_gb + s * s_gs + col, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + row * V + col, mask=mask, other=0.0).to(tl.float32)
        stat = row * NH + hd
        rstd = tl.load(rstd_ptr + stat)
        xhat = tl.where(mask, (h - tl.load(mean_ptr + stat)) * rstd, 0.0)
        n = xhat * w
        if HAS_B:
            n = n + bias
        sig = 1.0 / (1.0 + tl.exp(-g))
        if SILU:
            a = g * sig
            da = sig * (1.0 + g * (1.0 - sig))
        else:
            a = sig
            da = sig * (1.0 - sig)
        dn = dy * a
        if HAS_SKIP:
            xs = tl.load(xs_ptr + b * s_xb + s * s_xs + col, mask=mask, other=0.0).to(tl.float32)
            n = n + k * xs
            tl.store(dxs_ptr + row * V + col, (dn * k).to(dxs_ptr.dtype.element_ty), mask=mask)
            dk += dn * xs
        tl.store(dg_ptr + row * s_dg + col, (dy * n * da).to(dg_ptr.dtype.element_ty), mask=mask)
        wdn = w * dn
        wdn_xhat = tl.sum(wdn * xhat, axis=0)
        dh = (wdn - tl.sum(wdn, axis=0) / DH - xhat * (wdn_xhat / DH)) * rstd
        tl.store(dh_ptr + row * V + col, dh.to(dh_ptr.dtype.element_ty), mask=mask)
        if HAS_HDH:
            tl.store(hdh_ptr + stat, eps * rstd * rstd * wdn_xhat)
        dw += dn * xhat
        db += dn
    base = partial_ptr + (3 * pid) * V + col
    tl.store(base, dw, mask=mask)
    tl.store(base + V, db, mask=mask)
    tl.store(base + 2 * V, dk, mask=mask)


# Programs of the backward per SM at heads of 512 (8 measured on an H200).
BWD_PROGRAMS_PER_SM = 8


def _launch_meta(DH: int, backward: bool) -> dict:
    """A head's features in one block; few warps: the forward ran fastest with 16 features a
    thread, the backward with 8 and at least 2 warps (H200, bf16, DH 256 and 512)."""
    BLOCK = next_power_of_2(DH)
    warps = max(2, BLOCK // 256) if backward else max(1, BLOCK // 512)
    return dict(DH=DH, BLOCK=BLOCK, num_warps=min(8, warps))


def _unit_last(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


@kernel_op("xlstm_triton::head_norm_gate")
def _head_norm_gate(h: torch.Tensor, gate: torch.Tensor, weight: Optional[torch.Tensor],
                    bias: Optional[torch.Tensor], skip: Optional[torch.Tensor], x_skip: Optional[torch.Tensor],
                    eps: float, silu: bool, weight_offset: float = 0.0
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, S, NH, DH = h.shape
    h, gate, x_skip = _unit_last(h), _unit_last(gate), _unit_last(x_skip)
    y = new_empty((B, S, NH * DH), gate.dtype, gate.device)
    mean = new_empty((B, S, NH), torch.float32, h.device)
    rstd = new_empty((B, S, NH), torch.float32, h.device)
    if y.numel():
        xs = x_skip if x_skip is not None else gate
        head_norm_gate_fwd_kernel[(B * S * NH,)](
            h, gate, weight if weight is not None else h, bias if bias is not None else h,
            skip if skip is not None else h, xs, y, mean, rstd,
            h.stride(0), h.stride(1), h.stride(2), gate.stride(0), gate.stride(1), xs.stride(0), xs.stride(1),
            S, NH, eps, weight_offset, HAS_W=weight is not None, HAS_B=bias is not None, HAS_SKIP=skip is not None,
            SILU=silu, **_launch_meta(DH, backward=False))
    return y, mean, rstd


@_head_norm_gate.register_fake
def _(h, gate, weight, bias, skip, x_skip, eps, silu, weight_offset=0.0):
    B, S, NH, DH = h.shape
    f32 = dict(dtype=torch.float32)
    return gate.new_empty((B, S, NH * DH)), h.new_empty((B, S, NH), **f32), h.new_empty((B, S, NH), **f32)


def _backward_kernels(h, gate, weight, bias, skip, x_skip, mean, rstd, dy, silu, d_gate=None, weight_offset=0.0,
                      h_dot_dh=None, eps=0.0):
    B, S, NH, DH = h.shape
    N, V = B * S, NH * DH
    h, gate, x_skip = _unit_last(h), _unit_last(gate), _unit_last(x_skip)
    dh = new_empty((B, S, NH, DH), h.dtype, h.device)       # (B, S, NH, DH) memory, whatever h's layout
    if d_gate is not None and (d_gate.stride(-1) != 1 or B > 1 and d_gate.stride(0) != S * d_gate.stride(1)):
        raise ValueError(f"head_norm_gate_backward: d_gate needs unit last stride and evenly strided rows, "
                         f"got strides {d_gate.stride()}")
    if h_dot_dh is not None and (h_dot_dh.shape != (B, S, NH) or h_dot_dh.dtype != torch.float32
                                 or not h_dot_dh.is_contiguous()):
        raise ValueError(f"head_norm_gate_backward: h_dot_dh must be a contiguous float32 ({B}, {S}, {NH}) "
                         f"tensor, got {h_dot_dh.dtype} {tuple(h_dot_dh.shape)} strides {h_dot_dh.stride()}")
    dg = d_gate if d_gate is not None else new_empty((B, S, V), gate.dtype, gate.device)
    dxs = new_empty((B, S, V), x_skip.dtype, x_skip.device) if x_skip is not None else gate.new_empty(0)
    # (row blocks, NH) programs, ~BWD_PROGRAMS_PER_SM an SM for heads of 512 (more for smaller heads)
    sms = num_sms(h.device) if h.is_cuda else 132
    programs = max(1, min(N, cdiv(BWD_PROGRAMS_PER_SM * sms * max(1, 512 // DH), NH)))
    rows_per_program = cdiv(N, programs) if N else 1
    # written whole (zeros when nothing runs)
    partial = (new_empty if N and V else torch.zeros)((programs, 3, V), dtype=torch.float32, device=h.device)
    if N and V:
        xs = x_skip if x_skip is not None else gate
        head_norm_gate_bwd_kernel[(programs, NH)](
            h, gate, weight if weight is not None else h, bias if bias is not None else h,
            skip if skip is not None else h, xs, mean, rstd, dy.contiguous(), dh, dg,
            dxs if x_skip is not None else dg, partial, h_dot_dh if h_dot_dh is not None else mean,
            h.stride(0), h.stride(1), h.stride(2), gate.stride(0), gate.stride(1), xs.stride(0), xs.stride(1),
            dg.stride(1), N, S, NH, rows_per_program, weight_offset, eps,
            HAS_W=weight is not None, HAS_B=bias is not None, HAS_SKIP=skip is not None, SILU=silu,
            HAS_HDH=h_dot_dh is not None, **_launch_meta(DH, backward=True))
    return dh, dg, dxs, partial.sum(0)


@kernel_op("xlstm_triton::head_norm_gate_bwd")
def _head_norm_gate_bwd(h: torch.Tensor, gate: torch.Tensor, weight: Optional[torch.Tensor],
                        bias: Optional[torch.Tensor], skip: Optional[torch.Tensor], x_skip: Optional[torch.Tensor],
                        mean: torch.Tensor, rstd: torch.Tensor, dy: torch.Tensor, silu: bool,
                        weight_offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward_kernels(h, gate, weight, bias, skip, x_skip, mean, rstd, dy, silu, None, weight_offset)


@_head_norm_gate_bwd.register_fake
def _(h, gate, weight, bias, skip, x_skip, mean, rstd, dy, silu, weight_offset=0.0):
    B, S, NH, DH = h.shape
    V = NH * DH
    dxs = x_skip.new_empty((B, S, V)) if x_skip is not None else gate.new_empty(0)
    return (h.new_empty((B, S, NH, DH)), gate.new_empty((B, S, V)), dxs, h.new_empty(3, V, dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    h, gate, weight, bias, skip, x_skip, eps, silu, *offset = inputs       # weight_offset may be left out
    _, mean, rstd = output
    ctx.save_for_backward(h, gate, weight, bias, skip, x_skip, mean, rstd)
    ctx.silu, ctx.weight_offset, ctx.extra = silu, (offset[0] if offset else 0.0), len(offset)


def _backward(ctx, dy, d_mean, d_rstd):
    h, gate, weight, bias, skip, x_skip, mean, rstd = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros(gate.shape, dtype=gate.dtype, device=gate.device)
    dh, dg, dxs, sums = _head_norm_gate_bwd(h, gate, weight, bias, skip, x_skip, mean, rstd, dy, ctx.silu,
                                            ctx.weight_offset)
    dw, db, dk = (None if p is None else d.to(p.dtype) for p, d in zip((weight, bias, skip), sums))
    return (dh, dg, dw, db, dk, None if x_skip is None else dxs, None, None) + (None,) * ctx.extra


_head_norm_gate.register_autograd(_backward, setup_context=_setup_context)


def head_norm_gate_torch(h: torch.Tensor, gate: torch.Tensor, weight: Optional[torch.Tensor] = None,
                         bias: Optional[torch.Tensor] = None, eps: float = 1e-6, *, act: str,
                         skip: Optional[torch.Tensor] = None, x_skip: Optional[torch.Tensor] = None
                         ) -> torch.Tensor:
    """The composition the kernels fuse, differentiable by autograd: float32 inside (float64 for
    float64 inputs), gate's dtype out."""
    NH, DH = h.shape[-2:]
    ct = torch.float64 if torch.float64 in (h.dtype, gate.dtype) else torch.float32
    y = F.layer_norm(h.to(ct), (DH,), eps=eps)
    if weight is not None:
        y = y * weight.to(ct).view(NH, DH)
    if bias is not None:
        y = y + bias.to(ct).view(NH, DH)
    y = y.flatten(-2)
    if skip is not None:
        y = y + skip.to(ct) * x_skip.to(ct)
    g = gate.to(ct)
    return ((torch.sigmoid(g) if act == "sigmoid" else F.silu(g)) * y).to(gate.dtype)


def _check(name: str, h, gate, weight, bias, act, skip, x_skip) -> None:
    if not (isinstance(h, torch.Tensor) and isinstance(gate, torch.Tensor) and h.dim() == 4
            and gate.shape == (*h.shape[:2], h.shape[2] * h.shape[3])):
        raise ValueError(f"{name}: expected h (B, S, NH, DH) and {'o' if name == 'gated_head_norm' else 'gate'} "
                         f"(B, S, NH * DH), got {tuple(getattr(h, 'shape', ()))} and "
                         f"{tuple(getattr(gate, 'shape', ()))}")
    if act not in ACTS:
        raise ValueError(f"{name}: act must be one of {ACTS}, got {act!r}")
    if (skip is None) != (x_skip is None):
        raise ValueError(f"{name}: skip and x_skip go together (both or neither)")
    V = gate.shape[-1]
    for arg, t in (("weight", weight), ("bias", bias), ("skip", skip)):
        check_tensor(f"{name}: {arg}", t, (V,), doc="(NH * DH,)", device=h.device, device_of="h", allow_none=True)
    check_tensor(f"{name}: x_skip", x_skip, tuple(gate.shape), doc="(B, S, NH * DH)", device=h.device,
                 device_of="h", allow_none=True)
    check_tensor(f"{name}: gate", gate, device=h.device, device_of="h")


def head_norm_gate(h: torch.Tensor, gate: torch.Tensor, weight: Optional[torch.Tensor] = None,
                   bias: Optional[torch.Tensor] = None, eps: float = 1e-6, *, act: str,
                   skip: Optional[torch.Tensor] = None, x_skip: Optional[torch.Tensor] = None) -> torch.Tensor:
    """act(gate) * (per-head LayerNorm(h) * weight + bias + skip * x_skip) (module docstring).

    h: (B, S, NH, DH), any strides; gate, x_skip: (B, S, NH * DH); weight, bias, skip:
    (NH * DH,) or None (skip and x_skip both or neither); act: "sigmoid" or "silu". Returns
    (B, S, NH * DH) in gate's dtype; gradients flow to every tensor argument.
    """
    _check("head_norm_gate", h, gate, weight, bias, act, skip, x_skip)
    if not all(use_kernels(t) for t in (h, gate) + ((x_skip,) if x_skip is not None else ())):
        return head_norm_gate_torch(h, gate, weight, bias, eps, act=act, skip=skip, x_skip=x_skip)
    return _head_norm_gate(h, gate, weight, bias, skip, x_skip, float(eps), act == "silu")[0]


def head_norm_gate_forward(h: torch.Tensor, gate: torch.Tensor, weight: Optional[torch.Tensor],
                           bias: Optional[torch.Tensor], eps: float, *, act: str,
                           skip: Optional[torch.Tensor] = None, x_skip: Optional[torch.Tensor] = None,
                           weight_offset: float = 0.0):
    """The forward kernel, no autograd and no checks (for a layer that owns its backward):
    `head_norm_gate`'s arguments, the kernels' devices. Returns y and the float32 row statistics
    mean, rstd (B, S, NH) that `head_norm_gate_backward` reads. `weight_offset`: the norm scales
    by weight + weight_offset (the paper layer's `1 + weight`), added in float32 in the kernel."""
    return _head_norm_gate(h, gate, weight, bias, skip, x_skip, float(eps), act == "silu", float(weight_offset))


def head_norm_gate_backward(h: torch.Tensor, gate: torch.Tensor, weight: Optional[torch.Tensor],
                            bias: Optional[torch.Tensor], mean: torch.Tensor, rstd: torch.Tensor,
                            dy: torch.Tensor, *, act: str, skip: Optional[torch.Tensor] = None,
                            x_skip: Optional[torch.Tensor] = None, d_gate: Optional[torch.Tensor] = None,
                            weight_offset: float = 0.0, h_dot_dh: Optional[torch.Tensor] = None,
                            eps: Optional[float] = None):
    """The backward kernel, no autograd: gradients (dh (B, S, NH, DH), d gate, d x_skip (empty
    without a skip), and the float32 sums (3, NH * DH): d weight, d bias, d skip) of y given dy.
    `d_gate`, if given ((B, S, NH * DH), gate's dtype, unit last stride, rows evenly strided), is
    where d gate goes (e.g. a view of the buffer holding the gradient of gate's producer).
    `h_dot_dh`, if given (contiguous float32 (B, S, NH)), receives sum_d h * dh per row and head,
    which needs the forward's `eps`: the norm makes d h orthogonal to h but for eps's share, and
    the kernel writes that share, eps rstd^2 sum_d(w dn h^), exact, not a dot of the rounded d h
    with h (mostly rounding noise at a small eps). The mLSTM backward's normalizer term reads it
    instead of reading h and dh again."""
    if h_dot_dh is not None and eps is None:
        raise ValueError("head_norm_gate_backward: h_dot_dh needs the forward's eps")
    return _backward_kernels(h, gate, weight, bias, skip, x_skip, mean, rstd, dy, act == "silu", d_gate,
                             float(weight_offset), h_dot_dh, float(eps or 0.0))


def gated_head_norm_torch(h, o, weight=None, bias=None, eps=1e-6):
    """The 7B composition: sigmoid(o) * (per-head LayerNorm(h) * weight + bias), float32 inside."""
    return head_norm_gate_torch(h, o, weight, bias, eps, act="sigmoid")


def gated_head_norm(h: torch.Tensor, o: torch.Tensor, weight: Optional[torch.Tensor] = None,
                    bias: Optional[torch.Tensor] = None, eps: float = 1e-6) -> torch.Tensor:
    """sigmoid(o) * (per-head LayerNorm(h) * weight + bias): `head_norm_gate` with act "sigmoid"
    and no skip. h: (B, S, NH, DH); o: (B, S, NH * DH). Returns (B, S, NH * DH) in o's dtype."""
    _check("gated_head_norm", h, o, weight, bias, "sigmoid", None, None)
    return head_norm_gate(h, o, weight, bias, eps, act="sigmoid")
