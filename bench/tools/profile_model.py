"""Where one training step of a `bench model` provider spends its GPU time (GPU).

    python -m bench.tools.profile_model xlstm_large [--ctx 2048] [--mode eager] [--top 30]

Runs the provider's step (the same model, optimizer and loss as `python -m bench model`) three
times to warm up, profiles two more with torch.profiler, and prints the CUDA kernels grouped by
name, most time first, as ms per step; with --trace, also writes a Chrome trace. With --host, the
host side instead: the time to enqueue one step on an idle GPU, and a cProfile of two steps
(backward on the calling thread) by own time and by cumulative time, in us per step.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench.suites import model as suite


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("provider")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--mode", default="eager")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--large", action="store_true", help="the E=2048 point")
    ap.add_argument("--trace", help="path of a Chrome trace to write")
    ap.add_argument("--host", action="store_true", help="profile the host side (see the docstring)")
    args = ap.parse_args(argv)
    case = next(c for c in suite.cases() if c["ctx"] == args.ctx and suite.is_large_point(c) == args.large)
    provider = next(p for p in suite.providers() if p.name == args.provider)
    step = provider.setup(case, args.mode, torch.bfloat16)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    if args.host:
        return host_profile(step, args)
    steps = 2
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    if args.trace:
        prof.export_chrome_trace(args.trace)
    rows = [(e.key, e.device_time_total / 1e3 / steps, e.count // steps) for e in prof.key_averages()
            if e.device_time_total > 0]
    rows.sort(key=lambda r: -r[1])
    total = sum(r[1] for r in rows)
    print(f"{args.provider} {args.mode} ctx={args.ctx}: {total:.1f} ms of kernels per step")
    for name, ms, n in rows[:args.top]:
        print(f"{ms:8.2f} ms {100 * ms / total:5.1f}% x{n:<5d} {name[:110]}")


def host_profile(step, args, steps: int = 2):
    enqueue = []
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        enqueue.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    torch.autograd.set_multithreading_enabled(False)     # backward on this thread, seen by cProfile
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    prof.disable()
    torch.autograd.set_multithreading_enabled(True)
    print(f"{args.provider} {args.mode} ctx={args.ctx}: host enqueue per step "
          + " / ".join(f"{ms:.1f}" for ms in enqueue) + " ms")
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, fn), (cc, nc, tt, ct, _) in stats.stats.items():
        where = file.split("site-packages/")[-1].split("/work/")[-1]
        rows.append((f"{where}:{line}({fn})", nc // steps, tt * 1e6 / steps, ct * 1e6 / steps))
    for title, col in (("own time", 2), ("cumulative time", 3)):
        print(f"-- by {title}: calls/step, own us/step, cumulative us/step")
        for name, n, tt, ct in sorted(rows, key=lambda r: -r[col])[:args.top]:
            print(f"{n:7d} {tt:10.0f} {ct:10.0f}  {name[-120:]}")


if __name__ == "__main__":
    main()
