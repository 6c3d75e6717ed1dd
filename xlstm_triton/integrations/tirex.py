"""Run TiRex (NX-AI's time-series forecasting model, `pip install tirex-ts`) on xlstm-triton's
sLSTM op, in place.

    from tirex import load_model
    from xlstm_triton.integrations.tirex import use_xlstm_triton
    model = use_xlstm_triton(load_model("NX-AI/TiRex", device="cuda", backend="torch"))
    quantiles, mean = model.forecast(context, prediction_length=64)     # TiRex's API, our kernel

The seam. TiRex is a stack of sLSTM blocks; each block's layer computes the gate
pre-activations (four headwise projections) and hands them to an `sLSTMCell` module:

    y, state = cell(x, state)      # x (B, S, 4 * E): gates (i, f, z, o), each (NH, DH) head-major
                                   # state (4, B, E) (h, c, n, m) or None; y (B, NH, S, DH)

Its own backends run the recurrence as a Python loop over the steps in bfloat16 ("torch") or
through the `xlstm` package's CUDA kernel, compiled with nvcc at first use ("cuda").
`use_xlstm_triton` replaces each cell's forward with `TritonSLSTMCellForward`, which runs the
whole sequence as one `slstm` call (one kernel on a GPU; the Triton interpreter or PyTorch on
a CPU) in float32 (the input's dtype where that is wider). The cell's parameters are read as
they are at each call: TiRex's recurrent kernel (NH, DH_in, 4 * DH_out), gate-major per head,
and bias (NH * 4 * DH) are the `slstm` layouts R (4, NH, DH_out, DH_in) and b (4, NH, DH)
seen through a permutation. Weights, the state dict, the device and the forecast API stay
TiRex's own; `remove_xlstm_triton` puts the cells' own forwards back. This module imports
nothing from tirex: it finds the cells by their parameters.

The equations are the same as TiRex's: its fresh-state rule (m = i~ while n is all zero) is the
op's, applied per element; it clips the forget pre-activation at 15 (changing log sigmoid by at
most 3e-7) and, in its torch backend, rounds the states to bfloat16 at every step, which the op
does not.
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops.slstm import slstm

__all__ = ["use_xlstm_triton", "remove_xlstm_triton", "TritonSLSTMCellForward", "tirex_cells"]


def tirex_cells(model: nn.Module) -> list[nn.Module]:
    """TiRex's sLSTM cells in `model`: modules with a recurrent kernel `_recurrent_kernel_`
    (NH, DH, 4 * DH), a bias `_bias_` (NH * 4 * DH) and a `config` with `num_heads`."""
    cells = []
    for m in model.modules():
        R, b = getattr(m, "_recurrent_kernel_", None), getattr(m, "_bias_", None)
        NH = getattr(getattr(m, "config", None), "num_heads", None)
        if isinstance(R, torch.Tensor) and isinstance(b, torch.Tensor) and isinstance(NH, int):
            if R.dim() != 3 or R.shape[0] != NH or R.shape[2] != 4 * R.shape[1] or b.numel() != R.shape[2] * NH:
                raise ValueError(f"{type(m).__name__}: expected _recurrent_kernel_ (NH, DH, 4 * DH) and _bias_ "
                                 f"(NH * 4 * DH) with NH = {NH}, got {tuple(R.shape)} and {tuple(b.shape)}")
            cells.append(m)
    return cells


def recurrent_from_tirex(R: torch.Tensor) -> torch.Tensor:
    """TiRex's recurrent kernel (NH, DH_in, 4 * DH_out) as the op's R (4, NH, DH_out, DH_in)."""
    NH, DH = R.shape[0], R.shape[1]
    return R.view(NH, DH, 4, DH).permute(2, 0, 3, 1)


def bias_from_tirex(b: torch.Tensor, NH: int) -> torch.Tensor:
    """TiRex's bias (NH * 4 * DH), gate-major per head, as the op's b (4, NH, DH)."""
    return b.view(NH, 4, -1).permute(1, 0, 2)


class TritonSLSTMCellForward:
    """Stands in for a TiRex `sLSTMCell.forward(x, state) -> (y, state)`:
    x (B, S, 4 * E) gate pre-activations, state (4, B, E) or None (zeros); returns y
    (B, NH, S, DH) and the last state (4, B, E), both in x's dtype, as TiRex's cell does."""

    def __init__(self, cell: nn.Module):
        self.cell = cell

    def __call__(self, x: torch.Tensor, state: torch.Tensor | None = None):
        cell = self.cell
        NH = cell.config.num_heads
        DH = cell._recurrent_kernel_.shape[1]
        E = NH * DH
        if x.dim() != 3 or x.shape[-1] != 4 * E:
            raise ValueError(f"x: expected shape (B, S, 4 * E) = (B, S, {4 * E}), got {tuple(x.shape)}")
        B, S = x.shape[0], x.shape[1]
        if state is not None and tuple(state.shape) != (4, B, E):
            raise ValueError(f"state: expected shape (4, B, E) = (4, {B}, {E}), got {tuple(state.shape)}")
        dtype = torch.promote_types(x.dtype, torch.float32)
        wx = x.to(dtype).view(B, S, 4, NH, DH)
        R = recurrent_from_tirex(cell._recurrent_kernel_).to(dtype)
        b = bias_from_tirex(cell._bias_, NH).to(dtype)
        state0 = None if state is None else state.to(dtype).view(4, B, NH, DH)
        h, last = slstm(wx, R, b, state0, return_last_state=True)
        return h.transpose(1, 2).to(x.dtype), last.reshape(4, B, E).to(x.dtype)


def use_xlstm_triton(model: nn.Module) -> nn.Module:
    """Make a TiRex model (`tirex.load_model(...)`, or any module holding its sLSTM cells) run
    its sLSTM cells on xlstm-triton's `slstm`, in place (module docstring). Returns `model`.
    Raises ValueError if it has no such cells."""
    cells = tirex_cells(model)
    if not cells:
        raise ValueError(f"use_xlstm_triton: {type(model).__name__} has no TiRex sLSTM cells (modules with "
                         "_recurrent_kernel_, _bias_ and config.num_heads)")
    for cell in cells:
        cell.forward = TritonSLSTMCellForward(cell)
    return model


def remove_xlstm_triton(model: nn.Module) -> nn.Module:
    """Undo `use_xlstm_triton`: the cells' own forwards again. Returns `model`."""
    for cell in tirex_cells(model):
        if isinstance(cell.__dict__.get("forward"), TritonSLSTMCellForward):
            del cell.__dict__["forward"]
    return model
