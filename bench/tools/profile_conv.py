"""Times of the causal conv1d kernels (forward; backward: d pre with the weight sums, d x) for
tile settings of `xlstm_triton.modules.causal_conv1d.TILES`, next to their byte floors (GPU).

    python -m bench.tools.profile_conv [--B 8] [--S 2048] [--F 2048] [--configs '{"bt": 64, "bf": 128}' ...]

x is the x_m half of an up-projection's (B, S, 2F) output, as the paper mLSTM layer passes it.
Floors: bytes each kernel must move (x, dy, d pre, dx in bf16) over the copy ceiling.
"""

from __future__ import annotations

import argparse
import importlib
import json

import torch
import triton.testing

from bench.harness.ceilings import TBPS

cc = importlib.import_module("xlstm_triton.modules.causal_conv1d")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--S", type=int, default=2048)
    ap.add_argument("--F", type=int, default=2048)
    ap.add_argument("--configs", nargs="*", default=["{}"])
    args = ap.parse_args(argv)
    B, S, F, K = args.B, args.S, args.F, 4
    xz = torch.randn(B, S, 2 * F, device="cuda", dtype=torch.bfloat16)
    x = xz[..., :F]
    w = torch.randn(F, K, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(F, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn(B, S, F, device="cuda", dtype=torch.bfloat16)
    dx = torch.zeros(B, S, F, device="cuda", dtype=torch.bfloat16)
    tensor = B * S * F * 2
    floors = dict(fwd=2 * tensor / TBPS * 1e3, bwd=(3 + 3) * tensor / TBPS * 1e3)   # bwd: x, dy, d pre, d pre, dx r+w
    default = dict(cc.TILES)
    ref = None
    for text in args.configs:
        cc.TILES.clear()
        cc.TILES.update(default, **json.loads(text))
        fwd = lambda: cc.causal_conv1d_forward(x, w, b, silu=True)
        bwd = lambda: cc.causal_conv1d_backward(x, w, b, None, dy, True, dx=dx, accumulate=True)
        dx.zero_()
        out = bwd()
        got = (fwd().float(), out[0].float(), out[1].float())
        if ref is None:
            ref = got
        err = max(((g - r).norm() / r.norm()).item() for g, r in zip(got, ref))
        t_f = triton.testing.do_bench(fwd, warmup=20, rep=200, return_mode="median")
        t_b = triton.testing.do_bench(bwd, warmup=20, rep=200, return_mode="median")
        print(json.dumps(dict(config=cc.TILES, fwd_ms=round(t_f, 4), bwd_ms=round(t_b, 4),
                              floor_fwd_ms=round(floors["fwd"], 4), floor_bwd_ms=round(floors["bwd"], 4),
                              rel_diff_vs_first=err)))
    cc.TILES.clear()
    cc.TILES.update(default)


if __name__ == "__main__":
    main()
