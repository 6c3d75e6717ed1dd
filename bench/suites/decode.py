"""Decoding: per-token latency and memory of one layer vs context length.

One layer of hidden size E=1024 (the `model` suite's width) advances one token per sequence:
  xLSTM: the paper's mLSTM layer (`xlstm_triton.nn.mLSTMLayer`: up-projection to 2048, conv,
         4 heads of 512, `mlstm_step`, down-projection). Its state has a fixed size, so the
         context length is only a label: the cost should be flat.
  attention: q/k/v projection, RoPE, the new k, v written into a KV cache of ctx+1 positions,
         SDPA of the one query over the whole cache, output projection; 16 heads x 64. Its cost
         grows with the cache.
at ctx = 1k .. 64k and batch 1 and 16. Each provider captures 16 steps in one CUDA graph (how a
decoder runs them; without the graph, Python's launch cost dominates a step at batch 1) and
reports the time per step; memory is the peak of one replay: weights, state or KV cache, the
graph's buffers. Without CUDA the steps run eagerly (smoke tests).

Columns besides the harness's: params (the layer's), state_bytes (the recurrent state or the KV
cache of the batch), floor_ms (weights read once + state read and written once, or + the KV
cache read once, at the 3.0 TB/s HBM copy rate of bench/NOTES.md). The xLSTM rows use a zero
state: the step's work does not depend on the state's values.
"""

from __future__ import annotations

import torch

from bench.harness import Provider, device, require_cuda
from bench.harness.ceilings import TBPS

STEPS = 16              # decoding steps captured in one CUDA graph
E, MLSTM_HEADS, ATTENTION_HEAD_DIM = 1024, 4, 64
CONTEXTS = (1024, 2048, 4096, 8192, 16384, 32768, 65536)


def cases(quick: bool = False) -> list[dict]:
    if quick:
        return [dict(E=64, B=B, ctx=ctx, mlstm_heads=2, attn_head_dim=16) for B in (1, 2) for ctx in (16, 64)]
    return [dict(E=E, B=B, ctx=ctx, mlstm_heads=MLSTM_HEADS, attn_head_dim=ATTENTION_HEAD_DIM)
            for B in (1, 16) for ctx in CONTEXTS]


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _weight_bytes(module) -> int:
    return _nbytes(module.parameters())


_STREAM = []     # one side stream per process: each new stream would get its own cuBLAS workspace


def _side_stream():
    if not _STREAM:
        _STREAM.append(torch.cuda.Stream())
    return _STREAM[0]


class _Steps:
    """Runs `STEPS` decoding steps per call: a CUDA graph replay on a GPU, eager on a CPU.
    `step(state) -> state` must keep the state's shapes. Holds `step` (and so the weights,
    inputs and caches it closes over) and the states for as long as the graph may replay."""

    calls_per_run = STEPS

    def __init__(self, step, state, columns):
        self.columns = columns
        self.step = step
        self.state = state
        self.graph = None
        if not torch.cuda.is_available():
            return
        stream = _side_stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():     # compile / autotune / cuBLAS setup
            for _ in range(2):
                step(state)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=stream), torch.no_grad():
            for _ in range(STEPS):
                state = step(state)
        self.graph_output = state

    def __call__(self):
        if self.graph is not None:
            self.graph.replay()
            return
        with torch.no_grad():
            state = self.state
            for _ in range(STEPS):
                state = self.step(state)


def _columns(layer, state_tensors, extra_read_bytes=0, state_written=True):
    weights = _weight_bytes(layer)
    state = _nbytes(state_tensors)
    traffic = weights + state * (2 if state_written else 1) + extra_read_bytes
    return dict(params=sum(p.numel() for p in layer.parameters()),
                state_bytes=state, floor_ms=round(traffic / TBPS * 1e3, 6))


def _xlstm_triton_layer(case, mode, dtype):
    from xlstm_triton.nn import mLSTMLayer, mLSTMLayerConfig

    dev = device()
    cfg = mLSTMLayerConfig(embedding_dim=case["E"], num_heads=case["mlstm_heads"])
    layer = mLSTMLayer(cfg).to(device=dev, dtype=dtype).eval()
    x = torch.randn(case["B"], 1, case["E"], device=dev, dtype=dtype)
    state = layer.zero_state(case["B"])

    def step(state):
        return layer.step(x, state)[1]
    return _Steps(step, state, _columns(layer, state))


def _xlstm_package_layer(case, mode, dtype):
    """The `xlstm` package's mLSTM layer and its PyTorch step (state in the model's dtype)."""
    from xlstm import mLSTMLayer, mLSTMLayerConfig

    dev = device()
    cfg = mLSTMLayerConfig(embedding_dim=case["E"], num_heads=case["mlstm_heads"], context_length=1)
    layer = mLSTMLayer(cfg).to(device=dev, dtype=dtype).eval()
    x = torch.randn(case["B"], 1, case["E"], device=dev, dtype=dtype)
    with torch.no_grad():
        _, state = layer.step(x)                    # the package allocates its own state
    state = (state["mlstm_state"], state["conv_state"])

    def step(state):
        _, new = layer.step(x, mlstm_state=state[0], conv_state=state[1])
        return new["mlstm_state"], new["conv_state"]
    return _Steps(step, state, _columns(layer, [*state[0], *state[1]]))


def _attention_layer(backend_name):
    """The Transformer baseline's attention (bench/baselines/transformer.py) decoding one token
    at position ctx over a KV cache of ctx+1 positions; `backend_name` None: SDPA's own choice."""
    def setup(case, mode, dtype):
        import contextlib

        from torch.nn.attention import SDPBackend, sdpa_kernel

        from bench.baselines.transformer import Attention, TransformerConfig, rope_tables

        if backend_name is not None:
            require_cuda(f"SDPA {backend_name}")
        dev = device()
        B, ctx = case["B"], case["ctx"]
        cfg = TransformerConfig(vocab_size=1, embedding_dim=case["E"], head_dim=case["attn_head_dim"])
        attn = Attention(cfg).to(device=dev, dtype=dtype).eval()
        cache_shape = (B, cfg.num_heads, ctx + 1, cfg.head_dim)
        k_cache = torch.randn(cache_shape, device=dev, dtype=dtype)
        v_cache = torch.randn(cache_shape, device=dev, dtype=dtype)
        x = torch.randn(B, 1, case["E"], device=dev, dtype=dtype)
        cos, sin = rope_tables(torch.tensor([ctx], device=dev), cfg.head_dim, cfg.rope_base, dtype)
        def backend():
            return sdpa_kernel(getattr(SDPBackend, backend_name)) if backend_name else contextlib.nullcontext()

        def step(state):
            with backend():
                attn.decode(x, k_cache, v_cache, ctx, cos, sin)
            return state
        columns = _columns(attn, [k_cache, v_cache], state_written=False)
        return _Steps(step, None, columns)
    return setup


def providers() -> list[Provider]:
    one_mode = dict(modes=("step",))
    return [
        Provider("xlstm_triton.mLSTMLayer", _xlstm_triton_layer, **one_mode),
        Provider("xlstm.mLSTMLayer", _xlstm_package_layer, **one_mode),
        Provider("attention.sdpa", _attention_layer(None), **one_mode),
        Provider("attention.sdpa_flash", _attention_layer("FLASH_ATTENTION"), **one_mode),
        Provider("attention.sdpa_efficient", _attention_layer("EFFICIENT_ATTENTION"), **one_mode),
        Provider("attention.sdpa_cudnn", _attention_layer("CUDNN_ATTENTION"), **one_mode),
    ]


TABLE_KEYS = ["B", "ctx"]
