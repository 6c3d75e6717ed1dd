"""mLSTM chunkwise kernels vs peers vs causal attention, at 65,536 tokens per batch.

Geometries: the xLSTM-7B heads (NH=8, DQK=256, DV=512) at S = 2048, 8192, 32768 and the TFLA
paper's heads (NH=16, DQK=128, DV=256) at S = 8192. Attention runs 32 heads of 128 at the same
batch and sequence length.
"""

from __future__ import annotations

import torch

from bench.harness import Provider, device
from bench.harness.setups import attention_call, fw_fwbw

TOKENS = 65536


def cases(quick: bool = False) -> list[dict]:
    out = []
    for S in (2048, 8192, 32768):
        out.append(dict(geometry="7B", B=TOKENS // S, NH=8, S=S, DQK=256, DV=512))
    out.append(dict(geometry="TFLA", B=TOKENS // 8192, NH=16, S=8192, DQK=128, DV=256))
    if quick:
        out = [dict(c, B=1) for c in out[:2]]
    return out


def mlstm_inputs(case, dtype, requires_grad):
    """q, k, v, i, f of the case's shape (f shifted by +3: forget gates mostly open)."""
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
    ins = mlstm_inputs(case, dtype, mode == "fwbw")
    return fw_fwbw(lambda: kernel(*ins, **kw), mode,
                   lambda: torch.randn(case["B"], case["NH"], case["S"], case["DV"], device=ins[0].device, dtype=dtype),
                   ins)


def mlstm_kernels_chunkwise(name, **kw):
    """Setup of mlstm_kernels' kernel `name` (keywords: its chunk_size); the kernels suite too."""
    def setup(case, mode, dtype):
        from mlstm_kernels.torch import get_mlstm_kernel
        return _runner(get_mlstm_kernel(name), case, mode, dtype, **kw)
    return setup


def ours(case, mode, dtype):
    """Setup of xlstm_triton's mlstm_chunkwise; the kernels suite uses it too."""
    from xlstm_triton import mlstm_chunkwise
    return _runner(mlstm_chunkwise, case, mode, dtype)


def sdpa(backend_name, shape_of=lambda case: (case["B"], 32, case["S"], 128)):
    """Causal SDPA with one backend forced; `shape_of(case)` gives q/k/v's (B, heads, S, dim)."""
    def setup(case, mode, dtype):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        import torch.nn.functional as F

        backend = getattr(SDPBackend, backend_name)

        def attend(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return attention_call(attend, shape_of(case), mode, dtype)
    return setup


def _skip_long(max_s):
    return lambda case: f"S > {max_s}: minutes per call" if case["S"] > max_s else None


def providers() -> list[Provider]:
    return [
        Provider("xlstm_triton", ours),
        # Triton 3.6's LLVM aborts on xl_chunk (SLP vectorizer) unless its optimizer is off.
        Provider("mlstm_kernels.xl_chunk", mlstm_kernels_chunkwise("chunkwise--triton_xl_chunk", chunk_size=128),
                 env={"DISABLE_LLVM_OPT": "1"}),
        Provider("mlstm_kernels.limit_chunk", mlstm_kernels_chunkwise("chunkwise--triton_limit_chunk", chunk_size=64)),
        Provider("mlstm_kernels.xl_chunk_siging", mlstm_kernels_chunkwise("chunkwise--triton_xl_chunk_siging", chunk_size=128),
                 env={"DISABLE_LLVM_OPT": "1"}),
        Provider("mlstm_kernels.native_autograd", mlstm_kernels_chunkwise("chunkwise--native_autograd", chunk_size=64),
                 skip=_skip_long(8192)),
        Provider("sdpa_flash", sdpa("FLASH_ATTENTION")),
        Provider("sdpa_cudnn", sdpa("CUDNN_ATTENTION")),
    ]


TABLE_KEYS = ["geometry", "S"]
