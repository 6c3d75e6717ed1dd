"""sLSTM diagnostics on the GPU: errors per output for chosen configs, and per-step timings of
program decompositions (`python -m bench.tools.diag_slstm`)."""

import contextlib

import torch
import triton.testing

from reference.slstm import slstm_recurrent
from xlstm_triton.ops.slstm import config_override, slstm
from xlstm_triton.ops.slstm import fwd as fwd_module

STATE_SLOTS = ("h", "c", "n", "m")


def make_inputs(B, T, NH, DH, dtype, states=False, fresh_fraction=0.0):
    """Random inputs on the GPU: wx, R (scaled by 0.5 / sqrt(DH)), b; with `states` an initial
    state h, c, m ~ N(0, 1), n in [0.5, 1.5) with `fresh_fraction` of it 0 (a fresh state)."""
    x = dict(wx=torch.randn(B, T, 4, NH, DH), R=torch.randn(4, NH, DH, DH) * 0.5 / DH**0.5,
             b=torch.randn(4, NH, DH))
    if states:
        h, c, m = torch.randn(3, B, NH, DH)
        n = torch.rand(B, NH, DH) + 0.5
        fresh = torch.rand(B, NH, DH) < fresh_fraction
        x["initial_state"] = torch.stack([h, c, n.masked_fill(fresh, 0.0), m])
    return {k: v.to(device="cuda", dtype=dtype) for k, v in x.items()}


def with_grads(fn, inputs, seed=0):
    """h, the last state and every input's gradient of fn(**inputs, return_last_state=True)
    under a loss that weighs each element of h and the state by a fixed random number."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    h, state = fn(**leaves, return_last_state=True)
    weights = torch.Generator().manual_seed(seed)
    loss = sum((t.double() * torch.randn(t.shape, generator=weights, dtype=torch.float64).to(t.device)).sum()
               for t in (h, state))
    loss.backward()
    return h, state, {k: v.grad for k, v in leaves.items()}


def rel_err(out, ref) -> float:
    """Relative Frobenius error in float64; inf if `out` is not finite everywhere."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(out).all():
        return float("inf")
    norm = ref.norm().item()
    return (out - ref).norm().item() / (norm if norm > 0 else 1.0)


def _override(over):
    return config_override(**over) if over else contextlib.nullcontext()


def errors(B, T, NH, DH, dtype, **over):
    x = make_inputs(B, T, NH, DH, dtype, states=True, fresh_fraction=0.2)
    with _override(over):
        h, st, g = with_grads(slstm, x)
    hr, sr, gr = with_grads(slstm_recurrent, {k: v.double() for k, v in x.items()})   # float64 reference
    out = {"h": rel_err(h, hr)}
    out.update({f"state_{s}": rel_err(st[i], sr[i]) for i, s in enumerate(STATE_SLOTS)})
    out.update({f"d{k}": rel_err(g[k], gr[k]) for k in g})
    return {k: f"{v:.1e}" for k, v in out.items()}


def timing(NH, DH, **over):
    x = make_inputs(16, 1024, NH, DH, torch.bfloat16)
    with _override(over):
        cfg = fwd_module.pick_config(NH, DH, 16, torch.bfloat16, torch.device("cuda"))
        with torch.no_grad():
            fw = triton.testing.do_bench(lambda: slstm(**x), warmup=5, rep=50, return_mode="median")
        leaves = {k: v.requires_grad_(True) for k, v in x.items()}
        dh = torch.randn(16, 1024, NH, DH, device="cuda", dtype=torch.bfloat16)

        def fwbw():
            slstm(**leaves).backward(dh)
        fb = triton.testing.do_bench(fwbw, warmup=5, rep=50, return_mode="median", grad_to_none=list(leaves.values()))
        # the stages alone: the training forward (split heads save their steps), the backward's
        # recomputation of the step coefficients (whole heads), the sequential backward + dR/db,
        # dR/db alone
        from xlstm_triton.ops.slstm.bwd import slstm_bwd
        from xlstm_triton.ops.slstm.bwd_head import slstm_bwd_head
        from xlstm_triton.ops.slstm.dr_db import slstm_dr_db
        from xlstm_triton.ops.slstm.op import launch_forward
        from xlstm_triton.ops.slstm.recompute import slstm_step_coefficients
        wx, R, b = (x[k].detach() for k in ("wx", "R", "b"))
        s0 = torch.zeros(4, 16, NH, DH, device="cuda")
        save = cfg.saves_steps
        h, last, pre, cnm = launch_forward(wx, R, b, s0, cfg, save)
        fs = triton.testing.do_bench(lambda: launch_forward(wx, R, b, s0, cfg, save), warmup=5, rep=50,
                                     return_mode="median")
        dl = torch.zeros_like(s0)
        if save:
            rc = 0.0
            backward = lambda: slstm_bwd(dh, dl, R, h, s0, pre, cnm, cfg)   # noqa: E731
        else:
            rc = triton.testing.do_bench(lambda: slstm_step_coefficients(wx, R, b, h, s0, cfg), warmup=5,
                                         rep=50, return_mode="median")
            coef = slstm_step_coefficients(wx, R, b, h, s0, cfg)
            backward = lambda: slstm_bwd_head(dh, dl, R, h, s0, coef, cfg)   # noqa: E731
        bw = triton.testing.do_bench(backward, warmup=5, rep=50, return_mode="median")
        dwx = backward()[0]
        dr = triton.testing.do_bench(lambda: slstm_dr_db(dwx, h, s0), warmup=5, rep=50,
                                     return_mode="median")
    return (f"{NH}x{DH} {over or 'default'} cfg={cfg} fw={fw:.3f} ms ({fw / 1024 * 1e3:.2f} us/step) "
            f"fwbw={fb:.3f} ms | training fw {fs:.3f} coefficients {rc:.3f} bwd {bw:.3f} (dR/db {dr:.3f})")


if __name__ == "__main__":
    # One variant per process (a hung barrier must not take the others down):
    #   python -m bench.tools.diag_slstm errors B T NH DH dtype '{"bo": 16}'
    #   python -m bench.tools.diag_slstm timing NH DH '{"sync": false}'
    import json
    import sys

    kind, args = sys.argv[1], sys.argv[2:]
    # The barrier check reads a counter on the host after each split-head launch (a sync per call):
    # for the error runs only, never inside a timing.
    fwd_module.CHECK_BARRIER = kind != "timing"
    over = json.loads(args[-1]) if args and args[-1].startswith("{") else {}
    if kind == "once":  # one forward call after a warm-up, for ncu: once NH DH '{...}'
        x = make_inputs(16, 1024, int(args[0]), int(args[1]), torch.bfloat16)
        with _override(over), torch.no_grad():
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
