"""mLSTM and sLSTM kernels vs causal attention vs peer kernels, over sequence length at a fixed
number of tokens per batch (B*S = 65,536).

Every case names a kernel family and a head geometry :
  mlstm      7B (NH=8, DQK=256, DV=512) and TFLA (NH=16, DQK=128, DV=256)
  slstm      12x64 and 3x256 (hidden 768, NH x DH; DQK = DV = DH in the CSV)
  attention  32x128 (hidden 4096: the mLSTM geometries' NH*DV) and 12x64 (hidden 768: the
             sLSTM's), causal
at S = 512, 2048, 8192, 32768, 65536. The plot puts each recurrent geometry beside the
attention of the same hidden size (NH*DV). Modes: fw (forward), fwbw (forward + backward).

Providers: xlstm_triton (`mlstm_chunkwise`, `slstm`); mlstm_kernels' fastest chunkwise Triton
kernel, `xl_chunk` (DISABLE_LLVM_OPT=1; its time does not depend on S at fixed tokens, so it
runs at S = 512, 8192, 65536); flashrnn's `triton_fused` sLSTM (12x64 at every S; 3x256 once:
it needs more shared memory than an H100 has); SDPA with the flash and the cuDNN backend; the
flash_attn (FlashAttention 2) and flash_attn_interface (FlashAttention 3) packages, only when
installed (the CSV's `peers` column lists what was). `limit_chunk`, the sigmoid-gate and
PyTorch-native mLSTM peers, flashrnn's CUDA kernel and cuDNN LSTM are in the `mlstm` and
`slstm` suites. About 4 minutes on an H100, Triton's compilation included.
"""

from __future__ import annotations

import importlib.util

from bench.harness import Provider, require_cuda, require_module
from bench.harness.setups import attention_call
from bench.suites import mlstm, slstm

TOKENS = 65536
LENGTHS = (512, 2048, 8192, 32768, 65536)
MLSTM_GEOMETRIES = {"7B": (8, 256, 512), "TFLA": (16, 128, 256)}     # NH, DQK, DV
SLSTM_GEOMETRIES = {"12x64": (12, 64), "3x256": (3, 256)}             # NH, DH
ATTENTION_GEOMETRIES = {"32x128": (32, 128), "12x64": (12, 64)}      # heads, head dim


def _case(kernel, geometry, S, NH, DQK, DV, tokens=TOKENS):
    return dict(kernel=kernel, geometry=geometry, B=tokens // S, S=S, NH=NH, DQK=DQK, DV=DV,
                hidden=NH * DV)


def cases(quick: bool = False) -> list[dict]:
    if quick:   # tiny shapes for a CPU smoke test; hidden 64 everywhere
        return [_case(kernel, geom, S, *dims, tokens=128) for S in (32, 64)
                for kernel, geom, dims in (("mlstm", "tiny", (2, 16, 32)), ("slstm", "4x16", (4, 16, 16)),
                                           ("attention", "2x32", (2, 32, 32)))]
    out = []
    for S in LENGTHS:
        out += [_case("mlstm", g, S, *dims) for g, dims in MLSTM_GEOMETRIES.items()]
        out += [_case("slstm", g, S, nh, dh, dh) for g, (nh, dh) in SLSTM_GEOMETRIES.items()]
        out += [_case("attention", g, S, nh, d, d) for g, (nh, d) in ATTENTION_GEOMETRIES.items()]
    return out


def _for(*kernels, lengths=None):
    """`applies` for cases of these kernel families (and only these lengths)."""
    return lambda case: case["kernel"] in kernels and (lengths is None or case["S"] in lengths)


def _installed(module_name):
    return importlib.util.find_spec(module_name) is not None


def _flashrnn_applies(case):
    """12x64 at every length; 3x256 once (it runs out of shared memory at any length)."""
    return case["kernel"] == "slstm" and (case["geometry"] != "3x256" or case["S"] == LENGTHS[0])


def _slstm_case(case):
    """The sLSTM suite's case keys (T, DH) for this suite's (S, DQK)."""
    return dict(case, T=case["S"], DH=case["DQK"])


def _ours(case, mode, dtype):
    if case["kernel"] == "mlstm":
        return mlstm.ours(case, mode, dtype)
    return slstm.ours(_slstm_case(case), mode, dtype)


def _cuda_only(setup, what):
    def wrapped(case, mode, dtype):
        require_cuda(what)
        return setup(case, mode, dtype)
    return wrapped


def _flashrnn(case, mode, dtype):
    require_cuda("flashrnn triton_fused")
    return slstm.flashrnn_backend("triton_fused")(_slstm_case(case), mode, dtype)


def _sdpa(backend_name):
    setup = mlstm.sdpa(backend_name, shape_of=lambda c: (c["B"], c["NH"], c["S"], c["DQK"]))
    return _cuda_only(setup, f"SDPA {backend_name}")


def _flash_attn_package(module_name):
    """flash_attn_func of FlashAttention 2 (`flash_attn`) or 3 (`flash_attn_interface`):
    q, k, v (B, S, heads, dim), causal."""
    def setup(case, mode, dtype):
        require_cuda(module_name)
        flash_attn_func = require_module(module_name).flash_attn_func

        def attend(q, k, v):
            out = flash_attn_func(q, k, v, causal=True)
            return out[0] if isinstance(out, tuple) else out     # FA3 may return (out, lse)
        return attention_call(attend, (case["B"], case["S"], case["NH"], case["DQK"]), mode, dtype)
    return setup


def providers() -> list[Provider]:
    xl_chunk = mlstm.mlstm_kernels_chunkwise("chunkwise--triton_xl_chunk", chunk_size=128)
    xl_chunk_lengths = (512, 8192, 65536, 32, 64)          # full size, and the quick cases
    return [
        Provider("xlstm_triton", _ours, applies=_for("mlstm", "slstm")),
        # Triton 3.6's LLVM aborts on xl_chunk (SLP vectorizer) unless its optimizer is off.
        Provider("mlstm_kernels.xl_chunk", _cuda_only(xl_chunk, "mlstm_kernels"),
                 env={"DISABLE_LLVM_OPT": "1"}, applies=_for("mlstm", lengths=xl_chunk_lengths)),
        Provider("flashrnn.triton_fused", _flashrnn, applies=_flashrnn_applies),
        Provider("attention.sdpa_flash", _sdpa("FLASH_ATTENTION"), applies=_for("attention")),
        Provider("attention.sdpa_cudnn", _sdpa("CUDNN_ATTENTION"), applies=_for("attention")),
        Provider("attention.flash_attn2", _flash_attn_package("flash_attn"),
                 applies=lambda c: _installed("flash_attn") and c["kernel"] == "attention"),
        Provider("attention.flash_attn3", _flash_attn_package("flash_attn_interface"),
                 applies=lambda c: _installed("flash_attn_interface") and c["kernel"] == "attention"),
    ]


TABLE_KEYS = ["kernel", "geometry", "S"]
