"""Large xLSTM language models on xlstm-triton's kernels.

    from xlstm_triton.models import xLSTMLarge, xLSTMLargeConfig
    model = xLSTMLarge.from_pretrained("path/to/xLSTM-7b", dtype=torch.bfloat16, device="cuda")
    out = model.generate(input_ids, max_new_tokens=32, temperature=0)

`xLSTMLarge` is the xLSTM-7B architecture (docs/checkpoints.md) with the parameter names of the
`xlstm` package (both weight modes); `convert` loads sharded safetensors checkpoints and maps
weights to and from Hugging Face `transformers`.
"""

from .config import xLSTMLargeConfig
from .checkpoint import (convert_weight_mode, detect_weight_mode, from_transformers,
                      from_transformers_state_dict, load_checkpoint, load_safetensors_dir,
                      to_transformers_state_dict)
from .xlstm_large import (RMSNorm, SwiGLUFeedForward, mLSTMLargeBlock, mLSTMLargeLayer, mLSTMState,
                          soft_cap, xLSTMLarge, xLSTMLargeBackbone)

__all__ = [
    "xLSTMLarge", "xLSTMLargeConfig", "xLSTMLargeBackbone", "mLSTMLargeBlock", "mLSTMLargeLayer",
    "SwiGLUFeedForward", "RMSNorm", "mLSTMState", "soft_cap",
    "load_checkpoint", "load_safetensors_dir", "from_transformers", "to_transformers_state_dict",
    "from_transformers_state_dict", "convert_weight_mode", "detect_weight_mode",
]
