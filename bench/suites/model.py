"""Training throughput, peak memory and MFU of whole language models vs context length.

Models (parameters in the CSV's `params` column; all near 255M):
  xlstm_triton        `xlstm_triton.nn.xLSTMLMModel`, the paper architecture: 24 blocks, E=1024,
                      mLSTM blocks with 4 heads of (512, 512) (inner 2048), sLSTM blocks (4 heads,
                      gated FFN x1.3) at 7, 15, 23, vocabulary 50,304, untied head
  xlstm_triton.mlstm_only   the same with mLSTM blocks only
  xlstm_large         `xlstm_triton.models.xLSTMLarge`, the xLSTM-7B architecture at E=1024:
                      12 blocks, 4 heads of (128, 256), SwiGLU FFN, fused weights
  xlstm               the sLSTM config in the `xlstm` package's own xLSTMLMModel, its mLSTM cells
                      on mlstm_kernels' chunkwise `xl_chunk` Triton kernel (DISABLE_LLVM_OPT=1)
                      and its sLSTM on the `cuda` backend, which builds with nvcc for every batch
                      size; eager, contexts 2048 and 8192 only; a failed build is the row's error
  transformer         bench/baselines/transformer.py with the parameter count of the paper LM:
                      d=1024, 16 heads of 64, RoPE, SwiGLU, pre-norm; SDPA as PyTorch dispatches
  transformer.sdpa_cudnn   the same with SDPA's cuDNN backend forced (eager)
at context 2048, 8192, 16384 with 16,384 tokens per step (B = 16384 / ctx), and one larger
point, ctx 4096: xlstm_large at E=2048 with 24 blocks (8 heads) against the Transformer of its
parameter count.

Mode "eager" / "compiled" (torch.compile, default options: the Transformer whole, our models
block by block with `xlstm_triton.models.compile_blocks`) / "compiled_graphs" (the same with
mode="reduce-overhead": the compiled graphs replayed as CUDA graphs) / "cudagraph" (the
eager model's forward and backward captured once in a CUDA graph and replayed, the optimizer
eager: what the step costs without the host's per-launch time): one optimizer step, timed whole: zero_grad, forward with `labels` (every model computes its loss with the
fused linear + cross-entropy of xlstm_triton.modules, so the loss costs every model the same),
backward, AdamW (fused on CUDA). Parameters, activations and optimizer state in the run's dtype
(bfloat16 by default; no autocast, no float32 master weights). `tokens_per_s` = tokens per
step / step time; `peak_mib` the peak of one step with parameters, gradients and AdamW state;
`tflops` the model FLOPs per second: 6 per matmul parameter and token (the embedding table
excluded) plus the sequence mixing (causal attention 6 L d ctx per token; the mLSTM 3x its
chunkwise forward: 4 DQK DV + (DQK + DV) L_chunk per head; the sLSTM 24 DH^2 per head), no
recomputation counted; `mfu` = tflops / 989 (H100 / H200 SXM, bf16 dense) on those GPUs, else empty.
"""

from __future__ import annotations

import torch

from bench.harness import Provider, Unavailable, device, require_cuda

TOKENS_PER_STEP = 16384
CONTEXTS = (2048, 8192, 16384)
XLSTM_PACKAGE_CONTEXTS = (2048, 8192)     # one nvcc build of its sLSTM kernel per batch size
MODEL = dict(E=1024, blocks=24, slstm_at="7,15,23", mlstm_heads=4, slstm_heads=4, vocab=50304,
             large_E=1024, large_blocks=12, large_heads=4)
LARGE_POINT = dict(MODEL, ctx=4096, large_E=2048, large_blocks=24, large_heads=8, size="large")
HOPPER_BF16_TFLOPS = 989.0     # dense bf16, H100 SXM and H200 (same chip)


def cases(quick: bool = False) -> list[dict]:
    if quick:
        tiny = dict(E=64, blocks=2, slstm_at="1", mlstm_heads=2, slstm_heads=2, vocab=256,
                    large_E=64, large_blocks=2, large_heads=2)
        return [dict(ctx=ctx, B=64 // ctx, tokens=64, **tiny) for ctx in (16, 32)]
    full = [dict(ctx=ctx, B=TOKENS_PER_STEP // ctx, tokens=TOKENS_PER_STEP, **MODEL) for ctx in CONTEXTS]
    return full + [dict(LARGE_POINT, B=TOKENS_PER_STEP // 4096, tokens=TOKENS_PER_STEP)]


def is_large_point(case) -> bool:
    return case.get("size") == "large"


# ------------------------------------------------------------------ models

def xlstm_config(pkg, case, slstm_backend: str = "cuda", context_length: int | None = None,
                 with_slstm: bool = True):
    """The xLSTM LM config of `case` built from `pkg` (`xlstm_triton.nn` or `xlstm`): the two
    packages share the config classes' names and fields. with_slstm=False: mLSTM blocks only."""
    mlstm = pkg.mLSTMLayerConfig(num_heads=case["mlstm_heads"], conv1d_kernel_size=4, qkv_proj_blocksize=4)
    slstm = pkg.sLSTMLayerConfig(num_heads=case["slstm_heads"], conv1d_kernel_size=4,
                                 backend=slstm_backend, batch_size=case["B"])
    return pkg.xLSTMLMModelConfig(
        mlstm_block=pkg.mLSTMBlockConfig(mlstm=mlstm),
        slstm_block=pkg.sLSTMBlockConfig(slstm=slstm, feedforward=pkg.FeedForwardConfig(proj_factor=1.3, act_fn="gelu")),
        num_blocks=case["blocks"], embedding_dim=case["E"], vocab_size=case["vocab"],
        slstm_at=[int(i) for i in case["slstm_at"].split(",")] if with_slstm else [],
        context_length=case["ctx"] if context_length is None else context_length)


def describe_xlstm(case, with_slstm: bool = True) -> str:
    inner = 2 * case["E"]
    n_slstm = len(case["slstm_at"].split(",")) if with_slstm else 0
    return (f"xLSTM[{case['blocks'] - n_slstm}:{n_slstm}] {case['blocks']} blocks E={case['E']} "
            f"mLSTM {case['mlstm_heads']}x{inner // case['mlstm_heads']}"
            + (f" sLSTM {case['slstm_heads']}x{case['E'] // case['slstm_heads']} at {case['slstm_at']}"
               if with_slstm else ""))


def xlstm_parameter_count(case) -> int:
    import xlstm_triton.nn as ours
    with torch.device("meta"):
        return sum(p.numel() for p in ours.xLSTMLMModel(xlstm_config(ours, case)).parameters())


def large_config(case):
    from xlstm_triton.models import xLSTMLargeConfig
    return xLSTMLargeConfig(vocab_size=case["vocab"], embedding_dim=case["large_E"], num_blocks=case["large_blocks"],
                            num_heads=case["large_heads"], weight_mode="fused")


def large_parameter_count(case) -> int:
    from xlstm_triton.models import xLSTMLarge
    with torch.device("meta"):
        return sum(p.numel() for p in xLSTMLarge(large_config(case)).parameters())


def _mlstm_flops(NH: int, DQK: int, DV: int, ctx: int) -> float:
    """Training FLOPs per token of one mLSTM layer's cell: 3x the chunkwise forward."""
    from xlstm_triton.ops.mlstm.op import default_chunk_size
    chunk = default_chunk_size(ctx)
    return 3.0 * NH * (4 * DQK * DV + (DQK + DV) * min(chunk, ctx))


def model_flops_per_token(model, kind: str, case) -> float:
    """6 per matmul parameter (embedding tables excluded) plus the sequence mixing (docstring)."""
    emb = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    flops = 6.0 * (sum(p.numel() for p in model.parameters()) - emb)
    ctx = case["ctx"]
    if kind == "transformer":
        cfg = model.cfg
        flops += 6.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * ctx
    elif kind == "xlstm_large":
        cfg = model.config
        flops += cfg.num_blocks * _mlstm_flops(cfg.num_heads, cfg.qk_head_dim, cfg.v_head_dim, ctx)
    else:
        n_slstm = len(case["slstm_at"].split(",")) if kind == "xlstm.slstm" else 0
        inner, NH = 2 * case["E"], case["mlstm_heads"]
        flops += (case["blocks"] - n_slstm) * _mlstm_flops(NH, inner // NH, inner // NH, ctx)
        DH = case["E"] // case["slstm_heads"]
        flops += n_slstm * 24.0 * case["slstm_heads"] * DH * DH
    return flops


def _patch_mlstm_cells(model, kernel_name: str, chunk_size: int) -> None:
    """Points the `xlstm` package's mLSTM cells at an mlstm_kernels chunkwise kernel (the
    package's paper-architecture cell runs its quadratic parallel form otherwise)."""
    from mlstm_kernels.torch import get_mlstm_kernel
    from xlstm.blocks.mlstm.cell import mLSTMCell

    kernel = get_mlstm_kernel(kernel_name)

    def chunkwise(queries, keys, values, igate_preact, fgate_preact, **unused):
        q, k, v = (t.contiguous() for t in (queries, keys, values))
        return kernel(q, k, v, igate_preact.squeeze(-1).contiguous(),
                      fgate_preact.squeeze(-1).contiguous(), chunk_size=chunk_size)
    cells = [m for m in model.modules() if isinstance(m, mLSTMCell)]
    if not cells:
        raise RuntimeError("no xlstm mLSTMCell found to patch")
    for cell in cells:
        cell.backend_fn = chunkwise


def _build_xlstm_triton(with_slstm: bool):
    def build(case, dev):
        import xlstm_triton.nn as ours
        with torch.device(dev):
            model = ours.xLSTMLMModel(xlstm_config(ours, case, with_slstm=with_slstm))
        model.reset_parameters()
        model.check_token_range = False        # no host sync per step (the ids are made in range)
        kind = "xlstm.slstm" if with_slstm else "xlstm"
        return model, kind, dict(arch=describe_xlstm(case, with_slstm),
                                 kernels="xlstm_triton mlstm_chunkwise" + (" + slstm" if with_slstm else ""))
    return build


def _build_xlstm_large(case, dev):
    from xlstm_triton.models import xLSTMLarge
    cfg = large_config(case)
    with torch.device(dev):
        model = xLSTMLarge(cfg)
    model.check_token_range = False
    arch = (f"xLSTM-7B arch {cfg.num_blocks} blocks E={cfg.embedding_dim} "
            f"mLSTM {cfg.num_heads}x({cfg.qk_head_dim},{cfg.v_head_dim}) FFN {cfg.ffn_dim}")
    return model, "xlstm_large", dict(arch=arch, kernels="xlstm_triton mlstm_chunkwise")


class _WithFusedLoss(torch.nn.Module):
    """The `xlstm` package's LM with `forward(idx, labels)` -> the loss of the fused linear +
    cross-entropy, as the other models compute it."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    @property
    def lm_head(self):
        return self.lm.lm_head

    def forward(self, idx, labels):
        from xlstm_triton.models.lm_loss import next_token_loss
        lm = self.lm
        hidden = lm.xlstm_block_stack(lm.emb_dropout(lm.token_embedding(idx)))
        return next_token_loss(hidden, lm.lm_head.weight, labels)


_XLSTM_BUILD_ERROR = {}     # first failure of the sLSTM `cuda` build, reported for later cases


def _build_xlstm_package(case, dev):
    import xlstm
    if dev == "cuda":
        mlstm_kernel, chunk, slstm_backend = "chunkwise--triton_xl_chunk", 128, "cuda"
    else:   # smoke tests: the package's CPU paths
        mlstm_kernel, chunk, slstm_backend = "chunkwise--native_autograd", 16, "vanilla"
    if "error" in _XLSTM_BUILD_ERROR:
        raise RuntimeError(f"not retried: {_XLSTM_BUILD_ERROR['error']}")
    try:
        with torch.device(dev):
            # context_length=1: the cell's causal-mask buffer (ctx^2 bools per block) is only
            # used by the parallel form that _patch_mlstm_cells replaces.
            model = xlstm.xLSTMLMModel(xlstm_config(xlstm, case, slstm_backend, context_length=1))
    except Exception as e:
        if slstm_backend == "cuda":
            _XLSTM_BUILD_ERROR["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        raise
    model.reset_parameters()
    _patch_mlstm_cells(model, mlstm_kernel, chunk)
    return _WithFusedLoss(model), "xlstm.slstm", dict(arch=describe_xlstm(case),
                                      kernels=f"mlstm_kernels {mlstm_kernel} + sLSTM {slstm_backend}")


def _build_transformer(case, dev):
    """Matched to the paper LM's parameter count; at the large point to xlstm_large's."""
    from bench.baselines.transformer import TransformerLM, matching_config
    if is_large_point(case):
        target, E = large_parameter_count(case), case["large_E"]
    else:
        target, E = xlstm_parameter_count(case), case["E"]
    cfg = matching_config(target, case["vocab"], E, head_dim=min(64, E), multiple_of=min(64, E // 8))
    with torch.device(dev):
        model = TransformerLM(cfg)
    return model, "transformer", dict(arch=cfg.describe(), kernels="SDPA")


# ------------------------------------------------------------------ the training step

def _train_step(build, sdpa_backend: str | None = None):
    def setup(case, mode, dtype):
        from contextlib import nullcontext

        from torch.nn.attention import SDPBackend, sdpa_kernel

        if sdpa_backend is not None:
            require_cuda(f"SDPA {sdpa_backend}")
        dev = device()
        if mode in ("compiled", "compiled_graphs", "cudagraph") and dev != "cuda":
            raise Unavailable(f"{mode} mode runs on a GPU only")
        model, kind, info = build(case, dev)
        model = model.to(dtype=dtype).train()
        params = list(model.parameters())
        n_params = sum(p.numel() for p in params)
        n_embedding = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
        n_non_embedding = n_params - n_embedding - model.lm_head.weight.numel()   # heads are untied
        flops = model_flops_per_token(model, kind, case)
        optimizer = torch.optim.AdamW(params, lr=1e-6, fused=dev == "cuda")
        tokens = torch.randint(0, case["vocab"], (case["B"], case["ctx"]), device=dev)
        forward = model
        if mode in ("compiled", "compiled_graphs"):
            torch._dynamo.reset()                     # each case compiled for its own static shapes
            options = dict(mode="reduce-overhead") if mode == "compiled_graphs" else {}
            if any(hasattr(m, "forward_residual") for m in model.modules()):
                from xlstm_triton.models import compile_blocks
                forward = compile_blocks(model, **options)      # one compile for all identical blocks
            else:
                forward = torch.compile(model, **options)
        hopper = dev == "cuda" and any(n in torch.cuda.get_device_name() for n in ("H100", "H200"))

        def eager_step():
            if mode == "compiled_graphs":
                torch.compiler.cudagraph_mark_step_begin()     # a new step: earlier outputs may be overwritten
            optimizer.zero_grad(set_to_none=True)
            with sdpa_kernel(getattr(SDPBackend, sdpa_backend)) if sdpa_backend else nullcontext():
                loss = forward(tokens, labels=tokens)
            loss.backward()
            optimizer.step()

        step = _graphed_step(forward, tokens, optimizer, sdpa_backend, params) if mode == "cudagraph" else eager_step

        def columns(ms):
            tps = case["B"] * case["ctx"] / ms * 1e3
            tflops = flops * tps / 1e12
            return dict(params=n_params, params_non_embedding=n_non_embedding, tokens_per_s=round(tps, 1),
                        tflops=float(f"{tflops:.4g}"), mfu=float(f"{tflops / HOPPER_BF16_TFLOPS:.3g}") if hopper else None, **info)
        step.columns = columns
        step.rep_ms = 2000          # steps of 50-400 ms: at least five samples
        return step
    return setup


def _graphed_step(forward, tokens, optimizer, sdpa_backend, params):
    """The step with forward + backward replayed from one CUDA graph
    (`xlstm_triton.models.capture_step`), AdamW eager."""
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    from xlstm_triton.models import capture_step

    def fwd_bwd():
        with sdpa_kernel(getattr(SDPBackend, sdpa_backend)) if sdpa_backend else nullcontext():
            forward(tokens, labels=tokens).backward()

    replay = capture_step(fwd_bwd, params)

    def step():
        replay()
        optimizer.step()
    return step


def providers() -> list[Provider]:
    both = dict(modes=("eager", "compiled", "compiled_graphs", "cudagraph"))
    paper = dict(applies=lambda c: not is_large_point(c), **both)
    return [
        Provider("xlstm_triton", _train_step(_build_xlstm_triton(with_slstm=True)), **paper),
        Provider("xlstm_triton.mlstm_only", _train_step(_build_xlstm_triton(with_slstm=False)), **paper),
        Provider("xlstm_large", _train_step(_build_xlstm_large), **both),
        # full size: only XLSTM_PACKAGE_CONTEXTS (each batch size is a new nvcc build); quick: all
        Provider("xlstm", _train_step(_build_xlstm_package), env={"DISABLE_LLVM_OPT": "1"}, modes=("eager",),
                 applies=lambda c: c["E"] != MODEL["E"] or (c["ctx"] in XLSTM_PACKAGE_CONTEXTS
                                                            and not is_large_point(c))),
        Provider("transformer", _train_step(_build_transformer), **both),
        Provider("transformer.sdpa_cudnn", _train_step(_build_transformer, "CUDNN_ATTENTION"), modes=("eager",)),
    ]


TABLE_KEYS = ["ctx", "B"]
