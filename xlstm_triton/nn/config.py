"""Configuration dataclasses of the xLSTM modules.

Field names, defaults and derived fields are those of the `xlstm` package (2.x), so a config
written for it (in code, or loaded from YAML with `dacite`) builds the same model here:

    xLSTMLMModelConfig(vocab_size=..., embedding_dim=..., num_blocks=..., slstm_at=[...],
                       mlstm_block=mLSTMBlockConfig(mlstm=mLSTMLayerConfig(num_heads=...)),
                       slstm_block=sLSTMBlockConfig(slstm=sLSTMLayerConfig(num_heads=...),
                                                    feedforward=FeedForwardConfig(...)))

As in the `xlstm` package, the stack config hands its `embedding_dim`, `dropout` (and, for the
mLSTM layer, `bias` and `context_length`) down to the nested configs in `__post_init__`, and
the block configs hand down the block count and index (used by the initialization).

Fields that only select a kernel implementation in the `xlstm` package are accepted and ignored
(sLSTM `backend`, `batch_size`, the `dtype*` fields, `input_shape`, ...; `context_length`, which
sizes a causal mask there, is not needed here). Options whose semantics these modules do not
implement (an LSTM cell function, gradient clipping inside the recurrence) are refused when a
module is built, with the field named.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence, Union

__all__ = [
    "UpProjConfigMixin", "FeedForwardConfig", "mLSTMLayerConfig", "sLSTMCellConfig",
    "sLSTMLayerConfig", "mLSTMBlockConfig", "sLSTMBlockConfig", "xLSTMBlockStackConfig",
    "xLSTMLMModelConfig",
]

ACT_FNS = ("gelu", "relu", "relu^2", "sigmoid", "swish", "selu")


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
        if self.act_fn not in ACT_FNS:
            raise ValueError(f"FeedForwardConfig.act_fn: unknown activation {self.act_fn!r}; "
                             f"expected one of {list(ACT_FNS)}")


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


@dataclass
class mLSTMBlockConfig:
    mlstm: mLSTMLayerConfig = field(default_factory=mLSTMLayerConfig)

    # set by the stack; a standalone block treats None as (1 block, index 0)
    _num_blocks: int = None
    _block_idx: int = None

    def __post_init__(self):
        self.mlstm._num_blocks = self._num_blocks
        self.mlstm.__post_init__()


@dataclass
class sLSTMBlockConfig:
    slstm: sLSTMLayerConfig = field(default_factory=sLSTMLayerConfig)
    feedforward: Optional[FeedForwardConfig] = field(default_factory=FeedForwardConfig)

    _num_blocks: int = None
    _block_idx: int = None

    def __post_init__(self):
        self.slstm._block_idx = self._block_idx
        self.slstm._num_blocks = self._num_blocks
        self.slstm.__post_init__()
        if self.feedforward is not None:
            self.feedforward.__post_init__()


@dataclass
class xLSTMBlockStackConfig:
    mlstm_block: Optional[mLSTMBlockConfig] = None
    slstm_block: Optional[sLSTMBlockConfig] = None

    context_length: int = -1
    num_blocks: int = 1
    embedding_dim: int = 128
    add_post_blocks_norm: bool = True
    bias: bool = False
    dropout: float = 0.0

    # indices (from 0) of the sLSTM blocks; "all" for sLSTM only
    slstm_at: Union[list[int], Literal["all"]] = field(default_factory=list)

    # "0,1,0,..." : 0 = mLSTM block, 1 = sLSTM block at that position
    _block_map: str = None

    @property
    def block_map(self) -> list[int]:
        return list(map(int, self._block_map.split(",")))

    def _create_block_map(self) -> str:
        block_map = [0] * self.num_blocks
        for idx in self.slstm_at:
            if not isinstance(idx, int) or not -self.num_blocks <= idx < self.num_blocks:
                raise ValueError(f"xLSTMBlockStackConfig.slstm_at: position {idx!r} is not a block "
                                 f"index for num_blocks={self.num_blocks}")
            block_map[idx] = 1
        return ",".join(map(str, block_map))

    def __post_init__(self):
        if self.mlstm_block is None:
            self.slstm_at = "all"
        if self.slstm_at == "all":
            self.slstm_at = list(range(self.num_blocks))
        if self.mlstm_block is not None:
            layer = self.mlstm_block.mlstm
            layer.embedding_dim = self.embedding_dim
            layer.bias = self.bias
            layer.dropout = self.dropout
            layer.context_length = self.context_length
            self.mlstm_block._num_blocks = self.num_blocks
            self.mlstm_block.__post_init__()
        if self.slstm_block is not None:
            self.slstm_block.slstm.dropout = self.dropout
            self.slstm_block.slstm.embedding_dim = self.embedding_dim
            self.slstm_block._num_blocks = self.num_blocks
            self.slstm_block.__post_init__()
        self._block_map = self._create_block_map()


@dataclass
class xLSTMLMModelConfig(xLSTMBlockStackConfig):
    vocab_size: int = -1
    tie_weights: bool = False
    weight_decay_on_embedding: bool = False
    add_embedding_dropout: bool = False
