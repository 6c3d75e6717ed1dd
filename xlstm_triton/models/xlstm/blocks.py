"""Residual xLSTM blocks and the block stack.

    block:  x = x + layer(xlstm_norm(x));  (sLSTM block) x = x + ffn(ffn_norm(x))
    stack:  blocks (sLSTM at `slstm_at`, mLSTM elsewhere), then `post_blocks_norm`

Every module takes `forward(x, state=None, return_state=False)`. The state of a block is its
layer's (`mLSTMLayerState` / `sLSTMLayerState`); the state of a stack is a tuple with one block
state per block (None entries mean "fresh"). States are tuples of tensors, so they pass through
`torch.compile` and can live in static buffers for CUDA graphs. Plain tuples or lists (e.g. a
state rebuilt by `tuple(t.to(device) for t in s)`) are accepted wherever a state goes in.
"""

from __future__ import annotations

import copy
from typing import Optional, Sequence, Union

import torch
from torch import nn

from ...layers import mLSTMLayer, mLSTMLayerState, sLSTMLayer, sLSTMLayerState
from ...layers.state import is_state_sequence
from ...modules import GatedFeedForward, LayerNorm
from ..residual import run_residual_stream
from .config import FeedForwardConfig, mLSTMBlockConfig, sLSTMBlockConfig, xLSTMBlockStackConfig

__all__ = ["xLSTMBlock", "mLSTMBlock", "sLSTMBlock", "xLSTMBlockStack", "BlockState", "StackState",
           "WeightDecayGroupsMixin"]

BlockState = Union[mLSTMLayerState, sLSTMLayerState]
StackState = tuple  # tuple[BlockState | None, ...], one entry per block


class WeightDecayGroupsMixin:
    """`get_weight_decay_optim_groups()` -> (decay, no_decay) parameter tuples, with the
    `xlstm` package's rule: weight decay on parameters whose name contains "weight" and not
    "norm"; none on the rest (biases, norm weights, `learnable_skip`, the sLSTM `_bias_`...)."""

    def _create_weight_decay_optim_groups(self) -> tuple[Sequence[nn.Parameter], Sequence[nn.Parameter]]:
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (decay if "weight" in name and "norm" not in name else no_decay).append(p)
        return tuple(decay), tuple(no_decay)

    def get_weight_decay_optim_groups(self) -> tuple[Sequence[nn.Parameter], Sequence[nn.Parameter]]:
        decay, no_decay = self._create_weight_decay_optim_groups()
        ids_d, ids_n = {id(p) for p in decay}, {id(p) for p in no_decay}
        if ids_d & ids_n:
            raise RuntimeError("a parameter is in both weight-decay groups")
        missing = [n for n, p in self.named_parameters()
                   if p.requires_grad and id(p) not in ids_d | ids_n]
        if missing:
            raise RuntimeError(f"parameters in no weight-decay group: {missing}")
        return decay, no_decay

    def get_weight_decay_optim_group_param_names(self) -> tuple[list[str], list[str]]:
        decay, no_decay = self.get_weight_decay_optim_groups()
        ids_d, ids_n = {id(p) for p in decay}, {id(p) for p in no_decay}
        params = list(self.named_parameters())
        return [n for n, p in params if id(p) in ids_d], [n for n, p in params if id(p) in ids_n]



class xLSTMBlock(WeightDecayGroupsMixin, nn.Module):
    """Pre-norm residual block around an mLSTM or sLSTM layer, with an optional gated FFN."""

    def __init__(self, embedding_dim: int, layer_factory, feedforward: Optional[FeedForwardConfig]):
        super().__init__()
        self.xlstm_norm = LayerNorm(ndim=embedding_dim, weight=True, bias=False)
        self.xlstm = layer_factory()
        if feedforward is not None:
            self.ffn_norm = LayerNorm(ndim=embedding_dim, weight=True, bias=False)
            self.ffn = GatedFeedForward(feedforward)
        else:
            self.ffn_norm = None
            self.ffn = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.xlstm.reset_parameters()
        self.xlstm_norm.reset_parameters()
        if self.ffn is not None:
            self.ffn.reset_parameters()
            self.ffn_norm.reset_parameters()

    def zero_state(self, batch_size: int, device=None, dtype=None) -> BlockState:
        return self.xlstm.zero_state(batch_size, device, dtype)

    def forward(self, x: torch.Tensor, state: Optional[BlockState] = None, return_state: bool = False,
                cu_seqlens: Optional[torch.Tensor] = None, cp_group=None):
        """x (B, S, E). Returns the block output (B, S, E) and, with `return_state`, the new state.
        `cu_seqlens`: packed documents (B = 1, no state); `cp_group`: context parallelism (the
        layer's)."""
        x, y, new_state = self.forward_residual(x, None, state, return_state, cu_seqlens, cp_group)
        x = x + y
        return (x, new_state) if return_state else x

    def forward_residual(self, x: torch.Tensor, branch: Optional[torch.Tensor], state: Optional[BlockState] = None,
                         return_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None, cp_group=None):
        """The block on the residual stream x whose last branch output (the previous block's, or
        None) is not added yet: each add is fused into the norm after it. Returns (stream, this
        block's last branch output, new state or None); `forward` adds the two. `cu_seqlens`:
        packed documents (B = 1), for the layer."""
        h, x = self.xlstm_norm.add_forward(x, branch)
        packed = {} if cu_seqlens is None else dict(cu_seqlens=cu_seqlens)
        if cp_group is not None:
            packed["cp_group"] = cp_group
        out = self.xlstm(h, state, return_state=return_state, **packed)
        y, new_state = out if return_state else (out, None)
        if self.ffn is None:
            return x, y, new_state
        h, x = self.ffn_norm.add_forward(x, y)
        return x, self.ffn(h), new_state

    def step(self, x: torch.Tensor, state: Optional[BlockState] = None):
        return self.forward(x, state, return_state=True)


def _block_position(config):
    num_blocks = config._num_blocks if config._num_blocks is not None else 1
    block_idx = config._block_idx if config._block_idx is not None else 0
    return num_blocks, block_idx


class mLSTMBlock(xLSTMBlock):
    """`x + mLSTMLayer(LN(x))` (no FFN). The config is copied; a standalone block (no
    `_num_blocks`) initializes as block 0 of 1."""

    config_class = mLSTMBlockConfig

    def __init__(self, config: mLSTMBlockConfig):
        config = copy.deepcopy(config)
        config._num_blocks, config._block_idx = _block_position(config)
        config.__post_init__()
        layer_cfg = config.mlstm
        super().__init__(layer_cfg.embedding_dim, lambda: mLSTMLayer(layer_cfg), None)
        self.config = config


class sLSTMBlock(xLSTMBlock):
    """`x + sLSTMLayer(LN(x))`, then `x + GatedFeedForward(LN(x))` unless `feedforward` is None."""

    config_class = sLSTMBlockConfig

    def __init__(self, config: sLSTMBlockConfig):
        config = copy.deepcopy(config)
        config._num_blocks, config._block_idx = _block_position(config)
        config.__post_init__()
        layer_cfg, ffn_cfg = config.slstm, config.feedforward
        if ffn_cfg is not None:
            ffn_cfg.embedding_dim = layer_cfg.embedding_dim
            ffn_cfg._num_blocks = config._num_blocks
            ffn_cfg.__post_init__()
        super().__init__(layer_cfg.embedding_dim, lambda: sLSTMLayer(layer_cfg), ffn_cfg)
        self.config = config


class xLSTMBlockStack(WeightDecayGroupsMixin, nn.Module):
    """Blocks per `config.block_map` (sLSTM at `slstm_at`), then `post_blocks_norm` (LayerNorm
    or identity). forward(x (B, S, E), state=None, return_state=False)."""

    config_class = xLSTMBlockStackConfig

    def __init__(self, config: xLSTMBlockStackConfig):
        super().__init__()
        self.config = config
        if config._block_map is None:
            config.__post_init__()
        if config.embedding_dim <= 0 or config.num_blocks <= 0:
            raise ValueError(f"xLSTMBlockStackConfig: embedding_dim and num_blocks must be > 0, got "
                             f"{config.embedding_dim} and {config.num_blocks}")
        blocks = []
        for idx, kind in enumerate(config.block_map):
            block_cfg = config.slstm_block if kind == 1 else config.mlstm_block
            if block_cfg is None:
                raise ValueError(f"xLSTMBlockStackConfig: block {idx} is an "
                                 f"{'sLSTM' if kind else 'mLSTM'} block (slstm_at={config.slstm_at}) "
                                 f"but {'slstm_block' if kind else 'mlstm_block'} is None")
            block_cfg = copy.deepcopy(block_cfg)
            block_cfg._block_idx = idx
            block_cfg.__post_init__()
            blocks.append(sLSTMBlock(block_cfg) if kind == 1 else mLSTMBlock(block_cfg))
        self.blocks = nn.ModuleList(blocks)
        if config.add_post_blocks_norm:
            self.post_blocks_norm = LayerNorm(ndim=config.embedding_dim)
        else:
            self.post_blocks_norm = nn.Identity()

    def reset_parameters(self) -> None:
        for block in self.blocks:
            block.reset_parameters()
        if isinstance(self.post_blocks_norm, LayerNorm):
            self.post_blocks_norm.reset_parameters()

    def zero_state(self, batch_size: int, device=None, dtype=None) -> StackState:
        return tuple(b.zero_state(batch_size, device, dtype) for b in self.blocks)

    def forward(self, x: torch.Tensor, state: Optional[StackState] = None, return_state: bool = False,
                cu_seqlens: Optional[torch.Tensor] = None, cp_group=None):
        """x (B, S, E); state: a tuple of block states (entries may be None) or None. Returns
        y (B, S, E) and, with `return_state`, the new stack state (a tuple). `cu_seqlens`:
        packed documents (B = 1, no state), checked offsets (`checks.checked_cu_seqlens`);
        `cp_group`: context parallelism (mLSTM blocks only, `mLSTMLayer`)."""
        if state is None:
            state = (None,) * len(self.blocks)
        elif not is_state_sequence(state) or len(state) != len(self.blocks):
            raise ValueError(f"state: expected a tuple of {len(self.blocks)} block states (or a list; "
                             f"one per block, None for a fresh one), got {type(state).__name__}"
                             f"{f' of length {len(state)}' if is_state_sequence(state) else ''}")
        packed = {} if cu_seqlens is None else dict(cu_seqlens=cu_seqlens)
        if cp_group is not None:
            packed["cp_group"] = cp_group
        x, new_states = run_residual_stream(x, self.blocks, state, self.post_blocks_norm, return_state=return_state,
                                            **packed)
        return (x, new_states) if return_state else x

    def step(self, x: torch.Tensor, state: Optional[StackState] = None):
        return self.forward(x, state, return_state=True)
