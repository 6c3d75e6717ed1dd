"""The models on xlstm-triton's layers.

    models/xlstm/        the `xlstm` package's paper architecture (re-exported by `xlstm_triton.nn`)
    models/xlstm_large/  the xLSTM-7B architecture, re-exported here:

    from xlstm_triton.models import xLSTMLarge, xLSTMLargeConfig
    model = xLSTMLarge.from_pretrained("path/to/xLSTM-7b", dtype=torch.bfloat16, device="cuda")
    out = model.generate(input_ids, max_new_tokens=32, temperature=0)

`xLSTMLarge` has the parameter names of the `xlstm` package (both weight modes; docs/checkpoints.md);
`load_checkpoint` reads sharded safetensors checkpoints, and the state-dict functions map weights
to and from Hugging Face `transformers`. `compile_blocks(model)` compiles a model of either
family block by block (one compile for all identical blocks); `capture_step` captures a training
step's forward and backward in a CUDA graph (models/training.py); `shard_blocks` (FSDP2, a unit
per block) and `data_parallel` (DDP) train either family on several GPUs (models/parallel.py).
"""

from ..layers import mLSTMLargeLayer, mLSTMState
from ..modules import RMSNorm, SwiGLUFeedForward, soft_cap
from .parallel import context_parallel, cp_reduce_gradients, data_parallel, shard_blocks
from .training import capture_step, compile_blocks
from .xlstm_large import (convert_weight_mode, detect_weight_mode, from_transformers, from_transformers_state_dict,
                          load_checkpoint, load_safetensors_dir, mLSTMLargeBlock, to_transformers_state_dict,
                          xLSTMLarge, xLSTMLargeBackbone, xLSTMLargeConfig)

__all__ = [
    "xLSTMLarge", "xLSTMLargeConfig", "xLSTMLargeBackbone", "mLSTMLargeBlock", "mLSTMLargeLayer",
    "SwiGLUFeedForward", "RMSNorm", "mLSTMState", "soft_cap",
    "load_checkpoint", "load_safetensors_dir", "from_transformers", "to_transformers_state_dict",
    "from_transformers_state_dict", "convert_weight_mode", "detect_weight_mode", "compile_blocks",
    "capture_step", "shard_blocks", "data_parallel", "context_parallel", "cp_reduce_gradients",
]
