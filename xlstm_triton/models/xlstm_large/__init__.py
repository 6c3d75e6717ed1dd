"""The xLSTM-7B architecture: config, model (blocks, backbone, LM, loading), and the checkpoint
names and weight modes (`checkpoint.py`). Public names are re-exported by `xlstm_triton.models`."""

from .checkpoint import (convert_weight_mode, detect_weight_mode, from_transformers_state_dict,
                         load_safetensors_dir, to_transformers_state_dict)
from .config import xLSTMLargeConfig
from .model import from_transformers, load_checkpoint, mLSTMLargeBlock, xLSTMLarge, xLSTMLargeBackbone

__all__ = ["convert_weight_mode", "detect_weight_mode", "from_transformers_state_dict", "load_safetensors_dir",
           "to_transformers_state_dict", "xLSTMLargeConfig", "from_transformers", "load_checkpoint",
           "mLSTMLargeBlock", "xLSTMLarge", "xLSTMLargeBackbone"]
