"""The public sLSTM ops: input checks, dispatch, and the custom ops over the kernels.

    h = slstm(wx, R, b, initial_state=None, return_last_state=False)   # h (B, T, NH, DH)
    h, state = slstm(..., return_last_state=True)                       # state (4, B, NH, DH)
    h_t, state = slstm_step(wx_t, R, b, state)                          # wx_t (B, 4, NH, DH)

Layout: wx (B, T, 4, NH, DH) gate order (i, f, z, o); R (4, NH, DH_out, DH_in);
b (4, NH, DH); state (4, B, NH, DH) ordered (h, c, n, m). Inputs float32, bfloat16, float16 or
float64 (R and b are cast to wx's dtype); gate math and states in float32 (float64 for float64
inputs); h is returned in wx's dtype and the state in float32 (float64). Gradients for wx, R, b
and the initial (h, c, n); m gets none. B or NH may be 0 (an empty result).

Dispatch: CUDA tensors run the Triton kernels; CPU tensors run them in Triton's interpreter when
TRITON_INTERPRET=1, and the PyTorch path (torch_path.py) otherwise; float64 and empty inputs run
the PyTorch path everywhere. The Triton path is three `torch.library` custom ops (forward,
backward, step) with fake implementations: models using it compile with
`torch.compile(fullgraph=True)`.

Compilation: the kernels compile once per (NH, DH, dtype); batch size and sequence length are
runtime arguments. Heads split over several programs (DH > 128) pick their column block (16, 32 or
64) by how many batch blocks of 16 fit the GPU's SMs, so a much larger batch can add one variant.
Gradients come back in the inputs' dtypes: with float16 inputs a gradient beyond 65504 (e.g. the n
slot of the initial-state gradient where n is tiny) is inf, as float16 rounding of the exact value.
"""

from __future__ import annotations

import contextlib

import torch

from ...checks import check_cu_seqlens, check_tensor, host_offsets
from ...utils import kernel_op, packed_sequence_ids, use_kernels
from .bwd import slstm_bwd
from .bwd_head import slstm_bwd_head
from .fwd import CONFIG_OVERRIDE, SLSTMConfig, pick_config, slstm_fwd
from .fwd_head import slstm_fwd_head_batch_last
from .recompute import slstm_step_coefficients
from .step import slstm_step_fwd
from .torch_path import slstm_step_torch, slstm_torch

__all__ = ["slstm", "slstm_step", "config_override"]


@contextlib.contextmanager
def config_override(**kw):
    """Force the kernels' program decomposition (tests, tuning): bo (columns per program; less
    than DH splits the head), bk (rows of R per chunk when streamed), resident (hold R on chip),
    num_warps, bwd_num_warps, sync (allow the persistent barrier path), fwd_batch_last and
    bwd_batch_last (whole heads: the batch-last forward and backward, fwd_head.py and
    bwd_head.py)."""
    # No keywords: no override (the heuristic decides), not an empty one that forces a whole head.
    token = CONFIG_OVERRIDE.set(dict(kw) if kw else None)
    try:
        yield
    finally:
        CONFIG_OVERRIDE.reset(token)


# ------------------------------------------------------------------------------------------ checks

def _check_common(wx_name, B, NH, DH, wx, R, b, state, state_name, rows="B"):
    dev = dict(device=wx.device, device_of=wx_name)
    check_tensor("R", R, (4, NH, DH, DH), doc=f"(4, NH, DH, DH) from {wx_name}", **dev)
    check_tensor("b", b, (4, NH, DH), doc=f"(4, NH, DH) from {wx_name}", **dev)
    check_tensor(state_name, state, (4, B, NH, DH), doc=f"(4, {rows}, NH, DH), slots (h, c, n, m)",
                 allow_none=state_name == "initial_state", **dev)
    if use_kernels(wx) and DH % 16:
        raise ValueError(f"head size DH = {DH}: the Triton kernels need a multiple of 16 "
                         f"(wx (..., NH, DH), R (4, NH, DH, DH))")


@torch.compiler.assume_constant_result
def _config(NH, DH, B, dtype, device) -> list[int]:
    """The launch config for the custom ops, SLSTMConfig.as_ints(). A constant to torch.compile,
    which guards on the shapes it depends on (an override is read when the graph is traced)."""
    return pick_config(NH, DH, B, dtype, device).as_ints()


def launch_forward(wx, R, b, state0, cfg: SLSTMConfig, save: bool):
    """The forward kernel of `cfg`: h, the last state and, when `save` and the config stores them,
    the steps for the backward (fwd.py's `slstm_fwd`; whole heads with fwd_batch_last: fwd_head.py,
    which stores nothing, as whole heads do not)."""
    if cfg.ncb == 1 and cfg.fwd_batch_last:
        return (*slstm_fwd_head_batch_last(wx, R, b, state0, cfg), None, None)
    return slstm_fwd(wx, R, b, state0, cfg, save=save and cfg.saves_steps)


# ------------------------------------------------------------------------------------ custom ops
# The Triton path as `torch.library` custom ops (forward, backward, step) with fake
# implementations: torch.compile(fullgraph=True) treats them as opaque calls. Inputs as prepared
# by `slstm` / `slstm_step`, with the launch config chosen there (`config`, SLSTMConfig.as_ints()):
# wx with a contiguous last dim, R and b contiguous in wx's dtype, the
# state float32 contiguous. Every output is a fresh contiguous tensor, as the fakes promise.

@kernel_op("xlstm_triton::slstm_fwd")
def _slstm_fwd(wx: torch.Tensor, R: torch.Tensor, b: torch.Tensor, state0: torch.Tensor,
               save: bool, config: list[int]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """h, last state, and (when `save` and the config stores them, `SLSTMConfig.saves_steps`)
    the pre-activations and (c, n, m) of every step for the backward; else those two are empty
    (the backward recomputes them from wx). `config`: SLSTMConfig.as_ints()."""
    h, last, pre, cnm = launch_forward(wx, R, b, state0, SLSTMConfig.from_ints(config), save)
    if pre is None:
        pre, cnm = wx.new_empty(0, dtype=torch.float32), wx.new_empty(0, dtype=torch.float32)
    return h, last, pre, cnm


@_slstm_fwd.register_fake
def _(wx, R, b, state0, save, config):
    B, T, _, NH, DH = wx.shape
    f32 = dict(dtype=torch.float32)
    stored = save and SLSTMConfig.from_ints(config).saves_steps
    return (wx.new_empty(B, T, NH, DH), wx.new_empty(4, B, NH, DH, **f32),
            wx.new_empty((T, 4, B, NH, DH) if stored else (0,), **f32),
            wx.new_empty((T, 3, B, NH, DH) if stored else (0,), **f32))


@kernel_op("xlstm_triton::slstm_bwd")
def _slstm_bwd(dh: torch.Tensor, dlast: torch.Tensor, R: torch.Tensor, h: torch.Tensor,
               state0: torch.Tensor, pre: torch.Tensor, cnm: torch.Tensor, wx: torch.Tensor,
               b: torch.Tensor, config: list[int]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """dwx in h's dtype; dR, db and the initial state's gradient in float32. pre and cnm empty:
    recomputed from wx and b (whole-head configs); else wx and b are empty and unused."""
    cfg = SLSTMConfig.from_ints(config)
    if pre.numel() == 0:
        return slstm_bwd_head(dh, dlast, R, h, state0, slstm_step_coefficients(wx, R, b, h, state0, cfg), cfg)
    return slstm_bwd(dh, dlast, R, h, state0, pre, cnm, cfg)


@_slstm_bwd.register_fake
def _(dh, dlast, R, h, state0, pre, cnm, wx, b, config):
    B, T, NH, DH = h.shape
    f32 = dict(dtype=torch.float32)
    return (h.new_empty(B, T, 4, NH, DH), h.new_empty(4, NH, DH, DH, **f32),
            h.new_empty(4, NH, DH, **f32), h.new_empty(4, B, NH, DH, **f32))


def _setup_context(ctx, inputs, output):
    ctx.set_materialize_grads(False)     # unused outputs send None, not zero tensors
    wx, R, b, state0, save, config = inputs
    h, _, pre, cnm = output
    if pre.numel() == 0:     # the backward recomputes the steps from the inputs
        ctx.save_for_backward(R, h, state0, pre, cnm, wx, b)
    else:
        ctx.save_for_backward(R, h, state0, pre, cnm, pre[:0], pre[:0])
    ctx.config = config          # the forward's config (an override is not seen by the backward)


def _backward(ctx, dh, dlast, dpre, dcnm):
    R, h, state0, pre, cnm, wx, b = ctx.saved_tensors
    dh = torch.zeros_like(h) if dh is None else dh.to(h.dtype).contiguous()
    dlast = torch.zeros_like(state0) if dlast is None else dlast.to(torch.float32).contiguous()
    dwx, dR, db, dstate0 = _slstm_bwd(dh, dlast, R, h, state0, pre, cnm, wx, b, ctx.config)
    return dwx, dR.to(R.dtype), db.to(R.dtype), dstate0, None, None


_slstm_fwd.register_autograd(_backward, setup_context=_setup_context)


@kernel_op("xlstm_triton::slstm_step")
def _slstm_step(wx_t: torch.Tensor, R: torch.Tensor, b: torch.Tensor, state: torch.Tensor,
                config: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return slstm_step_fwd(wx_t, R, b, state, SLSTMConfig.from_ints(config))


@_slstm_step.register_fake
def _(wx_t, R, b, state, config):
    B, _, NH, DH = wx_t.shape
    return wx_t.new_empty(B, NH, DH), wx_t.new_empty(4, B, NH, DH, dtype=torch.float32)


# ------------------------------------------------------------------------------------- public ops

def slstm(wx, R, b, initial_state=None, return_last_state: bool = False, cu_seqlens=None):
    """The sLSTM over a sequence (docs/slstm.md).

    wx (B, T, 4, NH, DH) input pre-activations, gates (i, f, z, o); R (4, NH, DH, DH) recurrent
    weights [gate, head, out, in]; b (4, NH, DH) biases; initial_state (4, B, NH, DH) ordered
    (h, c, n, m), zeros if None. Returns h (B, T, NH, DH) in wx's dtype and, with
    `return_last_state`, the state after the last step (4, B, NH, DH) in float32 (float64
    for float64 inputs).

    Packed sequences: `cu_seqlens` (N + 1,) offsets of N sequences laid end to end along T,
    B = 1 (`checks.check_cu_seqlens`); initial_state and the last state are then (4, N, NH, DH),
    one per sequence. Without the last states the sequences run as one padded batch (exact:
    padding after a sequence's end changes none of its outputs); with them, one call each.
    """
    check_tensor("wx", wx, ndim=5, doc="(B, T, 4, NH, DH)")
    B, T, G, NH, DH = wx.shape
    if G != 4:
        raise ValueError(f"wx: expected shape (B, T, 4, NH, DH) (gates i, f, z, o), got gate dim {G}")
    if T < 1 or DH < 1:
        raise ValueError(f"wx: expected shape (B, T, 4, NH, DH) with T, DH >= 1, got {tuple(wx.shape)}")
    if cu_seqlens is not None:
        N = check_cu_seqlens(cu_seqlens, T, B, wx.device)
        _check_common("wx", N, NH, DH, wx, R, b, initial_state, "initial_state", rows="N")
        return _slstm_packed(wx, R, b, initial_state, return_last_state, cu_seqlens)
    _check_common("wx", B, NH, DH, wx, R, b, initial_state, "initial_state")
    R, b = R.to(wx.dtype), b.to(wx.dtype)
    if not use_kernels(wx):
        h, last = slstm_torch(wx, R, b, initial_state)
    else:
        if wx.stride(-1) != 1:
            wx = wx.contiguous()
        if initial_state is None:
            state0 = torch.zeros(4, B, NH, DH, dtype=torch.float32, device=wx.device)
        else:
            state0 = initial_state.to(torch.float32).contiguous()
        R, b = R.contiguous(), b.contiguous()
        # Inference saves nothing for a backward.
        save = torch.is_grad_enabled() and any(x.requires_grad for x in (wx, R, b, state0))
        h, last, _, _ = _slstm_fwd(wx, R, b, state0, save, _config(NH, DH, B, wx.dtype, wx.device))
    return (h, last) if return_last_state else h


def _slstm_packed(wx, R, b, initial_state, return_last_state, cu_seqlens):
    """`slstm` over packed sequences (its docstring). Without the last states: one call on the
    sequences as a batch, each row padded after its end to the longest (trailing padding
    changes no earlier output, and gets no gradient). With them: one call per sequence; an
    empty sequence's last state is its initial one."""
    bounds = host_offsets(cu_seqlens)
    NH, DH = wx.shape[3], wx.shape[4]
    if not return_last_state:
        return _slstm_padded(wx, R, b, initial_state, cu_seqlens.to(wx.device), bounds)
    state_dtype = torch.float64 if wx.dtype == torch.float64 else torch.float32
    hs, last = [], []
    for n, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        state = None if initial_state is None else initial_state[:, n:n + 1]
        if lo == hi:
            last.append(wx.new_zeros((4, 1, NH, DH), dtype=state_dtype) if state is None else state.to(state_dtype))
            continue
        h, state = slstm(wx[:, lo:hi], R, b, state, return_last_state=True)
        hs.append(h)
        last.append(state)
    h = torch.cat(hs, dim=1)
    return (h, torch.cat(last, dim=1)) if return_last_state else h


def _slstm_padded(wx, R, b, initial_state, cu_seqlens, bounds):
    """h of packed sequences from one batched call: wx (1, T, ...) gathered into (N, L_max, ...)
    rows (positions past a row's end masked to 0), h gathered back to (1, T, NH, DH)."""
    T = wx.shape[1]
    longest = max(hi - lo for lo, hi in zip(bounds, bounds[1:]))
    cu = cu_seqlens.to(torch.long)
    steps = torch.arange(longest, device=wx.device)
    valid = steps[None] < (cu[1:] - cu[:-1])[:, None]                           # (N, L_max)
    rows = torch.where(valid, cu[:-1, None] + steps[None], 0)
    padded = torch.where(valid[..., None, None, None], wx[0][rows], 0.0)      # (N, L_max, 4, NH, DH)
    h = slstm(padded, R, b, initial_state)                                      # (N, L_max, NH, DH)
    seq = packed_sequence_ids(cu_seqlens, T).long()
    flat = seq * longest + (torch.arange(T, device=wx.device) - cu[:-1][seq])
    return h.flatten(0, 1)[flat][None]


def slstm_step(wx_t, R, b, state):
    """One step for decoding: wx_t (B, 4, NH, DH), state (4, B, NH, DH) (h, c, n, m).
    Returns h_t (B, NH, DH) in wx_t's dtype and the new state (4, B, NH, DH) float32 (float64
    for float64 inputs).

    Without gradients (inference) on CUDA it is one kernel launch with no host synchronization,
    usable inside a CUDA graph. When a gradient is needed it runs `slstm` over one step."""
    check_tensor("wx_t", wx_t, ndim=4, doc="(B, 4, NH, DH)")
    B, G, NH, DH = wx_t.shape
    if G != 4:
        raise ValueError(f"wx_t: expected shape (B, 4, NH, DH) (gates i, f, z, o), got gate dim {G}")
    if state is None:
        raise ValueError(f"state: expected a tensor of shape (4, B, NH, DH) = (4, {B}, {NH}, {DH}), "
                         f"got None")
    _check_common("wx_t", B, NH, DH, wx_t, R, b, state, "state")
    if torch.is_grad_enabled() and any(x.requires_grad for x in (wx_t, R, b, state)):
        h, new_state = slstm(wx_t.unsqueeze(1), R, b, state, return_last_state=True)
        return h[:, 0], new_state
    R, b = R.to(wx_t.dtype), b.to(wx_t.dtype)
    if not use_kernels(wx_t):
        return slstm_step_torch(wx_t, R, b, state)
    if wx_t.stride(-1) != 1:
        wx_t = wx_t.contiguous()
    return _slstm_step(wx_t, R.contiguous(), b.contiguous(), state.to(torch.float32).contiguous(),
                       _config(NH, DH, B, wx_t.dtype, wx_t.device))
