"""The worker side: one provider over its cases in this process, each (case, mode) timed and
its peak memory taken; `run_worker` prints the rows for the parent (run.py) to read."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import traceback

from bench.harness.provider import Provider, Unavailable

EXIT_CONTEXT_LOST = 3      # a worker's exit code after a sticky CUDA error, its row already printed


def _measure(fn, grad_to_none) -> tuple[float, float | None, float | None]:
    """Median ms; peak MiB of one call as the allocator counts it (its blocks, rounded) and as
    the tensors asked for it (requested bytes: no rounding, no unsplit remainders of blocks).
    Sets `fn.peak_above_start_mib`: the allocator peak less what was allocated when the call
    began."""
    import torch

    if not torch.cuda.is_available():
        return _measure_wall_clock(fn, grad_to_none)
    import triton.testing

    fn()                                    # compile / autotune / first-call work
    for t in grad_to_none or []:
        t.grad = None                       # peak of one call as a training step sees it
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start_mib = torch.cuda.memory_allocated() / 2**20
    fn()
    torch.cuda.synchronize()
    peak_mib = torch.cuda.max_memory_allocated() / 2**20
    fn.peak_above_start_mib = peak_mib - start_mib
    requested_mib = torch.cuda.memory_stats().get("requested_bytes.all.peak", 0) / 2**20
    ms = triton.testing.do_bench(fn, warmup=25, rep=getattr(fn, "rep_ms", 200), grad_to_none=grad_to_none,
                                 return_mode="median")
    return float(ms), float(peak_mib), float(requested_mib)


WALL_CLOCK_REPS = 3


def _measure_wall_clock(fn, grad_to_none) -> tuple[float, None, None]:
    """CPU stand-in for `_measure`: the median of a few wall-clock calls, no memory."""
    fn()
    times = []
    for _ in range(WALL_CLOCK_REPS):
        for t in grad_to_none or []:
            t.grad = None
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3, None, None


def measure_cases(provider: Provider, cases: list[dict], dtype_name: str):
    """Runs one provider over `cases` in this process; yields one row dict per (case, mode)."""
    import gc

    import torch

    dtype = getattr(torch, dtype_name)
    for case in cases:
        for mode in provider.modes:
            row = {"case": case, "mode": mode, "ms": None, "peak_mib": None, "peak_requested_mib": None,
                   "status": "ok", "error": ""}
            reason = provider.skip(case)
            if reason:
                row.update(status="skipped", error=reason)
            else:
                try:
                    if torch.cuda.is_available():
                        gc.collect()              # the last case's model / cache, if any
                        torch.cuda.empty_cache()
                    fn = provider.setup(case, mode, dtype)
                    grads = getattr(fn, "grad_to_none", None)
                    if getattr(fn, "measures_itself", False):   # e.g. a step over spawned ranks
                        row["ms"], row["peak_mib"], row["peak_requested_mib"] = fn()
                    else:
                        row["ms"], row["peak_mib"], row["peak_requested_mib"] = _measure(fn, grads)
                    row["ms"] /= getattr(fn, "calls_per_run", 1)   # e.g. steps in one CUDA graph
                    columns = getattr(fn, "columns", None)
                    if columns:
                        row["columns"] = columns(row["ms"]) if callable(columns) else dict(columns)
                    if getattr(fn, "report_peak_above_start", False):
                        # what the call allocates beyond what exists before it (weights,
                        # optimizer state, inputs): None off the GPU
                        row.setdefault("columns", {})["peak_above_start_mib"] = getattr(
                            fn, "peak_above_start_mib", None)
                except Unavailable as e:
                    row.update(status="unavailable", error=str(e).splitlines()[0][:300])
                except torch.cuda.OutOfMemoryError as e:
                    row.update(status="oom", error=str(e).splitlines()[0][:300])
                except Exception as e:  # a refusing peer is a result, not a crash
                    row.update(status="error", error=f"{type(e).__name__}: {e}".splitlines()[0][:300])
                    traceback.print_exc(file=sys.stderr)
                finally:
                    fn = None                     # free this case's inputs, also after a failure
            yield row


def run_worker(suite, provider_name: str, cases: list[dict], dtype_name: str, modes=None) -> None:
    """Runs one provider of the suite module `suite` over cases in this process (in `modes`, default
    the provider's own); prints one JSON line per (case, mode)."""
    provider = {p.name: p for p in suite.providers()}[provider_name]
    if modes is not None:
        provider = dataclasses.replace(provider, modes=tuple(modes))
    for row in measure_cases(provider, cases, dtype_name):
        print("ROW " + json.dumps(row), flush=True)
        if row["status"] == "error" and "CUDA error" in row["error"]:
            # e.g. an illegal memory access: this process's CUDA context is unusable, so a
            # fresh worker takes the remaining cases
            sys.exit(EXIT_CONTEXT_LOST)
