"""Checkpoints of the `xlstm` package -> state dicts these modules load.

All parameter names and shapes are the `xlstm` package's, and the sLSTM cell's parameters are
stored in the layout of its `cuda` backend, so a checkpoint saved with that backend loads with a
plain `load_state_dict`. Only the sLSTM cell's two parameters depend on the backend:

    `..slstm_cell._recurrent_kernel_`  cuda (NH, DH_in, 4 * DH_out)   vanilla (NH, 4 * DH_out, DH_in)
    `..slstm_cell._bias_`              cuda flat (NH, 4, DH)          vanilla flat (4, NH, DH)

The two bias layouts have the same size, so the layout cannot be read off a checkpoint: name it.
Loading a vanilla checkpoint without conversion fails with a message pointing here (the kernel
shapes differ); a wrong `slstm_layout` given here is refused for the same reason.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import torch

from ...ops.slstm import bias_from_xlstm, bias_to_xlstm, recurrent_from_xlstm, recurrent_to_xlstm

__all__ = ["convert_xlstm_state_dict"]

_KERNEL = "slstm_cell._recurrent_kernel_"
_BIAS = "slstm_cell._bias_"


def convert_xlstm_state_dict(state_dict: Mapping[str, torch.Tensor], slstm_layout: str = "vanilla"
                             ) -> "OrderedDict[str, torch.Tensor]":
    """Return a new state dict for `xlstm_triton.nn` modules from one of the `xlstm` package's
    modules (LM model, block stack, block or layer), saved with sLSTM backend `slstm_layout`
    ("vanilla" or "cuda"). sLSTM cell parameters are re-laid out (vanilla) or checked (cuda);
    every other entry is passed through unchanged. The input is not modified.
    """
    if slstm_layout not in ("vanilla", "cuda"):
        raise ValueError(f"slstm_layout: expected 'vanilla' or 'cuda', got {slstm_layout!r}")
    out = OrderedDict()
    for key, value in state_dict.items():
        if key == _KERNEL or key.endswith("." + _KERNEL):
            try:
                R = recurrent_from_xlstm(value, slstm_layout)
            except ValueError as err:
                raise ValueError(f"{key}: not a {slstm_layout}-layout sLSTM recurrent kernel ({err}); "
                                 f"was the checkpoint saved with the other sLSTM backend?") from None
            out[key] = recurrent_to_xlstm(R, "cuda")
        elif key == _BIAS or key.endswith("." + _BIAS):
            kernel_key = key[: -len("_bias_")] + "_recurrent_kernel_"
            kernel = state_dict.get(kernel_key)
            if kernel is None:
                raise ValueError(f"{key}: the number of heads is read from {kernel_key}, which is "
                                 f"missing from the state dict")
            b = bias_from_xlstm(value, kernel.shape[0], slstm_layout)
            out[key] = bias_to_xlstm(b, "cuda")
        else:
            out[key] = value
    return out
