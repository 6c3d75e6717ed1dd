"""Host time of kernel launches with and without `xlstm_triton.launch`'s cache (GPU).

    python -m bench.tools.launch_overhead [--provider xlstm_large] [--ctx 2048]

1. One small op (`silu_mul` on a (64, 256) bf16 tensor, one kernel whose GPU time is a few us):
   the host time per call over 2000 calls.
2. One training step of a `bench model` provider: the time to enqueue it on an idle GPU.
Each with the cache on and off, interleaved over three rounds; prints the medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from xlstm_triton import launch


def _host_us(fn, n):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t = time.perf_counter() - t0
    torch.cuda.synchronize()
    return t / n * 1e6


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--provider", default="xlstm_large")
    ap.add_argument("--ctx", type=int, default=2048)
    args = ap.parse_args(argv)
    from bench.suites import model as suite
    from xlstm_triton.modules import silu_mul

    g, u = (torch.randn(64, 256, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    case = next(c for c in suite.cases() if c["ctx"] == args.ctx and not suite.is_large_point(c))
    step = next(p for p in suite.providers() if p.name == args.provider).setup(case, "eager", torch.bfloat16)
    results = {(what, on): [] for what in ("silu_mul us/call", "step enqueue ms") for on in (True, False)}
    for _ in range(3):
        for on in (True, False):
            launch.ENABLED = on
            for _ in range(2):
                step()
            results[("silu_mul us/call", on)].append(_host_us(lambda: silu_mul(g, u), 2000))
            results[("step enqueue ms", on)].append(statistics.median(_host_us(step, 1) / 1e3 for _ in range(5)))
    launch.ENABLED = True
    print(f"{args.provider} ctx={args.ctx}: median of 3 rounds, cache on / off")
    for what in ("silu_mul us/call", "step enqueue ms"):
        on, off = (statistics.median(results[(what, o)]) for o in (True, False))
        print(f"  {what:18s} {on:8.1f} / {off:8.1f}   ({', '.join(f'{v:.1f}' for v in results[(what, True)])} / "
              f"{', '.join(f'{v:.1f}' for v in results[(what, False)])})")


if __name__ == "__main__":
    main()
