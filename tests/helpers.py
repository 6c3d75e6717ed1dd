"""Comparison helpers: relative Frobenius norm against a float64 reference."""

from __future__ import annotations

import torch

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
