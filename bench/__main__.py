"""Command line for the benchmarks.

    python -m bench mlstm [--providers a,b] [--quick]     # mLSTM kernels, peers, attention
    python -m bench slstm [--providers a,b] [--quick]     # sLSTM kernels, FlashRNN, cuDNN LSTM
    python -m bench step                                  # mLSTM decoding step vs its HBM floor
    python -m bench kernels                               # mLSTM, sLSTM, attention vs sequence length
    python -m bench decode                                # per-token latency and memory vs context
    python -m bench model                                 # LM training tokens/s and memory vs context
    python -m bench large                                 # xLSTM-7B shape: prefill tokens/s, decode ms/token
    python -m bench packed                                # packed documents vs padding vs fixed rows
    python -m bench distributed                           # DDP / FSDP2 / context parallel on 1, 2, 4 GPUs
    python -m bench plot bench/results/mlstm.csv          # CSV -> PNG figures in docs/figures/

Results are appended to bench/results/<suite>.csv (with --quick: to the system's temporary
folder, so smoke runs never mix with measurements). `python -m bench <suite> --help` describes
a suite's cases, providers and columns.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from bench import harness, suites

QUICK_DIR = Path(tempfile.gettempdir()) / "xlstm_triton_bench_quick"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_worker":            # internal: one provider in its own process
        suite, provider, dtype, cases, modes = argv[1:6]
        harness.run_worker(suites.load(suite), provider, json.loads(cases), dtype, json.loads(modes))
        return
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name in suites.NAMES:
        suite = suites.load(name)
        p = sub.add_parser(name, help=suite.__doc__.splitlines()[0], description=suite.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        names = ", ".join(pr.name for pr in suite.providers())
        p.add_argument("--providers", help=f"comma-separated provider names (default: all): {names}")
        p.add_argument("--modes", help="comma-separated modes to run (default: each provider's own)")
        p.add_argument("--ctx", help="comma-separated context lengths: only the cases with these `ctx`")
        p.add_argument("--quick", action="store_true", help="tiny shapes, for a smoke test (runs on CPU)")
        p.add_argument("--dtype", default="bfloat16")
        p.add_argument("--csv", type=Path, help=f"default: bench/results/{name}.csv; with --quick "
                                                f"{QUICK_DIR / (name + '.csv')}")
        p.add_argument("--log", type=Path, help="worker stderr goes here")
    p = sub.add_parser("plot", help="turn result CSVs into PNG figures",
                       description="One or more figures per CSV (the newest row of each provider, "
                                   "case and mode), titled with the GPU, dtype and shapes.")
    p.add_argument("csv", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=harness.REPO / "docs" / "figures")
    args = ap.parse_args(argv)

    if args.command == "plot":
        from bench.tools import plot
        for path in args.csv:
            for fig in plot.plot_csv(path, args.out):
                print(fig)
        return
    suite = suites.load(args.command)
    providers = suite.providers()
    if args.providers:
        wanted = args.providers.split(",")
        unknown = set(wanted) - {p.name for p in providers}
        if unknown:
            ap.error(f"unknown providers {sorted(unknown)}; known: {[p.name for p in providers]}")
        providers = [p for p in providers if p.name in wanted]
    if args.modes:
        wanted = tuple(args.modes.split(","))
        providers = [dataclasses.replace(p, modes=tuple(m for m in p.modes if m in wanted)) for p in providers]
    cases = suite.cases(args.quick)
    if args.ctx:
        cases = [c for c in cases if str(c.get("ctx")) in args.ctx.split(",")]
    default_dir = QUICK_DIR if args.quick else harness.REPO / "bench" / "results"
    csv_path = args.csv or default_dir / f"{args.command}.csv"
    rows = harness.run_suite(args.command, cases, providers, args.dtype,
                             csv_path, args.log)
    harness.print_table(rows, suite.TABLE_KEYS)
    print(f"rows appended to {csv_path}")


if __name__ == "__main__":
    main()
