"""PyTorch modules of the xLSTM (Beck et al., 2024) on xlstm-triton's kernels, drop-in for the
`xlstm` package's paper architecture: same config classes and fields, same parameter names,
shapes and initialization, so its checkpoints load (`convert_xlstm_state_dict` for those saved
with the `vanilla` sLSTM backend). Every layer, block, the stack and the LM take a recurrent
state and can return the new one; length-1 inputs decode with the step kernels.

    from xlstm_triton.nn import xLSTMLMModel, xLSTMLMModelConfig, mLSTMBlockConfig, ...
"""

from .blocks import mLSTMBlock, sLSTMBlock, xLSTMBlock, xLSTMBlockStack
from .components import (CausalConv1d, GatedFeedForward, LayerNorm, LinearHeadwise,
                         MultiHeadLayerNorm)
from .config import (FeedForwardConfig, mLSTMBlockConfig, mLSTMLayerConfig, sLSTMBlockConfig,
                     sLSTMCellConfig, sLSTMLayerConfig, xLSTMBlockStackConfig, xLSTMLMModelConfig)
from .checkpoint import convert_xlstm_state_dict
from .mlstm_layer import mLSTMCell, mLSTMLayer, mLSTMLayerState
from .model import copy_state_, sample_tokens, xLSTMLMModel
from .slstm_layer import sLSTMCell, sLSTMLayer, sLSTMLayerState

__all__ = [
    "xLSTMLMModel", "xLSTMLMModelConfig", "xLSTMBlockStack", "xLSTMBlockStackConfig",
    "mLSTMBlock", "mLSTMBlockConfig", "sLSTMBlock", "sLSTMBlockConfig", "xLSTMBlock",
    "mLSTMLayer", "mLSTMLayerConfig", "sLSTMLayer", "sLSTMLayerConfig", "sLSTMCellConfig",
    "FeedForwardConfig", "GatedFeedForward", "mLSTMCell", "sLSTMCell",
    "mLSTMLayerState", "sLSTMLayerState",
    "LayerNorm", "MultiHeadLayerNorm", "CausalConv1d", "LinearHeadwise",
    "convert_xlstm_state_dict", "sample_tokens", "copy_state_",
]
