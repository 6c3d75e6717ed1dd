"""mLSTM decoding step at the xLSTM-7B head geometry (NH=8, DQK=256, DV=512), batch 1, 8, 64.

Each provider runs 16 chained steps captured in one CUDA graph (how a decoder runs them; without
the graph, Python's launch cost dominates at small batch) and reports the time per step.
The floor is the HBM time of reading the state (c, n, m in float32) once and writing it once,
plus q, k, v, h: `floor_ms` in the CSV, at the 3.0 TB/s copy rate measured in bench/NOTES.md.
"""

from __future__ import annotations

import torch

from bench.harness import Provider
from bench.harness.ceilings import TBPS


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


STEPS = 16   # decoding steps captured in one CUDA graph (how a decoder runs them)


def _graphed(step, case, dtype):
    """STEPS chained steps captured in a CUDA graph; the harness divides the replay time by
    STEPS. This is decoding as it runs, without Python's per-call launch cost."""
    q, k, v, i, f, c, n, m = _inputs(case, dtype)
    with torch.no_grad():
        step(q, k, v, i, f, c, n, m)                 # compile / autotune outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(STEPS):
                _, (c, n, m) = step(q, k, v, i, f, c, n, m)
    return _PerStep(graph.replay, keep=(q, k, v, i, f, c, n, m))


class _PerStep:
    calls_per_run = STEPS

    def __init__(self, fn, keep):
        self.fn = fn
        self.keep = keep            # the graph reads these buffers: keep them alive

    def __call__(self):
        self.fn()


def _ours(case, mode, dtype):
    from xlstm_triton import mlstm_step
    return _graphed(mlstm_step, case, dtype)


def _mlstm_kernels(name):
    def setup(case, mode, dtype):
        from mlstm_kernels.torch import get_mlstm_step_kernel
        return _graphed(get_mlstm_step_kernel(name), case, dtype)
    return setup


def providers() -> list[Provider]:
    return [
        Provider("xlstm_triton", _ours, modes=("fw",)),
        Provider("mlstm_kernels.triton", _mlstm_kernels("triton"), modes=("fw",)),
        Provider("mlstm_kernels.native", _mlstm_kernels("native"), modes=("fw",)),
    ]


TABLE_KEYS = ["B", "floor_ms"]
