"""The public sLSTM ops: input checks, dispatch, and the autograd function over the kernels.

    h = slstm(wx, R, b, initial_state=None, return_last_state=False)   # h (B, T, NH, DH)
    h, state = slstm(..., return_last_state=True)                       # state (4, B, NH, DH)
    h_t, state = slstm_step(wx_t, R, b, state)                          # wx_t (B, 4, NH, DH)

Layout (SPEC.md section 2): wx (B, T, 4, NH, DH) gate order (i, f, z, o); R (4, NH, DH_out, DH_in);
b (4, NH, DH); state (4, B, NH, DH) ordered (h, c, n, m). Inputs float32, bfloat16 or float16 (R
and b are cast to wx's dtype); gate math and states in float32; h is returned in wx's dtype and
the state in float32. Gradients for wx, R, b and the initial (h, c, n); m gets none.

Dispatch: CUDA tensors run the Triton kernels; CPU tensors run them in Triton's interpreter when
TRITON_INTERPRET=1, and the PyTorch path (torch_path.py) otherwise.

Compilation: the kernels compile once per (NH, DH, dtype); batch size and sequence length are
runtime arguments. Heads split over several programs (DH > 128) pick their column block (16, 32 or
64) by how many batch blocks of 16 fit the GPU's SMs, so a much larger batch can add one variant.
Gradients come back in the inputs' dtypes: with float16 inputs a gradient beyond 65504 (e.g. the n
slot of the initial-state gradient where n is tiny) is inf, as float16 rounding of the exact value.
"""

from __future__ import annotations

import contextlib

import torch

from ..utils import use_triton
from . import fwd as _fwd
from .bwd import slstm_bwd
from .fwd import pick_config, slstm_fwd
from .step import slstm_step_fwd
from .torch_path import slstm_step_torch, slstm_torch

__all__ = ["slstm", "slstm_step", "config_override"]

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@contextlib.contextmanager
def config_override(**kw):
    """Force the kernels' program decomposition (tests, tuning): bo (columns per program; less
    than DH splits the head), bk (rows of R per chunk when streamed), resident (hold R on chip),
    num_warps, bwd_num_warps, sync (allow the persistent barrier path)."""
    # No keywords: no override (the heuristic decides), not an empty one that forces a whole head.
    old, _fwd._CONFIG_OVERRIDE = _fwd._CONFIG_OVERRIDE, (dict(kw) if kw else None)
    try:
        yield
    finally:
        _fwd._CONFIG_OVERRIDE = old


# ------------------------------------------------------------------------------------------ checks

def _check_tensor(name, x, ndim, shape_doc):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape_doc}, got {type(x).__name__}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape_doc}, got {tuple(x.shape)}")


def _check_common(wx_name, B, NH, DH, wx, R, b, state, state_name):
    _check_tensor("R", R, 4, f"(4, NH, DH, DH) = (4, {NH}, {DH}, {DH})")
    if tuple(R.shape) != (4, NH, DH, DH):
        raise ValueError(f"R must have shape (4, NH, DH, DH) = (4, {NH}, {DH}, {DH}) to match "
                         f"{wx_name}, got {tuple(R.shape)}")
    _check_tensor("b", b, 3, f"(4, NH, DH) = (4, {NH}, {DH})")
    if tuple(b.shape) != (4, NH, DH):
        raise ValueError(f"b must have shape (4, NH, DH) = (4, {NH}, {DH}) to match {wx_name}, "
                         f"got {tuple(b.shape)}")
    tensors = [("R", R), ("b", b)]
    if state is not None:
        _check_tensor(state_name, state, 4, f"(4, B, NH, DH) = (4, {B}, {NH}, {DH})")
        if tuple(state.shape) != (4, B, NH, DH):
            raise ValueError(f"{state_name} must have shape (4, B, NH, DH) = (4, {B}, {NH}, {DH}) "
                             f"(h, c, n, m), got {tuple(state.shape)}")
        tensors.append((state_name, state))
    for name, x in tensors:
        if x.device != wx.device:
            raise ValueError(f"{name} is on {x.device} but {wx_name} is on {wx.device}: all "
                             f"tensors must be on the same device")
    if use_triton(wx) and DH % 16:
        raise ValueError(f"head size DH = {DH}: the Triton kernels need a multiple of 16 "
                         f"(wx (..., NH, DH), R (4, NH, DH, DH))")


# ------------------------------------------------------------------------------ autograd function

class SLSTMFunction(torch.autograd.Function):
    """Triton forward and backward. Inputs as prepared by `slstm`: wx (last dim contiguous), R and
    b contiguous in wx's dtype, state0 float32 contiguous. Outputs h and the last state."""

    @staticmethod
    def forward(ctx, wx, R, b, state0):
        B, T, _, NH, DH = wx.shape
        cfg = pick_config(NH, DH, B, wx.dtype, wx.device)
        save = any(ctx.needs_input_grad)
        h, last, pre, cnm = slstm_fwd(wx, R, b, state0, cfg, save=save)
        if save:
            ctx.save_for_backward(R, h, state0, pre, cnm)
            ctx.cfg = cfg
        return h, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh, dlast):
        R, h, state0, pre, cnm = ctx.saved_tensors
        dh = torch.zeros_like(h) if dh is None else dh.to(h.dtype).contiguous()
        dlast = torch.zeros_like(state0) if dlast is None else dlast.to(torch.float32).contiguous()
        dwx, dR, db, dstate0 = slstm_bwd(dh, dlast, R, h, state0, pre, cnm, ctx.cfg)
        return dwx, dR.to(R.dtype), db.to(R.dtype), dstate0


# ------------------------------------------------------------------------------------- public ops

def slstm(wx, R, b, initial_state=None, return_last_state: bool = False):
    """The sLSTM over a sequence (SPEC.md section 2).

    wx (B, T, 4, NH, DH) input pre-activations, gates (i, f, z, o); R (4, NH, DH, DH) recurrent
    weights [gate, head, out, in]; b (4, NH, DH) biases; initial_state (4, B, NH, DH) ordered
    (h, c, n, m), zeros if None. Returns h (B, T, NH, DH) in wx's dtype and, with
    `return_last_state`, the state after the last step (4, B, NH, DH) in float32.
    """
    _check_tensor("wx", wx, 5, "(B, T, 4, NH, DH)")
    B, T, G, NH, DH = wx.shape
    if G != 4:
        raise ValueError(f"wx must have shape (B, T, 4, NH, DH) (gates i, f, z, o), got gate dim {G}")
    if B < 1 or T < 1 or NH < 1 or DH < 1:
        raise ValueError(f"wx must have shape (B, T, 4, NH, DH) with every size >= 1, got {tuple(wx.shape)}")
    _check_common("wx", B, NH, DH, wx, R, b, initial_state, "initial_state")
    R, b = R.to(wx.dtype), b.to(wx.dtype)
    if not use_triton(wx):
        h, last = slstm_torch(wx, R, b, initial_state)
    else:
        if wx.stride(-1) != 1:
            wx = wx.contiguous()
        if initial_state is None:
            state0 = torch.zeros(4, B, NH, DH, dtype=torch.float32, device=wx.device)
        else:
            state0 = initial_state.to(torch.float32).contiguous()
        R, b = R.contiguous(), b.contiguous()
        if torch.is_grad_enabled() and any(x.requires_grad for x in (wx, R, b, state0)):
            h, last = SLSTMFunction.apply(wx, R, b, state0)
        else:  # inference: nothing saved for a backward
            cfg = pick_config(NH, DH, B, wx.dtype, wx.device)
            h, last, _, _ = slstm_fwd(wx, R, b, state0, cfg, save=False)
    return (h, last) if return_last_state else h


def slstm_step(wx_t, R, b, state):
    """One step for decoding: wx_t (B, 4, NH, DH), state (4, B, NH, DH) (h, c, n, m).
    Returns h_t (B, NH, DH) in wx_t's dtype and the new state (4, B, NH, DH) float32.

    Without gradients (inference) on CUDA it is one kernel launch with no host synchronization,
    usable inside a CUDA graph. When a gradient is needed it runs `slstm` over one step."""
    _check_tensor("wx_t", wx_t, 4, "(B, 4, NH, DH)")
    B, G, NH, DH = wx_t.shape
    if G != 4:
        raise ValueError(f"wx_t must have shape (B, 4, NH, DH) (gates i, f, z, o), got gate dim {G}")
    if state is None:
        raise ValueError(f"state must be a tensor of shape (4, B, NH, DH) = (4, {B}, {NH}, {DH})")
    _check_common("wx_t", B, NH, DH, wx_t, R, b, state, "state")
    if torch.is_grad_enabled() and any(x.requires_grad for x in (wx_t, R, b, state)):
        h, new_state = slstm(wx_t.unsqueeze(1), R, b, state, return_last_state=True)
        return h[:, 0], new_state
    R, b = R.to(wx_t.dtype), b.to(wx_t.dtype)
    if not use_triton(wx_t):
        return slstm_step_torch(wx_t, R, b, state)
    if wx_t.stride(-1) != 1:
        wx_t = wx_t.contiguous()
    cfg = pick_config(NH, DH, B, wx_t.dtype, wx_t.device)
    return slstm_step_fwd(wx_t, R.contiguous(), b.contiguous(),
                          state.to(torch.float32).contiguous(), cfg)
