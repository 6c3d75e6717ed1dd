"""Converters between our sLSTM parameter layout and the `xlstm` package's (docs/slstm.md).

Ours (FlashRNN's): R (4, NH, DH_out, DH_in), b (4, NH, DH), gate order (i, f, z, o).
`xlstm` sLSTM cell parameters `_recurrent_kernel_` and `_bias_`, by backend:
    "cuda":    kernel (NH, DH_in, 4 * DH_out), bias flat head-major (NH, 4, DH)
    "vanilla": kernel (NH, 4 * DH_out, DH_in), bias flat gate-major (4, NH, DH)
Inside 4 * DH_out the gates are gate-major: column g * DH_out + d is gate g, output d.
The two bias layouts have the same size: the layout cannot be told from the tensor, so it must be
named; loading one as the other scrambles the gates silently. The recurrent kernels differ in
shape, and a wrong layout is refused. Slots are kept as stored: in the `xlstm` sLSTM layer the
module named `fgate` feeds the input-gate slot, `igate` the forget-gate slot.
All converters return new tensors (contiguous) and never modify their input.
"""

from __future__ import annotations

import torch

__all__ = ["recurrent_from_xlstm", "recurrent_to_xlstm", "bias_from_xlstm", "bias_to_xlstm"]

_LAYOUTS = ("cuda", "vanilla")


def _check_layout(layout):
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be 'cuda' or 'vanilla', got {layout!r}")


def recurrent_from_xlstm(kernel: torch.Tensor, layout: str = "cuda") -> torch.Tensor:
    """`_recurrent_kernel_` of the `xlstm` package -> R (4, NH, DH_out, DH_in)."""
    _check_layout(layout)
    if kernel.ndim != 3:
        raise ValueError(f"kernel must have 3 dims, got shape {tuple(kernel.shape)}")
    if layout == "cuda":
        NH, DH, G = kernel.shape
        if G != 4 * DH:
            raise ValueError(f"cuda layout kernel must be (NH, DH, 4 * DH), got {tuple(kernel.shape)}")
        return kernel.reshape(NH, DH, 4, DH).permute(2, 0, 3, 1).contiguous()
    NH, G, DH = kernel.shape
    if G != 4 * DH:
        raise ValueError(f"vanilla layout kernel must be (NH, 4 * DH, DH), got {tuple(kernel.shape)}")
    return kernel.reshape(NH, 4, DH, DH).permute(1, 0, 2, 3).contiguous()


def recurrent_to_xlstm(R: torch.Tensor, layout: str = "cuda") -> torch.Tensor:
    """R (4, NH, DH_out, DH_in) -> `_recurrent_kernel_` of the `xlstm` package."""
    _check_layout(layout)
    if R.ndim != 4 or R.shape[0] != 4 or R.shape[2] != R.shape[3]:
        raise ValueError(f"R must be (4, NH, DH, DH), got {tuple(R.shape)}")
    _, NH, DH, _ = R.shape
    if layout == "cuda":
        return R.permute(1, 3, 0, 2).reshape(NH, DH, 4 * DH).contiguous()
    return R.permute(1, 0, 2, 3).reshape(NH, 4 * DH, DH).contiguous()


def bias_from_xlstm(bias: torch.Tensor, num_heads: int, layout: str = "cuda") -> torch.Tensor:
    """`_bias_` of the `xlstm` package (flat, 4 * NH * DH elements) -> b (4, NH, DH)."""
    _check_layout(layout)
    if bias.numel() % (4 * num_heads):
        raise ValueError(f"bias has {bias.numel()} elements, not a multiple of 4 * num_heads = {4 * num_heads}")
    DH = bias.numel() // (4 * num_heads)
    if layout == "cuda":
        return bias.reshape(num_heads, 4, DH).permute(1, 0, 2).contiguous()
    return bias.reshape(4, num_heads, DH).clone()


def bias_to_xlstm(b: torch.Tensor, layout: str = "cuda") -> torch.Tensor:
    """b (4, NH, DH) -> flat `_bias_` of the `xlstm` package."""
    _check_layout(layout)
    if b.ndim != 3 or b.shape[0] != 4:
        raise ValueError(f"b must be (4, NH, DH), got {tuple(b.shape)}")
    if layout == "cuda":
        return b.permute(1, 0, 2).reshape(-1).contiguous()
    return b.reshape(-1).clone()
