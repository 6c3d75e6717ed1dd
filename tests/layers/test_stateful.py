"""Stateful use of the modules: a full-sequence forward equals a chunkwise prefill, a further
chunk with state and step-by-step decoding; generation; the building blocks' states."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import xlstm_triton.nn as xnn
import xlstm_triton.utils as xt_utils
from tests.helpers import assert_close
from tests.helpers import E, V, small_lm

STACKS = {"mlstm-only": (), "slstm-only": "all", "mixed": (1,)}


@pytest.mark.parametrize("stack", STACKS)
def test_prefill_then_decode_equals_full_forward(stack, path, device):
    model = small_lm(STACKS[stack], device=device)
    idx = torch.randint(0, V, (2, 23), device=device)
    with torch.no_grad():
        full = model(idx)
        logits, state = model(idx[:, :9], return_state=True)             # chunkwise prefill
        parts = [logits]
        logits, state = model(idx[:, 9:17], state, return_state=True)    # a chunk with state
        parts.append(logits)
        for t in range(17, 23):                                          # decoding steps
            logits, state = model.step(idx[:, t:t + 1], state)
            parts.append(logits)
    assert_close(torch.cat(parts, dim=1), full, 1e-5, "logits")
    # the state after it all equals the state of one pass over the whole sequence
    with torch.no_grad():
        _, state_full = model(idx, return_state=True)
    for a, b in zip(torch.utils._pytree.tree_leaves(state), torch.utils._pytree.tree_leaves(state_full)):
        assert_close(a, b, 1e-5, "state")


def test_state_structure_and_zero_state(device):
    model = small_lm((1,), device=device)
    idx = torch.randint(0, V, (3, 5), device=device)
    with torch.no_grad():
        _, state = model(idx, return_state=True)
        zero = model.zero_state(3)
        a = model(idx, state=zero)
        b = model(idx)
    assert isinstance(state, tuple) and len(state) == 3
    assert isinstance(state[0], xnn.mLSTMLayerState) and isinstance(state[1], xnn.sLSTMLayerState)
    c, n, m, conv = state[0]
    inner, nh = model.xlstm_block_stack.blocks[0].xlstm.inner, 2
    assert c.shape == (3, nh, inner // nh, inner // nh) and n.shape == (3, nh, inner // nh)
    assert m.shape == (3, nh, 1) and conv.shape == (3, 3, inner)
    assert c.dtype == n.dtype == m.dtype == torch.float32
    assert state[1].slstm.shape == (4, 3, 2, E // 2) and state[1].conv.shape == (3, 3, E)
    for s, z in zip(torch.utils._pytree.tree_leaves(state), torch.utils._pytree.tree_leaves(zero)):
        assert s.shape == z.shape and s.dtype == z.dtype and not z.any()
    assert_close(a, b, 0.0, "zero state == no state")


def test_layers_and_blocks_carry_state(path, device):
    """Each module level on its own: two chunks with state == one pass."""
    torch.manual_seed(0)
    mods = [xnn.mLSTMLayer(xnn.mLSTMLayerConfig(embedding_dim=E, num_heads=2)),
            xnn.sLSTMLayer(xnn.sLSTMLayerConfig(embedding_dim=E, num_heads=2)),
            xnn.sLSTMLayer(xnn.sLSTMLayerConfig(embedding_dim=E, num_heads=2, conv1d_kernel_size=0)),
            xnn.mLSTMBlock(xnn.mLSTMBlockConfig(mlstm=xnn.mLSTMLayerConfig(embedding_dim=E, num_heads=2))),
            xnn.sLSTMBlock(xnn.sLSTMBlockConfig(slstm=xnn.sLSTMLayerConfig(embedding_dim=E, num_heads=2)))]
    x = torch.randn(2, 11, E, device=device)
    for mod in mods:
        mod = mod.to(device).eval()
        with torch.no_grad():
            for p in mod.parameters():
                p.add_(torch.randn_like(p) * 0.2)
            full = mod(x)
            y1, st = mod(x[:, :6], return_state=True)
            y2, st = mod(x[:, 6:10], st, return_state=True)
            y3, _ = mod.step(x[:, 10:], st)
        assert_close(torch.cat([y1, y2, y3], 1), full, 1e-5, type(mod).__name__)


def test_causal_conv_state():
    conv = xnn.CausalConv1d(8, 4)
    x = torch.randn(2, 9, 8)
    ref = F.conv1d(F.pad(x.transpose(1, 2), (3, 0)), conv.conv.weight, conv.conv.bias, groups=8)
    ref = ref.transpose(1, 2)
    y1, st = conv(x[:, :5], return_state=True)
    ys = [y1]
    for t in range(5, 9):
        y, st = conv(x[:, t:t + 1], st, return_state=True)
        ys.append(y)
    assert_close(torch.cat(ys, 1), ref, 1e-6, "conv")
    assert torch.equal(st, x[:, -3:])
    assert_close(conv(x), ref, 1e-6, "conv without state")


def test_headwise_linear_and_group_norm():
    lin = xnn.LinearHeadwise(12, 3, bias=True)
    with torch.no_grad():
        lin.bias.normal_()
    x = torch.randn(4, 5, 12)
    dense = torch.block_diag(*lin.weight)                                 # (12, 12)
    assert_close(lin(x), x @ dense.T + lin.bias, 1e-6, "headwise")
    norm = xnn.MultiHeadLayerNorm(12, weight=True, bias=True)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    y = norm(x.view(4, 5, 3, 4))
    ref = F.group_norm(x.reshape(20, 12), 3, 1 + norm.weight, norm.bias, eps=1e-5).view(4, 5, 12)
    assert_close(y, ref, 1e-6, "group norm")


# --------------------------------------------------------------------------------- generate

def test_generate_greedy_is_argmax_of_full_forward(path, device):
    model = small_lm((1,), device=device)
    prompt = torch.randint(0, V, (2, 7), device=device)
    out = model.generate(prompt, 6, temperature=0.0)
    assert out.shape == (2, 13) and torch.equal(out[:, :7], prompt)
    with torch.no_grad():
        logits = model(out[:, :-1])
    assert torch.equal(logits[:, 6:].argmax(-1), out[:, 7:])
    assert torch.equal(model.generate(prompt, 6, temperature=1.0, top_k=1), out)   # top_k=1: greedy
    assert torch.equal(model.generate(prompt, 0), prompt)
    assert model.generate(prompt[:, :1], 3).shape == (2, 4)                           # 1-token prompt


def test_generate_sampling_is_reproducible_and_respects_top_k(device):
    model = small_lm("all", num_blocks=1, device=device)
    prompt = torch.randint(0, V, (3, 4), device=device)
    g = lambda: torch.Generator(device=device).manual_seed(11)
    a = model.generate(prompt, 8, temperature=1.5, top_k=3, generator=g())
    b = model.generate(prompt, 8, temperature=1.5, top_k=3, generator=g())
    assert torch.equal(a, b)
    with torch.no_grad():
        logits = model(a[:, :-1])[:, 3:]
    top3 = logits.topk(3, dim=-1).indices
    assert (top3 == a[:, 4:, None]).any(-1).all()


def test_sample_tokens_distribution():
    """The exponential race draws from softmax(logits / T)."""
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).expand(20000, 4)
    gen = torch.Generator().manual_seed(0)
    tok = xnn.sample_tokens(logits, temperature=0.7, generator=gen)
    freq = torch.bincount(tok, minlength=4).double() / tok.numel()
    assert_close(freq, torch.softmax(logits[0].double() / 0.7, -1), 0.02, "frequencies")


def test_decode_step_compiles_fullgraph(monkeypatch):
    """No graph break in a decoding step (so no host sync): what a CUDA graph needs."""
    monkeypatch.setattr(xt_utils, "triton_interpret", lambda: False)
    torch._dynamo.reset()
    model = small_lm((1,), num_blocks=2)
    with torch.no_grad():
        _, state = model(torch.randint(0, V, (2, 5)), return_state=True)
        tok = torch.randint(0, V, (2,))
        step = torch.compile(model.decode_step, backend="aot_eager", fullgraph=True)
        a, sa = step(tok, state, 0.0)
        b, sb = model.decode_step(tok, state, 0.0)
        assert torch.equal(a, b)
        for x, y in zip(torch.utils._pytree.tree_leaves(sa), torch.utils._pytree.tree_leaves(sb)):
            assert_close(x, y, 1e-6, "state")
        sampled, _ = step(tok, state, 1.0, 5)          # sampling (global RNG) compiles too
        logits, _ = model(tok[:, None], state, return_state=True)
        assert (logits[:, -1].topk(5, dim=-1).indices == sampled[:, None]).any(-1).all()


@pytest.mark.gpu
def test_gpu_decode_loop_in_cuda_graph():
    """The CUDA-graph recipe (xlstm_triton/generation.py): greedy decoding replayed from one
    captured graph gives generate()'s tokens."""
    model = small_lm((1,), device="cuda")
    prompt = torch.randint(0, V, (2, 9), device="cuda")
    n_new = 6
    expected = model.generate(prompt, n_new, temperature=0.0)
    tok = torch.zeros(2, dtype=torch.long, device="cuda")
    state = model.zero_state(2)
    with torch.no_grad():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            model.decode_step(tok, state, 0.0)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            next_tok, next_state = model.decode_step(tok, state, 0.0)
        logits, prefill = model(prompt, return_state=True)
        xnn.copy_state_(state, prefill)
        tok.copy_(xnn.sample_tokens(logits[:, -1], 0.0))
        out = [tok.clone()]
        for _ in range(n_new - 1):
            graph.replay()
            tok.copy_(next_tok)
            xnn.copy_state_(state, next_state)
            out.append(tok.clone())
    assert torch.equal(torch.cat([prompt, torch.stack(out, 1)], 1), expected)


def test_bfloat16_model_prefill_and_decode(path, device):
    """A bfloat16 model (float32 recurrent states, bf16 conv state) decodes like its own full
    forward, and stays near the float32 model."""
    model = small_lm((1,), device=device)
    idx = torch.randint(0, V, (2, 14), device=device)
    with torch.no_grad():
        ref = model(idx)
        model = model.to(torch.bfloat16)
        full = model(idx)
        logits, state = model(idx[:, :9], return_state=True)
        parts = [logits]
        for t in range(9, 14):
            logits, state = model.step(idx[:, t:t + 1], state)
            parts.append(logits)
    assert full.dtype == torch.bfloat16
    assert state[0].c.dtype == state[1].slstm.dtype == torch.float32
    assert state[0].conv.dtype == torch.bfloat16
    assert_close(torch.cat(parts, 1), full, 3e-2, "bf16 decode vs bf16 forward")
    assert_close(full, ref, 6e-2, "bf16 vs float32")
