"""Generation shared by every LM of the package: token-id checks, sampling, the state copy of
CUDA-graph decoding loops, the prefill-then-decode loop of `generate()`, and that loop with
the decoding step captured in a CUDA graph (`CUDAGraphDecoder`).

A model provides `prefill(ids) -> (last-position logits (B, V), state)`,
`decode_step(tok, state, temperature, top_k, generator) -> (tok, state)` and
`zero_state(B)`; `generate_tokens` and `CUDAGraphDecoder` run them.

A decoding step (token embedding, every block's step kernels, norms, projections, the LM head
and sampling) has static shapes (the state keeps its shapes from step to step), no host
synchronization and samples with torch ops only (softmax and an exponential race: argmax(p / E),
E ~ Exp(1), which draws from p), so it can be captured in a CUDA graph. The ops allocate their
outputs, so the new state lands in the graph's own buffers and is copied back into the input
buffers (one extra read and write of the state per token).
"""

from __future__ import annotations

from typing import Optional

import torch

from .checks import on_device

__all__ = ["check_token_ids", "sample_tokens", "copy_state_", "generate_tokens", "CUDAGraphDecoder"]


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


def range_check_runs(t: torch.Tensor, check_range: bool) -> bool:
    """Whether a value-range check of `t` (which reads it on the host) runs: always on CPU, on a
    GPU only with `check_range`, never on meta tensors, inside torch.compile or during CUDA-graph
    capture (no sync is possible there)."""
    if not (check_range or t.device.type == "cpu") or t.device.type == "meta":
        return False
    return not (torch.compiler.is_compiling() or (t.is_cuda and torch.cuda.is_current_stream_capturing()))


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
    if device is not None and not on_device(idx, device):
        raise ValueError(f"{name}: expected token ids on the model's device {torch.device(device)}, got "
                         f"{idx.device} (move them with .to({str(torch.device(device))!r}))")
    if vocab_size is None or not range_check_runs(idx, check_range):
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


class CUDAGraphDecoder:
    """`model.generate` with the decoding step captured once in a CUDA graph and replayed per
    token: one launch per token instead of hundreds, what decoding at small batch needs.

        decoder = CUDAGraphDecoder(model, batch_size=B, temperature=0.0)   # captures (Triton compiles first)
        out = decoder.generate(input_ids, max_new_tokens=64)                # (B, S + 64)

    model: an `xLSTMLMModel` or `xLSTMLarge` (or any model with `prefill`, `decode_step`,
    `zero_state`) on a CUDA device, in the mode it should decode in (call `.eval()` first).
    The graph holds static token and state buffers for `batch_size` rows and the sampling
    settings; prompts must have that batch size. Same tokens as `model.generate` with
    temperature 0; sampling draws from the same distribution (the graph's own random stream).
    """

    def __init__(self, model, batch_size: int, temperature: float = 1.0, top_k: Optional[int] = None):
        device = next(model.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"CUDAGraphDecoder: the model must be on a CUDA device, got {device}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
        sample_tokens(torch.zeros(1, 1), temperature, top_k)        # argument checks
        self.model, self.batch_size, self.temperature, self.top_k = model, batch_size, temperature, top_k
        self.tokens = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.state = model.zero_state(batch_size)
        with torch.no_grad():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):                            # warm-up: Triton compiles here
                model.decode_step(self.tokens, self.state, temperature, top_k)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.next_tokens, self.next_state = model.decode_step(self.tokens, self.state, temperature, top_k)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Continue each row of `input_ids` (batch_size, S): one eager chunkwise prefill, then
        one graph replay per new token. Returns (batch_size, S + max_new_tokens)."""
        model = self.model
        check_token_ids(input_ids, "input_ids")
        if input_ids.shape[0] != self.batch_size:
            raise ValueError(f"input_ids: expected batch size {self.batch_size} (the captured graph's), "
                             f"got shape {tuple(input_ids.shape)}")
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
        device = self.tokens.device
        input_ids = input_ids.to(device)
        vocab_size = model.config.vocab_size
        check_token_ids(input_ids, "input_ids", vocab_size, device, getattr(model, "check_token_range", True))
        if max_new_tokens == 0:
            return input_ids
        logits, state = model.prefill(input_ids)
        copy_state_(self.state, state)
        self.tokens.copy_(sample_tokens(logits, self.temperature, self.top_k))
        out = [self.tokens.clone()]
        for _ in range(max_new_tokens - 1):
            self.graph.replay()
            self.tokens.copy_(self.next_tokens)
            copy_state_(self.state, self.next_state)
            out.append(self.tokens.clone())
        return torch.cat([input_ids, torch.stack(out, dim=1).to(input_ids.dtype)], dim=1)

