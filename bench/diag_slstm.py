"""sLSTM diagnostics on the GPU: errors per output for chosen configs, and per-step timings of
program decompositions (`python bench/diag_slstm.py`)."""

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
    return f"{NH}x{DH} {over or 'default'} cfg={cfg} fw={fw:.3f} ms ({fw / 1024 * 1e3:.2f} us/step)"


if __name__ == "__main__":
    fwd_module.CHECK_BARRIER = True
    for over in [{}, dict(resident=False), dict(bo=16, resident=True, bk=16), dict(bo=16, resident=True, bk=32),
                 dict(bo=16, resident=True, bk=128, sync=False)]:
        try:
            print("1x80 fp32", over, errors(3, 7, 1, 80, torch.float32, **over), flush=True)
        except Exception as e:
            print("1x80 fp32", over, "ERROR", type(e).__name__, str(e)[:200], flush=True)
    for NH, DH, over in [(12, 64, {}), (1, 768, {}), (1, 768, dict(sync=False)), (1, 768, dict(bo=32)),
                         (1, 768, dict(bo=64)), (1, 768, dict(resident=False, bk=64)),
                         (3, 256, {}), (3, 256, dict(bo=32)), (6, 128, {}), (6, 128, dict(bo=64, resident=True, num_warps=8))]:
        try:
            print(timing(NH, DH, **over), flush=True)
        except Exception as e:
            print(NH, DH, over, "ERROR", type(e).__name__, str(e)[:200], flush=True)
