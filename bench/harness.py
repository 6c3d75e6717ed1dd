"""The benchmark library every suite uses.

A suite is a list of cases (shapes) and providers (implementations). Each provider runs in its
own Python process over all cases, so a provider that aborts the process (the TFLA `xl_chunk`
kernel under Triton 3.6 without DISABLE_LLVM_OPT=1) or leaks memory cannot take the others
down; a case that kills its worker is recorded as such and the worker restarts after it.

For each (case, mode) a worker reports the median time of `triton.testing.do_bench` after its
warm-up and the peak memory of one call, inputs included (`torch.cuda.max_memory_allocated`).
Rows go to a CSV with the GPU name, torch/triton/peer versions, date and git commit.
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
import traceback
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
MODES = ("fw", "fwbw")


@dataclasses.dataclass
class Provider:
    """One implementation. `setup(case, mode, dtype)` allocates inputs and returns a zero-argument
    function that runs one forward (mode "fw") or forward+backward (mode "fwbw") call.
    `skip(case)` may return a reason to leave a case out (recorded as status "skipped")."""
    name: str
    setup: Callable[[dict, str, "torch.dtype"], Callable[[], None]]
    env: dict = dataclasses.field(default_factory=dict)
    skip: Callable[[dict], str | None] = lambda case: None
    modes: tuple = MODES
    timeout_s: float = 900.0


def case_label(case: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in case.items() if not k.startswith("_"))


# ------------------------------------------------------------------ worker side

def _measure(fn, grad_to_none) -> tuple[float, float]:
    import torch
    import triton.testing

    fn()                                    # compile / autotune / first-call work
    for t in grad_to_none or []:
        t.grad = None                       # peak of one call as a training step sees it
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak_mib = torch.cuda.max_memory_allocated() / 2**20
    ms = triton.testing.do_bench(fn, warmup=25, rep=200, grad_to_none=grad_to_none,
                                 return_mode="median")
    return float(ms), float(peak_mib)


def run_worker(suite_name: str, provider_name: str, cases: list[dict], dtype_name: str) -> None:
    """Runs one provider over cases in this process; prints one JSON line per (case, mode)."""
    import torch

    suite = importlib.import_module(f"bench.suite_{suite_name}")
    provider = {p.name: p for p in suite.providers()}[provider_name]
    dtype = getattr(torch, dtype_name)
    for case in cases:
        for mode in provider.modes:
            row = {"case": case, "mode": mode, "ms": None, "peak_mib": None, "status": "ok", "error": ""}
            reason = provider.skip(case)
            if reason:
                row.update(status="skipped", error=reason)
            else:
                try:
                    torch.cuda.empty_cache()
                    fn = provider.setup(case, mode, dtype)
                    grads = getattr(fn, "grad_to_none", None)
                    row["ms"], row["peak_mib"] = _measure(fn, grads)
                    row["ms"] /= getattr(fn, "calls_per_run", 1)   # e.g. steps in one CUDA graph
                    del fn
                except torch.cuda.OutOfMemoryError as e:
                    row.update(status="oom", error=str(e).splitlines()[0][:300])
                except Exception as e:  # a refusing peer is a result, not a crash
                    row.update(status="error", error=f"{type(e).__name__}: {e}".splitlines()[0][:300])
                    traceback.print_exc(file=sys.stderr)
            print("ROW " + json.dumps(row), flush=True)


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
        log.write(f"==== {provider.name} exit={code}\n{err[-20000:]}\n")
    return rows, code, err


def run_suite(suite_name: str, cases: list[dict], providers: list[Provider], dtype_name: str,
              csv_path: Path, log_path: Path | None = None, progress: bool = True) -> list[dict]:
    """Runs every provider over every case (each provider in its own processes) and appends
    the rows to `csv_path`. Returns the rows."""
    from tqdm import tqdm

    env = environment()
    all_rows = []
    log = open(log_path, "a") if log_path else None
    bar = tqdm(total=len(providers) * len(cases), disable=not progress, desc=suite_name,
               mininterval=0.5 if sys.stderr.isatty() else 30)
    for provider in providers:
        todo = list(cases)
        while todo:
            rows, code, err = _spawn(suite_name, provider, todo, dtype_name, log)
            done = {json.dumps(r["case"], sort_keys=True) for r in rows}
            for r in rows:
                all_rows.append(_flatten(env, provider.name, dtype_name, r))
            bar.update(len(done))
            todo = [c for c in todo if json.dumps(c, sort_keys=True) not in done]
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


def _flatten(env, provider_name, dtype_name, row) -> dict:
    case = {k: v for k, v in row["case"].items() if not k.startswith("_")}
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
    """A short text table: one line per (provider, case), fw and fwbw side by side."""
    table = {}
    for r in rows:
        key = (r["provider"],) + tuple(str(r.get(k, "")) for k in keys)
        cell = f"{float(r['ms']):.2f}" if r["status"] == "ok" else r["status"]
        entry = table.setdefault(key, {})
        entry[r["mode"]] = cell
        if r["mode"] == "fwbw" and r["status"] == "ok":
            entry["mib"] = f"{float(r['peak_mib']):.0f}"
    head = ["provider", *keys, "fw ms", "fwbw ms", "fwbw MiB"]
    lines = [head] + [[*k, v.get("fw", "-"), v.get("fwbw", "-"), v.get("mib", "-")]
                      for k, v in table.items()]
    widths = [max(len(str(l[i])) for l in lines) for i in range(len(head))]
    for l in lines:
        print("  ".join(str(x).ljust(w) for x, w in zip(l, widths)))
