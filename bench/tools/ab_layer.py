"""One paper mLSTM layer's forward + backward under variants of module constants (GPU).

    python -m bench.tools.ab_layer [--ctx 2048] [--kernels REGEX] [--device cuda] VARIANT ...

A VARIANT is a comma-separated list of module.CONST=value (value a Python literal), e.g.

    xlstm_triton.modules.causal_conv1d.BWD_TILES=32
    xlstm_triton.modules.headwise_linear.ROWS=64,xlstm_triton.modules.headwise_linear.NUM_WARPS=8
    "xlstm_triton.ops.mlstm.op.CONFIG_OVERRIDES={'num_warps_states': 8}"

(a dict value, whose commas are its own, is the variant's only assignment).

The defaults run first, then each variant (the constants put back after it). The layer is the
`bench model` paper LM's (E = 1,024, 4 heads of 512, conv 4, blocks of 4, bf16), over
16,384 tokens (B = 16,384 / ctx). Printed per variant: the forward + backward's do_bench
median in ms, and the CUDA kernels whose names match REGEX (torch.profiler, ms per
forward + backward), so a tile change is seen in its own kernel and in the whole.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import re

import torch
import triton
from torch.profiler import ProfilerActivity, profile


def _assignments(variant: str) -> list[tuple[object, str, object]]:
    out = []
    for item in filter(None, variant.split(",") if "{" not in variant else [variant]):
        target, value = item.split("=", 1)
        module, name = target.rsplit(".", 1)
        out.append((importlib.import_module(module), name, ast.literal_eval(value)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("variants", nargs="*")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--kernels", default="conv1d|headwise|chunkwise|head_norm")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    import xlstm_triton.nn as ours
    B = 16384 // args.ctx
    cfg = ours.mLSTMLayerConfig(num_heads=4, conv1d_kernel_size=4, qkv_proj_blocksize=4, embedding_dim=1024,
                                context_length=args.ctx)
    with torch.device(args.device):
        layer = ours.mLSTMLayer(cfg).to(torch.bfloat16)
        x = torch.randn(B, args.ctx, 1024, dtype=torch.bfloat16, requires_grad=True)
        dy = torch.randn(B, args.ctx, 1024, dtype=torch.bfloat16)
    params = [x, *layer.parameters()]

    def step():
        layer(x).backward(dy)

    for variant in [""] + args.variants:
        changes = _assignments(variant)
        saved = [(m, n, getattr(m, n)) for m, n, _ in changes]
        for m, n, v in changes:
            setattr(m, n, v)
        try:
            step()
            ms = triton.testing.do_bench(step, warmup=25, rep=200, grad_to_none=params)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    step()
                torch.cuda.synchronize()
            kernels = {}
            for e in prof.key_averages():
                t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
                if t > 0 and re.search(args.kernels, e.key):
                    kernels[e.key[:40]] = round(t / 3 / 1e3, 3)
            print(f"{variant or 'defaults'}: {ms:.3f} ms", dict(sorted(kernels.items())), flush=True)
        finally:
            for m, n, v in saved:
                setattr(m, n, v)
        for p in params:
            p.grad = None


if __name__ == "__main__":
    main()
