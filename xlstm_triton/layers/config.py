"""Configuration dataclasses of the paper architecture's layers and feed-forward network.

Field names, defaults and derived fields are those of the `xlstm` package (2.x), so a config
written for it builds the same layer here; the block, stack and LM configs that nest these are
in `xlstm_triton.models.xlstm.config` (whose docstring says how values are handed down).

Fields that only select a kernel implementation in the `xlstm` package are accepted and ignored
(sLSTM `backend`, `batch_size`, the `dtype*` fields, ...; `context_length`, which sizes a causal
mask there, is not needed here). Options whose semantics these modules do not implement (an
LSTM cell function, gradient clipping inside the recurrence) are refused when a layer is built,
with the field named.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence, Union

from ..modules.activations import ACTIVATIONS

__all__ = ["UpProjConfigMixin", "FeedForwardConfig", "mLSTMLayerConfig", "sLSTMCellConfig", "sLSTMLayerConfig"]


@dataclass
class UpProjConfigMixin:
    """An up-projection of `proj_factor * embedding_dim`, rounded (up by default) to a multiple
    of `round_proj_up_to_multiple_of`; the result is stored in `_proj_up_dim`."""
    proj_factor: float = None
    round_proj_up_dim_up: bool = True
    round_proj_up_to_multiple_of: int = 64

    _proj_up_dim: int = None

    def _set_proj_up_dim(self, embedding_dim: int) -> None:
        if self.proj_factor is None or embedding_dim is None:
            return
        multiples = self.proj_factor * embedding_dim / self.round_proj_up_to_multiple_of
        multiples = math.ceil(multiples) if self.round_proj_up_dim_up else math.floor(multiples)
        self._proj_up_dim = int(multiples * self.round_proj_up_to_multiple_of)



@dataclass
class FeedForwardConfig(UpProjConfigMixin):
    """Gated feed-forward network of the sLSTM block: E -> 2P (gate, up), act(gate) * up, P -> E."""
    proj_factor: float = 1.3
    act_fn: str = "gelu"
    embedding_dim: int = -1
    dropout: float = 0.0
    bias: bool = False
    ff_type: Literal["ffn_gated"] = "ffn_gated"

    _num_blocks: int = 1

    def __post_init__(self):
        self._set_proj_up_dim(embedding_dim=self.embedding_dim)
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(f"FeedForwardConfig.act_fn: unknown activation {self.act_fn!r}; "
                             f"expected one of {list(ACTIVATIONS)}")



@dataclass
class mLSTMLayerConfig(UpProjConfigMixin):
    """mLSTM layer (pre-up-projection): inner dim = proj_factor * embedding_dim rounded up to 64."""
    conv1d_kernel_size: int = 4
    qkv_proj_blocksize: int = 4
    num_heads: int = 4
    proj_factor: float = 2.0

    # set by the stack config
    embedding_dim: int = -1
    bias: bool = False
    dropout: float = 0.0
    context_length: int = -1

    _num_blocks: int = 1
    _inner_embedding_dim: int = None

    def __post_init__(self):
        self._set_proj_up_dim(embedding_dim=self.embedding_dim)
        self._inner_embedding_dim = self._proj_up_dim



@dataclass
class sLSTMCellConfig:
    """The `xlstm` package's sLSTM cell options. Used here: `hidden_size`, `num_heads`,
    `bias_init`, `recurrent_weight_init`, `_block_idx`, `_num_blocks`. Kernel selection and
    dtype fields are accepted and ignored (the parameters always use the `cuda` backend's
    layout; see `convert_xlstm_state_dict` for checkpoints saved with `vanilla`)."""
    hidden_size: int = -1
    num_heads: int = 4
    num_states: int = 4
    backend: Literal["vanilla", "cuda"] = "cuda"
    function: str = "slstm"
    bias_init: Literal["powerlaw_blockdependent", "small_init", "standard", "zeros"] = (
        "powerlaw_blockdependent")
    recurrent_weight_init: Literal["zeros", "standard"] = "zeros"

    _block_idx: int = 0
    _num_blocks: int = 1

    num_gates: int = 4
    gradient_recurrent_cut: bool = False
    gradient_recurrent_clipval: Optional[float] = None
    forward_clipval: Optional[float] = None

    batch_size: int = 8
    input_shape: Literal["BSGNH", "SBGNH"] = "BSGNH"
    internal_input_shape: Literal["SBNGH", "SBGNH", "SBNHG"] = "SBNGH"
    output_shape: Literal["BNSH", "SBH", "BSH", "SBNH"] = "BNSH"

    constants: dict = field(default_factory=dict)
    dtype: str = "bfloat16"
    dtype_b: Optional[str] = "float32"
    dtype_r: Optional[str] = None
    dtype_w: Optional[str] = None
    dtype_g: Optional[str] = None
    dtype_s: Optional[str] = None
    dtype_a: Optional[str] = None

    enable_automatic_mixed_precision: bool = True
    initial_val: Union[float, Sequence[float]] = 0.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def input_dim(self) -> int:
        return 4 * self.hidden_size

    def __post_init__(self):
        if self.num_heads <= 0:         # as in the xlstm package
            self.num_heads = 1
        if self.dtype_b is None:
            self.dtype_b = self.dtype
        if self.dtype_a is None:
            self.dtype_a = self.dtype_b
        for name in ("dtype_r", "dtype_w"):
            if getattr(self, name) is None:
                setattr(self, name, self.dtype)
        if self.dtype_s is None:
            self.dtype_s = self.dtype_w
        if self.dtype_g is None:
            self.dtype_g = self.dtype_r



@dataclass
class sLSTMLayerConfig(sLSTMCellConfig):
    """sLSTM layer (post-up-projection): conv (optional), headwise gate projections, the sLSTM
    cell, per-head group norm. `hidden_size` is set from `embedding_dim`."""
    embedding_dim: int = -1
    num_heads: int = 4
    conv1d_kernel_size: int = 4     # 0: no convolution
    group_norm_weight: bool = True
    dropout: float = 0.0

    def __post_init__(self):
        self.hidden_size = self.embedding_dim
        sLSTMCellConfig.__post_init__(self)

