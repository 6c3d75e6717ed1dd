"""The xLSTM language model: token embedding, block stack, LM head; stateful forward and
generation (chunkwise prefill, then one step per token).

Decoding and CUDA graphs
------------------------
One decoding step is `decode_step(tokens, state, temperature, top_k)`: token embedding, every
block's `step` (`mlstm_step` / `slstm_step` kernels, conv window, norms, projections), the LM
head and sampling. It has static shapes (the state keeps its shapes from step to step), no
host synchronization (no `.item()`, no data-dependent Python branches) and samples with torch
ops only (softmax and an exponential race: argmax(p / E), E ~ Exp(1), which draws from p), so it
can be captured in a CUDA graph:

    model.eval()
    B = prompt.shape[0]
    tok = torch.zeros(B, dtype=torch.long, device="cuda")      # static input buffers
    state = model.zero_state(B)
    with torch.no_grad():
        s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):                               # warm-up: Triton compiles here
            model.decode_step(tok, state, temperature, top_k)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            next_tok, next_state = model.decode_step(tok, state, temperature, top_k)
        logits, prefill_state = model(prompt, return_state=True)  # chunkwise prefill
        copy_state_(state, prefill_state)
        tok.copy_(sample_tokens(logits[:, -1], temperature, top_k))
        out = [tok.clone()]
        for _ in range(max_new_tokens - 1):
            graph.replay()                                       # one launch per token
            tok.copy_(next_tok); copy_state_(state, next_state)
            out.append(tok.clone())

The ops allocate their outputs, so the new state lands in the graph's own buffers and is copied
back into the input buffers (one extra read and write of the state per token). Alternatively,
`torch.compile(model.decode_step, mode="reduce-overhead")` captures and manages the buffers
itself. `generate()` runs the same `decode_step` eagerly.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .blocks import StackState, xLSTMBlockStack
from .components import WeightDecayGroupsMixin, small_init_
from .config import xLSTMLMModelConfig

__all__ = ["xLSTMLMModel", "sample_tokens", "copy_state_"]


def sample_tokens(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Sample one token per row of `logits` (..., V) -> (...) int64, without host syncs.
    temperature 0: argmax (greedy). top_k: sample among the k largest logits only."""
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature: expected a number >= 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k: expected None or an int >= 1, got {top_k!r}")
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / race).argmax(dim=-1)


def copy_state_(dst, src):
    """Copy a (nested tuple) recurrent state into another of the same structure, in place."""
    if isinstance(dst, torch.Tensor):
        dst.copy_(src)
        return dst
    if dst is None or src is None or len(dst) != len(src):
        raise ValueError("copy_state_: states of different structure")
    for d, s in zip(dst, src):
        copy_state_(d, s)
    return dst



_TOKEN_DTYPES = (torch.int64, torch.int32)       # what nn.Embedding indexes with


def check_token_ids(idx, name: str, vocab_size: Optional[int] = None, device=None,
                    check_range: bool = True) -> None:
    """Token ids must be an int64 / int32 tensor (B, S) with S >= 1 (B may be 0), on `device`
    (if given), with every id in [0, vocab_size) (if given); a clear error naming `name` else.

    The range check reads the ids on the host: free on CPU, where it always runs, but one
    device-to-host sync on a GPU, where it runs only with `check_range`. It is skipped inside
    torch.compile and during CUDA-graph capture (no sync is possible there)."""
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        raise ValueError(f"{name}: expected token ids of shape (B, S), got "
                         f"{tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__}")
    if idx.dtype not in _TOKEN_DTYPES:
        raise TypeError(f"{name}: expected an integer tensor of token ids (torch.int64 or torch.int32), "
                        f"got {idx.dtype}")
    if idx.shape[1] < 1:
        raise ValueError(f"{name}: expected at least one token per row, got shape {tuple(idx.shape)}")
    if device is not None and idx.device != torch.device(device):
        raise ValueError(f"{name}: expected token ids on the model's device {torch.device(device)}, got "
                         f"{idx.device} (move them with .to({str(torch.device(device))!r}))")
    if vocab_size is None or not (check_range or idx.device.type == "cpu"):
        return
    if idx.device.type == "meta" or torch.compiler.is_compiling() or (
            idx.is_cuda and torch.cuda.is_current_stream_capturing()):
        return
    bad = (idx < 0) | (idx >= vocab_size)
    if bad.any():
        raise ValueError(f"{name}: token id {int(idx[bad][0])} is out of range for the vocabulary size "
                         f"{vocab_size} (expected 0 <= id < {vocab_size})")


def generate_tokens(prefill, decode_step, input_ids, max_new_tokens, temperature, top_k, generator,
                    device, vocab_size: int, check_range: bool) -> torch.Tensor:
    """The generation loop of the LMs: checks, `prefill(ids)` -> (last-position logits (B, V),
    state), then `decode_step(tok, state, temperature, top_k, generator)` -> (tok, state) per new
    token. The prompt is moved to `device` and range-checked once (see `check_token_ids`); the
    sampled tokens are in range by construction. Returns (B, S + max_new_tokens) on `device`;
    a batch of 0 prompts gives (0, S + max_new_tokens)."""
    check_token_ids(input_ids, "input_ids")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
    sample_tokens(torch.zeros(1, 1), temperature, top_k)        # argument checks, up front
    input_ids = input_ids.to(device)
    check_token_ids(input_ids, "input_ids", vocab_size, device, check_range)
    if max_new_tokens == 0:
        return input_ids
    logits, state = prefill(input_ids)
    tok = sample_tokens(logits, temperature, top_k, generator)
    out = [tok]
    for _ in range(max_new_tokens - 1):
        tok, state = decode_step(tok, state, temperature, top_k, generator)
        out.append(tok)
    return torch.cat([input_ids, torch.stack(out, dim=1).to(input_ids.dtype)], dim=1)

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

    def forward(self, idx: torch.Tensor, state: Optional[StackState] = None, return_state: bool = False):
        return self._forward(idx, state, return_state, "idx", self.check_token_range)

    def _forward(self, idx, state, return_state: bool, name: str, check_range: bool):
        check_token_ids(idx, name, self.config.vocab_size, self.token_embedding.weight.device, check_range)
        x = self.emb_dropout(self.token_embedding(idx))
        out = self.xlstm_block_stack(x, state, return_state=return_state)
        x, new_state = out if return_state else (out, None)
        logits = self.lm_head(x)
        return (logits, new_state) if return_state else logits

    def step(self, idx: torch.Tensor, state: Optional[StackState] = None, **kwargs):
        """One call with state in and out: (logits, new_state). Any length; length 1 decodes."""
        return self.forward(idx, state, return_state=True)

    def decode_step(self, tokens: torch.Tensor, state: StackState, temperature: float = 1.0,
                    top_k: Optional[int] = None, generator: Optional[torch.Generator] = None):
        """tokens (B,) int64, the last sampled tokens; state: the model state before them.
        Returns (next_tokens (B,), new_state). Capturable in a CUDA graph (module docstring)."""
        logits, state = self._forward(tokens[:, None], state, True, "tokens", check_range=False)
        return sample_tokens(logits[:, -1], temperature, top_k, generator), state

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
        def prefill(ids):  # one chunkwise pass over the prompt
            x, state = self.xlstm_block_stack(self.emb_dropout(self.token_embedding(ids)), return_state=True)
            return self.lm_head(x[:, -1]), state
        return generate_tokens(prefill, self.decode_step, input_ids, max_new_tokens, temperature, top_k,
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
