"""The `xlstm` package's paper architecture on xlstm-triton's kernels, under one import path.

Drop-in for the `xlstm` package: same config classes and fields, same parameter names, shapes
and initialization, so its checkpoints load (`convert_xlstm_state_dict` for those saved with the
`vanilla` sLSTM backend). Every layer, block, the stack and the LM take a recurrent state and can
return the new one; length-1 inputs decode with the step kernels.

    from xlstm_triton.nn import xLSTMLMModel, xLSTMLMModelConfig, mLSTMBlockConfig, ...

The code lives in `xlstm_triton.modules` (norms, conv, FFN), `xlstm_triton.layers` (the mLSTM
and sLSTM layers) and `xlstm_triton.models.xlstm` (blocks, stack, LM); this module re-exports.
"""

from ..generation import copy_state_, sample_tokens
from ..layers import (FeedForwardConfig, mLSTMCell, mLSTMLayer, mLSTMLayerConfig, mLSTMLayerState, sLSTMCell,
                      sLSTMCellConfig, sLSTMLayer, sLSTMLayerConfig, sLSTMLayerState)
from ..modules import CausalConv1d, GatedFeedForward, LayerNorm, LinearHeadwise, MultiHeadLayerNorm
from ..models.xlstm import (convert_xlstm_state_dict, mLSTMBlock, mLSTMBlockConfig, sLSTMBlock, sLSTMBlockConfig,
                            xLSTMBlock, xLSTMBlockStack, xLSTMBlockStackConfig, xLSTMLMModel, xLSTMLMModelConfig)

__all__ = [
    "xLSTMLMModel", "xLSTMLMModelConfig", "xLSTMBlockStack", "xLSTMBlockStackConfig",
    "mLSTMBlock", "mLSTMBlockConfig", "sLSTMBlock", "sLSTMBlockConfig", "xLSTMBlock",
    "mLSTMLayer", "mLSTMLayerConfig", "sLSTMLayer", "sLSTMLayerConfig", "sLSTMCellConfig",
    "FeedForwardConfig", "GatedFeedForward", "mLSTMCell", "sLSTMCell",
    "mLSTMLayerState", "sLSTMLayerState",
    "LayerNorm", "MultiHeadLayerNorm", "CausalConv1d", "LinearHeadwise",
    "convert_xlstm_state_dict", "sample_tokens", "copy_state_",
]
