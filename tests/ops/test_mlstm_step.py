"""mlstm_step (decoding) against the float64 reference step and against the chunkwise op."""

import pytest
import torch

from reference.mlstm import mlstm_recurrent_step
from tests.helpers import TOL, assert_close
from xlstm_triton import mlstm_chunkwise, mlstm_step
from xlstm_triton.ops.mlstm.step import mlstm_step_torch


def state(B, NH, DQK, DV, device):
    return (torch.randn(B, NH, DQK, DV, device=device), torch.randn(B, NH, DQK, device=device),
            torch.randn(B, NH, 1, device=device))


@pytest.mark.parametrize("DQK,DV", [(16, 16), (32, 80), (96, 48)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fn", [mlstm_step, mlstm_step_torch])
def test_step_matches_reference(DQK, DV, dtype, fn, device, poison):
    B, NH = 3, 2
    q, k = torch.randn(2, B, NH, DQK, device=device, dtype=dtype)
    v = torch.randn(B, NH, DV, device=device, dtype=dtype)
    i = (torch.rand(B, NH, 1, device=device) * 20 - 10).to(dtype)
    f = (torch.rand(B, NH, 1, device=device) * 20 - 8).to(dtype)
    c, n, m = state(B, NH, DQK, DV, device)
    h, (c2, n2, m2) = fn(q, k, v, i, f, c, n, m)
    ref_h, (rc, rn, rm) = mlstm_recurrent_step(*(t.double() for t in (q, k, v)), i.double()[..., 0],
                                               f.double()[..., 0], c.double(), n.double(), m.double())
    tol = TOL[dtype][0]
    assert h.dtype == dtype and c2.dtype == n2.dtype == m2.dtype == torch.float32
    assert_close(h, ref_h, tol, "h")
    for a, b, name in zip((c2, n2, m2), (rc, rn, rm), "cnm"):
        assert_close(a, b, tol, name)


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fn,inplace", [(mlstm_step, False), (mlstm_step, True), (mlstm_step_torch, False)])
def test_step_state_dtype_and_inplace(state_dtype, fn, inplace, device, poison):
    """A bfloat16 state (transformers' cache) is read as stored; inplace writes the new state
    into the given tensors, in their dtype, and returns them."""
    B, NH, DQK, DV = 2, 3, 32, 48
    q, k = torch.randn(2, B, NH, DQK, device=device, dtype=torch.bfloat16)
    v = torch.randn(B, NH, DV, device=device, dtype=torch.bfloat16)
    i, f = (torch.rand(2, B, NH, 1, device=device) * 16 - 6)
    c, n, m = (t.to(state_dtype) for t in state(B, NH, DQK, DV, device))
    ref_h, ref = mlstm_recurrent_step(*(t.double() for t in (q, k, v)), i.double()[..., 0],
                                      f.double()[..., 0], c.double(), n.double(), m.double())
    given = (c, n, m)
    h, new = fn(q, k, v, i, f, c, n, m, inplace=True) if inplace else fn(q, k, v, i, f, c, n, m)
    if inplace:
        assert all(a is b for a, b in zip(new, given))
        assert all(t.dtype == state_dtype for t in new)
    else:
        assert all(t.dtype == torch.float32 for t in new)
    assert_close(h, ref_h, TOL[torch.bfloat16][0], "h")                 # h is bfloat16
    tol = 1e-2 if inplace and state_dtype == torch.bfloat16 else 1e-5    # rounded to the cache's dtype
    for a, b, name in zip(new, ref, "cnm"):
        assert_close(a, b, tol, name)


@pytest.mark.parametrize("fn", [mlstm_step, mlstm_step_torch])
def test_step_gate_soft_cap(fn, device, poison):
    """gate_soft_cap=c equals capping i and f beforehand (gates far beyond the cap and near 0)."""
    B, NH, DQK, DV = 2, 3, 16, 32
    q, k = torch.randn(2, B, NH, DQK, device=device)
    v = torch.randn(B, NH, DV, device=device)
    i = torch.tensor([-60.0, -3.0, 1e-4, 0.5, 14.0, 50.0], device=device).view(B, NH, 1)
    f = torch.tensor([45.0, 2.0, -1e-3, -7.0, 30.0, -80.0], device=device).view(B, NH, 1)
    c, n, m = state(B, NH, DQK, DV, device)
    cap = 15.0
    h, new = fn(q, k, v, i, f, c, n, m, gate_soft_cap=cap)
    h_ref, ref = mlstm_recurrent_step(*(t.double() for t in (q, k, v)), (cap * torch.tanh(i / cap)).double()[..., 0],
                                      (cap * torch.tanh(f / cap)).double()[..., 0], c.double(), n.double(), m.double())
    assert_close(h, h_ref, 1e-5, "h")
    for a, b_, name in zip(new, ref, "cnm"):
        assert_close(a, b_, 1e-5, name)
    with pytest.raises(ValueError, match="gate_soft_cap"):
        mlstm_step(q, k, v, i, f, c, n, m, gate_soft_cap=0.0)


def test_step_inplace_on_the_pytorch_path(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")         # CPU tensors: the PyTorch path
    B, NH, D = 2, 2, 16
    q, k, v = torch.randn(3, B, NH, D)
    i, f = torch.randn(2, B, NH, 1)
    c, n, m = state(B, NH, D, D, "cpu")
    h, new = mlstm_step(q, k, v, i, f, c, n, m)
    h2, new2 = mlstm_step(q, k, v, i, f, c, n, m, inplace=True)
    assert torch.equal(h, h2) and new2[0] is c and new2[1] is n and new2[2] is m
    for a, b in zip(new, new2):
        assert torch.equal(a, b)


def test_step_inplace_misuse_is_named():
    B, NH, D = 1, 2, 16
    q = torch.randn(B, NH, D)
    i, f = torch.zeros(2, B, NH, 1)
    c, n, m = state(B, NH, D, D, "cpu")
    with pytest.raises(ValueError, match="c: inplace=True needs a contiguous"):
        mlstm_step(q, q, q, i, f, c.transpose(-1, -2), n, m, inplace=True)
    with pytest.raises(ValueError, match="inplace=True: the state is overwritten"):
        mlstm_step(q.requires_grad_(), q, q, i, f, c, n, m, inplace=True)


def test_steps_equal_the_chunkwise_op(device, poison):
    B, NH, S, DQK, DV = 2, 2, 23, 32, 16
    q, k = torch.randn(2, B, NH, S, DQK, device=device)
    v = torch.randn(B, NH, S, DV, device=device)
    i, f = torch.randn(2, B, NH, S, device=device)
    c, n, m = state(B, NH, DQK, DV, device)
    h_seq, (cs, ns, ms) = mlstm_chunkwise(q, k, v, i, f, c, n, m, return_last_states=True, chunk_size=16)
    hs = []
    for t in range(S):
        h, (c, n, m) = mlstm_step(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t, None], f[:, :, t], c, n, m)
        hs.append(h)
    assert_close(torch.stack(hs, dim=2), h_seq, 1e-5, "h")
    for a, b, name in zip((c, n, m), (cs, ns, ms), "cnm"):
        assert_close(a, b, 1e-5, name)


def test_step_with_gradients_takes_the_differentiable_path(device):
    B, NH, D = 1, 2, 16
    q = torch.randn(B, NH, D, device=device, requires_grad=True)
    k, v = torch.randn(2, B, NH, D, device=device)
    i, f = torch.randn(2, B, NH, 1, device=device)
    h, _ = mlstm_step(q, k, v, i, f, *state(B, NH, D, D, device))
    h.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


def test_step_bad_input_is_named():
    q = torch.randn(2, 2, 16)
    c, n, m = state(2, 2, 16, 16, "cpu")
    with pytest.raises(ValueError, match=r"c: expected shape \(2, 2, 16, 16\)"):
        mlstm_step(q, q, q, torch.zeros(2, 2, 1), torch.zeros(2, 2, 1), c[..., :8], n, m)
    with pytest.raises(ValueError, match="m: expected shape"):
        mlstm_step(q, q, q, torch.zeros(2, 2, 1), torch.zeros(2, 2, 1), c, n, m[..., 0])
    # empty head dims: the op's error, not a ZeroDivisionError from the 1/sqrt(DQK) scale
    for DQK, DV in ((0, 16), (16, 0)):
        q0, v0 = torch.randn(2, 2, DQK), torch.randn(2, 2, DV)
        with pytest.raises(ValueError, match="DQK, DV >= 1"):
            mlstm_step(q0, q0, v0, torch.zeros(2, 2, 1), torch.zeros(2, 2, 1), *state(2, 2, DQK, DV, "cpu"))


@pytest.mark.parametrize("B,NH", [(0, 2), (2, 0)])
def test_step_empty_batch_or_heads(B, NH, device):
    q = torch.randn(B, NH, 16, device=device)
    g = torch.randn(B, NH, 1, device=device)
    h, (c, n, m) = mlstm_step(q, q, q, g, g, *state(B, NH, 16, 16, device))
    assert h.shape == (B, NH, 16) and c.shape == (B, NH, 16, 16) and m.shape == (B, NH, 1)


def test_step_float64_matches_reference(device):
    q, k, v = (torch.randn(2, 3, 16, device=device, dtype=torch.float64) for _ in range(3))
    i, f = torch.randn(2, 2, 3, device=device, dtype=torch.float64)
    c, n, m = (t.double() for t in state(2, 3, 16, 16, device))
    h, new = mlstm_step(q, k, v, i[..., None], f[..., None], c, n, m)
    h_ref, ref = mlstm_recurrent_step(q, k, v, i, f, c, n, m)
    assert h.dtype == torch.float64
    assert_close(h, h_ref, 1e-12, "h")
    for a, b, name in zip(new, ref, "cnm"):
        assert_close(a, b, 1e-12, name)


@pytest.mark.gpu
def test_gpu_step_in_cuda_graph():
    B, NH, DQK, DV = 4, 8, 256, 512
    def inputs():
        q, k = torch.randn(2, B, NH, DQK, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(B, NH, DV, device="cuda", dtype=torch.bfloat16)
        i, f = torch.randn(2, B, NH, 1, device="cuda")
        return [q, k, v, i, f, *state(B, NH, DQK, DV, "cuda")]
    static = inputs()
    mlstm_step(*static)                                     # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        h, (c, n, m) = mlstm_step(*static)
    fresh = inputs()
    for s, t in zip(static, fresh):
        s.copy_(t)
    graph.replay()
    h2, (c2, n2, m2) = mlstm_step(*fresh)
    for a, b in zip((h, c, n, m), (h2, c2, n2, m2)):
        assert torch.equal(a, b)


@pytest.mark.gpu
def test_gpu_step_inplace_bf16_cache_in_cuda_graph():
    """The transformers decoding pattern: a bfloat16 cache updated in place inside a graph."""
    B, NH, DQK, DV = 3, 8, 256, 512
    q, k = torch.randn(2, B, NH, DQK, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(B, NH, DV, device="cuda", dtype=torch.bfloat16)
    i, f = torch.randn(2, B, NH, 1, device="cuda")
    cache = [t.bfloat16() for t in state(B, NH, DQK, DV, "cuda")]
    expect = [t.clone() for t in cache]
    hs = []
    for _ in range(3):                                   # eager, state carried in bfloat16
        h, new = mlstm_step(q, k, v, i, f, *expect)
        expect = [t.bfloat16() for t in new]
        hs.append(h)
    mlstm_step(q, k, v, i, f, *[t.clone() for t in cache], inplace=True)     # compile
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        h, _ = mlstm_step(q, k, v, i, f, *cache, inplace=True)
    for t in range(3):
        graph.replay()
        assert torch.equal(h, hs[t])
    for a, b in zip(cache, expect):
        assert torch.equal(a, b)
