"""Interleaved A/B of the host-bound points of `python -m bench large`.

An eager decoding step of the 7B model (and, partly, a 2k prefill) is bound by the host: its
time is how fast Python issues ~1,500 kernels, and on a shared machine that speed drifts by
tens of percent between processes and minutes (the suite's one-process-per-provider rows for
the same code have differed by 1.8x). Here one model runs every variant in turn, in rounds,
in one process, so a drift hits all variants alike:

    transformers+mlstm_kernels          the model as configured (mlstm_kernels' Triton kernels)
    transformers+xlstm_triton           after use_xlstm_triton(model)
    transformers+xlstm_triton:backend   after use_xlstm_triton(model, fuse_blocks=False)

(remove_xlstm_triton goes back to the first.) Each point is a do_bench median; the summary
is the median over rounds. Usage (on the GPU, with transformers, xlstm and mlstm_kernels):

    DISABLE_LLVM_OPT=1 python -m bench.tools.ab_large [--rounds 3] [--layers 32] [--csv PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch
import triton.testing

from bench import harness
from bench.suites import large as suite_large
from xlstm_triton.integrations.transformers import remove_xlstm_triton, use_xlstm_triton

VARIANTS = {
    "transformers+mlstm_kernels": remove_xlstm_triton,
    "transformers+xlstm_triton": use_xlstm_triton,
    "transformers+xlstm_triton:backend": lambda m: use_xlstm_triton(m, fuse_blocks=False),
}
POINTS = [dict(phase="prefill", B=1, ctx=2048), dict(phase="decode", B=1, ctx=1), dict(phase="decode", B=16, ctx=1)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--csv", type=Path, default=harness.REPO / "bench" / "results" / "large_ab.csv")
    args = ap.parse_args(argv)
    harness.require_cuda("the A/B run")
    shape = dict(suite_large.SHAPE_7B, layers=args.layers)
    cases = [dict(p, **shape) for p in POINTS]
    model = suite_large._hf_model(cases[0], torch.bfloat16, "mlstm_kernels")
    runner = suite_large._hf_runner("mlstm_kernels")     # builds on the cached model above
    fns = {}
    for c in cases:                                      # inputs and caches, made once
        fns[c["phase"], c["B"]] = runner(c, "fw", torch.bfloat16)
    rows = []
    for r in range(args.rounds):
        for name, apply in VARIANTS.items():
            apply(model)
            for c in cases:
                fn = fns[c["phase"], c["B"]]
                fn()                                     # compile / first call of this variant
                torch.cuda.synchronize()
                ms = triton.testing.do_bench(fn, warmup=100, rep=1500, return_mode="median")
                rows.append(dict(provider=name, **c, round=r, ms=round(ms, 3)))
                print(f"round {r} {name:34s} {c['phase']:8s} B={c['B']:<3d} {ms:9.2f} ms", file=sys.stderr)
    env = dict(suite="large_ab", **harness.environment())
    summary = []
    for name in VARIANTS:
        for c in cases:
            times = [x["ms"] for x in rows if x["provider"] == name and x["phase"] == c["phase"] and x["B"] == c["B"]]
            summary.append(dict(provider=name, **c, round="median", ms=round(statistics.median(times), 3),
                                rounds=" ".join(f"{t:.2f}" for t in times)))
    harness.append_csv(args.csv, [dict(r, **env) for r in rows + summary])
    print(f"{'provider':34s} {'phase':8s} {'B':>3s} {'median ms':>10s}  rounds")
    for s in summary:
        print(f"{s['provider']:34s} {s['phase']:8s} {s['B']:3d} {s['ms']:10.2f}  {s['rounds']}")


if __name__ == "__main__":
    os.environ.setdefault("DISABLE_LLVM_OPT", "1")
    main()
