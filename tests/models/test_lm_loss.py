"""`model(input_ids, labels=labels)` for both model families: the fused loss equals
F.cross_entropy on the model's own (soft-capped) logits shifted by one, with ignored labels, in
value and in every parameter's gradient; errors name `labels`."""

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_close, small_lm
from tests.models.large_helpers import tiny_model


def build(family, device):
    model = small_lm((1,), device=device) if family == "xlstm" else tiny_model(device)
    return model.train(False)


@pytest.mark.parametrize("family", ["xlstm", "xlstm_large"])
def test_loss_and_gradients_equal_cross_entropy_of_the_logits(family, path, device):
    model = build(family, device)
    V = model.config.vocab_size
    ids = torch.randint(0, V, (2, 19), device=device)
    labels = ids.clone()
    labels[0, 5:9] = -100
    params = [p for p in model.parameters() if p.requires_grad]

    loss = model(ids, labels=labels)
    grads = torch.autograd.grad(loss * 3.0, params)
    logits = model(ids)
    ref = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
    ref_grads = torch.autograd.grad(ref * 3.0, params)

    assert loss.shape == () and loss.dtype == torch.float32
    assert_close(loss, ref, 1e-5, "loss")
    for p, g, r in zip(params, grads, ref_grads):
        assert_close(g, r, 1e-4, f"d {[n for n, q in model.named_parameters() if q is p][0]}")


@pytest.mark.parametrize("family", ["xlstm", "xlstm_large"])
def test_labels_with_state(family, device):
    model = build(family, device)
    ids = torch.randint(0, model.config.vocab_size, (2, 11), device=device)
    with torch.no_grad():
        loss, state = model(ids, labels=ids, return_state=True)
        _, ref_state = model(ids, return_state=True)
    assert torch.isfinite(loss)
    for a, b in zip(torch.utils._pytree.tree_leaves(state), torch.utils._pytree.tree_leaves(ref_state)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("family", ["xlstm", "xlstm_large"])
def test_bad_labels(family, device):
    model = build(family, device)
    V = model.config.vocab_size
    ids = torch.randint(0, V, (2, 7), device=device)
    with pytest.raises(ValueError, match=r"labels: expected shape \(2, 7\) \(input_ids' shape\), got \(2, 6\)"):
        model(ids, labels=ids[:, :6])
    with pytest.raises(TypeError, match="labels: expected an integer tensor"):
        model(ids, labels=ids.float())
    bad = ids.clone()
    bad[1, 3] = V
    with pytest.raises(ValueError, match=f"labels: label {V} is out of range for the vocabulary size {V}"):
        model(ids, labels=bad)
    bad[1, 3] = -7
    with pytest.raises(ValueError, match="labels: label -7 is out of range"):
        model(ids, labels=bad)
