"""The fused causal conv1d (+ SiLU) against F.conv1d in float64: outputs and the gradients of x,
weight, bias and the carried state; short sequences (S < K - 1), odd sizes; the module's state."""

import pytest
import torch

from tests.helpers import TOL, assert_close
from xlstm_triton.modules import CausalConv1d
from xlstm_triton.modules.causal_conv1d import causal_conv1d, causal_conv1d_torch


def reference(x, weight, bias, state, silu, upstream):
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (x, weight, bias, state)]
    y = causal_conv1d_torch(*leaves, silu=silu)
    (y * upstream.double()).sum().backward()
    return y.detach(), [t.grad if t is not None else None for t in leaves]


@pytest.mark.parametrize("silu", [True, False])
@pytest.mark.parametrize("B, S, F, K, bias, state", [(2, 37, 24, 4, True, True), (1, 70, 130, 4, True, False),
                                                   (3, 2, 8, 4, False, True), (2, 19, 16, 3, True, True),
                                                   (1, 5, 8, 1, True, False),
                                                   # several row tiles per program (the last partial) and
                                                   # a second group of four taps in the backward
                                                   (2, 300, 24, 6, True, True), (1, 200, 40, 4, False, False)])
def test_matches_float64_conv1d(B, S, F, K, bias, state, silu, device, poison):
    x = (torch.randn(B, 2 * S, F, device=device) * 2)[:, ::2].requires_grad_()      # strided over time
    weight = torch.randn(F, K, device=device, requires_grad=True)
    b = torch.randn(F, device=device, requires_grad=True) if bias else None
    st = torch.randn(B, K - 1, F, device=device, requires_grad=True) if state else None
    y = causal_conv1d(x, weight, b, st, silu=silu)
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    ref, grads = reference(x, weight, b, st, silu, upstream)
    fwd, bwd = TOL[torch.float32]
    assert_close(y, ref, fwd, "y")
    for name, t, g in zip(("x", "weight", "bias", "state"), (x, weight, b, st), grads):
        if t is not None:
            assert_close(t.grad, g, bwd, f"d {name}")


def test_module_state_carries_across_calls(device):
    torch.manual_seed(0)
    conv = CausalConv1d(12, 4).to(device)
    x = torch.randn(2, 23, 12, device=device)
    full = conv(x, silu=True)
    y1, s1 = conv(x[:, :2], return_state=True, silu=True)            # shorter than the window
    y2, s2 = conv(x[:, 2:9], s1, return_state=True, silu=True)
    y3, s3 = conv(x[:, 9:10], s2, return_state=True, silu=True)        # one decoding step
    y4 = conv(x[:, 10:], s3, silu=True)
    assert_close(torch.cat([y1, y2, y3, y4], dim=1), full, 1e-5, "chunked == full")
    assert torch.equal(s3, x[:, 7:10])


@pytest.mark.parametrize("K", [4, 1])
def test_module_packed_equals_sequences_one_by_one(K, device):
    """CausalConv1d with cu_seqlens: outputs and new states (last K-1 inputs of each sequence,
    from its old state where it is shorter) equal each sequence run alone from its state."""
    torch.manual_seed(3)
    conv = CausalConv1d(12, K).to(device)
    lengths = [2, 0, 9, 1, 5]
    x = torch.randn(1, sum(lengths), 12, device=device)
    state = torch.randn(len(lengths), conv.state_len, 12, device=device)
    cu = torch.tensor([0] + lengths, device=device).cumsum(0)
    y, new = conv(x, state, return_state=True, silu=True, cu_seqlens=cu)
    start = 0
    for n, length in enumerate(lengths):
        y1, s1 = conv(x[:, start:start + length], state[n:n + 1], return_state=True, silu=True)
        assert_close(y[:, start:start + length], y1, 1e-5, f"y of sequence {n}")
        assert torch.equal(new[n:n + 1], s1), f"state of sequence {n}"
        start += length


def test_errors(device):
    x = torch.randn(2, 5, 8, device=device)
    with pytest.raises(ValueError, match=r"weight: expected shape \(F, K\) with F = 8"):
        causal_conv1d(x, torch.randn(4, 4, device=device))
    with pytest.raises(ValueError, match=r"state: expected shape \(2, 3, 8\) = \(B, K - 1, F\)"):
        causal_conv1d(x, torch.randn(8, 4, device=device), state=torch.randn(2, 4, 8, device=device))
    with pytest.raises(TypeError, match=r"bias: expected dtype in \(float32\)"):
        causal_conv1d(x, torch.randn(8, 4, device=device), torch.randn(8, device=device, dtype=torch.float64))


def test_float64_gradcheck():
    x = torch.randn(1, 6, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    st = torch.randn(1, 3, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda a, b, c: causal_conv1d(a, b, None, c), (x, w, st))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("state", [False, True])
@pytest.mark.parametrize("lengths", [[1, 2, 3, 5, 17, 4, 0, 40], [70], [3, 3, 1]])
def test_packed_equals_sequences_one_by_one(lengths, state, dtype, device, poison):
    """Packed sequences (cu_seqlens): outputs and all gradients equal each sequence run alone
    from its own state row (float64 reference), for lengths shorter than the window, empty
    sequences and sequences across several time tiles."""
    torch.manual_seed(len(lengths))
    F, K = 24, 4
    S = sum(lengths)
    cu = torch.tensor([0] + lengths, device=device).cumsum(0)
    x = (torch.randn(1, S, F, device=device) * 2).to(dtype).requires_grad_()
    weight = torch.randn(F, K, device=device).to(dtype).requires_grad_()
    b = torch.randn(F, device=device).to(dtype).requires_grad_()
    st = torch.randn(len(lengths), K - 1, F, device=device).to(dtype).requires_grad_() if state else None
    y = causal_conv1d(x, weight, b, st, cu_seqlens=cu)
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (x, weight, b, st)]
    outs, start = [], 0
    for n, length in enumerate(lengths):          # each sequence alone, through the batch path
        one = leaves[3][n:n + 1] if state else None
        outs.append(causal_conv1d_torch(leaves[0][:, start:start + length], leaves[1], leaves[2], one))
        start += length
    ref = torch.cat(outs, dim=1)
    (ref * upstream.double()).sum().backward()
    fwd, bwd = TOL[dtype]
    assert_close(y, ref, fwd, "y")
    for name, t, r in zip(("x", "weight", "bias", "state"), (x, weight, b, st), leaves):
        if t is not None:
            assert_close(t.grad, r.grad, bwd, f"d {name}")


def test_packed_errors(device):
    x = torch.randn(1, 6, 8, device=device)
    w = torch.randn(8, 4, device=device)
    with pytest.raises(ValueError, match=r"cu_seqlens: expected dtype int32 or int64"):
        causal_conv1d(x, w, cu_seqlens=torch.tensor([0.0, 6.0], device=device))
    with pytest.raises(ValueError, match=r"cu_seqlens: expected offsets from 0 to the packed length 6"):
        causal_conv1d(x, w, cu_seqlens=torch.tensor([0, 5], device=device))
    with pytest.raises(ValueError, match=r"cu_seqlens: expected offsets from 0"):
        causal_conv1d(x, w, cu_seqlens=torch.tensor([1, 6], device=device))
    with pytest.raises(ValueError, match=r"cu_seqlens: expected non-decreasing offsets"):
        causal_conv1d(x, w, cu_seqlens=torch.tensor([0, 4, 2, 6], device=device))
    with pytest.raises(ValueError, match=r"cu_seqlens: packed sequences need a batch of 1"):
        causal_conv1d(x.expand(2, 6, 8), w, cu_seqlens=torch.tensor([0, 6], device=device))
    with pytest.raises(ValueError, match=r"state: expected shape \(2, 3, 8\) = \(N, K - 1, F\)"):
        causal_conv1d(x, w, state=torch.randn(1, 3, 8, device=device), cu_seqlens=torch.tensor([0, 2, 6], device=device))


def test_backward_into_a_strided_gradient_adding(device):
    """`causal_conv1d_backward` (SiLU) writing d x into a column block of a wider buffer (a
    strided view) and adding to what it holds, against the float64 gradient plus what was
    there; the columns beside it untouched; d weight and d bias unaffected."""
    from xlstm_triton.modules import causal_conv1d_backward
    from xlstm_triton.utils import use_kernels
    if not use_kernels(torch.zeros(1, device=device)):
        pytest.skip("CPU without TRITON_INTERPRET=1: the backward kernels need the interpreter")
    B, S, F, K = 2, 19, 24, 4
    wide_x = torch.randn(B, S, 2 * F, device=device)
    x = wide_x[..., :F]                                     # strided input too
    weight, b = torch.randn(F, K, device=device), torch.randn(F, device=device)
    upstream = torch.randn(B, S, F, device=device)
    leaves = [t.detach().double().requires_grad_() for t in (x, weight, b)]
    (causal_conv1d_torch(*leaves) * upstream.double()).sum().backward()
    wide = torch.randn(B, S, 2 * F, device=device)
    before = wide.clone()
    dx, dw, db, _ = causal_conv1d_backward(x, weight, b, None, upstream, True, dx=wide[..., F:], accumulate=True)
    fwd, bwd = TOL[torch.float32]
    assert_close(wide[..., F:], leaves[0].grad + before[..., F:].double(), bwd, "d x added")
    assert torch.equal(wide[..., :F], before[..., :F])
    assert_close(dw, leaves[1].grad, bwd, "d weight")
    assert_close(db, leaves[2].grad, bwd, "d bias")
