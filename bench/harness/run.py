"""The benchmark library every suite uses.

A suite is a list of cases (shapes) and providers (implementations). Each provider runs in its
own Python process over all cases, so a provider that aborts the process (the TFLA `xl_chunk`
kernel under Triton 3.6 without DISABLE_LLVM_OPT=1) or leaks memory cannot take the others
down; a case that kills its worker is recorded as such and the worker restarts after it.

For each (case, mode) a worker reports the median time of `triton.testing.do_bench` after its
warm-up and the peak memory of one call, inputs included (`torch.cuda.max_memory_allocated`).
Rows go to a CSV with the suite, GPU name, torch/triton/peer versions, date and git commit.

Without CUDA (smoke tests, `--quick` on a laptop) a worker times a few calls with the wall clock
and leaves the memory empty; a provider that needs CUDA or a missing package raises
`Unavailable` from its setup and is recorded with status "unavailable".
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
MODES = ("fw", "fwbw")
EXIT_CONTEXT_LOST = 3      # a worker's exit code after a sticky CUDA error, its row already printed


@dataclasses.dataclass
class Provider:
    """One implementation. `setup(case, mode, dtype)` allocates inputs and returns a zero-argument
    function that runs one forward (mode "fw") or forward+backward (mode "fwbw") call.
    `skip(case)` may return a reason to leave a case out (recorded as status "skipped");
    `applies(case)` False leaves it out without a row (a case of another kernel family).

    Optional attributes of the returned function: `grad_to_none` (tensors whose .grad is reset
    between calls), `calls_per_run` (the time is divided by it, e.g. steps in one CUDA graph),
    `columns` (a dict of extra CSV columns, or a function of the measured ms returning one),
    `rep_ms` (do_bench's timing budget, default 200 ms: raise it for calls of tens of ms, which
    would otherwise be the median of two or three)."""
    name: str
    setup: Callable[[dict, str, "torch.dtype"], Callable[[], None]]
    env: dict = dataclasses.field(default_factory=dict)
    skip: Callable[[dict], str | None] = lambda case: None
    modes: tuple = MODES
    timeout_s: float = 900.0
    applies: Callable[[dict], bool] = lambda case: True


class Unavailable(Exception):
    """Raised by a setup that cannot run on this machine (no CUDA, a package not installed)."""


def device() -> str:
    """Where the suites allocate: "cuda" when there is a GPU, else "cpu" (smoke tests)."""
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def require_cuda(what: str) -> None:
    import torch
    if not torch.cuda.is_available():
        raise Unavailable(f"{what} needs CUDA; this machine has none")


def require_module(name: str):
    """Imports `name` or raises Unavailable (an optional peer such as flash_attn)."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise Unavailable(f"{name} not importable: {e}") from e


def case_label(case: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in case.items() if not k.startswith("_"))


# ------------------------------------------------------------------ worker side

def _measure(fn, grad_to_none) -> tuple[float, float | None]:
    import torch

    if not torch.cuda.is_available():
        return _measure_wall_clock(fn, grad_to_none)
    import triton.testing

    fn()                                    # compile / autotune / first-call work
    for t in grad_to_none or []:
        t.grad = None                       # peak of one call as a training step sees it
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak_mib = torch.cuda.max_memory_allocated() / 2**20
    ms = triton.testing.do_bench(fn, warmup=25, rep=getattr(fn, "rep_ms", 200), grad_to_none=grad_to_none,
                                 return_mode="median")
    return float(ms), float(peak_mib)


WALL_CLOCK_REPS = 3


def _measure_wall_clock(fn, grad_to_none) -> tuple[float, None]:
    """CPU stand-in for `_measure`: the median of a few wall-clock calls, no memory."""
    fn()
    times = []
    for _ in range(WALL_CLOCK_REPS):
        for t in grad_to_none or []:
            t.grad = None
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3, None


def measure_cases(provider: Provider, cases: list[dict], dtype_name: str):
    """Runs one provider over `cases` in this process; yields one row dict per (case, mode)."""
    import gc

    import torch

    dtype = getattr(torch, dtype_name)
    for case in cases:
        for mode in provider.modes:
            row = {"case": case, "mode": mode, "ms": None, "peak_mib": None, "status": "ok", "error": ""}
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
                    row["ms"], row["peak_mib"] = _measure(fn, grads)
                    row["ms"] /= getattr(fn, "calls_per_run", 1)   # e.g. steps in one CUDA graph
                    columns = getattr(fn, "columns", None)
                    if columns:
                        row["columns"] = columns(row["ms"]) if callable(columns) else dict(columns)
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


def run_worker(suite_name: str, provider_name: str, cases: list[dict], dtype_name: str) -> None:
    """Runs one provider over cases in this process; prints one JSON line per (case, mode)."""
    suite = importlib.import_module(f"bench.suite_{suite_name}")
    provider = {p.name: p for p in suite.providers()}[provider_name]
    for row in measure_cases(provider, cases, dtype_name):
        print("ROW " + json.dumps(row), flush=True)
        if row["status"] == "error" and "CUDA error" in row["error"]:
            # e.g. an illegal memory access: this process's CUDA context is unusable, so a
            # fresh worker takes the remaining cases
            sys.exit(EXIT_CONTEXT_LOST)


# ------------------------------------------------------------------ parent side

def environment() -> dict:
    import torch

    env = {"date": datetime.date.today().isoformat(), "torch": torch.__version__}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = ""
    env["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peers = []
    for pkg in ("mlstm_kernels", "flashrnn", "xlstm", "flash_attn"):
        try:
            from importlib.metadata import version
            peers.append(f"{pkg}={version(pkg.replace('_', '-'))}")
        except Exception:
            pass
    env["peers"] = " ".join(peers)
    env["commit"] = os.environ.get("BENCH_COMMIT", "")   # the device's copy has no .git
    if not env["commit"]:
        try:
            env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                           capture_output=True, text=True).stdout.strip()
        except OSError:
            pass
    return env


def _spawn(suite_name, provider, cases, dtype_name, log):
    env = dict(os.environ, **provider.env)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "bench", "_worker", suite_name, provider.name, dtype_name,
           json.dumps(cases)]
    rows = []
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=provider.timeout_s)
        out, err, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err, code = f"timed out after {provider.timeout_s:.0f} s", "timeout"
    for line in out.splitlines():
        if line.startswith("ROW "):
            rows.append(json.loads(line[4:]))
    if log is not None:
        log.write(f"==== {provider.name} exit={code} ({time.monotonic() - start:.0f} s, "
                  f"{len(cases)} cases)\n{err[-20000:]}\n")
    return rows, code, err


def run_suite(suite_name: str, cases: list[dict], providers: list[Provider], dtype_name: str,
              csv_path: Path, log_path: Path | None = None, progress: bool = True) -> list[dict]:
    """Runs every provider over every case it applies to (each provider in its own processes)
    and appends the rows to `csv_path`. Returns the rows."""
    env = dict(suite=suite_name, **environment())
    all_rows = []
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "a") if log_path else None
    per_provider = [[c for c in cases if provider.applies(c)] for provider in providers]
    bar = _progress_bar(sum(map(len, per_provider)), suite_name, progress)
    for provider, provider_cases in zip(providers, per_provider):
        todo = list(provider_cases)
        while todo:
            rows, code, err = _spawn(suite_name, provider, todo, dtype_name, log)
            done = {json.dumps(r["case"], sort_keys=True) for r in rows}
            for r in rows:
                all_rows.append(_flatten(env, provider.name, dtype_name, r))
            bar.update(len(done))
            todo = [c for c in todo if json.dumps(c, sort_keys=True) not in done]
            if todo and code == EXIT_CONTEXT_LOST:
                continue   # the worker stopped after a recorded CUDA error: a fresh one goes on
            if todo:   # the worker died on todo[0]: record it, go on with the rest
                last = err.strip().splitlines()[-1] if err.strip() else ""
                why = f"worker died (exit {code}): {last}"[:300]
                for mode in provider.modes:
                    all_rows.append(_flatten(env, provider.name, dtype_name,
                                             {"case": todo[0], "mode": mode, "ms": None,
                                              "peak_mib": None, "status": "crashed", "error": why}))
                todo = todo[1:]
                bar.update(1)
    bar.close()
    if log:
        log.close()
    append_csv(csv_path, all_rows)
    return all_rows


def _progress_bar(total, desc, enabled):
    try:
        from tqdm import tqdm
    except ImportError:            # tqdm is a bench extra; the smoke tests run without it
        enabled = False
    if not enabled:
        return type("NoBar", (), {"update": lambda self, n=1: None, "close": lambda self: None})()
    return tqdm(total=total, desc=desc, mininterval=0.5 if sys.stderr.isatty() else 30)


def _flatten(env, provider_name, dtype_name, row) -> dict:
    case = {k: v for k, v in row["case"].items() if not k.startswith("_")}
    case.update(row.get("columns") or {})
    return {"provider": provider_name, **case, "mode": row["mode"], "dtype": dtype_name,
            "ms": row["ms"], "peak_mib": row["peak_mib"], "status": row["status"],
            "error": row["error"], **env}


def append_csv(path: Path, rows: list[dict]) -> None:
    """Appends rows; if the file exists with other columns, rewrites it with the union."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = read_csv(path) if path.exists() else []
    fields = []
    for r in old + rows:
        for k in r:
            if k not in fields:
                fields.append(k)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in old + rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def print_table(rows: list[dict], keys: list[str]) -> None:
    """A short text table: one line per (provider, case), the modes (fw, fwbw, ...) side by
    side, and the peak memory of the last mode."""
    table = {}
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    for r in rows:
        key = (r["provider"],) + tuple(str(r.get(k, "")) for k in keys)
        ok = r["status"] == "ok"
        cell = f"{float(r['ms']):.{3 if ok and float(r['ms']) < 1 else 2}f}" if ok else r["status"]
        entry = table.setdefault(key, {})
        entry[r["mode"]] = cell
        if modes and r["mode"] == modes[-1] and ok and r["peak_mib"] not in (None, ""):
            entry["mib"] = f"{float(r['peak_mib']):.0f}"
    head = ["provider", *keys, *(f"{m} ms" for m in modes), f"{modes[-1] if modes else ''} MiB"]
    lines = [head] + [[*k, *(v.get(m, "-") for m in modes), v.get("mib", "-")]
                      for k, v in table.items()]
    widths = [max(len(str(l[i])) for l in lines) for i in range(len(head))]
    for l in lines:
        print("  ".join(str(x).ljust(w) for x, w in zip(l, widths)))
