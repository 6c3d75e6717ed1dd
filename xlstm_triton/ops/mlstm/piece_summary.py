"""The state a piece of a sequence leaves from a zero state, without running the piece (context
parallelism's step 1, `context_parallel.py`).

From a zero state the recurrence unrolls to one weighted sum,

    C = sum_t w_t k_t v_t^T,  n = sum_t w_t k_t,   w_t = exp(a_t - m),  m = max_t a_t,
    a_t = i_t + sum_{s > t} log sigmoid(f_s)          (gates soft-capped as the op does),

one (DQK, S) by (S, DV) product per head. With it come F = sum_s log sigmoid(f_s) (the piece's
log decay, what the fold needs) and, in the backward, dk_t = w_t (dC v_t + dn),
dv_t = w_t dC^T k_t and da_t = w_t (k_t . (dC v_t + dn)): di_t = da_t (through the cap), and the
log forget gate of step s gets dF plus the sum of da_t over t < s. m is a stabilizer and gets no
gradient.

The gate chain (cap, floored log sigmoid, the suffix sums, the max, the exponent; in the
backward the prefix sums) is one Triton kernel each way where the kernels run, one program per
(b, head) row walking the piece in blocks, its sums in float64 as the op's gate kernels keep
them (`gates.py`); in PyTorch it was ~20 small ops forward and ~45 backward per layer, and a
two-GPU step of xLSTMLarge was host-bound on them. `piece_weights_torch` is the PyTorch
spelling: the CPU path and the kernels' test oracle.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...launch import cached_launch
from ...utils import maximum_nan, minimum_nan, next_power_of_2, soft_cap, soft_cap_jit, use_kernels
from .gates import LOGF_FLOOR, floored_logsigmoid

BLOCK = 1024


def piece_weights_torch(i: torch.Tensor, f: torch.Tensor, cap, dtype: torch.dtype):
    """(w (B, NH, S), m (B, NH, 1), F (B, NH)) in `dtype`, differentiable in i and f (autograd)."""
    ic, fc = soft_cap(i.to(dtype), cap), soft_cap(f.to(dtype), cap)
    logf = floored_logsigmoid(fc)
    # log f of the later steps: the suffix sums, summed from the end (the whole sum minus the
    # prefix sums cancels: at 2,000 steps in float32 100x the op's error, growing with S)
    later = logf.flip(-1).cumsum(-1).flip(-1)                          # log f from step t on
    a = ic + torch.cat([later[..., 1:], torch.zeros_like(later[..., :1])], -1)
    m = a.amax(-1, keepdim=True).detach()                              # a stabilizer: no gradient
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))          # all gates closed: zeros
    return torch.exp(a - m), m, later[..., 0]


@triton.jit
def _capped_gates(i_ptr, f_ptr, pos, real, cap, SOFT_CAP: tl.constexpr):
    """i and f at `pos` of a row in float64, capped; log sigmoid(f) floored (0 off the row)."""
    ig = tl.load(i_ptr + pos, mask=real, other=float("-inf")).to(tl.float64)
    fg = tl.load(f_ptr + pos, mask=real, other=0.0).to(tl.float64)
    if SOFT_CAP:
        ig = tl.where(real, soft_cap_jit(ig, cap), ig)
        fg = soft_cap_jit(fg, cap)
    logsig = minimum_nan(fg, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(fg)))
    logf = tl.where(real, maximum_nan(logsig, -1000.0), 0.0)             # -1000.0 = LOGF_FLOOR
    return ig, fg, logsig, logf


@cached_launch
@triton.jit
def piece_weights_fwd_kernel(i_ptr, f_ptr, a_ptr, w_ptr, m_ptr, F_ptr, S, cap, SOFT_CAP: tl.constexpr,
                             BLOCK: tl.constexpr):
    """One row (b, head) of contiguous (rows, S) gates: a_t (float64 scratch) walking from the
    end with the suffix sum carried, the max m; then w_t = exp(a_t - m); F = the whole sum."""
    row = tl.program_id(0).to(tl.int64)
    i_ptr += row * S
    f_ptr += row * S
    a_ptr += row * S
    w_ptr += row * S
    later = tl.zeros((), dtype=tl.float64)       # sum of log f after the current block
    m = tl.full((), float("-inf"), tl.float64)
    for start in range(0, S, BLOCK):
        pos = S - 1 - start - tl.arange(0, BLOCK)                   # this block, from its end
        real = pos >= 0
        ig, _, _, logf = _capped_gates(i_ptr, f_ptr, pos, real, cap, SOFT_CAP)
        incl = tl.cumsum(logf, axis=0)                              # log f from pos to the block's end
        a = ig + (later + (incl - logf))
        tl.store(a_ptr + pos, a, mask=real)
        m = maximum_nan(m, tl.reduce(tl.where(real, a, float("-inf")), 0, maximum_nan))
        later += tl.sum(logf, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)                        # all gates closed: zeros
    tl.store(m_ptr + row, m.to(tl.float32))
    tl.store(F_ptr + row, later.to(tl.float32))
    for start in range(0, S, BLOCK):
        pos = start + tl.arange(0, BLOCK)
        real = pos < S
        a = tl.load(a_ptr + pos, mask=real, other=float("-inf"))
        tl.store(w_ptr + pos, tl.exp(a - m).to(tl.float32), mask=real)


@cached_launch
@triton.jit
def piece_weights_bwd_kernel(i_ptr, f_ptr, w_ptr, dw_ptr, dF_ptr, di_ptr, df_ptr, S, cap,
                             SOFT_CAP: tl.constexpr, BLOCK: tl.constexpr):
    """One row: da_t = dw_t w_t, di_t = da_t (through the cap), and d log f_s = dF + sum_{t<s}
    da_t (the prefix sum carried in float64) through the floor, the log sigmoid and the cap."""
    row = tl.program_id(0).to(tl.int64)
    i_ptr += row * S
    f_ptr += row * S
    w_ptr += row * S
    dw_ptr += row * S
    di_ptr += row * S
    df_ptr += row * S
    before = tl.load(dF_ptr + row).to(tl.float64)          # dF + sum of da before the block
    for start in range(0, S, BLOCK):
        pos = start + tl.arange(0, BLOCK)
        real = pos < S
        ig, fg, logsig, _ = _capped_gates(i_ptr, f_ptr, pos, real, cap, SOFT_CAP)
        da = (tl.load(dw_ptr + pos, mask=real, other=0.0).to(tl.float64)
              * tl.load(w_ptr + pos, mask=real, other=0.0).to(tl.float64))
        incl = tl.cumsum(da, axis=0)
        dlogf = before + (incl - da)
        dfg = tl.where(logsig >= -1000.0, dlogf / (1.0 + tl.exp(fg)), 0.0)   # sigmoid(-f); floored: none
        di = da
        if SOFT_CAP:
            ig = tl.where(real, ig, 0.0)                                # off the row: -inf
            di = di * (1.0 - (ig / cap) * (ig / cap))
            dfg = dfg * (1.0 - (fg / cap) * (fg / cap))
        tl.store(di_ptr + pos, di.to(tl.float32), mask=real)
        tl.store(df_ptr + pos, dfg.to(tl.float32), mask=real)
        before += tl.sum(da, axis=0)


def _launch_block(S: int) -> int:
    return min(BLOCK, max(16, next_power_of_2(S)))


def piece_weights_triton(i: torch.Tensor, f: torch.Tensor, cap):
    """The kernels' (w, m, F) in float32, no autograd (see `_PieceSummary.backward`)."""
    B, NH, S = i.shape
    i, f = i.contiguous(), f.contiguous()
    rows = B * NH
    a = torch.empty(rows, S, dtype=torch.float64, device=i.device)
    w = torch.empty(B, NH, S, dtype=torch.float32, device=i.device)
    m = torch.empty(B, NH, 1, dtype=torch.float32, device=i.device)
    F = torch.empty(B, NH, dtype=torch.float32, device=i.device)
    piece_weights_fwd_kernel[(rows,)](i, f, a, w, m, F, S, 1.0 if cap is None else float(cap),
                                      SOFT_CAP=cap is not None, BLOCK=_launch_block(S))
    return w, m, F


def piece_weights_backward_triton(i, f, w, dw, dF, cap):
    """d i, d f (the gates' dtypes) from dw (B, NH, S) and dF (B, NH) float32."""
    B, NH, S = i.shape
    i, f = i.contiguous(), f.contiguous()
    di = torch.empty(B, NH, S, dtype=torch.float32, device=i.device)
    df = torch.empty_like(di)
    piece_weights_bwd_kernel[(B * NH,)](i, f, w, dw.contiguous(), dF.contiguous(), di, df, S,
                                        1.0 if cap is None else float(cap), SOFT_CAP=cap is not None,
                                        BLOCK=_launch_block(S))
    return di.to(i.dtype), df.to(f.dtype)


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched a @ b with float32 (float64) accumulation and output: 16-bit operands stay 16-bit
    on the GPU's tensor cores where this build has `out_dtype`, else go through float32."""
    if a.dtype in (torch.float32, torch.float64):
        return a @ b
    if a.is_cuda:
        try:
            shape = a.shape[:-2]
            out = torch.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]), out_dtype=torch.float32)
            return out.reshape(*shape, *out.shape[-2:])
        except (RuntimeError, TypeError):
            pass
    return a.float() @ b.float()


def _weighted(x: torch.Tensor, w: torch.Tensor, dtype=None) -> torch.Tensor:
    """x * w[..., None] in `dtype` (default x's), multiplied in float32 (one kernel)."""
    return torch.mul(x, w[..., None], out=torch.empty(x.shape, dtype=dtype or x.dtype, device=x.device))


class PieceSummary(torch.autograd.Function):
    """(c, n, m, F) of a piece from a zero state (module docstring): k, v, i, f (B, NH, S, ...)
    as the op takes them; c (B, NH, DQK, DV), n (B, NH, DQK), m (B, NH, 1), F (B, NH) in float32
    (float64 for float64 inputs). Differentiable in k, v, i, f through c, n and F."""

    @staticmethod
    def forward(ctx, k, v, i, f, cap):
        kernels = use_kernels(k)
        if kernels:
            w, m, F = piece_weights_triton(i, f, cap)
            kw = _weighted(k, w)
            c = _mm(kw.transpose(-1, -2), v)                            # (B, NH, DQK, DV)
            n = kw.sum(-2, dtype=torch.float32)                         # (B, NH, DQK)
        else:
            sdt = torch.float64 if k.dtype == torch.float64 else torch.float32
            w, m, F = piece_weights_torch(i, f, cap, sdt)
            kw = w[..., None] * k.to(sdt)
            c, n = _mm(kw.to(k.dtype).transpose(-1, -2), v), kw.sum(-2)
        ctx.save_for_backward(k, v, i, f, w)
        ctx.cap, ctx.kernels = cap, kernels
        return c, n, m, F

    @staticmethod
    def backward(ctx, dc, dn, dm, dF):
        k, v, i, f, w = ctx.saved_tensors
        B, NH, S, DQK = k.shape
        sdt = torch.float64 if k.dtype == torch.float64 else torch.float32
        dc = torch.zeros(B, NH, DQK, v.shape[-1], dtype=sdt, device=k.device) if dc is None else dc
        dn = torch.zeros(B, NH, DQK, dtype=sdt, device=k.device) if dn is None else dn
        dF = torch.zeros(B, NH, dtype=sdt, device=k.device) if dF is None else dF
        # q_t = dC v_t + dn: dk_t = w_t q_t, da_t = w_t (k_t . q_t), dv_t = w_t dC^T k_t
        qt = _mm(v, dc.transpose(-1, -2).to(v.dtype))                  # (B, NH, S, DQK), float32
        qt += dn.to(qt.dtype)[..., None, :]
        dk = _weighted(qt, w, k.dtype)
        dw = (qt.mul_(k)).sum(-1)                                       # (B, NH, S)
        dv = _mm(_weighted(k, w), dc.to(k.dtype)).to(v.dtype)
        if ctx.kernels:
            di, df = piece_weights_backward_triton(i, f, w, dw, dF.float(), ctx.cap)
        else:
            with torch.enable_grad():       # the gates' chain by autograd
                i_, f_ = i.detach().requires_grad_(), f.detach().requires_grad_()
                w_, _, F_ = piece_weights_torch(i_, f_, ctx.cap, sdt)
            di, df = torch.autograd.grad((w_, F_), (i_, f_), (dw.to(sdt), dF.to(sdt)))
            di, df = di.to(i.dtype), df.to(f.dtype)
        return dk, dv, di, df, None


__all__ = ["PieceSummary", "piece_weights_torch", "piece_weights_triton", "piece_weights_backward_triton",
           "LOGF_FLOOR"]
