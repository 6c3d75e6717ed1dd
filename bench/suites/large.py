"""xLSTM-7B in Hugging Face transformers: prefill tokens/s and decoding ms/token.

Model: a random-weight `transformers` xLSTMForCausalLM at the 7B shape (E=4096, 8 heads of
DQK=256 / DV=512, FFN 10944, vocabulary 50,304, 32 blocks: 6.9B parameters, 13.7 GB in bf16),
built once per provider process. BENCH_LARGE_LAYERS=n builds n blocks instead (for a GPU with
less memory); the `layers` column says how many ran and `ms_per_layer` divides by it.

Providers (one process each):
  transformers                 its native PyTorch mLSTM backend (mlstm_kernels' `native`
                               kernels when the `xlstm` package is installed, else its built-in)
  transformers+mlstm_kernels   its config selecting mlstm_kernels' Triton kernels, as the 7B
                               config does (chunkwise--triton_xl_chunk, chunk 128,
                               native_sequence__triton, triton step; DISABLE_LLVM_OPT=1).
                               transformers uses these only through the `xlstm` package
  transformers+xlstm_triton    `use_xlstm_triton(model)`: the same model on our kernels, its
                               blocks' forwards ours (fused norms, gates and activation)
  transformers+xlstm_triton:backend   `use_xlstm_triton(model, fuse_blocks=False)`: only the
                               mLSTM cell swapped (transformers' own block code around it)
  xlstm_triton.xLSTMLarge      our model built from the same weights (`from_transformers`),
                               in the "fused" weight mode (q|k|v|o and gate|up as one GEMM each)
  *+graph                      decoding only: the one-token forward captured in a CUDA graph

Phases (the `phase` column; mode "fw"):
  prefill  one forward of B x ctx tokens through the backbone with a fresh cache, plus the LM
           head on the last position (what generation's first call needs); ctx 2k, 8k, 32k at
           B=1. `tokens_per_s` = B * ctx / time.
  decode   one token per sequence with a state (transformers: its xLSTMCache, bfloat16, as
           `generate` makes it; xLSTMLarge: float32 buffers it updates in place), the forward
           including the LM head, B = 1 and 16; ms is per token.
           `floor_ms`: the weights (less the embedding) read once and the float32 state read
           and written once at the 3.0 TB/s HBM copy rate of bench/NOTES.md (the goal:
           within 1.3x of it).

Run: `python -m bench large [--quick]`.
"""

from __future__ import annotations

import gc
import os

import torch

from bench.harness import Provider, Unavailable, device, require_cuda, require_module
from bench.harness.ceilings import TBPS

SHAPE_7B = dict(E=4096, NH=8, vocab=50304, layers=32)
TINY = dict(E=128, NH=2, vocab=256, layers=2)          # --quick: runs on a CPU


def _ffn_dim(E: int) -> int:
    return int(((E * 2.667 + 63) // 64) * 64)


def _params_per_layer(E: int, NH: int) -> int:
    qk, v, F = E // 2, E, _ffn_dim(E)
    return 2 * qk * E + 3 * v * E + 2 * (NH * E + NH) + 3 * F * E + 3 * E


def _floor_ms(case: dict, weight_bytes_per_param: int = 2) -> float:
    E, NH, V, L, B = case["E"], case["NH"], case["vocab"], case["layers"], case["B"]
    weights = (L * _params_per_layer(E, NH) + V * E + E) * weight_bytes_per_param
    DQK, DV = E // 2 // NH, E // NH
    state = L * B * NH * (DQK * DV + DQK + 1) * 4
    return round((weights + 2 * state) / TBPS * 1e3, 4)


def cases(quick: bool = False) -> list[dict]:
    shape = dict(TINY) if quick else dict(SHAPE_7B, layers=int(os.environ.get("BENCH_LARGE_LAYERS", 32)))
    prefill = (64, 80) if quick else (2048, 8192, 32768)
    out = [dict(phase="prefill", B=1, ctx=S, **shape) for S in prefill]
    for B in ((1, 2) if quick else (1, 16)):
        c = dict(phase="decode", B=B, ctx=1, **shape)
        out.append(dict(c, floor_ms=_floor_ms(c)))
    return out


# ------------------------------------------------------------------ models (one per process)

_CACHE: dict = {}


def _hf_model(case: dict, dtype: torch.dtype, backend: str):
    """A random-weight transformers xLSTMForCausalLM for `case`, in eval mode, kept across
    the cases of this process. backend: "native", "mlstm_kernels", "xlstm_triton" (blocks
    fused) or "xlstm_triton:backend" (the mLSTM backends only)."""
    key = (backend, case["E"], case["NH"], case["vocab"], case["layers"], dtype)
    if key in _CACHE:
        return _CACHE[key]
    _CACHE.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    require_module("transformers")
    from transformers import xLSTMConfig, xLSTMForCausalLM
    kernels = {}
    if backend == "mlstm_kernels":
        from transformers.utils import is_xlstm_available
        require_cuda("mlstm_kernels' Triton kernels")
        require_module("mlstm_kernels")
        if not is_xlstm_available():
            raise Unavailable("transformers selects mlstm_kernels only through the xlstm package "
                              "(pip install xlstm mlstm_kernels)")
        kernels = dict(chunkwise_kernel="chunkwise--triton_xl_chunk", sequence_kernel="native_sequence__triton",
                       step_kernel="triton", chunk_size=128)
    cfg = xLSTMConfig(vocab_size=case["vocab"], hidden_size=case["E"], num_hidden_layers=case["layers"],
                      num_heads=case["NH"], mode="inference", **kernels)
    with torch.device(device()):
        model = xLSTMForCausalLM._from_config(cfg, dtype=dtype).eval()
    if backend.startswith("xlstm_triton"):
        from xlstm_triton.integrations.transformers import use_xlstm_triton
        use_xlstm_triton(model, fuse_blocks=backend != "xlstm_triton:backend")
    _CACHE[key] = model
    return model


def _ours(case: dict, dtype: torch.dtype):
    """Our xLSTMLarge with the weights of the native transformers model, in the fused weight
    mode (concatenated copies; the transformers model is dropped)."""
    key = ("ours", case["E"], case["NH"], case["vocab"], case["layers"], dtype)
    if key not in _CACHE:
        from xlstm_triton.models import xLSTMLarge
        hf = _hf_model(case, dtype, "native")
        ours = xLSTMLarge.from_transformers(hf, weight_mode="fused").eval()
        ours.check_token_range = False     # no host sync per decoded token (ids made in range)
        _CACHE.clear()
        _CACHE[key] = ours
    return _CACHE[key]


def _columns(case: dict):
    def columns(ms: float) -> dict:
        out = dict(ms_per_layer=round(ms / case["layers"], 4))
        if case["phase"] == "prefill":
            out["tokens_per_s"] = round(case["B"] * case["ctx"] / ms * 1e3)
        return out
    return columns


# ------------------------------------------------------------------ runners

class _Call:
    """A zero-argument benchmark function with the harness's optional attributes."""

    rep_ms = 2000       # a 2k prefill takes ~70 ms: 200 ms would give a median of two calls

    def __init__(self, fn, case, keep=()):
        self.fn, self.columns, self.keep = fn, _columns(case), keep

    def __call__(self):
        self.fn()


def _runner(get_model, prefill, decode_step, graph: bool):
    """A provider setup: random ids of the case's shape, then for "prefill" one
    `prefill(model, ids)` call, for "decode" the step `decode_step(model, ids, dtype)` returns
    (a zero-argument function and the buffers it updates), optionally as a CUDA graph."""
    def setup(case, mode, dtype):
        if graph:
            require_cuda("a CUDA graph")
        model = get_model(case, dtype)
        ids = torch.randint(0, case["vocab"], (case["B"], case["ctx"]), device=model.lm_head.weight.device)
        if case["phase"] == "prefill":
            return _Call(lambda: prefill(model, ids), case)
        step, state = decode_step(model, ids, dtype)
        # the graph reads what step closes over (the model, its buffers): keep step alive with it
        return _Call(_graphed(step) if graph else step, case, keep=(state, ids, step))
    return setup


@torch.inference_mode()
def _hf_prefill(model, ids):
    out = model.backbone(input_ids=ids, use_cache=True)
    model.lm_head(out.last_hidden_state[:, -1:])


def _hf_decode_step(model, ids, dtype):
    from transformers.models.xlstm.modeling_xlstm import xLSTMCache

    cache = xLSTMCache(model.config, ids.shape[0], dtype=dtype, device=ids.device)   # what generate() makes

    def step():
        with torch.inference_mode():
            return model(input_ids=ids, cache_params=cache, use_cache=True).logits
    return step, cache


@torch.inference_mode()
def _ours_prefill(model, ids):
    x, _ = model.backbone(model.embedding(ids), return_state=True)
    model.lm_head(x[:, -1:])


def _ours_decode_step(model, ids, dtype):
    state = model.zero_state(ids.shape[0])                   # float32, updated in place

    def step():
        with torch.inference_mode():
            return model(ids, state, update_state=True)
    return step, state


def _hf_runner(backend: str, graph: bool = False):
    return _runner(lambda case, dtype: _hf_model(case, dtype, backend), _hf_prefill, _hf_decode_step, graph)


def _ours_runner(graph: bool = False):
    return _runner(_ours, _ours_prefill, _ours_decode_step, graph)


def _graphed(step):
    """`step` captured in a CUDA graph after two warm-up calls (Triton compiles there)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def _decode_only(case) -> bool:
    return case["phase"] == "decode"


def providers() -> list[Provider]:
    fw = dict(modes=("fw",), timeout_s=3600.0)
    graph = dict(fw, applies=_decode_only)
    return [
        Provider("transformers", _hf_runner("native"), **fw),
        Provider("transformers+mlstm_kernels", _hf_runner("mlstm_kernels"), env={"DISABLE_LLVM_OPT": "1"}, **fw),
        Provider("transformers+xlstm_triton", _hf_runner("xlstm_triton"), **fw),
        Provider("transformers+xlstm_triton:backend", _hf_runner("xlstm_triton:backend"), **fw),
        Provider("xlstm_triton.xLSTMLarge", _ours_runner(), **fw),
        Provider("transformers+mlstm_kernels+graph", _hf_runner("mlstm_kernels", graph=True),
                 env={"DISABLE_LLVM_OPT": "1"}, **graph),
        Provider("transformers+xlstm_triton+graph", _hf_runner("xlstm_triton", graph=True), **graph),
        Provider("xlstm_triton.xLSTMLarge+graph", _ours_runner(graph=True), **graph),
    ]


TABLE_KEYS = ["phase", "B", "ctx", "layers", "floor_ms"]
