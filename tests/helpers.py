"""Comparison helpers: relative Frobenius norm against a float64 reference."""

from __future__ import annotations

import torch

import xlstm_triton.nn as xnn

# Tolerances of the project's test policy: relative Frobenius norm, (forward, gradients).
TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-3, 5e-3),
    torch.bfloat16: (3e-2, 6e-2),
    torch.float16: (3e-2, 6e-2),
}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (inf if `out` has a NaN or Inf anywhere)."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(out64).all():
        return float("inf")
    denom = ref64.norm().item()
    diff = (out64 - ref64).norm().item()
    return diff / denom if denom > 0 else diff


def assert_close(out: torch.Tensor, ref: torch.Tensor, tol: float, name: str = "output") -> None:
    """Fail unless rel_err(out, ref) <= tol; the message names the worst element."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    err = rel_err(out, ref)
    if err <= tol:
        return
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    bad = ~torch.isfinite(out64)
    if bad.any():
        idx = tuple(int(x) for x in bad.nonzero()[0])
        detail = f"{int(bad.sum())} non-finite elements, first at {idx} = {out64[idx].item()}"
    else:
        idx = tuple(int(x) for x in torch.unravel_index((out64 - ref64).abs().argmax(), out64.shape))
        detail = f"worst element {idx}: {out64[idx].item():.6g} vs reference {ref64[idx].item():.6g}"
    raise AssertionError(f"{name}: relative error {err:.3g} > {tol:.3g}; {detail}")


def weighted_sum_loss(tensors, generator=None):
    """A plain weighted sum with fixed random weights: every element gets its own gradient,
    and no normalization hides a missing gradient term."""
    loss = 0.0
    for t in tensors:
        w = torch.randn(t.shape, generator=generator, dtype=torch.float64).to(t.device)
        loss = loss + (t.double() * w).sum()
    return loss


# Small models of the paper architecture (tests/layers, tests/models). Shapes stay tiny: on CPU
# the kernels run in Triton's interpreter.
E, NH, V = 32, 2, 48        # mLSTM: inner 64, 2 heads of 32; sLSTM: 2 heads of 16; FFN 64


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
