"""The tiny-block block-diagonal projection against its einsum in float64: outputs, d x,
d weight, d bias; several outputs from one input; odd row counts; the fallbacks."""

import pytest
import torch

from tests.helpers import TOL, assert_close, weighted_sum_loss
from xlstm_triton.modules import LinearHeadwise
from xlstm_triton.modules.headwise_linear import headwise_linear, headwise_linear_torch


def reference(x, weight, bias, upstream):
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    out = headwise_linear_torch(leaves[0].reshape(-1, x.shape[-1]), leaves[1], leaves[2])
    (out * upstream.double()).sum().backward()
    return out.detach(), [t.grad if t is not None else None for t in leaves]


@pytest.mark.parametrize("M, BS, F, N, bias", [(2, 4, 48, 37, False), (1, 4, 200, 5, True), (3, 2, 18, 70, True),
                                              (1, 8, 16, 1, False)])
def test_matches_float64_einsum(M, BS, F, N, bias, device, poison):
    x = torch.randn(N, F, device=device, requires_grad=True)
    weight = torch.randn(M, F // BS, BS, BS, device=device, requires_grad=True)
    b = torch.randn(M, F, device=device, requires_grad=True) if bias else None
    out = headwise_linear(x, weight, b)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    ref, (dx, dw, db) = reference(x, weight, b, upstream)
    fwd, bwd = TOL[torch.float32]
    assert out.shape == (M, N, F)
    assert_close(out, ref.reshape(out.shape), fwd, "out")
    assert_close(x.grad, dx, bwd, "d x")
    assert_close(weight.grad, dw, bwd, "d weight")
    if bias:
        assert_close(b.grad, db, bwd, "d bias")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_many_row_tiles(dtype, device, poison):
    """More rows than one program's share (the d weight kernel loops over row tiles and its
    partial sums are added up), a column count no tile size divides, 16-bit inputs."""
    M, BS, F, N = 2, 4, 72, 2500
    x = torch.randn(N, F, device=device, dtype=dtype, requires_grad=True)
    weight = (torch.randn(M, F // BS, BS, BS, device=device) / 2).to(dtype).requires_grad_()
    out = headwise_linear(x, weight)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    ref, (dx, dw, _) = reference(x, weight, None, upstream)
    fwd, bwd = TOL[dtype]
    assert_close(out, ref.reshape(out.shape), fwd, "out")
    assert_close(x.grad, dx, bwd, "d x")
    assert_close(weight.grad, dw, bwd, "d weight")


def test_strided_input_and_leading_dims(device):
    base = torch.randn(3, 7, 40, device=device)
    x = base[..., :32]                                  # rows strided by 40
    weight = torch.randn(2, 8, 4, 4, device=device)
    out = headwise_linear(x, weight)
    ref, _ = reference(x, weight, None, torch.zeros(2, 21, 32, device=device))
    assert out.shape == (2, 3, 7, 32)
    assert_close(out, ref.reshape(out.shape), 2e-3, "out")


def test_float64_and_big_blocks_take_the_einsum():
    x = torch.randn(6, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda a, b: headwise_linear(a, b), (x, w))
    big = torch.randn(1, 1, 16, 16)
    assert_close(headwise_linear(x.detach().float(), big), headwise_linear_torch(x.detach().float(), big), 1e-6)


def test_linear_headwise_module_uses_it_and_matches(device):
    torch.manual_seed(0)
    layer = LinearHeadwise(64, 16, bias=True).to(device)      # blocks of 4
    x = torch.randn(2, 9, 64, device=device, requires_grad=True)
    y = layer(x)
    loss = weighted_sum_loss([y], torch.Generator().manual_seed(1))
    loss.backward()
    w = layer.weight.detach().double().requires_grad_()
    b = layer.bias.detach().double().requires_grad_()
    xr = x.detach().double().requires_grad_()
    ref = torch.einsum("...hd,hod->...ho", xr.view(2, 9, 16, 4), w).reshape(2, 9, 64) + b
    weighted_sum_loss([ref], torch.Generator().manual_seed(1)).backward()
    assert_close(y, ref, 2e-3, "y")
    assert_close(x.grad, xr.grad, 5e-3, "d x")
    assert_close(layer.weight.grad, w.grad, 5e-3, "d weight")
    assert_close(layer.bias.grad, b.grad, 5e-3, "d bias")


def test_errors(device):
    x = torch.randn(4, 16, device=device)
    with pytest.raises(ValueError, match=r"weight: expected shape \(M, F / BS, BS, BS\) with F = 16"):
        headwise_linear(x, torch.randn(1, 3, 4, 4, device=device))
    with pytest.raises(TypeError, match=r"weight: expected dtype in \(float32\)"):
        headwise_linear(x, torch.randn(1, 4, 4, 4, device=device, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"bias: expected shape \(1, 16\) = \(M, F\)"):
        headwise_linear(x, torch.randn(1, 4, 4, 4, device=device), torch.randn(16, device=device))


def test_backward_into_a_strided_gradient_adding(device):
    """`headwise_linear_backward` writing d x into a strided view (a column block of a wider
    buffer) and adding to what it holds, against the float64 gradient plus what was there;
    the columns beside it untouched."""
    from xlstm_triton.modules import headwise_linear_backward
    from xlstm_triton.utils import use_kernels
    if not use_kernels(torch.zeros(1, device=device)):
        pytest.skip("CPU without TRITON_INTERPRET=1: the backward kernels need the interpreter")
    M, BS, F, N = 2, 4, 40, 23
    x = torch.randn(N, F, device=device)
    weight = torch.randn(M, F // BS, BS, BS, device=device)
    upstream = torch.randn(M, N, F, device=device)
    _, (dx_ref, dw_ref, _) = reference(x, weight, None, upstream)
    wide = torch.randn(N, 2 * F, device=device)
    before = wide.clone()
    dx, dw = headwise_linear_backward(x, weight, upstream, dx=wide[:, :F], accumulate=True)
    fwd, bwd = TOL[torch.float32]
    assert dx.data_ptr() == wide.data_ptr()
    assert_close(wide[:, :F], dx_ref + before[:, :F].double(), bwd, "d x added")
    assert torch.equal(wide[:, F:], before[:, F:])
    assert_close(dw, dw_ref, bwd, "d weight")
    dx, _ = headwise_linear_backward(x, weight, upstream, dx=wide[:, F:])        # written, not added
    assert_close(wide[:, F:], dx_ref, bwd, "d x written")


@pytest.mark.parametrize("dtype, M, BS, F, N, G0, G, col, bias",
                         [(torch.float32, 2, 4, 200, 37, 4, 8, 0, False),
                          (torch.float32, 1, 4, 48, 70, 2, 3, 96, True),
                          (torch.bfloat16, 2, 4, 72, 300, 4, 8, 72, True)])
def test_gate_projection_inside_the_kernels(dtype, M, BS, F, N, G0, G, col, bias, device, poison):
    """The fused gate projection (the paper layer's i, f gates of cat(q, k, v)): the gate weight
    W (G, C) in two row blocks, this call's outputs at columns col.. of it. The forward's
    column-block partial sums (with the gate bias where the call carries it) add up to
    out @ W's columns^T + b, of the stored outputs; the backward with d_gates gives d x and d
    weight of out * upstream + gates * d_gates, and in gate_partial d W's columns of this call
    and (with the bias) d b, against the float64 einsum (F no tile divides, G under the padded
    16, rows split unevenly between the blocks)."""
    from xlstm_triton.modules.headwise_linear import (GateProjection, headwise_linear_backward,
                                                      headwise_linear_forward, weight_grad_programs)
    from xlstm_triton.utils import use_kernels
    x = torch.randn(N, F, device=device).to(dtype)
    if not use_kernels(x):
        pytest.skip("the fused gate projection is a kernel feature (CPU: TRITON_INTERPRET=1)")
    C = col + M * F + 8                                   # columns on both sides of this call's
    weight = (torch.randn(M, F // BS, BS, BS, device=device) / 2).to(dtype)
    h_bias = (torch.randn(M, F, device=device) / 4).to(dtype)
    W = (torch.randn(G, C, device=device) / 8).to(dtype)
    b = torch.randn(G, device=device).to(dtype)
    gates = GateProjection((W[:G0], W[G0:]), col, (b[:G0], b[G0:]) if bias else None)
    out, partial = headwise_linear_forward(x, weight, h_bias, gates)
    W_call = W[:, col:col + M * F].double().view(G, M, F)
    want = torch.einsum("mnf,gmf->ng", out.double(), W_call) + (b.double() if bias else 0)
    fwd, bwd = TOL[dtype]
    assert partial.dtype == torch.float32 and partial.shape[1:] == (N, G)
    assert_close(partial.sum(0), want, 1e-5 if dtype == torch.float32 else 1e-2, "gates")
    upstream = torch.randn(M, N, F, device=device).to(dtype)
    d_gates = torch.randn(N, G, device=device)
    gate_partial = torch.full((weight_grad_programs(N), G * (C + 1)), float("nan"), device=device)
    # d_gates as the mLSTM backward gives them: (B, G_i, S) buffers read through transposed views
    B = 5 if N % 5 == 0 else 1
    d_all = d_gates.reshape(B, N // B, G).transpose(1, 2).contiguous()                  # (B, G, S)
    d_i, d_f = d_all[:, :G0], d_all[:, G0:]
    dx, dw = headwise_linear_backward(x, weight, upstream, bias=h_bias, gates=gates,
                                      d_gates=(d_i.transpose(1, 2), d_f.transpose(1, 2)), gate_partial=gate_partial)
    leaves = [t.detach().double().requires_grad_() for t in (x, weight, W)]
    ref_out = headwise_linear_torch(leaves[0], leaves[1], h_bias.double())
    # the gates of the reference use its own outputs rounded as the kernel stores them
    stored = ref_out + (ref_out.to(dtype).double() - ref_out).detach()
    ref_gates = torch.einsum("mnf,gmf->ng", stored, leaves[2][:, col:col + M * F].view(G, M, F))
    loss = (ref_out * upstream.double()).sum() + (ref_gates * d_gates.double()).sum()
    loss.backward()
    assert_close(dx, leaves[0].grad, bwd, "d x")
    assert_close(dw, leaves[1].grad, bwd, "d weight")
    sums = gate_partial.sum(0)
    d_W, d_b = sums[:G * C].view(G, C), sums[G * C:]                   # d W row-major, then d b
    assert_close(d_W[:, col:col + M * F], leaves[2].grad[:, col:col + M * F], bwd, "d gate weight")
    assert torch.isnan(d_W[:, :col]).all() and torch.isnan(d_W[:, col + M * F:]).all()   # others' columns
    if bias:
        assert_close(d_b, d_gates.double().sum(0), bwd, "d gate bias")
    else:
        assert torch.isnan(d_b).all()


@pytest.mark.parametrize("dtype, B, S, lengths, conv_bias, gated", [
    (torch.float32, 3, 37, None, True, True), (torch.bfloat16, 2, 70, None, False, False),
    (torch.float32, 1, 45, [5, 0, 1, 30, 9], True, False), (torch.bfloat16, 1, 40, [2, 38], True, True)])
def test_conv_first_outputs_take_the_silu_conv(dtype, B, S, lengths, conv_bias, gated, device, poison):
    """`ConvFirst` (the paper layer's q, k of x_c = SiLU(conv(x_m)), v of x_m in one kernel):
    x_c against the float64 conv of the batch rows or the packed sequences (each window from
    its own first step: rows of other sequences and batch rows must not leak in), the first
    outputs of the stored x_c, the last of x, and the gate partial sums of all three, for an
    input strided as x_m in xz."""
    from xlstm_triton.modules.causal_conv1d import causal_conv1d_torch
    from xlstm_triton.modules.headwise_linear import ConvFirst, GateProjection, headwise_linear_forward
    from xlstm_triton.utils import use_kernels
    M, BS, F, K, G0, G = 3, 4, 72, 4, 2, 4
    xz = torch.randn(B, S, 2 * F, device=device).to(dtype)
    if not use_kernels(xz):
        pytest.skip("the conv inside the headwise kernel is a kernel feature (CPU: TRITON_INTERPRET=1)")
    x = xz[..., :F]                                                        # rows strided by 2 F
    weight = (torch.randn(M, F // BS, BS, BS, device=device) / 2).to(dtype)
    conv_w = (torch.randn(F, K, device=device) / 2).to(dtype)
    conv_b = torch.randn(F, device=device).to(dtype) if conv_bias else None
    cu = None if lengths is None else torch.tensor([0] + lengths, device=device).cumsum(0).to(torch.int32)
    W = (torch.randn(G, M * F, device=device) / 8).to(dtype)
    gates = GateProjection((W[:G0], W[G0:]), 0) if gated else None
    out, x_c, partial = headwise_linear_forward(x.reshape(B * S, F), weight, None, gates,
                                                conv=ConvFirst(conv_w, conv_b, 2, S, cu))
    want_xc = causal_conv1d_torch(x.double(), conv_w.double(), None if conv_b is None else conv_b.double(),
                                  silu=True, cu_seqlens=cu).reshape(B * S, F)
    fwd, _ = TOL[dtype]
    assert x_c.shape == (B * S, F) and x_c.dtype == dtype
    assert_close(x_c, want_xc, fwd, "x_c")
    ref_qk = headwise_linear_torch(x_c.double(), weight[:2].double())       # of the stored x_c, as the kernel
    ref_v = headwise_linear_torch(x.reshape(B * S, F).double(), weight[2:].double())
    assert_close(out[:2], ref_qk, fwd, "outputs of x_c")
    assert_close(out[2:], ref_v, fwd, "output of x")
    if gated:
        want = torch.einsum("mnf,gmf->ng", out.double(), W.double().view(G, M, F))
        assert_close(partial.sum(0), want, 1e-5 if dtype == torch.float32 else 1e-2, "gates")
    else:
        assert partial is None


@pytest.mark.parametrize("dtype, B, S, lengths, accumulate", [
    (torch.float32, 3, 37, None, False), (torch.bfloat16, 2, 70, None, True),
    (torch.float32, 1, 45, [5, 0, 1, 30, 9], False), (torch.bfloat16, 1, 40, [2, 38], True)])
def test_conv_input_grad_added_to_dx(dtype, B, S, lengths, accumulate, device, poison):
    """`ConvInputGrad` (the paper layer's d x_m: the v call's d x plus the conv's input
    gradient from d pre): d x against float64 autograd of out * upstream + conv(x) * d pre (the
    conv's pre-activation, no bias), batch rows or packed sequences (each tap within its own
    sequence), added to a given gradient or not."""
    from xlstm_triton.modules.causal_conv1d import causal_conv1d_torch
    from xlstm_triton.modules.headwise_linear import ConvInputGrad, headwise_linear_backward
    from xlstm_triton.utils import use_kernels
    M, BS, F, K = 1, 4, 72, 4
    N = B * S
    x = torch.randn(N, F, device=device).to(dtype)
    if not use_kernels(x):
        pytest.skip("the conv's d x inside the headwise kernel is a kernel feature (CPU: TRITON_INTERPRET=1)")
    weight = (torch.randn(M, F // BS, BS, BS, device=device) / 2).to(dtype)
    conv_w = (torch.randn(F, K, device=device) / 2).to(dtype)
    upstream = torch.randn(M, N, F, device=device).to(dtype)
    dpre = torch.randn(N, F, device=device).to(dtype)
    cu = None if lengths is None else torch.tensor([0] + lengths, device=device).cumsum(0).to(torch.int32)
    before = torch.randn(N, F, device=device).to(dtype)
    dx = before.clone()
    headwise_linear_backward(x, weight, upstream, dx=dx, accumulate=accumulate,
                             conv=ConvInputGrad(dpre, conv_w, S, cu))
    xd = x.double().requires_grad_()
    out = headwise_linear_torch(xd, weight.double())
    pre = causal_conv1d_torch(xd.view(B, S, F), conv_w.double(), None, silu=False, cu_seqlens=cu).reshape(N, F)
    ((out * upstream.double()).sum() + (pre * dpre.double()).sum()).backward()
    want = xd.grad + (before.double() if accumulate else 0)
    assert_close(dx, want, TOL[dtype][1], "d x")
