"""The fused per-head norm + skip + gate (`head_norm_gate`, the mLSTM layers' output) against
float64: the output and the gradients of h, gate, weight, bias, skip and x_skip, both
activations, with and without bias and skip, odd sizes, h as a transposed view and gate as a
slice of a fused projection, float32 and bfloat16; a NaN stays in its row; the custom ops'
registrations (opcheck); and both mLSTM layers give the same outputs and gradients with the
fused op as with their PyTorch composition."""

import pytest
import torch

import xlstm_triton.layers.mlstm as mlstm_mod
import xlstm_triton.layers.mlstm_large as mlstm_large_mod
import xlstm_triton.layers.mlstm_mix as mlstm_mix_mod
import xlstm_triton.nn as xnn
import xlstm_triton.utils as xt_utils
from tests.helpers import TOL, E, assert_close, weighted_sum_loss
from tests.models.large_helpers import randomize_, tiny_config
from xlstm_triton.layers import mLSTMLargeLayer
from xlstm_triton.modules import gated_head_norm, gated_head_norm_torch, head_norm_gate, head_norm_gate_torch
from xlstm_triton.modules.gated_head_norm import _head_norm_gate, _head_norm_gate_bwd
from xlstm_triton.utils import new_empty

NAMES = ("h", "gate", "weight", "bias", "skip", "x_skip")


@pytest.fixture
def kernels(device):
    if not xt_utils.use_triton(torch.empty(0, device=device)):
        pytest.skip("CPU without TRITON_INTERPRET=1: the kernels need the interpreter")


def make_inputs(B, S, NH, DH, dtype, device, bias, skip, transposed):
    """Leaves (h_leaf, gate_leaf, weight, bias, skip, x_skip) and the views the op takes: h a
    (B, NH, S, DH) -> (B, S, NH, DH) transpose (or contiguous), gate the middle third of a
    (B, S, 3 V) projection."""
    V = NH * DH

    def leaf(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, device=device) * scale + shift).to(dtype).requires_grad_()

    h_leaf = leaf(B, NH, S, DH, scale=3.0, shift=1.0) if transposed else leaf(B, S, NH, DH, scale=3.0, shift=1.0)
    gate_leaf = leaf(B, S, 3 * V, scale=2.0)
    leaves = [h_leaf, gate_leaf, leaf(V, scale=0.5, shift=1.0), leaf(V) if bias else None,
              leaf(V, shift=1.0) if skip else None, leaf(B, S, V) if skip else None]
    return leaves


def views(leaves, V, transposed):
    h_leaf, gate_leaf, *rest = leaves
    h = h_leaf.transpose(1, 2) if transposed else h_leaf
    return [h, gate_leaf[..., V:2 * V], *rest]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", ["sigmoid", "silu"])
@pytest.mark.parametrize("bias, skip", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("B, S, NH, DH, transposed", [(2, 5, 3, 20, True), (1, 3, 2, 64, False)])
def test_matches_float64(dtype, act, bias, skip, B, S, NH, DH, transposed, device, kernels, poison):
    V = NH * DH
    leaves = make_inputs(B, S, NH, DH, dtype, device, bias, skip, transposed)
    h, gate, w, b, k, xs = views(leaves, V, transposed)
    y = head_norm_gate(h, gate, w, b, 1e-5, act=act, skip=k, x_skip=xs)
    assert "head_norm_gate" in y.grad_fn.name(), "the kernel path did not run"
    assert y.shape == (B, S, V) and y.dtype == dtype
    weighted_sum_loss([y], torch.Generator().manual_seed(1)).backward()

    ref_leaves = [t.detach().double().requires_grad_() if t is not None else None for t in leaves]
    rh, rg, rw, rb, rk, rxs = views(ref_leaves, V, transposed)
    ref = head_norm_gate_torch(rh, rg, rw, rb, 1e-5, act=act, skip=rk, x_skip=rxs)
    weighted_sum_loss([ref], torch.Generator().manual_seed(1)).backward()

    fwd, bwd = TOL[dtype]
    assert_close(y, ref, fwd, "y")
    for name, t, r in zip(NAMES, leaves, ref_leaves):
        if t is not None:
            assert t.grad is not None, f"no gradient for {name}"
            assert_close(t.grad, r.grad, bwd, f"d {name}")


def test_nan_stays_in_its_row(device, kernels):
    B, S, NH, DH = 2, 4, 3, 20
    V = NH * DH
    leaves = make_inputs(B, S, NH, DH, torch.float32, device, True, True, True)
    with torch.no_grad():
        leaves[0][1, 2, 2, 5] = float("nan")            # h[b=1, s=2, head 2]
    h, gate, w, b, k, xs = views(leaves, V, True)
    y = head_norm_gate(h, gate, w, b, 1e-5, act="silu", skip=k, x_skip=xs)
    (y * torch.randn_like(y)).sum().backward()
    other = torch.ones(B, S, dtype=torch.bool)
    other[1, 2] = False
    assert torch.isnan(y[1, 2]).any()
    assert torch.isfinite(y[other]).all()
    assert torch.isfinite(leaves[0].grad.transpose(1, 2)[other]).all()
    assert torch.isfinite(leaves[1].grad[other]).all()
    assert torch.isfinite(leaves[5].grad[other]).all()


@pytest.mark.parametrize("skip", [False, True])
def test_opcheck(skip, device, kernels):
    """Schema, fake (meta) implementations (shapes, dtypes, strides) and autograd registration
    of the forward and backward custom ops."""
    B, S, NH, DH = 2, 3, 2, 16
    V = NH * DH
    h = torch.randn(B, NH, S, DH, device=device).transpose(1, 2).requires_grad_()
    gate = torch.randn(B, S, 2 * V, device=device)[..., :V].requires_grad_()
    w = torch.randn(V, device=device, requires_grad=True)
    k = torch.randn(V, device=device, requires_grad=True) if skip else None
    xs = torch.randn(B, S, V, device=device, requires_grad=True) if skip else None
    torch.library.opcheck(_head_norm_gate.op, (h, gate, w, None, k, xs, 1e-5, True))
    with torch.no_grad():
        _, mean, rstd = _head_norm_gate(h, gate, w, None, k, xs, 1e-5, True)
    dy = torch.randn(B, S, V, device=device)
    torch.library.opcheck(_head_norm_gate_bwd.op, (h.detach(), gate.detach(), w.detach(), None,
                                                 None if k is None else k.detach(), None if xs is None else xs.detach(),
                                                 mean, rstd, dy, True))


def test_weight_offset_in_the_kernels(device, kernels, poison):
    """`head_norm_gate_forward` / `_backward` with weight_offset (the paper layer's 1 + weight,
    added in the kernels) equal the op with weight + offset passed in, float32: the output, d h,
    d gate, d x_skip, and d weight (the sums do not change with the offset)."""
    from xlstm_triton.modules import head_norm_gate_backward, head_norm_gate_forward
    B, S, NH, DH = 2, 5, 2, 24
    V = NH * DH
    h = torch.randn(B, NH, S, DH, device=device).transpose(1, 2)
    gate, xs, dy = (torch.randn(B, S, V, device=device) for _ in range(3))
    w, b, k = (torch.randn(V, device=device) * 0.3 for _ in range(3))
    y, mean, rstd = head_norm_gate_forward(h, gate, w, b, 1e-5, act="silu", skip=k, x_skip=xs, weight_offset=1.0)
    y_ref, mean_ref, rstd_ref = head_norm_gate_forward(h, gate, w + 1.0, b, 1e-5, act="silu", skip=k, x_skip=xs)
    assert_close(y, y_ref, 1e-6, "y")
    grads = head_norm_gate_backward(h, gate, w, b, mean, rstd, dy, act="silu", skip=k, x_skip=xs, weight_offset=1.0)
    grads_ref = head_norm_gate_backward(h, gate, w + 1.0, b, mean_ref, rstd_ref, dy, act="silu", skip=k, x_skip=xs)
    for name, got, want in zip(("d h", "d gate", "d x_skip", "sums"), grads, grads_ref):
        assert_close(got, want, 1e-6, name)


@pytest.mark.parametrize("eps", [1.0, 1e-5])
def test_backward_writes_h_dot_dh(eps, device, kernels, poison):
    """`head_norm_gate_backward` with `h_dot_dh` writes sum_d h * dh per row and head and
    returns the same gradients as without; a wrong buffer or a missing eps is refused. eps = 1:
    against float64 of the returned d h; eps = 1e-5: against the float64 norm's own backward
    (the dot of the returned d h is then mostly its rounding: d h is orthogonal to h but for
    eps's share)."""
    from xlstm_triton.modules import head_norm_gate_backward, head_norm_gate_forward
    B, S, NH, DH = 2, 7, 3, 40
    V = NH * DH
    h = torch.randn(B, NH, S, DH, device=device).transpose(1, 2)
    gate, xs, dy = (torch.randn(B, S, V, device=device) for _ in range(3))
    w, k = (torch.randn(V, device=device) * 0.3 for _ in range(2))
    _, mean, rstd = head_norm_gate_forward(h, gate, w, None, eps, act="silu", skip=k, x_skip=xs, weight_offset=1.0)
    args = (h, gate, w, None, mean, rstd, dy)
    kw = dict(act="silu", skip=k, x_skip=xs, weight_offset=1.0)
    dots = new_empty((B, S, NH), torch.float32, device)
    grads = head_norm_gate_backward(*args, **kw, h_dot_dh=dots, eps=eps)
    for name, got, want in zip(("d h", "d gate", "d x_skip", "sums"), grads, head_norm_gate_backward(*args, **kw)):
        assert_close(got, want, 0.0, name)
    if eps == 1.0:
        want = (h.double() * grads[0].double()).sum(-1)
    else:          # the float64 norm's d h (through the gate and the skip, as the kernel's dn)
        hd = h.double().requires_grad_()
        n = torch.nn.functional.layer_norm(hd, (DH,), eps=eps) * (w.double() + 1.0).view(NH, DH)
        y = torch.nn.functional.silu(gate.double()) * (n.flatten(-2) + k.double() * xs.double())
        (y * dy.double()).sum().backward()
        want = (hd.detach() * hd.grad).sum(-1)
    assert_close(dots, want, 1e-5 if eps == 1.0 else 1e-3, "h . d h")
    with pytest.raises(ValueError, match="h_dot_dh must be a contiguous float32"):
        head_norm_gate_backward(*args, **kw, h_dot_dh=dots.transpose(1, 2), eps=eps)
    with pytest.raises(ValueError, match="needs the forward's eps"):
        head_norm_gate_backward(*args, **kw, h_dot_dh=dots)


def test_torch_path_and_wrapper(device):
    """Without the kernels (float64 here) the op is the composition; `gated_head_norm` is the
    sigmoid form without a skip."""
    B, S, NH, DH = 2, 3, 2, 8
    V = NH * DH
    h = torch.randn(B, S, NH, DH, device=device, dtype=torch.float64)
    o = torch.randn(B, S, V, device=device, dtype=torch.float64)
    w, b = torch.randn(V, device=device, dtype=torch.float64), torch.randn(V, device=device, dtype=torch.float64)
    ref = torch.sigmoid(o) * (torch.nn.functional.layer_norm(h, (DH,), eps=1e-6) * w.view(NH, DH)
                              + b.view(NH, DH)).flatten(-2)
    assert_close(head_norm_gate(h, o, w, b, 1e-6, act="sigmoid"), ref, 1e-12, "head_norm_gate")
    assert_close(gated_head_norm(h, o, w, b, 1e-6), ref, 1e-12, "gated_head_norm")
    assert_close(gated_head_norm_torch(h, o, w, b, 1e-6), ref, 1e-12, "gated_head_norm_torch")
    k, xs = torch.randn(V, device=device, dtype=torch.float64), torch.randn(B, S, V, device=device, dtype=torch.float64)
    ref = torch.nn.functional.silu(o) * (torch.nn.functional.layer_norm(h, (DH,), eps=1e-6).flatten(-2) + k * xs)
    assert_close(head_norm_gate(h, o, None, None, 1e-6, act="silu", skip=k, x_skip=xs), ref, 1e-12, "silu + skip")


def test_errors():
    h, g = torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 8)
    with pytest.raises(ValueError, match="head_norm_gate: expected h"):
        head_norm_gate(h, torch.zeros(1, 2, 7), act="silu")
    with pytest.raises(ValueError, match="act must be one of"):
        head_norm_gate(h, g, act="relu")
    with pytest.raises(ValueError, match="skip and x_skip go together"):
        head_norm_gate(h, g, act="silu", skip=torch.ones(8))
    with pytest.raises(ValueError, match=r"weight: expected shape \(8,\)"):
        head_norm_gate(h, g, torch.ones(7), act="silu")
    with pytest.raises(ValueError, match=r"x_skip: expected shape \(1, 2, 8\)"):
        head_norm_gate(h, g, act="silu", skip=torch.ones(8), x_skip=torch.ones(1, 2, 7))


# ---------------------------------------------------------------------- the layers

def _counting(monkeypatch, modules):
    """Count the layer modules' calls of the fused forward (head_norm_gate, and where the
    layer owns its backward, head_norm_gate_forward)."""
    calls = []
    for module in modules:
        for name in ("head_norm_gate", "head_norm_gate_forward"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, _counted(getattr(module, name), calls))
    return calls


def _counted(fn, calls):
    def wrapped(*args, **kw):
        calls.append(1)
        return fn(*args, **kw)
    return wrapped


def _run(layer, x, seed=2):
    x = x.clone().requires_grad_()
    layer.zero_grad()
    y = layer(x)
    weighted_sum_loss([y], torch.Generator().manual_seed(seed)).backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    return y.detach(), x.grad, grads


def _parity(monkeypatch, module, layer, x, training_calls=1, also_counted=()):
    """Fused op vs the layer's PyTorch composition (only the output part switched): the
    training forward and backward, a forward with return_state and a decoding step.
    `training_calls`: the fused forward's calls in the training step; `also_counted`: more
    modules whose calls of it count (the paper layer's training path, `layers.mlstm_mix`)."""
    calls = _counting(monkeypatch, (module, *also_counted))
    y, dx, grads = _run(layer, x)
    with torch.no_grad():
        y_state, state = layer(x, return_state=True)
        y_step, _ = layer(x[:, :1], state, return_state=True)
    assert len(calls) == 2 + training_calls, "the fused op did not run"
    monkeypatch.setattr(module, "use_kernels", lambda t: False)
    y_ref, dx_ref, grads_ref = _run(layer, x)
    with torch.no_grad():
        y_state_ref, state_ref = layer(x, return_state=True)
        y_step_ref, _ = layer(x[:, :1], state_ref, return_state=True)
    assert len(calls) == 2 + training_calls, "the PyTorch composition called the fused op"
    fwd, bwd = TOL[torch.float32]
    assert_close(y, y_ref, fwd, "y")
    assert_close(y_state, y_state_ref, fwd, "y with return_state")
    assert_close(y_step, y_step_ref, fwd, "decoding step")
    assert_close(dx, dx_ref, bwd, "d x")
    assert grads.keys() == grads_ref.keys() and grads
    for n in grads:
        assert_close(grads[n], grads_ref[n], bwd, f"d {n}")


def test_paper_layer_parity(monkeypatch, device, kernels):
    torch.manual_seed(0)
    layer = xnn.mLSTMLayer(xnn.mLSTMLayerConfig(embedding_dim=E, num_heads=2)).to(device)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.2)          # outnorm weight, learnable_skip != their init
    x = torch.randn(2, 7, E, device=device)
    assert layer.recompute          # the backward reads the forward's row statistics: 1 call in training
    _parity(monkeypatch, mlstm_mod, layer, x, training_calls=1, also_counted=(mlstm_mix_mod,))


def test_large_layer_parity(monkeypatch, device, kernels):
    cfg = tiny_config(use_bias=True)                    # a norm bias too
    layer = randomize_(mLSTMLargeLayer(cfg), seed=3).to(device)
    x = torch.randn(2, 19, cfg.embedding_dim, device=device)
    _parity(monkeypatch, mlstm_large_mod, layer, x)
