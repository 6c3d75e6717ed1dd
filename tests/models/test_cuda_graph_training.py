"""A whole training step's forward and backward, captured once in a CUDA graph (`capture_step`)
and replayed on new tokens, gives the eager step's loss and gradients (GPU): no host sync, no
host-side state in the kernels' launchers, for both model families (the paper LM with an sLSTM block and its
recomputing mLSTM layers; xLSTM-7B's architecture with its in-kernel gate soft cap)."""

from __future__ import annotations

import pytest
import torch

import xlstm_triton.nn as xnn
from tests.helpers import V, assert_close, lm_config
from tests.models.large_helpers import tiny_model
from xlstm_triton.models import capture_step


def _paper_lm():
    torch.manual_seed(0)
    model = xnn.xLSTMLMModel(lm_config(xnn, num_blocks=3, slstm_at=(1,), context_length=70))
    model.reset_parameters()
    model.check_token_range = False
    return model.cuda().train()


def _large_lm():
    model = tiny_model("cuda").train()
    model.check_token_range = False
    return model


@pytest.mark.gpu
@pytest.mark.parametrize("build", [_paper_lm, _large_lm], ids=["paper", "large"])
def test_replayed_step_equals_eager(build):
    model = build()
    vocab = V if build is _paper_lm else model.config.vocab_size
    params = [p for p in model.parameters() if p.requires_grad]
    tokens = torch.randint(0, vocab, (2, 70), device="cuda")

    def fwd_bwd():
        loss = model(tokens, labels=tokens)
        loss.backward()
        return loss

    replay = capture_step(fwd_bwd, params)

    for seed in (1, 2):                               # new tokens in the static input
        torch.manual_seed(seed)
        tokens.copy_(torch.randint(0, vocab, tokens.shape, device="cuda"))
        got_loss = replay().detach().clone()
        got = [p.grad.clone() for p in params]
        grads = [p.grad for p in params]
        for p in params:
            p.grad = None
        eager_loss = fwd_bwd()
        assert_close(got_loss, eager_loss.detach(), 1e-5, "loss")
        for p, g, name in zip(params, got, (n for n, p in model.named_parameters() if p.requires_grad)):
            assert_close(g, p.grad, 1e-4, f"d {name}")
        for p, g in zip(params, grads):                 # back to the graph's gradient buffers
            p.grad = g


def test_replay_keeps_the_captured_inputs_alive(monkeypatch):
    """The graph reads its input tensors' memory on every replay: `replay` must keep them alive
    when the caller drops its own references (a step built inside a setup function: the token
    ids' block, freed after capture, went to the optimizer's state and the next replay gathered
    embeddings at float bits read as ids). CUDA's stream and graph calls are stubbed: what is
    tested is who holds the tensors."""
    import contextlib
    import gc
    import weakref

    class Stub:
        def __init__(self, *a, **k):
            pass

        def wait_stream(self, other):
            pass

        def replay(self):
            pass

    monkeypatch.setattr(torch.cuda, "Stream", Stub)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: Stub())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Stub)
    monkeypatch.setattr(torch.cuda, "graph", lambda g, **k: contextlib.nullcontext())

    def build():   # the caller's references end with this function
        weight = torch.nn.Parameter(torch.randn(5, 3))
        tokens = torch.randint(0, 5, (2, 4))

        def fwd_bwd():
            loss = weight[tokens].sum()
            loss.backward()
            return loss
        return capture_step(fwd_bwd, [weight]), weakref.ref(tokens), weakref.ref(weight)

    replay, tokens_ref, weight_ref = build()
    gc.collect()
    assert tokens_ref() is not None and weight_ref() is not None
    replay()
    del replay
    gc.collect()
    assert tokens_ref() is None          # and nothing holds them beyond replay
