"""Training a small xLSTM LM: gradients reach every parameter, an optimizer step lowers the
loss, and the model trains under torch.compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import xlstm_triton.nn as xnn
import xlstm_triton.utils as xt_utils
from tests.helpers import assert_close
from tests.helpers import V, lm_config


def fresh_lm(device, num_blocks=3, slstm_at=(1,), **kw):
    """The package's own init (many weights start at zero), as one would train it."""
    torch.manual_seed(0)
    model = xnn.xLSTMLMModel(lm_config(xnn, num_blocks=num_blocks, slstm_at=slstm_at, **kw))
    model.reset_parameters()
    return model.to(device).train()


def lm_loss(model, idx):
    logits = model(idx[:, :-1])
    return F.cross_entropy(logits.reshape(-1, V).float(), idx[:, 1:].reshape(-1))


def test_gradients_reach_every_parameter(path, device):
    model = fresh_lm(device)
    idx = torch.randint(0, V, (2, 20), device=device)
    lm_loss(model, idx).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient"
        assert p.grad.abs().max() > 0, f"{name}: gradient is zero everywhere"


def test_gradients_through_a_carried_state(path, device):
    """Truncated BPTT style: the loss of a second chunk reaches the first chunk's inputs (the
    embedding rows of its tokens) through the state, including a decoding step."""
    model = fresh_lm(device, num_blocks=2, slstm_at=(1,))
    idx = torch.randint(0, V, (2, 12), device=device)
    first = torch.zeros_like(idx, dtype=torch.bool)
    first[:, :8] = True
    emb = model.token_embedding.weight
    _, state = model(idx[:, :8], return_state=True)
    logits, state = model(idx[:, 8:11], state, return_state=True)
    logits2, _ = model(idx[:, 11:], state, return_state=True)
    (logits.square().mean() + logits2.square().mean()).backward()
    only_first = sorted(set(idx[:, :8].flatten().tolist()) - set(idx[:, 8:].flatten().tolist()))
    assert only_first, "pick another seed"
    assert emb.grad[only_first].abs().sum(-1).gt(0).all()


def test_one_optimizer_step_lowers_the_loss(path, device):
    model = fresh_lm(device)
    idx = torch.randint(0, V, (4, 24), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(2):
        opt.zero_grad()
        loss = lm_loss(model, idx)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(lm_loss(model, idx).item())
    assert losses[1] < losses[0] and losses[2] < losses[1], losses


def test_compiled_training_step_matches_eager(monkeypatch):
    """torch.compile(fullgraph=True) on the ops' PyTorch path: same loss and gradients."""
    monkeypatch.setattr(xt_utils, "triton_interpret", lambda: False)
    torch._dynamo.reset()
    model = fresh_lm("cpu", num_blocks=2, slstm_at=(1,))
    idx = torch.randint(0, V, (2, 17))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    loss_c = F.cross_entropy(compiled(idx[:, :-1]).reshape(-1, V), idx[:, 1:].reshape(-1))
    loss_c.backward()
    grads_c = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss_e = lm_loss(model, idx)
    loss_e.backward()
    assert_close(loss_c, loss_e, 1e-6, "loss")
    for n, p in model.named_parameters():
        assert_close(grads_c[n], p.grad, 1e-5, n)


def test_compiles_with_the_kernels(device):
    """Default dispatch (Triton kernels; the interpreter on CPU): the mLSTM and sLSTM ops are
    custom ops inside one graph (fullgraph=True, inductor). Forward, backward and a decoding
    step with a carried state."""
    if not xt_utils.use_triton(torch.empty(0, device=device)):
        pytest.skip("CPU without TRITON_INTERPRET=1")
    torch._dynamo.reset()
    model = fresh_lm(device, num_blocks=2, slstm_at=(1,))
    idx = torch.randint(0, V, (2, 9), device=device)
    compiled = torch.compile(model, backend="inductor", fullgraph=True)
    out = compiled(idx)
    assert_close(out, model(idx), 1e-5, "logits")
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model(idx).square().mean().backward()
    for n, p in model.named_parameters():
        assert_close(grads[n], p.grad, 1e-4, n)
    with torch.no_grad():     # prefill, then one step (S = 1: mlstm_step, slstm_step) compiled
        _, state = model(idx[:, :8], return_state=True)
        step = torch.compile(lambda t, s: model(t, s, return_state=True), fullgraph=True)
        logits, _ = step(idx[:, 8:], state)
        assert_close(logits, model(idx[:, 8:], state, return_state=True)[0], 1e-5, "step")


@pytest.mark.slow
def test_inductor_forward(monkeypatch):
    """The default torch.compile backend (inductor, C++ on CPU) on a 2-block mixed stack."""
    monkeypatch.setattr(xt_utils, "triton_interpret", lambda: False)
    torch._dynamo.reset()
    torch.manual_seed(0)
    stack = xnn.xLSTMBlockStack(lm_config(xnn, num_blocks=2, slstm_at=(1,))).eval()
    x = torch.randn(2, 8, stack.config.embedding_dim)
    with torch.no_grad():
        assert_close(torch.compile(stack, fullgraph=True)(x), stack(x), 1e-5, "stack")
