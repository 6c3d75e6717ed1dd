"""Configuration dataclasses of the paper architecture: blocks, block stack, language model.

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

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from ...layers.config import (FeedForwardConfig, UpProjConfigMixin, mLSTMLayerConfig, sLSTMCellConfig,
                              sLSTMLayerConfig)

__all__ = [
    "UpProjConfigMixin", "FeedForwardConfig", "mLSTMLayerConfig", "sLSTMCellConfig",
    "sLSTMLayerConfig", "mLSTMBlockConfig", "sLSTMBlockConfig", "xLSTMBlockStackConfig",
    "xLSTMLMModelConfig",
]


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

