"""Shared helpers of the tests/test_nn_*.py files (module configs, the dispatch fixture); no
tests here. Shapes stay tiny: on CPU the kernels run in Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

import xlstm_triton.nn as xnn
import xlstm_triton.utils as xt_utils

E, NH, V = 32, 2, 48        # mLSTM: inner 64, 2 heads of 32; sLSTM: 2 heads of 16; FFN 64


@pytest.fixture(params=["kernels", "torch-path"])
def path(request, monkeypatch, device):
    """Run a test through the Triton kernels (CUDA, or the interpreter on CPU) and through the
    PyTorch path of the ops (CPU only)."""
    if request.param == "torch-path":
        if device != "cpu":
            pytest.skip("the ops' PyTorch path runs for CPU tensors only")
        monkeypatch.setattr(xt_utils, "triton_interpret", lambda: False)
    elif not xt_utils.use_triton(torch.empty(0, device=device)):
        pytest.skip("CPU without TRITON_INTERPRET=1: the kernels need the interpreter")
    if device == "cuda":    # float32 parity: no TF32 in convolutions and matmuls
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    return request.param


def lm_config(mod, num_blocks=4, slstm_at=(1, 3), backend="vanilla", context_length=16,
              mlstm=True, slstm=True, **kw):
    """An xLSTMLMModelConfig from `mod` (the xlstm package or xlstm_triton.nn), same fields;
    `kw` overrides the other top-level fields (embedding_dim, vocab_size, ...)."""
    fields = dict(context_length=context_length, num_blocks=num_blocks, embedding_dim=E,
                  slstm_at=list(slstm_at) if isinstance(slstm_at, (list, tuple)) else slstm_at,
                  vocab_size=V)
    fields.update(kw)
    return mod.xLSTMLMModelConfig(
        mlstm_block=mod.mLSTMBlockConfig(mlstm=mod.mLSTMLayerConfig(num_heads=NH)) if mlstm else None,
        slstm_block=mod.sLSTMBlockConfig(slstm=mod.sLSTMLayerConfig(num_heads=NH, backend=backend),
                                         feedforward=mod.FeedForwardConfig()) if slstm else None,
        **fields)


def small_lm(slstm_at=(1,), num_blocks=3, seed=0, perturb=0.2, device="cpu"):
    """Our LM with the package init plus noise (so no weight is exactly zero), in eval mode."""
    torch.manual_seed(seed)
    model = xnn.xLSTMLMModel(lm_config(xnn, num_blocks=num_blocks, slstm_at=slstm_at,
                                       mlstm=slstm_at != "all"))
    model.reset_parameters()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * perturb)
    return model.to(device).eval()
