"""The `xlstm` package's paper architecture: configs, residual blocks, block stack, LM, and the
conversion of its checkpoints (`convert_xlstm_state_dict`). Public names are re-exported by
`xlstm_triton.nn`."""

from .blocks import WeightDecayGroupsMixin, mLSTMBlock, sLSTMBlock, xLSTMBlock, xLSTMBlockStack
from .checkpoint import convert_xlstm_state_dict
from .config import mLSTMBlockConfig, sLSTMBlockConfig, xLSTMBlockStackConfig, xLSTMLMModelConfig
from .model import xLSTMLMModel

__all__ = ["WeightDecayGroupsMixin", "mLSTMBlock", "sLSTMBlock", "xLSTMBlock", "xLSTMBlockStack",
           "convert_xlstm_state_dict", "mLSTMBlockConfig", "sLSTMBlockConfig", "xLSTMBlockStackConfig",
           "xLSTMLMModelConfig", "xLSTMLMModel"]
