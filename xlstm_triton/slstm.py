"""Old import path of the sLSTM ops (`xlstm_triton.ops.slstm`), kept as a re-export."""

from .ops.slstm import (bias_from_xlstm, bias_to_xlstm, config_override, recurrent_from_xlstm,
                        recurrent_to_xlstm, slstm, slstm_step)

__all__ = ["slstm", "slstm_step", "config_override", "recurrent_from_xlstm", "recurrent_to_xlstm",
           "bias_from_xlstm", "bias_to_xlstm"]
