"""Per-stage times of the chunkwise mLSTM kernels, for tuning (GPU).

    python -m bench.tools.profile_mlstm [--geometry 7B|TFLA|paper|large1024] [--S 8192] [--tokens 65536]
                                        [--configs '{"chunk_size":128}' ...]

For each config: the forward and forward+backward medians (do_bench) and each stage alone, next
to the floor of that stage (max of FLOPs / matmul ceiling and bytes / copy ceiling).
"""

from __future__ import annotations

import argparse
import functools
import json

import torch
import triton
import triton.testing

import xlstm_triton.ops.mlstm.op as op
from bench.suites.mlstm import GEOMETRIES, forward_floor_ms, mlstm_inputs
from xlstm_triton import mlstm_chunkwise
from xlstm_triton.ops.mlstm import bwd, fwd
from xlstm_triton.ops.mlstm.gates import chunkwise_gates



def bench(fn, grad_to_none=None):
    return triton.testing.do_bench(fn, warmup=10, rep=100, grad_to_none=grad_to_none, return_mode="median")


def profile(geometry, S, overrides, dtype=torch.bfloat16, tokens=65536):
    g = GEOMETRIES[geometry]
    NH, DQK, DV = g["NH"], g["DQK"], g["DV"]
    B = tokens // S
    L = overrides.get("chunk_size") or op.default_chunk_size(S)
    op.CONFIG_OVERRIDES.clear()
    op.CONFIG_OVERRIDES.update({k: v for k, v in overrides.items() if k != "chunk_size"})
    cfg = op.make_config(S, DQK, DV, dtype, L, **op.CONFIG_OVERRIDES)
    ins = mlstm_inputs(dict(B=B, NH=NH, S=S, DQK=DQK, DV=DV), dtype, requires_grad=False)
    q, k, v, i, f = ins
    dh = torch.randn(B, NH, S, DV, device="cuda", dtype=dtype)

    res = {}
    with torch.no_grad():
        res["fw"] = bench(lambda: mlstm_chunkwise(*ins, chunk_size=L))
    for t in ins:
        t.requires_grad_(True)

    def fwbw():
        mlstm_chunkwise(*ins, chunk_size=L).backward(dh)
    fwbw()
    torch.cuda.synchronize()
    for t in ins:
        t.grad = None
    torch.cuda.reset_peak_memory_stats()
    fwbw()
    torch.cuda.synchronize()
    res["fwbw_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    res["fwbw"] = bench(fwbw, grad_to_none=ins)
    from torch.profiler import ProfilerActivity, profile as torch_profile
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            fwbw()
            for t in ins:
                t.grad = None
        torch.cuda.synchronize()
    kernels = {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t > 0:
            kernels[e.key[:60]] = round(t / 3 / 1e3, 3)       # ms per fwbw call
    res["kernels_ms"] = dict(sorted(kernels.items(), key=lambda kv: -kv[1])[:14])
    for t in ins:
        t.requires_grad_(False)

    gates = chunkwise_gates(i, f, None, L)
    res["gates"] = bench(lambda: chunkwise_gates(i, f, None, L))
    states, nstates, _, _ = fwd.chunkwise_fwd_states(k, v, gates, None, None, cfg)
    res["fwd_states"] = bench(lambda: fwd.chunkwise_fwd_states(k, v, gates, None, None, cfg))
    h, inv_den, zsign, _ = fwd.chunkwise_fwd_output(q, k, v, states, nstates, gates, 1e-6, cfg)
    # a partial binds the states now (a lambda would read the names the `del` below removes)
    res["fwd_output"] = bench(functools.partial(fwd.chunkwise_fwd_output, q, k, v, states, nstates, gates, 1e-6, cfg))
    del states, nstates
    res["bwd_total"] = bench(lambda: bwd.chunkwise_bwd(q, k, v, i, f, h, dh, None, None, None, None, gates,
                                                         inv_den, zsign, cfg))

    floors = forward_floor_ms(B, NH, S, DQK, DV, L, cfg.tile, 2 if dtype == torch.bfloat16 else 4)
    res["floor_fwd_states"], res["floor_fwd_output"], res["floor_fw"] = floors["states"], floors["output"], floors["fw"]
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--geometry", default="7B")
    ap.add_argument("--S", type=int, default=8192)
    ap.add_argument("--configs", nargs="*", default=["{}"])
    ap.add_argument("--tokens", type=int, default=65536, help="B * S")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    for c in args.configs:
        over = json.loads(c)
        try:
            r = profile(args.geometry, args.S, over, tokens=args.tokens)
        except Exception as e:  # a config that does not compile is a result
            r = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        rows.append((c, r))
        print(c, json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
    if args.out:
        with open(args.out, "a") as fh:
            for c, r in rows:
                fh.write(json.dumps({"geometry": args.geometry, "S": args.S, "config": c, **r}) + "\n")


if __name__ == "__main__":
    main()
