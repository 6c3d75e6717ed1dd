"""Packed documents through whole models: a packed row (cu_seqlens or position_ids) gives the
same logits, loss and parameter gradients as the documents run one by one (paper LM with an
sLSTM block, and xLSTMLarge), through the kernels and the PyTorch path; bad offsets raise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from tests.helpers import TOL, assert_close, small_lm, weighted_sum_loss
from tests.models.large_helpers import randomize_, tiny_config
from xlstm_triton.models import compile_blocks, xLSTMLarge

LENGTHS = [5, 1, 19, 16, 3, 40]      # around the chunk of 16, a single token, one over three chunks


def _models(device):
    paper = small_lm(slstm_at=(1,), num_blocks=3, device=device).train()
    large = randomize_(xLSTMLarge(tiny_config()), seed=4, gate_scale=1.0).to(device).train()
    return {"paper": paper, "large": large}


def _vocab(model):
    return model.config.vocab_size


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _logits_and_grads(model, idx, **packed):
    model.zero_grad()
    logits = model(idx, **packed)
    weighted_sum_loss([logits], torch.Generator().manual_seed(3)).backward()
    return logits, _grads(model)


@pytest.mark.parametrize("family", ["paper", "large"])
def test_packed_row_equals_documents_one_by_one(family, path, device):
    model = _models(device)[family]
    torch.manual_seed(1)
    idx = torch.randint(0, _vocab(model), (1, sum(LENGTHS)), device=device)
    cu = torch.tensor([0] + LENGTHS, device=device).cumsum(0)
    logits, grads = _logits_and_grads(model, idx, cu_seqlens=cu)
    model.zero_grad()
    alone = torch.cat([model(idx[:, a:b]) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())], dim=1)
    weighted_sum_loss([alone], torch.Generator().manual_seed(3)).backward()
    fwd, bwd = TOL[torch.float32]
    assert_close(logits, alone, fwd, "logits")
    assert grads.keys() == _grads(model).keys() and grads
    for name, g in _grads(model).items():
        assert_close(grads[name], g, bwd, f"d {name}")


@pytest.mark.parametrize("family", ["paper", "large"])
def test_position_ids_give_the_cu_seqlens_result(family, device, monkeypatch):
    """position_ids restarting at 0 at each document (transformers' packing collators) mark the
    same documents as their cu_seqlens: the same logits and gradients. (On the CPU through the
    ops' PyTorch path: the conversion is the same for both paths, and the interpreter is slow.)"""
    if device == "cpu":
        import xlstm_triton.utils as xt_utils
        monkeypatch.setattr(xt_utils, "triton_interpret", lambda: False)
    model = _models(device)[family]
    torch.manual_seed(1)
    idx = torch.randint(0, _vocab(model), (1, sum(LENGTHS)), device=device)
    cu = torch.tensor([0] + LENGTHS, device=device).cumsum(0)
    position_ids = torch.cat([torch.arange(n, device=device) for n in LENGTHS])[None]
    logits, grads = _logits_and_grads(model, idx, cu_seqlens=cu)
    logits_pos, grads_pos = _logits_and_grads(model, idx, position_ids=position_ids)
    assert torch.equal(logits_pos, logits)
    assert grads_pos.keys() == grads.keys() and grads
    for name, g in grads.items():
        # Bitwise but for the order of float atomic adds (the sLSTM's dR on the GPU): 1e-5, two
        # orders below what a wrong document bound gives.
        assert_close(grads_pos[name], g, 1e-5, f"d {name}")


@pytest.mark.parametrize("family", ["paper", "large"])
def test_packed_loss_scores_no_token_across_documents(family, path, device):
    """model(idx, labels, cu_seqlens): the mean over the documents' own next-token pairs (a
    document's last position predicts nothing)."""
    model = _models(device)[family].eval()
    torch.manual_seed(2)
    S = sum(LENGTHS)
    idx = torch.randint(0, _vocab(model), (1, S), device=device)
    cu = torch.tensor([0] + LENGTHS, device=device).cumsum(0)
    with torch.no_grad():
        loss = model(idx, labels=idx, cu_seqlens=cu)
        terms = []
        for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
            logits = model(idx[:, a:b]).float()        # xLSTMLarge's logits are soft-capped already
            terms.append(F.cross_entropy(logits[0, :-1], idx[0, a + 1:b], reduction="none"))
        ref = torch.cat(terms).mean()
    assert_close(loss, ref, TOL[torch.float32][0], "loss")


@pytest.mark.parametrize("family", ["paper", "large"])
def test_compiled_blocks_on_packed_rows_equal_eager(family, device):
    """compile_blocks + cu_seqlens (offsets on the host, as a training loop passes them): the
    eager loss and gradients, no graph break, nothing compiled again at the second step.
    (The paper LM here has mLSTM blocks only: the sLSTM's packed path reads the offsets on the
    host to pad its batch, a graph break.)"""
    if family == "paper":
        model = small_lm(slstm_at=(), num_blocks=2, device=device).train()
    else:
        model = _models(device)["large"]
    model.check_token_range = False
    torch.manual_seed(1)
    lengths = [5, 1, 19, 3]                   # short: three interpreted steps on the CPU
    idx = torch.randint(0, _vocab(model), (1, sum(lengths)), device=device)
    cu = torch.tensor([0] + lengths).cumsum(0)
    ref = model(idx, labels=idx, cu_seqlens=cu)
    ref.backward()
    ref_grads = _grads(model)
    torch._dynamo.reset()
    counters.clear()
    # On the CPU without Inductor's code generation (minutes on CI's two cores): the capture,
    # its guards and the ops' fake implementations are what is tested there.
    compile_blocks(model, **({"backend": "aot_eager"} if device == "cpu" else {}))
    for step in range(2):
        model.zero_grad(set_to_none=True)
        loss = model(idx, labels=idx, cu_seqlens=cu)
        loss.backward()
        if step == 0:
            first = dict(counters["frames"])
    assert first["ok"] >= 1 and dict(counters["frames"]) == first, (first, dict(counters["frames"]))
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert_close(loss.detach(), ref.detach(), 1e-5, "loss")
    assert _grads(model).keys() == ref_grads.keys()
    for name, g in ref_grads.items():
        assert_close(_grads(model)[name], g, 1e-4, f"d {name}")


def test_packed_errors(device):
    model = _models(device)["large"]
    idx = torch.zeros(1, 10, dtype=torch.long, device=device)
    cu = torch.tensor([0, 4, 10], device=device)
    with pytest.raises(ValueError, match="cu_seqlens: expected offsets from 0 to the packed length 10"):
        model(idx, cu_seqlens=torch.tensor([0, 4, 9], device=device))
    with pytest.raises(ValueError, match="non-decreasing"):
        model(idx, cu_seqlens=torch.tensor([0, 6, 4, 10], device=device))
    with pytest.raises(ValueError, match="batch of 1"):
        model(torch.zeros(2, 10, dtype=torch.long, device=device), cu_seqlens=cu)
    with pytest.raises(ValueError, match="not both"):
        model(idx, cu_seqlens=cu, position_ids=torch.zeros(1, 10, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match="zero states"):
        model(idx, cu_seqlens=cu, return_state=True)
    with pytest.raises(ValueError, match="position_ids: packed documents start at position 0"):
        model(idx, position_ids=torch.ones(1, 10, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match="cu_seqlens: expected dtype int32 or int64"):
        model(idx, cu_seqlens=torch.tensor([0.0, 10.0], device=device))
