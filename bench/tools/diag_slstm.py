"""sLSTM diagnostics on the GPU: errors per output for chosen configs, and per-step timings of
program decompositions (`python -m bench.tools.diag_slstm`)."""

import torch
import triton.testing

from tests.helpers import rel_err
from tests.test_slstm import STATE_SLOTS, make_inputs, reference_with_grads, run_with_grads
from xlstm_triton.slstm import config_override, slstm
from xlstm_triton.slstm import fwd as fwd_module


def errors(B, T, NH, DH, dtype, **over):
    x = make_inputs(B, T, NH, DH, dtype, "cuda", states=True, fresh_fraction=0.2)
    with config_override(**over) if over else _null():
        h, st, g = run_with_grads(slstm, x)
    hr, sr, gr = reference_with_grads(x)
    out = {"h": rel_err(h, hr)}
    out.update({f"state_{s}": rel_err(st[i], sr[i]) for i, s in enumerate(STATE_SLOTS)})
    out.update({f"d{k}": rel_err(g[k], gr[k]) for k in g})
    return {k: f"{v:.1e}" for k, v in out.items()}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def timing(NH, DH, **over):
    x = make_inputs(16, 1024, NH, DH, torch.bfloat16, "cuda")
    with config_override(**over) if over else _null():
        cfg = fwd_module.pick_config(NH, DH, 16, torch.bfloat16, torch.device("cuda"))
        with torch.no_grad():
            fw = triton.testing.do_bench(lambda: slstm(**x), warmup=5, rep=50, return_mode="median")
        leaves = {k: v.requires_grad_(True) for k, v in x.items()}
        dh = torch.randn(16, 1024, NH, DH, device="cuda", dtype=torch.bfloat16)

        def fwbw():
            slstm(**leaves).backward(dh)
        fb = triton.testing.do_bench(fwbw, warmup=5, rep=50, return_mode="median", grad_to_none=list(leaves.values()))
        # the stages alone: forward saving for the backward, backward kernel + dR/db, dR/db
        from xlstm_triton.slstm.bwd import slstm_bwd, slstm_dr_db
        from xlstm_triton.slstm.fwd import slstm_fwd
        wx, R, b = (x[k].detach() for k in ("wx", "R", "b"))
        s0 = torch.zeros(4, 16, NH, DH, device="cuda")
        h, last, pre, cnm = slstm_fwd(wx, R, b, s0, cfg, save=True)
        fs = triton.testing.do_bench(lambda: slstm_fwd(wx, R, b, s0, cfg, save=True), warmup=5, rep=50,
                                     return_mode="median")
        dl = torch.zeros_like(s0)
        bw = triton.testing.do_bench(lambda: slstm_bwd(dh, dl, R, h, s0, pre, cnm, cfg), warmup=5, rep=50,
                                     return_mode="median")
        dwx = slstm_bwd(dh, dl, R, h, s0, pre, cnm, cfg)[0]
        dr = triton.testing.do_bench(lambda: slstm_dr_db(dwx, h, s0, R), warmup=5, rep=50,
                                     return_mode="median")
    return (f"{NH}x{DH} {over or 'default'} cfg={cfg} fw={fw:.3f} ms ({fw / 1024 * 1e3:.2f} us/step) "
            f"fwbw={fb:.3f} ms | fw+save {fs:.3f} bwd {bw:.3f} (dR/db {dr:.3f})")


if __name__ == "__main__":
    # One variant per process (a hung barrier must not take the others down):
    #   python -m bench.tools.diag_slstm errors B T NH DH dtype '{"bo": 16}'
    #   python -m bench.tools.diag_slstm timing NH DH '{"sync": false}'
    import json
    import sys

    fwd_module.CHECK_BARRIER = True
    kind, args = sys.argv[1], sys.argv[2:]
    over = json.loads(args[-1]) if args and args[-1].startswith("{") else {}
    if kind == "once":  # one forward call after a warm-up, for ncu: once NH DH '{...}'
        x = make_inputs(16, 1024, int(args[0]), int(args[1]), torch.bfloat16, "cuda")
        with config_override(**over) if over else _null(), torch.no_grad():
            slstm(**x)
            torch.cuda.synchronize()
            slstm(**x)
            torch.cuda.synchronize()
        print("once done", flush=True)
    elif kind == "errors":
        B, T, NH, DH = map(int, args[:4])
        print("errors", args[:5], over, errors(B, T, NH, DH, getattr(torch, args[4]), **over), flush=True)
    else:
        print(timing(int(args[0]), int(args[1]), **over), flush=True)
