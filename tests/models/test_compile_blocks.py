"""`compile_blocks`: a model compiled block by block gives the eager loss and gradients, and its
identical blocks share compiled graphs (the number of compiles does not grow with the depth)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import xlstm_triton.nn as xnn
from tests.helpers import V, assert_close, lm_config
from tests.models.large_helpers import tiny_config
from xlstm_triton.models import compile_blocks, xLSTMLarge


def _large():
    torch.manual_seed(0)
    return xLSTMLarge(tiny_config(num_blocks=4)), tiny_config().vocab_size


def _paper():
    torch.manual_seed(0)
    model = xnn.xLSTMLMModel(lm_config(xnn, num_blocks=4, slstm_at=[], context_length=24))
    model.reset_parameters()
    return model, V


@pytest.mark.parametrize("build", [_large, _paper], ids=["large", "paper"])
def test_compiled_blocks_equal_eager_and_compile_once(build, device):
    model, vocab = build()
    model = model.to(device).train()
    model.check_token_range = False
    tokens = torch.randint(0, vocab, (2, 24), device=device)
    ref = model(tokens, labels=tokens)
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    torch._dynamo.reset()
    counters.clear()
    compile_blocks(model)
    for _ in range(2):                    # the second step runs the cached graphs
        model.zero_grad(set_to_none=True)
        loss = model(tokens, labels=tokens)
        loss.backward()
    assert counters["frames"]["ok"] == 2, dict(counters["frames"])    # first block, the other three
    assert_close(loss.detach(), ref.detach(), 1e-5, "loss")
    for n, p in model.named_parameters():
        assert_close(p.grad, ref_grads[n], 1e-4, f"d {n}")


def test_compile_blocks_refuses_a_model_without_blocks():
    with pytest.raises(ValueError, match="compile_blocks: Linear has no blocks"):
        compile_blocks(torch.nn.Linear(2, 2))
