"""mLSTM chunkwise kernels vs peers vs causal attention, at 65,536 tokens per batch (SPEC.md 5).

Geometries: the xLSTM-7B heads (NH=8, DQK=256, DV=512) at S = 2048, 8192, 32768 and the TFLA
paper's heads (NH=16, DQK=128, DV=256) at S = 8192. Attention runs 32 heads of 128 at the same
batch and sequence length.
"""

from __future__ import annotations

import torch

from bench.harness import Provider, device

TOKENS = 65536


def cases(quick: bool = False) -> list[dict]:
    out = []
    for S in (2048, 8192, 32768):
        out.append(dict(geometry="7B", B=TOKENS // S, NH=8, S=S, DQK=256, DV=512))
    out.append(dict(geometry="TFLA", B=TOKENS // 8192, NH=16, S=8192, DQK=128, DV=256))
    if quick:
        out = [dict(c, B=1) for c in out[:2]]
    return out


def _mlstm_inputs(case, dtype, requires_grad):
    B, NH, S, DQK, DV = (case[k] for k in ("B", "NH", "S", "DQK", "DV"))
    dev = device()
    q = torch.randn(B, NH, S, DQK, device=dev, dtype=dtype)
    k = torch.randn(B, NH, S, DQK, device=dev, dtype=dtype)
    v = torch.randn(B, NH, S, DV, device=dev, dtype=dtype)
    i = torch.randn(B, NH, S, device=dev, dtype=dtype)
    f = torch.randn(B, NH, S, device=dev, dtype=dtype) + 3.0
    ins = [q, k, v, i, f]
    for t in ins:
        t.requires_grad_(requires_grad)
    return ins


def _runner(kernel, case, mode, dtype, **kw):
    ins = _mlstm_inputs(case, dtype, mode == "fwbw")
    if mode == "fw":
        def fn():
            with torch.no_grad():
                kernel(*ins, **kw)
        return fn
    dh = torch.randn(case["B"], case["NH"], case["S"], case["DV"], device=ins[0].device, dtype=dtype)

    def fn():
        kernel(*ins, **kw).backward(dh)
    fn.grad_to_none = ins
    return fn


def _mlstm_kernels(name, **kw):
    def setup(case, mode, dtype):
        from mlstm_kernels.torch import get_mlstm_kernel
        return _runner(get_mlstm_kernel(name), case, mode, dtype, **kw)
    return setup


def _ours(case, mode, dtype):
    from xlstm_triton import mlstm_chunkwise
    return _runner(mlstm_chunkwise, case, mode, dtype)


def _attention(backend_name, shape_of=lambda case: (case["B"], 32, case["S"], 128)):
    """Causal SDPA with one backend forced; `shape_of(case)` gives q/k/v's (B, heads, S, dim)."""
    def setup(case, mode, dtype):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        import torch.nn.functional as F

        backend = getattr(SDPBackend, backend_name)
        shape = shape_of(case)
        grad = mode == "fwbw"
        q, k, v = (torch.randn(shape, device="cuda", dtype=dtype, requires_grad=grad) for _ in range(3))

        def attn():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if mode == "fw":
            def fn():
                with torch.no_grad():
                    attn()
            return fn
        dout = torch.randn(shape, device="cuda", dtype=dtype)

        def fn():
            attn().backward(dout)
        fn.grad_to_none = [q, k, v]
        return fn
    return setup


def _skip_long(max_s):
    return lambda case: f"S > {max_s}: minutes per call" if case["S"] > max_s else None


def providers() -> list[Provider]:
    return [
        Provider("xlstm_triton", _ours),
        # Triton 3.6's LLVM aborts on xl_chunk (SLP vectorizer) unless its optimizer is off.
        Provider("mlstm_kernels.xl_chunk", _mlstm_kernels("chunkwise--triton_xl_chunk", chunk_size=128),
                 env={"DISABLE_LLVM_OPT": "1"}),
        Provider("mlstm_kernels.limit_chunk", _mlstm_kernels("chunkwise--triton_limit_chunk", chunk_size=64)),
        Provider("mlstm_kernels.xl_chunk_siging", _mlstm_kernels("chunkwise--triton_xl_chunk_siging", chunk_size=128),
                 env={"DISABLE_LLVM_OPT": "1"}),
        Provider("mlstm_kernels.native_autograd", _mlstm_kernels("chunkwise--native_autograd", chunk_size=64),
                 skip=_skip_long(8192)),
        Provider("sdpa_flash", _attention("FLASH_ATTENTION")),
        Provider("sdpa_cudnn", _attention("CUDNN_ATTENTION")),
    ]


TABLE_KEYS = ["geometry", "S"]
