"""Packed documents vs padding vs fixed-length rows: the mLSTM op and a model training step.

One document mix: lengths drawn from a log-normal with median 1,024 tokens (sigma 1.0, seed 0),
clipped to [16, 16384], drawn until they fill 65,536 tokens (the last one cut to fit). Three
layouts of the same tokens:
  packed    one row (1, 65536) with `cu_seqlens`: every document from a zero state, nothing
            crosses a boundary (what the issue is about)
  padded    one row per document, padded to the longest one: (N, max_len), the usual fallback
  fixed     rows of 4,096 tokens (16, 4096) that ignore the document boundaries: the throughput
            packed documents should keep (same tokens, same shapes for every kernel but the gates)
`tokens_per_s` counts the 65,536 real tokens in every layout (padding is waste).

Providers:
  mlstm_op      `mlstm_chunkwise` forward+backward at the xLSTM-7B head geometry (NH=8, DQK=256,
                DV=512), bf16; packed offsets checked once (`checked_cu_seqlens`), as a model
                passes them to its layers
  xlstm_large   one AdamW step of `xLSTMLarge` (E=1024, 12 blocks, 4 heads, vocabulary 50,304,
                loss from `labels`), as `python -m bench model` runs it; padded rows get -100
                labels on the padding; packed offsets on the GPU, checked once before the
                steps (`checked_cu_seqlens`), an input of the step like the tokens
Both report `peak_above_start_mib` beside the peak: what a call allocates beyond the weights,
the optimizer state and its inputs (the packed inputs hold the offsets too: N + 1 int32, one
512-byte allocator block).
"""

from __future__ import annotations

import math

import torch

from bench.harness import Provider, device

TOKENS = 65536
FIXED_CTX = 4096
MEDIAN, SIGMA, LO, HI = 1024, 1.0, 16, 16384
LAYOUTS = ("packed", "padded", "fixed")


def document_lengths(tokens: int = TOKENS, seed: int = 0) -> list[int]:
    """The document mix (module docstring): lengths summing to `tokens`."""
    g = torch.Generator().manual_seed(seed)
    out, total = [], 0
    while total < tokens:
        n = int(min(HI, max(LO, round(math.exp(math.log(MEDIAN) + SIGMA * torch.randn((), generator=g).item())))))
        n = min(n, tokens - total)
        out.append(n)
        total += n
    return out


def cases(quick: bool = False) -> list[dict]:
    if quick:
        return [dict(level=level, layout=layout, tokens=256, fixed_ctx=64, quick=True)
                for level in ("op", "model") for layout in LAYOUTS]
    return [dict(level=level, layout=layout, tokens=TOKENS, fixed_ctx=FIXED_CTX)
            for level in ("op", "model") for layout in LAYOUTS]


def _layout(case, dev):
    """(B, S), cu_seqlens (on the host) or None, and the (B, S) mask of real tokens for the case's layout."""
    lengths = document_lengths(case["tokens"])
    if case["layout"] == "packed":
        cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
        return (1, case["tokens"]), cu, None, lengths
    if case["layout"] == "fixed":
        return (case["tokens"] // case["fixed_ctx"], case["fixed_ctx"]), None, None, lengths
    longest = max(lengths)
    real = torch.arange(longest, device=dev)[None] < torch.tensor(lengths, device=dev)[:, None]
    return (len(lengths), longest), None, real, lengths


def _columns(case, lengths, shape):
    def columns(ms):
        return dict(tokens_per_s=round(case["tokens"] / ms * 1e3, 1), documents=len(lengths),
                    longest=max(lengths), rows=shape[0], row_len=shape[1])
    return columns


def _mlstm_op(case, mode, dtype):
    from xlstm_triton import mlstm_chunkwise
    from xlstm_triton.checks import checked_cu_seqlens
    dev = device()
    (B, S), cu, _, lengths = _layout(case, dev)
    NH, DQK, DV = (2, 16, 32) if case.get("quick") else (8, 256, 512)
    grad = mode == "fwbw"
    q, k = (torch.randn(B, NH, S, DQK, device=dev, dtype=dtype, requires_grad=grad) for _ in range(2))
    v = torch.randn(B, NH, S, DV, device=dev, dtype=dtype, requires_grad=grad)
    i = torch.randn(B, NH, S, device=dev, dtype=dtype, requires_grad=grad)
    f = (torch.randn(B, NH, S, device=dev, dtype=dtype) + 3).requires_grad_(grad)
    dh = torch.randn(B, NH, S, DV, device=dev, dtype=dtype)
    if cu is not None:
        # Checked once, as a model does per step for its layers: no host read of the offsets
        # (a wait for the GPU) in each call.
        cu = checked_cu_seqlens(cu, S, dev)

    def run():
        if grad:
            mlstm_chunkwise(q, k, v, i, f, cu_seqlens=cu).backward(dh)
        else:
            with torch.no_grad():
                mlstm_chunkwise(q, k, v, i, f, cu_seqlens=cu)
    run.grad_to_none = [q, k, v, i, f] if grad else []
    run.columns = _columns(case, lengths, (B, S))
    run.report_peak_above_start = True
    return run


def _xlstm_large_step(case, mode, dtype):
    from xlstm_triton.checks import checked_cu_seqlens
    from xlstm_triton.models import xLSTMLarge, xLSTMLargeConfig
    dev = device()
    (B, S), cu, real, lengths = _layout(case, dev)
    if case.get("quick"):
        cfg = xLSTMLargeConfig(vocab_size=256, embedding_dim=64, num_blocks=2, num_heads=2, chunk_size=16)
    else:
        cfg = xLSTMLargeConfig(vocab_size=50304, embedding_dim=1024, num_blocks=12, num_heads=4, weight_mode="fused")
    with torch.device(dev):
        model = xLSTMLarge(cfg)
    model = model.to(dtype=dtype).train()
    model.check_token_range = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=dev == "cuda")
    tokens = torch.randint(0, cfg.vocab_size, (B, S), device=dev)
    labels = tokens if real is None else torch.where(real, tokens, -100)
    if cu is not None:      # checked from the host values once; the steps neither read nor copy them
        cu = checked_cu_seqlens(cu, S, dev)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model(tokens, labels=labels, cu_seqlens=cu)
        loss.backward()
        optimizer.step()
    step.columns = _columns(case, lengths, (B, S))
    step.report_peak_above_start = True
    step.rep_ms = 3000
    return step


def providers() -> list[Provider]:
    return [
        Provider("mlstm_op", _mlstm_op, modes=("fwbw",), applies=lambda case: case["level"] == "op",
                 one_case_per_worker=True),
        Provider("xlstm_large", _xlstm_large_step, modes=("train",), applies=lambda case: case["level"] == "model",
                 one_case_per_worker=True),
    ]


TABLE_KEYS = ["level", "layout"]
