"""The xLSTM language model: token embedding, block stack, LM head; stateful forward and
generation (chunkwise prefill, then one `decode_step` per token).

`decode_step` has static shapes, no host synchronization and samples with torch ops only, so
it can be captured in a CUDA graph: `xlstm_triton.generation.CUDAGraphDecoder` does that for
this model and for `xLSTMLarge`; `torch.compile(model.decode_step, mode="reduce-overhead")` is
the other way.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ...checks import check_context_parallel_call
from ...generation import check_token_ids, copy_state_, generate_tokens, sample_tokens
from ...layers import refuse_context_parallel
from ...modules import small_init_
from ..lm_loss import check_labels, cp_next_token_loss, next_token_loss
from ..parallel import cp_checked
from ..packed import packed_offsets
from .blocks import StackState, WeightDecayGroupsMixin, xLSTMBlockStack
from .config import xLSTMLMModelConfig

__all__ = ["xLSTMLMModel", "sample_tokens", "copy_state_"]


class xLSTMLMModel(WeightDecayGroupsMixin, nn.Module):
    """Token embedding -> xLSTMBlockStack -> lm_head, with the `xlstm` package's parameter names.

    forward(idx (B, S) int, state=None, return_state=False) -> logits (B, S, V)
        [, new state: a tuple with one block state per block].
    step(idx, state=None) -> (logits, state)   (the `xlstm` package's name for it)
    generate(input_ids, max_new_tokens, temperature=1.0, top_k=None) -> (B, S + max_new_tokens)

    As in the `xlstm` package, construction leaves the embedding and LM head with PyTorch's
    default init; call `reset_parameters()` for the small init of both.

    Token ids: int64 or int32, on the model's device, each in [0, vocab_size); anything else
    raises an error naming the argument. The range check reads the ids on the host: on a GPU
    that is one sync per forward (and per `generate` call), so it runs there only while
    `check_token_range` is True (the default); set `model.check_token_range = False` in
    training loops that must not sync. On CPU it always runs; `decode_step` (whose tokens the
    model sampled itself), torch.compile and CUDA-graph capture skip it on the GPU.
    """

    config_class = xLSTMLMModelConfig
    check_token_range: bool = True

    def __init__(self, config: xLSTMLMModelConfig, **kwargs):
        super().__init__()
        if not isinstance(config.vocab_size, int) or config.vocab_size <= 0:
            raise ValueError(f"xLSTMLMModelConfig.vocab_size must be set (> 0), got {config.vocab_size!r}")
        self.config = config
        self.xlstm_block_stack = xLSTMBlockStack(config)
        self.token_embedding = nn.Embedding(config.vocab_size, config.embedding_dim)
        self.emb_dropout = nn.Dropout(config.dropout) if config.add_embedding_dropout else nn.Identity()
        self.lm_head = nn.Linear(config.embedding_dim, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.token_embedding.weight

    def reset_parameters(self) -> None:
        self.xlstm_block_stack.reset_parameters()
        small_init_(self.token_embedding.weight, dim=self.config.embedding_dim)
        if not self.config.tie_weights:
            small_init_(self.lm_head.weight, dim=self.config.embedding_dim)

    def zero_state(self, batch_size: int, device=None, dtype=None) -> StackState:
        """The empty recurrent state (what `state=None` means) as tensors, e.g. static buffers."""
        return self.xlstm_block_stack.zero_state(batch_size, device, dtype)

    def forward(self, idx: torch.Tensor, state: Optional[StackState] = None, return_state: bool = False,
                labels: Optional[torch.Tensor] = None, cu_seqlens: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, cp_group=None):
        """idx (B, S) token ids; state: a stack state or None. Returns logits (B, S, V) and, with
        `return_state`, the new state. With `labels` (B, S) (see `models.lm_loss`: shifted inside,
        -100 not counted) it returns the mean next-token loss instead of the logits, computed
        without materializing them.

        Packed documents (B = 1, no state): `cu_seqlens` (N + 1,) int offsets of the documents
        laid end to end in idx (1, S), or `position_ids` (1, S) restarting at 0 at each document
        (converted once: one host read); no state, conv window or loss term crosses a document
        boundary (see `models/packed.py`).

        Context parallelism (training, mLSTM blocks only, no state): `cp_group`, a process group
        over which the sequences are split in contiguous pieces in rank order; idx (and labels)
        are this rank's piece (B, S_rank). The logits are the piece's; the loss is the whole
        sequences' mean, the same on every rank; sum the parameter gradients over the group
        afterwards (`models.cp_reduce_gradients`). An sLSTM block refuses it."""
        check_context_parallel_call(cp_group, state, return_state, cu_seqlens, position_ids)
        return self._forward(idx, state, return_state, "idx", self.check_token_range, labels,
                             packed_offsets(idx, cu_seqlens, position_ids, state, return_state), cp_group)

    def _forward(self, idx, state, return_state: bool, name: str, check_range: bool, labels=None,
                 cu_seqlens=None, cp_group=None):
        check_token_ids(idx, name, self.config.vocab_size, self.token_embedding.weight.device, check_range)
        if labels is not None:
            check_labels(labels, idx, self.config.vocab_size, check_range)
        x = self.emb_dropout(self.token_embedding(idx))
        cp = {} if cp_group is None else dict(cp_group=cp_group)
        if cp_group is not None and 1 in self.config.block_map:
            refuse_context_parallel(cp_group)       # before the pieces' check: no collective
        with cp_checked(self, x, cp_group):
            out = self.xlstm_block_stack(x, state, return_state=return_state, cu_seqlens=cu_seqlens, **cp)
        x, new_state = out if return_state else (out, None)
        if labels is None:
            out = self.lm_head(x)
        elif cp_group is not None:
            out = cp_next_token_loss(x, self.lm_head.weight, labels, None, cp_group)
        else:
            out = next_token_loss(x, self.lm_head.weight, labels, cu_seqlens=cu_seqlens)
        return (out, new_state) if return_state else out

    def step(self, idx: torch.Tensor, state: Optional[StackState] = None, **kwargs):
        """One call with state in and out: (logits, new_state). Any length; length 1 decodes."""
        return self.forward(idx, state, return_state=True)

    def decode_step(self, tokens: torch.Tensor, state: StackState, temperature: float = 1.0,
                    top_k: Optional[int] = None, generator: Optional[torch.Generator] = None):
        """tokens (B,) int64, the last sampled tokens; state: the model state before them.
        Returns (next_tokens (B,), new_state). Capturable in a CUDA graph (module docstring)."""
        logits, state = self._forward(tokens[:, None], state, True, "tokens", check_range=False)
        return sample_tokens(logits[:, -1], temperature, top_k, generator), state

    def prefill(self, input_ids: torch.Tensor):
        """One chunkwise pass over prompts (B, S) (no checks): (last-position logits (B, V), state)."""
        x, state = self.xlstm_block_stack(self.emb_dropout(self.token_embedding(input_ids)), return_state=True)
        return self.lm_head(x[:, -1]), state

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Continue each row of `input_ids` (B, S) by `max_new_tokens` sampled tokens.

        The prompt is prefilled in one chunkwise pass (its cost grows with S, and the state
        after it has a fixed size), then each new token costs one `decode_step`, independent of
        the context length. temperature 0 is greedy decoding; top_k restricts sampling to the k
        most likely tokens; `generator` makes sampling reproducible. Runs in the module's
        current mode (call `.eval()` to disable dropout). Returns (B, S + max_new_tokens).
        """
        return generate_tokens(self.prefill, self.decode_step, input_ids, max_new_tokens, temperature, top_k,
                               generator, self.token_embedding.weight.device, self.config.vocab_size,
                               self.check_token_range)

    def _create_weight_decay_optim_groups(self):
        decay, no_decay = super()._create_weight_decay_optim_groups()
        emb = self.token_embedding.weight
        decay = tuple(p for p in decay if p is not emb)
        no_decay = tuple(p for p in no_decay if p is not emb)
        if self.config.weight_decay_on_embedding:
            decay += (emb,)
        else:
            no_decay += (emb,)
        return decay, no_decay
