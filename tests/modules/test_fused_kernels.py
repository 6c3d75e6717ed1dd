"""The fused inference kernels of the xLSTM-7B block against their PyTorch compositions, on
odd sizes, strided views (the halves of one fused projection) and NaN-poisoned outputs."""

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_close
from xlstm_triton.modules import gated_head_norm, gated_head_norm_torch, silu_mul
from xlstm_triton.utils import use_fused
from xlstm_triton.utils import use_triton

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def _reference_gated_norm(h, o, w, b, eps):
    """The unfused module path, in float64."""
    NH, DH = h.shape[-2:]
    y = F.layer_norm(h.double(), (DH,), eps=eps)
    y = y * w.double().view(NH, DH) + (0 if b is None else b.double().view(NH, DH))
    return torch.sigmoid(o.double()) * y.flatten(-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,S,NH,DH", [(1, 1, 3, 40), (2, 5, 2, 64)])
@pytest.mark.parametrize("bias", [False, True])
def test_gated_head_norm(dtype, B, S, NH, DH, bias, device, poison):
    V = NH * DH
    h = torch.randn(B, NH, S, DH, device=device, dtype=dtype).transpose(1, 2) * 3 + 1   # strided, as the op returns it
    qkvo = torch.randn(B, S, 3 * V, device=device, dtype=dtype)
    o = qkvo[..., V:2 * V]                                                           # a slice of a fused projection
    w = torch.randn(V, device=device, dtype=dtype)
    b = torch.randn(V, device=device, dtype=dtype) if bias else None
    y = gated_head_norm(h, o, w, b, 1e-6)
    assert y.shape == (B, S, V) and y.dtype == dtype
    ref = _reference_gated_norm(h, o, w, b, 1e-6)
    assert_close(y, ref, TOL[dtype], "fused")
    assert_close(gated_head_norm_torch(h, o, w, b, 1e-6), ref, TOL[dtype], "torch composition")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 37), (2, 3, 1100)])
def test_silu_mul(dtype, shape, device, poison):
    P = shape[-1]
    gu = torch.randn(*shape[:-1], 2 * P, device=device, dtype=dtype) * 4
    gate, up = gu.split(P, dim=-1)
    y = silu_mul(gate, up)
    assert y.shape == shape and y.dtype == dtype
    assert_close(y, F.silu(gate.double()) * up.double(), TOL[dtype], "silu * up")


@pytest.mark.parametrize("shape", [(2, 5, 37), (3, 1100)])
def test_silu_mul_gradients(shape, device, poison):
    """Gradients of gate and up against float64, through strided halves of one projection."""
    P = shape[-1]
    gu = (torch.randn(*shape[:-1], 2 * P, device=device) * 4).requires_grad_()
    gate, up = gu.split(P, dim=-1)
    y = silu_mul(gate, up)
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    ref_in = gu.detach().double().requires_grad_()
    g64, u64 = ref_in.split(P, dim=-1)
    ((F.silu(g64) * u64) * upstream.double()).sum().backward()
    assert_close(gu.grad, ref_in.grad, 5e-3, "d gate | d up")


def test_fused_only_without_autograd(device):
    """Where the Triton kernels run (CUDA, or CPU with TRITON_INTERPRET=1), and only then."""
    x = torch.zeros(1, device=device)
    with torch.no_grad():
        assert use_fused(x) == use_triton(x)
    assert not use_fused(x)


def test_shape_errors():
    with pytest.raises(ValueError, match="gated_head_norm: expected h"):
        gated_head_norm(torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 7))
    with pytest.raises(ValueError, match="silu_mul: gate and up"):
        silu_mul(torch.zeros(2, 3), torch.zeros(2, 4))


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("bias", [False, True])
def test_silu_mul_linear_gradients(packed, bias, device, poison):
    """silu_mul_linear (the product recomputed in the backward) against the float64 composition:
    output and the gradients of gate/up (one packed tensor or two), weight and bias."""
    from xlstm_triton.modules import silu_mul_linear
    B, S, P, E = 2, 5, 37, 19
    gu = (torch.randn(B, S, 2 * P, device=device) * 3).requires_grad_()
    w = (torch.randn(E, P, device=device) / P**0.5).requires_grad_()
    b = torch.randn(E, device=device).requires_grad_() if bias else None
    if packed:
        gate, up = gu.split(P, dim=-1)
        y = silu_mul_linear(gate, up, w, b, gate_up=gu)
    else:
        gate, up = (t.contiguous() for t in gu.split(P, dim=-1))
        y = silu_mul_linear(gate, up, w, b)
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    gu64, w64 = gu.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if bias else None
    g64, u64 = gu64.split(P, dim=-1)
    y64 = F.linear(F.silu(g64) * u64, w64, b64)
    (y64 * upstream.double()).sum().backward()
    assert y.shape == (B, S, E)
    assert_close(y, y64, 2e-3, "y")
    assert_close(gu.grad, gu64.grad, 5e-3, "d gate | d up")
    assert_close(w.grad, w64.grad, 5e-3, "d weight")
    if bias:
        assert_close(b.grad, b64.grad, 5e-3, "d bias")
