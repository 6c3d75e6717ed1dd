"""mLSTM chunkwise kernels vs peers vs causal attention, at 65,536 tokens per batch.

Geometries (`GEOMETRIES`): the xLSTM-7B heads (NH=8, DQK=256, DV=512) at S = 2048, 8192, 32768,
the TFLA paper's heads (NH=16, DQK=128, DV=256) at S = 8192, and the heads of the two model
families at E=1024 that `bench model` trains, at S = 2048 and 8192: the paper LM's 4 heads of
(512, 512) and xLSTMLarge's 4 heads of (128, 256). Attention runs 32 heads of 128 at the same
batch and sequence length. Every case carries its design floor (`forward_floor_ms`): the
chunkwise forward's FLOPs over the matmul ceiling or its unique bytes over the copy ceiling,
whichever is larger (bench/harness/ceilings.py), and `floor_fwbw_ms` = 3.5x that (the backward
recomputes the chunk states and runs about 2.5 forwards of work).
"""

from __future__ import annotations

import torch

from bench.harness import Provider, device
from bench.harness.ceilings import TBPS, TFLOPS
from bench.harness.setups import attention_call, fw_fwbw

TOKENS = 65536
GEOMETRIES = {"7B": dict(NH=8, DQK=256, DV=512), "TFLA": dict(NH=16, DQK=128, DV=256),
              "paper": dict(NH=4, DQK=512, DV=512),          # paper LM at E=1024 (inner 2048, 4 heads)
              "large1024": dict(NH=4, DQK=128, DV=256)}      # xLSTMLarge at E=1024, 4 heads
FWBW_PER_FW = 3.5


def forward_floor_ms(B, NH, S, DQK, DV, chunk, tile, element_size=2) -> dict:
    """The chunkwise forward's floors in ms, per stage (states, output) and in all: FLOPs of this
    algorithm (causal tiles counted at their average) over TFLOPS, unique bytes over TBPS."""
    T = B * NH * S
    state_bytes = B * NH * (-(-S // chunk)) * DQK * DV * element_size
    tiles_avg = (chunk // tile + 1) / 2 * tile
    fl_states = 2 * T * DQK * DV
    fl_out = 2 * T * DQK * DV + 2 * T * tiles_avg * (DQK + DV)
    by_states = T * (DQK + DV) * element_size + state_bytes
    by_out = T * (2 * DQK + 2 * DV) * element_size + state_bytes
    floor = lambda fl, by: max(fl / TFLOPS, by / TBPS) * 1e3
    states, output = floor(fl_states, by_states), floor(fl_out, by_out)
    return dict(states=states, output=output, fw=states + output)


def _case(geometry, S, tokens=TOKENS):
    from xlstm_triton.ops.mlstm.op import default_chunk_size, make_config
    g = GEOMETRIES[geometry]
    B = max(1, tokens // S)
    L = default_chunk_size(S)
    cfg = make_config(S, g["DQK"], g["DV"], torch.bfloat16, L)
    fw = forward_floor_ms(B, g["NH"], S, g["DQK"], g["DV"], L, cfg.tile)["fw"]
    return dict(geometry=geometry, B=B, S=S, **g, floor_fw_ms=round(fw, 4), floor_fwbw_ms=round(FWBW_PER_FW * fw, 4))


def cases(quick: bool = False) -> list[dict]:
    out = [_case("7B", S) for S in (2048, 8192, 32768)] + [_case("TFLA", 8192)]
    out += [_case(g, S) for g in ("paper", "large1024") for S in (2048, 8192)]
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
