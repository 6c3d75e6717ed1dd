"""The sm_90 code of the sLSTM kernels, without a GPU: registers, spills, shared memory, the
instructions and barriers of the hottest loop, and the split kernels' barrier instructions in the
PTX (`python -m bench.tools.sm90_code [names]`; the tests use it too).

Needs a Triton whose NVIDIA backend compiles for sm_90 (the GPU image's version, 3.6: `pip
download triton==3.6.0 --no-deps`, install it with `--target DIR` and put DIR first on
PYTHONPATH) and no TRITON_INTERPRET. Stride arguments are marked divisible by 16, as Triton
specializes them at launch. The loop reported is the longest backward branch's body in the SASS
(the per-step loop of the sequential kernels): its instruction count and its `BAR.SYNC`s are
per warp and step.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

P16 = "*bf16"
F32 = "*fp32"


def kernels() -> dict:
    """name -> (jit function, signature, constexprs, num_warps) of the shapes we look at."""
    from xlstm_triton.ops.slstm.bwd import slstm_bwd_kernel
    from xlstm_triton.ops.slstm.bwd_head import slstm_bwd_head_batch_last_kernel, slstm_bwd_head_kernel
    from xlstm_triton.ops.slstm.fwd import slstm_fwd_kernel
    from xlstm_triton.ops.slstm.fwd_head import slstm_fwd_head_batch_last_kernel

    def fwd(DH, BO, NCB, KA, KB, num_warps, save):
        sig = dict(wx_ptr=P16, R_ptr=P16, b_ptr=P16, state_in_ptr=F32, h0_ptr=P16 if NCB > 1 else F32, h_ptr=P16,
                   state_out_ptr=F32, pre_ptr=F32, cnm_ptr=F32, sync_ptr="*i32", B="i32", T="i32",
                   t_start="i32", t_end="i32", s_wx_b="i32", s_wx_t="i32", s_wx_g="i32", s_wx_h="i32")
        ce = dict(NH=6 if DH <= 128 else 1, DH=DH, BB=16, BO=BO, NCB=NCB, KA=KA, KB=KB, BK=64, RESIDENT=True,
                  SAVE=save, SYNC=NCB > 1, H0_IS_STATE=NCB == 1, DOT_PREC="ieee", FAST_MATH=True)
        return slstm_fwd_kernel, sig, ce, num_warps

    def bwd_split(DH, BO, NCB, KA, KB):
        sig = dict(R_ptr=P16, pre_ptr=F32, cnm_ptr=F32, state0_ptr=F32, dh_ptr=P16, dstate_in_ptr=F32, dwx_ptr=P16,
                   dstate_out_ptr=F32, part_ptr=P16, sync_ptr="*i32", B="i32", T="i32", t_lo="i32", t_hi="i32")
        ce = dict(NH=1, DH=DH, BB=16, BO=BO, NCB=NCB, KA=KA, KB=KB, BK=64, RESIDENT=True, SYNC=True,
                  FINALIZE=True, DOT_PREC="ieee", FAST_MATH=True)
        return slstm_bwd_kernel, sig, ce, 8

    def bwd_head(DH, num_warps, batch_last=False):
        sig = dict(R_ptr=P16, coef_ptr=F32, dh_ptr=F32 if batch_last else P16, dstate_in_ptr=F32,
                   **{"dpre_ptr" if batch_last else "dwx_ptr": P16}, dstate_out_ptr=F32, B="i32", T="i32")
        kernel = slstm_bwd_head_batch_last_kernel if batch_last else slstm_bwd_head_kernel
        return kernel, sig, dict(NH=6, DH=DH, BB=16, BO=DH, DOT_PREC="ieee"), num_warps

    def fwd_head_batch_last(DH, num_warps):
        sig = dict(wx_ptr=P16, R_ptr=P16, b_ptr=P16, state_in_ptr=F32, h_ptr=P16, state_out_ptr=F32,
                   B="i32", T="i32")
        ce = dict(NH=6, DH=DH, BB=16, BO=DH, DOT_PREC="ieee", FAST_MATH=True)
        return slstm_fwd_head_batch_last_kernel, sig, ce, num_warps

    return {
        "fwd_head_128": fwd(128, 128, 1, 128, 0, 8, False),
        "fwd_head_128_batch_last": fwd_head_batch_last(128, 8),
        "fwd_head_64_batch_last": fwd_head_batch_last(64, 8),
        "fwd_head_64_batch_last_w4": fwd_head_batch_last(64, 4),
        "fwd_head_64": fwd(64, 64, 1, 64, 0, 8, False),
        "bwd_head_128": bwd_head(128, 8),
        "bwd_head_64": bwd_head(64, 8),
        "bwd_head_128_batch_last": bwd_head(128, 8, True),
        "bwd_head_64_batch_last": bwd_head(64, 4, True),
        "bwd_head_64_batch_last_w8": bwd_head(64, 8, True),
        "bwd_head_32_batch_last": bwd_head(32, 4, True),
        "fwd_split_256": fwd(256, 16, 16, 256, 0, 4, False),
        "fwd_split_256_train": fwd(256, 16, 16, 256, 0, 4, True),        # storing the steps
        "fwd_split_768": fwd(768, 16, 48, 512, 256, 4, False),
        "bwd_split_256": bwd_split(256, 16, 16, 256, 0),
        "bwd_split_128": bwd_split(128, 16, 8, 128, 0),
    }


def hottest_loop(sass: str) -> dict:
    """Instruction and barrier counts of the longest loop body (a branch back to an earlier
    address) in a cuobjdump -sass listing."""
    code = [(int(m.group(1), 16), m.group(2)) for m in
            re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    at = {a: k for k, (a, _) in enumerate(code)}
    start, end = 0, 0
    for k, (a, ins) in enumerate(code):
        m = re.search(r"\bBRA\s+(?:`\()?0x([0-9a-f]+)", ins)
        if m and int(m.group(1), 16) < a and int(m.group(1), 16) in at:
            s0 = at[int(m.group(1), 16)]
            if k + 1 - s0 > end - start:
                start, end = s0, k + 1
    body = [ins for _, ins in code[start:end]]
    count = lambda pat: sum(bool(re.search(pat, ins)) for ins in body)   # noqa: E731
    return dict(instructions=len(body), bar_sync=count(r"\bBAR\.SYNC"), hmma=count(r"\bHMMA\b"),
                wgmma=count(r"\bHGMMA\b"), mufu=count(r"\bMUFU\b"), lds=count(r"\bLDS"),
                sts=count(r"\bSTS\b"), ldg=count(r"\bLDG"), stg=count(r"\bSTG\b"), local=count(r"\b(LDL|STL)\b"))


def analyse(names=None) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    out = {}
    for name, (fn, sig, ce, num_warps) in kernels().items():
        if names and name not in names:
            continue
        fn = getattr(fn, "kernel", fn)          # the jit function under the launch cache's wrapper
        full = dict(sig, **{k: "constexpr" for k in ce})
        attrs = {(i,): [["tt.divisibility", 16]] for i, k in enumerate(full) if full[k].startswith("*")}
        c = triton.compile(ASTSource(fn=fn, signature=full, constexprs=ce, attrs=attrs),
                           target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
        with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
            fh.write(c.asm["cubin"])
            fh.flush()
            res = subprocess.run([f"{tools}/cuobjdump", "--dump-resource-usage", fh.name], capture_output=True,
                                 text=True).stdout
            sass = subprocess.run([f"{tools}/cuobjdump", "-sass", fh.name], capture_output=True, text=True).stdout
        m = re.search(r"REG:(\d+) STACK:(\d+) .*LOCAL:(\d+)", res)
        out[name] = dict(num_warps=num_warps, regs=int(m.group(1)), spill_bytes=int(m.group(2)) + int(m.group(3)),
                         shared=c.metadata.shared, loop=hottest_loop(sass), ptx=ptx_counts(c.asm["ptx"]))
    return out


def ptx_counts(ptx: str) -> dict:
    """The split kernels' barrier in the PTX: GPU-scope release adds, acquire polls, L1-bypassing
    loads (of what other SMs wrote) and CTA barriers."""
    return {k: len(re.findall(v, ptx)) for k, v in dict(
        release=r"red\.global\.gpu\.release\.add|atom\.global\.gpu\.(release|acq_rel)\.add",
        acquire=r"ld\.global\.(gpu\.acquire|acquire\.gpu)|atom\.global\.gpu\.acquire",
        cg_load=r"ld\.global\.cg", bar=r"bar\.sync").items()}


if __name__ == "__main__":
    result = analyse(sys.argv[1:])
    for name, info in result.items():
        print(name, json.dumps(info))
