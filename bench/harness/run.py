"""The parent side: `run_suite` starts one worker process per provider (`python -m bench
_worker ...`, measure.py), collects their rows, records a case that killed its worker, and
appends everything to the suite's CSV with the environment (GPU, versions, date, commit);
`print_table` prints the short summary."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.harness.measure import EXIT_CONTEXT_LOST
from bench.harness.provider import Provider
from bench.harness.results import REPO, append_csv


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
            changed = subprocess.run(["git", "status", "--porcelain", "--", "xlstm_triton", "bench"], cwd=REPO,
                                     capture_output=True, text=True).stdout.strip()
            if env["commit"] and changed:
                env["commit"] += "+dirty"        # measured on uncommitted changes of the package or bench
        except OSError:
            pass
    return env


def _spawn(suite_name, provider, cases, dtype_name, log):
    env = dict(os.environ, **provider.env)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "bench", "_worker", suite_name, provider.name, dtype_name,
           json.dumps(cases), json.dumps(list(provider.modes))]
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
        # A worker per case where peaks are compared across cases: each starts from a fresh
        # allocator (its cache and block splits otherwise carry the earlier cases' history).
        batches = [[c] for c in provider_cases] if provider.one_case_per_worker else [provider_cases]
        for todo in map(list, batches):
            _run_batch(suite_name, provider, todo, dtype_name, log, env, all_rows, bar)
    bar.close()
    if log:
        log.close()
    append_csv(csv_path, all_rows)
    return all_rows


def _run_batch(suite_name, provider, todo, dtype_name, log, env, all_rows, bar):
    """Runs `todo` in workers of `provider` (a fresh one after a worker dies), rows to `all_rows`."""
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
            "ms": row["ms"], "peak_mib": row["peak_mib"],
            "peak_requested_mib": row.get("peak_requested_mib"), "status": row["status"],
            "error": row["error"], **env}


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
