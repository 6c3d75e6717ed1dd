"""Tiles of the causal conv1d backward at the paper layer's shapes, timed against each other (GPU).

    python -m bench.tools.ab_conv [--configs 16,16,64,4 16,32,64,4 ...] [--F 2048]

A config is rows,tiles,cols,warps: the backward's first kernel on tiles of `rows` x `cols`,
`tiles` of them per program, both kernels on `warps` warps (`causal_conv1d.BWD_ROWS`,
`BWD_TILES`, `BWD_COLS`, `BWD_NUM_WARPS`). Each config's whole backward (bf16, K = 4, SiLU, with
bias) is timed with do_bench at (B, S) = (8, 2048) and (2, 8192), and its d x, d weight and
d bias compared with the module's defaults (relative norm), which run first.
"""

from __future__ import annotations

import argparse
import importlib

import torch
import triton


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="*", default=["16,32,64,4", "16,64,64,4", "8,32,64,4", "16,16,32,4"])
    ap.add_argument("--F", type=int, default=2048)
    args = ap.parse_args(argv)
    cc = importlib.import_module("xlstm_triton.modules.causal_conv1d")
    default = (cc.BWD_ROWS, cc.BWD_TILES, cc.BWD_COLS, cc.BWD_NUM_WARPS)
    configs = [default] + [tuple(int(v) for v in c.split(",")) for c in args.configs]
    print("B S rows tiles cols warps us err")
    for B, S in ((8, 2048), (2, 8192)):
        x = torch.randn(B, S, args.F, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(args.F, 4, device="cuda", dtype=torch.bfloat16) * 0.5
        b = torch.randn(args.F, device="cuda", dtype=torch.bfloat16)
        dy = torch.randn(B, S, args.F, device="cuda", dtype=torch.bfloat16)
        ref = None
        for config in configs:
            cc.BWD_ROWS, cc.BWD_TILES, cc.BWD_COLS, cc.BWD_NUM_WARPS = config
            out = cc.causal_conv1d_backward(x, w, b, None, dy, True)
            ref = ref if ref is not None else out
            err = max(((o.float() - r.float()).norm() / r.float().norm()).item() for o, r in zip(out[:3], ref[:3]))
            ms = triton.testing.do_bench(lambda: cc.causal_conv1d_backward(x, w, b, None, dy, True), warmup=50, rep=300)
            print(B, S, *config, round(ms * 1e3, 1), f"{err:.1e}", flush=True)
        cc.BWD_ROWS, cc.BWD_TILES, cc.BWD_COLS, cc.BWD_NUM_WARPS = default


if __name__ == "__main__":
    main()
