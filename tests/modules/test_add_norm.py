"""The fused residual add + RMSNorm / LayerNorm against float64: y, s and the gradients of x,
residual, weight and bias, with gradients flowing into both y and s; odd widths; the offset
(1 + weight) form; no residual, no weight."""

import pytest
import torch

from tests.helpers import TOL, assert_close
from xlstm_triton.modules.add_norm import add_norm, add_norm_torch


def reference(args, kw, u_y, u_s):
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in args]
    y, s = add_norm_torch(*leaves, **kw)
    loss = (y * u_y.double()).sum() + ((s * u_s.double()).sum() if args[1] is not None else 0.0)
    loss.backward()
    return y.detach(), s.detach(), [t.grad if t is not None else None for t in leaves]


@pytest.mark.parametrize("rms, offset", [(True, 0.0), (False, 1.0), (False, 0.0)])
@pytest.mark.parametrize("N, D, residual, weight, bias", [(13, 37, True, True, False), (5, 300, True, True, True),
                                                          (9, 64, False, True, False), (4, 16, True, False, False)])
def test_matches_float64(rms, offset, N, D, residual, weight, bias, device, poison):
    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, device=device) * scale).requires_grad_()
    args = (leaf(N, D, scale=2.0), leaf(N, D) if residual else None, leaf(D, scale=0.3) if weight else None,
            leaf(D) if bias else None)
    kw = dict(eps=1e-5, offset=offset, rms=rms)
    y, s = add_norm(*args, **kw)
    u_y, u_s = torch.randn_like(y), torch.randn_like(y)
    loss = (y * u_y).sum() + ((s * u_s).sum() if residual else 0.0)
    loss.backward()
    ry, rs, grads = reference(args, kw, u_y, u_s)
    fwd, bwd = TOL[torch.float32]
    assert_close(y, ry, fwd, "y")
    assert_close(s, rs, fwd, "s")
    for name, t, g in zip(("x", "residual", "weight", "bias"), args, grads):
        if t is not None:
            assert_close(t.grad, g, bwd, f"d {name}")


def test_only_s_used_downstream(device):
    x = torch.randn(6, 24, device=device, requires_grad=True)
    r = torch.randn(6, 24, device=device, requires_grad=True)
    y, s = add_norm(x, r, torch.ones(24, device=device))
    (s * 3.0).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 3.0)) and torch.equal(r.grad, torch.full_like(r, 3.0))


def test_errors(device):
    x = torch.randn(4, 8, device=device)
    with pytest.raises(ValueError, match=r"residual: expected shape \(4, 8\) = x's shape"):
        add_norm(x, torch.randn(4, 7, device=device), None)
    with pytest.raises(ValueError, match=r"weight: expected shape \(8,\) = \(D,\)"):
        add_norm(x, None, torch.randn(7, device=device))
