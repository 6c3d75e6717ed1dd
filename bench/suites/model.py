"""Training throughput and peak memory of whole language models vs context length (issues 5, 7).

Models (parameters in the CSV's `params` column):
  xlstm_triton   `xlstm_triton.nn.xLSTMLMModel`: 24 blocks, E=1024, mLSTM blocks with 4 heads
                 (inner 2048), sLSTM blocks (4 heads, gated FFN x1.3) at 7, 15, 23, vocabulary
                 50,304, untied head: 256M parameters (the paper's "350M" class; this
                 architecture has 6.4M parameters per block, so 24 blocks make 256M)
  xlstm          the same config in the `xlstm` package's own xLSTMLMModel, its mLSTM cells
                 running mlstm_kernels' chunkwise `xl_chunk` Triton kernel (DISABLE_LLVM_OPT=1)
                 and its sLSTM the `cuda` backend, which builds with nvcc for every batch size
                 (a compile-time constant there); a failed build is recorded as the row's error
  transformer    bench/baselines/transformer.py with the parameter count of the xLSTM LM:
                 d=1024, 16 heads of 64, RoPE, SwiGLU, pre-norm; SDPA as dispatched by PyTorch
  transformer.sdpa_cudnn   the same with SDPA's cuDNN backend forced
at context 2048, 4096, 8192, 16384 with 16,384 tokens per step (B = 16384 / ctx).

Mode "train": one optimizer step, timed whole: zero_grad, forward, cross-entropy loss on
random tokens, backward, AdamW (fused on CUDA). Parameters, activations and optimizer state in
the run's dtype (bfloat16 by default; no autocast, no float32 master weights), eager PyTorch (no
torch.compile). `tokens_per_s` = tokens per step / step time; `peak_mib` is the peak of one
step with parameters, gradients and AdamW state included. About 4 minutes on an H100, half
of it the `xlstm` provider's two nvcc builds (for its contexts 2048 and 8192).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.harness import Provider, device, require_cuda

TOKENS_PER_STEP = 16384
CONTEXTS = (2048, 4096, 8192, 16384)
XLSTM_PACKAGE_CONTEXTS = (2048, 8192)     # one nvcc build of its sLSTM kernel per batch size
MODEL = dict(E=1024, blocks=24, slstm_at="7,15,23", mlstm_heads=4, slstm_heads=4, vocab=50304)


def cases(quick: bool = False) -> list[dict]:
    if quick:
        tiny = dict(E=64, blocks=2, slstm_at="1", mlstm_heads=2, slstm_heads=2, vocab=256)
        return [dict(ctx=ctx, B=64 // ctx, tokens=64, **tiny) for ctx in (16, 32)]
    return [dict(ctx=ctx, B=TOKENS_PER_STEP // ctx, tokens=TOKENS_PER_STEP, **MODEL) for ctx in CONTEXTS]


# ------------------------------------------------------------------ models

def xlstm_config(pkg, case, slstm_backend: str = "cuda", context_length: int | None = None):
    """The xLSTM LM config of `case` built from `pkg` (`xlstm_triton.nn` or `xlstm`): the two
    packages share the config classes' names and fields."""
    mlstm = pkg.mLSTMLayerConfig(num_heads=case["mlstm_heads"], conv1d_kernel_size=4, qkv_proj_blocksize=4)
    slstm = pkg.sLSTMLayerConfig(num_heads=case["slstm_heads"], conv1d_kernel_size=4,
                                 backend=slstm_backend, batch_size=case["B"])
    return pkg.xLSTMLMModelConfig(
        mlstm_block=pkg.mLSTMBlockConfig(mlstm=mlstm),
        slstm_block=pkg.sLSTMBlockConfig(slstm=slstm, feedforward=pkg.FeedForwardConfig(proj_factor=1.3, act_fn="gelu")),
        num_blocks=case["blocks"], embedding_dim=case["E"], vocab_size=case["vocab"],
        slstm_at=[int(i) for i in case["slstm_at"].split(",")],
        context_length=case["ctx"] if context_length is None else context_length)


def describe_xlstm(case) -> str:
    inner = 2 * case["E"]
    n_slstm = len(case["slstm_at"].split(","))
    return (f"xLSTM[{case['blocks'] - n_slstm}:{n_slstm}] {case['blocks']} blocks E={case['E']} "
            f"mLSTM {case['mlstm_heads']}x{inner // case['mlstm_heads']} "
            f"sLSTM {case['slstm_heads']}x{case['E'] // case['slstm_heads']} at {case['slstm_at']}")


def xlstm_parameter_count(case) -> int:
    import xlstm_triton.nn as ours
    with torch.device("meta"):
        return sum(p.numel() for p in ours.xLSTMLMModel(xlstm_config(ours, case)).parameters())


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


def _build_xlstm_triton(case, dev):
    import xlstm_triton.nn as ours
    with torch.device(dev):
        model = ours.xLSTMLMModel(xlstm_config(ours, case))
    model.reset_parameters()
    model.check_token_range = False        # no host sync per step (the ids are made in range)
    return model, dict(arch=describe_xlstm(case), kernels="xlstm_triton mlstm_chunkwise + slstm")


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
    return model, dict(arch=describe_xlstm(case), kernels=f"mlstm_kernels {mlstm_kernel} + sLSTM {slstm_backend}")


def _build_transformer(case, dev):
    from bench.baselines.transformer import TransformerLM, matching_config
    cfg = matching_config(xlstm_parameter_count(case), case["vocab"], case["E"], head_dim=min(64, case["E"]),
                          multiple_of=min(64, case["E"] // 8))
    with torch.device(dev):
        model = TransformerLM(cfg)
    return model, dict(arch=cfg.describe(), kernels="SDPA")


# ------------------------------------------------------------------ the training step

def _train_step(build, sdpa_backend: str | None = None):
    def setup(case, mode, dtype):
        from contextlib import nullcontext

        from torch.nn.attention import SDPBackend, sdpa_kernel

        if sdpa_backend is not None:
            require_cuda(f"SDPA {sdpa_backend}")
        dev = device()
        model, info = build(case, dev)
        model = model.to(dtype=dtype).train()
        params = list(model.parameters())
        n_params = sum(p.numel() for p in params)
        n_embedding = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
        n_non_embedding = n_params - n_embedding - model.lm_head.weight.numel()   # heads are untied
        optimizer = torch.optim.AdamW(params, lr=1e-6, fused=dev == "cuda")
        tokens = torch.randint(0, case["vocab"], (case["B"], case["ctx"] + 1), device=dev)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]

        def step():
            optimizer.zero_grad(set_to_none=True)
            with sdpa_kernel(getattr(SDPBackend, sdpa_backend)) if sdpa_backend else nullcontext():
                logits = model(inputs)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
            loss.backward()
            optimizer.step()
        step.columns = lambda ms: dict(
            params=n_params, params_non_embedding=n_non_embedding,
            tokens_per_s=round(case["B"] * case["ctx"] / ms * 1e3, 1), **info)
        return step
    return setup


def providers() -> list[Provider]:
    one_mode = dict(modes=("train",))
    return [
        Provider("xlstm_triton", _train_step(_build_xlstm_triton), **one_mode),
        # full size: only XLSTM_PACKAGE_CONTEXTS (each batch size is a new nvcc build); quick: all
        Provider("xlstm", _train_step(_build_xlstm_package), env={"DISABLE_LLVM_OPT": "1"},
                 applies=lambda c: c["E"] != MODEL["E"] or c["ctx"] in XLSTM_PACKAGE_CONTEXTS, **one_mode),
        Provider("transformer", _train_step(_build_transformer), **one_mode),
        Provider("transformer.sdpa_cudnn", _train_step(_build_transformer, "CUDNN_ATTENTION"), **one_mode),
    ]


TABLE_KEYS = ["ctx", "B"]
