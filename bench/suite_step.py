"""mLSTM decoding step at the xLSTM-7B head geometry (NH=8, DQK=256, DV=512), batch 1, 8, 64.

The floor is the HBM time of reading the state (c, n, m in float32) once and writing it once,
plus q, k, v, h: `floor_ms` in the CSV, at the 3.0 TB/s copy rate measured in bench/NOTES.md.
"""

from __future__ import annotations

import torch

from bench.harness import Provider

TBPS = 3.0e12


def cases(quick: bool = False) -> list[dict]:
    out = []
    for B in (1, 8, 64):
        NH, DQK, DV = 8, 256, 512
        state_bytes = B * NH * (DQK * DV + DQK + 1) * 4
        io_bytes = B * NH * (2 * DQK + 2 * DV) * 2
        out.append(dict(B=B, NH=NH, DQK=DQK, DV=DV, floor_ms=round((2 * state_bytes + io_bytes) / TBPS * 1e3, 5)))
    return out[:1] if quick else out


def _inputs(case, dtype):
    B, NH, DQK, DV = (case[k] for k in ("B", "NH", "DQK", "DV"))
    q, k = torch.randn(2, B, NH, DQK, device="cuda", dtype=dtype)
    v = torch.randn(B, NH, DV, device="cuda", dtype=dtype)
    i, f = torch.randn(2, B, NH, 1, device="cuda", dtype=dtype)
    c = torch.randn(B, NH, DQK, DV, device="cuda")
    n = torch.randn(B, NH, DQK, device="cuda")
    m = torch.randn(B, NH, 1, device="cuda")
    return q, k, v, i, f, c, n, m


def _ours(case, mode, dtype):
    from xlstm_triton import mlstm_step
    args = _inputs(case, dtype)

    def fn():
        with torch.no_grad():
            mlstm_step(*args)
    return fn


def _mlstm_kernels(name):
    def setup(case, mode, dtype):
        from mlstm_kernels.torch import get_mlstm_step_kernel
        step = get_mlstm_step_kernel(name)
        args = _inputs(case, dtype)

        def fn():
            with torch.no_grad():
                step(*args)
        return fn
    return setup


def providers() -> list[Provider]:
    return [
        Provider("xlstm_triton", _ours, modes=("fw",)),
        Provider("mlstm_kernels.triton", _mlstm_kernels("triton"), modes=("fw",)),
        Provider("mlstm_kernels.native", _mlstm_kernels("native"), modes=("fw",)),
    ]


TABLE_KEYS = ["B", "floor_ms"]
