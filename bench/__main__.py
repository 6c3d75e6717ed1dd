"""Command line for the benchmarks.

    python -m bench mlstm [--providers a,b] [--quick]     # mLSTM kernels, peers, attention
    python -m bench slstm [--providers a,b] [--quick]     # sLSTM kernels, FlashRNN, cuDNN LSTM
    python -m bench step                                  # mLSTM decoding step vs its HBM floor
    python -m bench plot bench/results/mlstm.csv          # CSV -> PNG figures in docs/figures/
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from bench import harness

SUITES = ["mlstm", "slstm", "step"]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_worker":            # internal: one provider in its own process
        suite, provider, dtype, cases = argv[1:5]
        harness.run_worker(suite, provider, json.loads(cases), dtype)
        return
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name in SUITES:
        p = sub.add_parser(name, help=importlib.import_module(f"bench.suite_{name}").__doc__.splitlines()[0])
        p.add_argument("--providers", help="comma-separated provider names (default: all)")
        p.add_argument("--quick", action="store_true", help="small shapes, for a smoke test")
        p.add_argument("--dtype", default="bfloat16")
        p.add_argument("--csv", type=Path, help=f"default: bench/results/{name}.csv")
        p.add_argument("--log", type=Path, help="worker stderr goes here")
    p = sub.add_parser("plot", help="turn result CSVs into PNG figures")
    p.add_argument("csv", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=harness.REPO / "docs" / "figures")
    args = ap.parse_args(argv)

    if args.command == "plot":
        from bench import plot
        for path in args.csv:
            for fig in plot.plot_csv(path, args.out):
                print(fig)
        return
    suite = importlib.import_module(f"bench.suite_{args.command}")
    providers = suite.providers()
    if args.providers:
        wanted = args.providers.split(",")
        unknown = set(wanted) - {p.name for p in providers}
        if unknown:
            ap.error(f"unknown providers {sorted(unknown)}; known: {[p.name for p in providers]}")
        providers = [p for p in providers if p.name in wanted]
    csv_path = args.csv or harness.REPO / "bench" / "results" / f"{args.command}.csv"
    rows = harness.run_suite(args.command, suite.cases(args.quick), providers, args.dtype,
                             csv_path, args.log)
    harness.print_table(rows, suite.TABLE_KEYS)


if __name__ == "__main__":
    main()
