"""Where a data- or context-parallel step of `bench distributed` spends its time, per rank.

    python -m bench.tools.profile_distributed fsdp --world 4 [--ctx 4096] [--trace DIR]
    python -m bench.tools.profile_distributed fsdp --world 2 --quick      # CPU gloo ranks, tiny model

Each rank builds the suite's step (`bench.suites.distributed.make_step`: the same model,
wrapping and optimizer), warms up, and profiles `--steps` steps with torch.profiler. Per rank and
step it reports: the wall time; the GPU time of compute kernels and of NCCL kernels; how long the
GPU was busy (the union of all kernels' intervals) and how long only NCCL ran (communication
not hidden behind compute); the host time inside FSDP's hooks (the union of its `FSDP::`
ranges, which nest) and in the optimizer's step. On CPU ranks the GPU columns are 0.
With --trace, each rank writes a Chrome trace there.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from bench.suites import distributed as suite


def _union_us(intervals) -> float:
    """Total length of the union of (start, end) intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def summarize(events, steps: int, wall_ms: float) -> dict:
    """Per-step figures (ms) from a profile's FunctionEvents (`prof.events()`)."""
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    nccl = [e for e in kernels if "nccl" in e.name.lower()]
    compute = [e for e in kernels if "nccl" not in e.name.lower()]
    span = lambda es: [(e.time_range.start, e.time_range.end) for e in es]   # noqa: E731
    busy = _union_us(span(kernels))
    cpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    # FSDP's hooks nest ranges (FSDP::pre_forward around FSDP::all_gather ...): their union
    fsdp = _union_us(span(e for e in cpu if e.name.startswith("FSDP::")))
    optimizer = _union_us(span(e for e in cpu if e.name.startswith("Optimizer.step")))
    per = lambda us: round(us / 1e3 / steps, 2)   # noqa: E731
    return dict(wall_ms=round(wall_ms / steps, 2), compute_ms=per(sum(e.device_time_total for e in compute)),
                nccl_ms=per(sum(e.device_time_total for e in nccl)), gpu_busy_ms=per(busy),
                nccl_only_ms=per(busy - _union_us(span(compute))),
                fsdp_hooks_ms=per(fsdp), optimizer_ms=per(optimizer))


def profile_rank(case, wrap, dtype, device, world) -> dict:
    """A `suite._spawn` task: this rank's profile summary (and its Chrome trace)."""
    import torch.distributed as dist
    from torch.profiler import ProfilerActivity, profile

    step = suite.make_step(case, wrap, dtype, device, world)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    try:
        for _ in range(case["warmup"]):
            step()
        sync()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        dist.barrier()
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            for _ in range(case["steps"]):
                step()
            sync()
            wall = (time.perf_counter() - start) * 1e3
    finally:
        step.close()
    if case.get("trace"):
        prof.export_chrome_trace(os.path.join(case["trace"], f"{wrap}_w{world}_rank{dist.get_rank()}.json"))
    return summarize(prof.events(), case["steps"], wall)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("wrap", choices=["ddp", "fsdp", "fsdp_keep", "fsdp_plain", "cp"])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--ctx", type=int, help="tokens per sequence (default: the suite's)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="CPU gloo ranks, the suite's tiny model")
    ap.add_argument("--trace", help="a folder for each rank's Chrome trace")
    args = ap.parse_args(argv)
    parallel = "cp" if args.wrap == "cp" else "dp"
    case = next(c for c in suite.cases(quick=args.quick) if c["parallel"] == parallel)
    case = dict(case, world=args.world, steps=args.steps, warmup=1 if args.quick else args.warmup)
    if args.ctx:
        case["ctx"] = args.ctx
    if args.trace:
        os.makedirs(args.trace, exist_ok=True)
        case["trace"] = os.path.abspath(args.trace)
    cuda = torch.cuda.is_available() and not args.quick
    results = suite._spawn(case, args.wrap, "bfloat16" if cuda else "float32", cuda, task=profile_rank,
                           all_ranks=True)
    keys = [k for k in results[0] if k != "status"]
    print(f"{args.wrap} on {args.world} {'GPUs' if cuda else 'CPU ranks'}, ctx {case['ctx']}, B {case['B']}, "
          f"ms per step:")
    print("rank " + " ".join(f"{k:>14}" for k in keys))
    for r, res in enumerate(results):
        print(f"{r:>4} " + " ".join(f"{res[k]:>14}" for k in keys))
    return results


if __name__ == "__main__":
    main()
