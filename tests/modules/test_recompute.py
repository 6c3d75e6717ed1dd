"""recompute_cheap: same values and gradients as running the function plainly; the mLSTM
forward kernels run once (its output is kept), the cheap ops twice (rebuilt in the backward)."""

import pytest
import torch
import torch.nn.functional as F

import xlstm_triton.ops.mlstm.op as mlstm_op
import xlstm_triton.layers.mlstm as mlstm_mod
from tests.helpers import E, assert_close, weighted_sum_loss
from xlstm_triton import nn as xnn
from xlstm_triton.modules.recompute import recompute_cheap
from xlstm_triton.ops.mlstm import mlstm_chunkwise
from xlstm_triton.utils import use_kernels


def test_recompute_cheap_matches_and_keeps_the_mlstm_output(device, monkeypatch):
    if not use_kernels(torch.zeros(1, device=device)):
        pytest.skip("CPU without TRITON_INTERPRET=1: the mLSTM runs its PyTorch path (no custom op to keep)")
    torch.manual_seed(0)
    B, S, NH, D = 2, 37, 2, 16
    x = torch.randn(B, S, NH * D, device=device, requires_grad=True)
    w = torch.randn(NH * D, NH * D, device=device, requires_grad=True)
    i, f = torch.randn(B, NH, S, device=device), torch.randn(B, NH, S, device=device) + 3
    calls = {"fn": 0, "states": 0}
    states = mlstm_op.chunkwise_fwd_states

    def counting_states(*args):
        calls["states"] += 1
        return states(*args)
    monkeypatch.setattr(mlstm_op, "chunkwise_fwd_states", counting_states)

    def fn(x):
        calls["fn"] += 1
        q = F.silu(x @ w).view(B, S, NH, D).transpose(1, 2)
        h = mlstm_chunkwise(q, q * 0.5, q.flip(-1), i, f, chunk_size=16)
        return h.transpose(1, 2).reshape(B, S, -1) * 2

    upstream = torch.randn(B, S, NH * D, device=device)
    y = recompute_cheap(fn, x)
    (y * upstream).sum().backward()
    # fn ran twice (forward, rebuild); the forward's states kernel once: the recompute took the
    # kept output (the backward op recomputes the states itself, counted separately below)
    assert calls["fn"] == 2
    fwd_states_calls = calls["states"]
    grads = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    calls.update(fn=0, states=0)
    y_plain = fn(x)
    (y_plain * upstream).sum().backward()
    assert fwd_states_calls == calls["states"]
    assert_close(y, y_plain, 1e-6, "y")
    assert_close(grads[0], x.grad, 1e-6, "d x")
    assert_close(grads[1], w.grad, 1e-6, "d w")


def test_recompute_cheap_without_grad_is_the_function(device):
    with torch.no_grad():
        assert recompute_cheap(lambda t: t * 2, torch.ones(3, device=device)).tolist() == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("recompute_class,bias", [("function", False), ("function", True), ("checkpoint", False)])
def test_paper_layer_recomputation_matches_keeping(recompute_class, bias, device, monkeypatch):
    """mLSTMLayer in training with the recomputation (eager: the explicit autograd Function;
    under a compiler: recompute_cheap) against the same layer keeping everything: outputs and
    the gradients of its input and every parameter, through a plain weighted-sum loss."""
    if not use_kernels(torch.zeros(1, device=device)):
        pytest.skip("CPU without TRITON_INTERPRET=1: the layer recomputes only where the kernels run")
    torch.manual_seed(1)
    layer = xnn.mLSTMLayer(xnn.mLSTMLayerConfig(embedding_dim=E, num_heads=2, bias=bias)).to(device)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    x = torch.randn(2, 21, E, device=device)
    if recompute_class == "checkpoint":
        monkeypatch.setattr(mlstm_mod.torch.compiler, "is_compiling", lambda: True)
    forwards = []
    kernel_forward = mlstm_mod.mlstm_chunkwise_forward
    monkeypatch.setattr(mlstm_mod, "mlstm_chunkwise_forward",
                        lambda *a, **k: forwards.append(1) or kernel_forward(*a, **k))
    runs = []
    for recompute in (True, False):
        layer.recompute = recompute
        layer.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        y = layer(xi)
        weighted_sum_loss([y], torch.Generator().manual_seed(7)).backward()
        runs.append((y.detach(), xi.grad, {n: p.grad.clone() for n, p in layer.named_parameters()}))
    assert len(forwards) == (1 if recompute_class == "function" else 0)     # which recomputation ran
    (y, dx, grads), (y_ref, dx_ref, grads_ref) = runs
    assert_close(y, y_ref, 1e-6, "y")
    assert_close(dx, dx_ref, 1e-5, "d x")
    assert grads.keys() == grads_ref.keys()
    for n in grads:
        assert_close(grads[n], grads_ref[n], 1e-5, f"d {n}")
