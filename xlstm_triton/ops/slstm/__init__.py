"""Fused sLSTM: Triton kernels (forward, backward, step), a PyTorch path for CPU, and converters
to and from the `xlstm` package's parameter layouts. See op.py for the contract."""

from .layouts import bias_from_xlstm, bias_to_xlstm, recurrent_from_xlstm, recurrent_to_xlstm
from .op import config_override, slstm, slstm_step

__all__ = ["slstm", "slstm_step", "config_override", "recurrent_from_xlstm", "recurrent_to_xlstm",
           "bias_from_xlstm", "bias_to_xlstm"]
