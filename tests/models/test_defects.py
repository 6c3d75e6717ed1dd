"""Regression tests of the layers and models (xlstm_triton.nn, xlstm_triton.models,
xlstm_triton.integrations) for defects users met:

- recurrent states given as plain tuples / lists (a state rebuilt by a comprehension);
- `tie_word_embeddings`: the LM head is the one transformers loads and uses;
- batch size 0: an empty result of the right shape everywhere;
- token ids out of range, of a wrong dtype or on a wrong device: errors naming the argument.

They run the ops' PyTorch path on CPU (what a user without a GPU and without TRITON_INTERPRET
gets), so they are fast. The batch-size-0 tests rely on the ops (`mlstm_chunkwise`,
`mlstm_step`, `slstm`, `slstm_step`) returning empty results for B = 0.
"""

from __future__ import annotations

import pytest
import torch

import xlstm_triton.utils as xt_utils
from tests.helpers import assert_close
from tests.models.large_helpers import CHUNK, S_ODD, randomize_, reference_logits, tiny_config, tiny_model
from tests.models.large_helpers import V as V_LARGE
from tests.helpers import V, small_lm
from xlstm_triton.models import load_checkpoint, to_transformers_state_dict, xLSTMLarge
from xlstm_triton.nn import mLSTMLayerState, sLSTMLayerState
from xlstm_triton.modules import LinearHeadwise


@pytest.fixture(autouse=True)
def torch_path(monkeypatch):
    """The ops' PyTorch path (CPU tensors without TRITON_INTERPRET)."""
    monkeypatch.setattr(xt_utils, "triton_interpret", lambda: False)


def as_plain(state, kind=tuple):
    """A nested state rebuilt as plain tuples or lists, as `kind(t.clone() for t in s)` does."""
    if isinstance(state, torch.Tensor):
        return state.clone()
    if state is None:
        return None
    return kind(as_plain(s, kind) for s in state)


# ---------------------------------------------------------------------- states as tuples / lists

@pytest.mark.parametrize("kind", [tuple, list])
def test_layer_states_as_plain_sequences(kind):
    """A layer state rebuilt as a plain tuple or list continues exactly like the NamedTuple."""
    model = small_lm(slstm_at=(1,), num_blocks=2)
    idx = torch.randint(0, V, (2, 9))
    x = model.token_embedding(idx)
    for block, cls in zip(model.xlstm_block_stack.blocks, (mLSTMLayerState, sLSTMLayerState)):
        layer = block.xlstm
        with torch.no_grad():
            full = layer(x)
            y0, state = layer(x[:, :6], return_state=True)
            assert type(state) is cls
            for a, b in [(6, 7), (7, 9)]:                 # one decoding step, then a chunk
                y_named, next_named = layer(x[:, a:b], state, return_state=True)
                y_plain, next_plain = layer(x[:, a:b], as_plain(state, kind), return_state=True)
                assert type(next_plain) is cls
                assert torch.equal(y_plain, y_named)
                assert all(torch.equal(p, q) for p, q in zip(next_plain, next_named))
                y0, state = torch.cat([y0, y_named], dim=1), next_named
        assert_close(y0, full, 1e-5, f"{cls.__name__}: prefill + steps vs one pass")


@pytest.mark.parametrize("kind", [tuple, list])
def test_lm_state_as_plain_sequences(kind):
    """xLSTMLMModel (mLSTM and sLSTM blocks): a model state of plain tuples / lists, e.g.
    moved with a comprehension, continues exactly like the one the model returned."""
    model = small_lm(slstm_at=(1,), num_blocks=3)
    idx = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        full = model(idx)
        _, state = model(idx[:, :8], return_state=True)
        moved = kind(kind(t.to("cpu") for t in s) for s in state)
        step_named, _ = model(idx[:, 8:9], state, return_state=True)
        step_plain, next_plain = model(idx[:, 8:9], moved, return_state=True)
        rest, _ = model(idx[:, 9:], as_plain(next_plain, kind), return_state=True)
    assert torch.equal(step_plain, step_named)
    assert_close(torch.cat([step_plain, rest], dim=1), full[:, 8:], 1e-5, "continued from a plain state")
    assert type(next_plain) is tuple and type(next_plain[1]) is sLSTMLayerState


def test_plain_state_errors_name_the_argument():
    model = small_lm(slstm_at=(1,), num_blocks=2)
    idx = torch.randint(0, V, (2, 4))
    with torch.no_grad():
        _, state = model(idx, return_state=True)
    plain = as_plain(state, list)
    with pytest.raises(ValueError, match=r"state: expected a tuple of 2 block states \(or a list"):
        model(idx, plain[:1])
    with pytest.raises(ValueError, match=r"state: .*got dict"):
        model(idx, {0: plain[0], 1: plain[1]})
    with pytest.raises(TypeError, match=r"mLSTMLayer state: expected an mLSTMLayerState .* got a list of length 3"):
        model(idx, [plain[0][:3], plain[1]])
    with pytest.raises(TypeError, match=r"sLSTMLayer state: .* got str"):
        model(idx, [plain[0], "ab"])
    with pytest.raises(ValueError, match=r"sLSTMLayerState.conv: expected shape \(2, 3, 32\), got \(2, 2, 32\)"):
        model(idx, [plain[0], [plain[1][0], plain[1][1][:, 1:]]])


@pytest.mark.parametrize("kind", [tuple, list])
def test_large_state_as_plain_sequences(kind):
    model = tiny_model()
    ids = torch.randint(0, V_LARGE, (2, 21))
    with torch.no_grad():
        full = model(ids)
        _, state = model(ids[:, :17], return_state=True)
        a, state_a = model(ids[:, 17:18], as_plain(state, kind), return_state=True)
        b, _ = model(ids[:, 18:], as_plain(state_a, kind), return_state=True)
        buffers = as_plain(state_a, kind)                     # update_state into plain lists too
        model(ids[:, 18:19], buffers, update_state=True)
        _, ref = model(ids[:, 18:19], state_a, return_state=True)
    assert_close(torch.cat([a, b], dim=1), full[:, 17:], 1e-5, "continued from a plain state")
    assert all(torch.equal(p, q) for s, r in zip(buffers, ref) for p, q in zip(s, r))
    with pytest.raises(TypeError, match=r"state\[1\]: expected an mLSTMState \(c, n, m\) .* of length 2"):
        model(ids, kind([state[0], state[1][:2]]))


# ---------------------------------------------------------------------- tied embeddings

try:
    import transformers
    _HF_XLSTM = hasattr(transformers, "xLSTMForCausalLM")
except ImportError:
    _HF_XLSTM = False
transformers_or_skip = pytest.mark.skipif(not _HF_XLSTM, reason="needs transformers with its xLSTM model")


def _hf(tie: bool, dtype):
    cfg = transformers.xLSTMConfig(vocab_size=V_LARGE, hidden_size=tiny_config().embedding_dim,
                                   num_hidden_layers=tiny_config().num_blocks,
                                   num_heads=tiny_config().num_heads, chunk_size=CHUNK,
                                   tie_word_embeddings=tie)
    return randomize_(transformers.xLSTMForCausalLM(cfg)).to(dtype).eval()


@transformers_or_skip
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-6)])
@pytest.mark.parametrize("tie", [True, False])
def test_tied_config_loads_the_head_transformers_uses(tmp_path, tie, dtype, tol):
    """transformers' xLSTMForCausalLM keeps its own lm_head whatever tie_word_embeddings says
    (the weights differ here): ours loads that head, from the model and from a saved
    directory, and gives transformers' logits. (float64: transformers' logits are float32.)"""
    hf = _hf(tie, dtype)
    assert hf.config.tie_word_embeddings is tie
    assert not torch.equal(hf.lm_head.weight, hf.backbone.embeddings.weight)
    ids = torch.randint(0, V_LARGE, (2, S_ODD))
    hf.save_pretrained(tmp_path)
    with torch.no_grad():
        ref = hf(ids).logits
        for ours in (xLSTMLarge.from_transformers(hf, copy=True, chunk_size=CHUNK),
                     load_checkpoint(tmp_path, dtype=dtype, chunk_size=CHUNK)):
            assert ours.config.tie_word_embeddings is tie
            assert ours.lm_head.weight is not ours.embedding.weight
            assert torch.equal(ours.lm_head.weight, hf.lm_head.weight)
            assert_close(ours(ids), ref, tol, f"tie_word_embeddings={tie}: logits vs transformers")


@transformers_or_skip
def test_tied_config_builds_an_untied_model_like_transformers():
    """Built from a config (random init), the head is its own parameter in both; our state
    dict loads into transformers and gives the same logits; float64 reference too."""
    model = randomize_(xLSTMLarge(tiny_config(tie_word_embeddings=True))).eval()
    assert model.lm_head.weight is not model.embedding.weight
    assert "lm_head.weight" in model.state_dict()
    hf = _hf(True, torch.float32)
    missing, unexpected = hf.load_state_dict(to_transformers_state_dict(model.state_dict()), strict=True)
    assert not missing and not unexpected
    ids = torch.randint(0, V_LARGE, (2, S_ODD))
    with torch.no_grad():
        out = model(ids)
        assert_close(out, hf(ids).logits, 1e-5, "ours vs transformers")
    assert_close(out, reference_logits(model.state_dict(), model.config, ids), 1e-5, "ours vs float64")
    assert isinstance(hf, transformers.xLSTMForCausalLM)


def test_checkpoint_without_lm_head_is_an_error(tmp_path):
    import json

    from safetensors.torch import save_file
    model = tiny_model(tie_word_embeddings=True)
    sd = {k: t.contiguous() for k, t in model.state_dict().items() if k != "lm_head.weight"}
    save_file(sd, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    with pytest.raises(ValueError, match=r"missing \['lm_head.weight'\]"):
        load_checkpoint(tmp_path)


# ---------------------------------------------------------------------- batch size 0

def test_headwise_projection_of_an_empty_batch():
    proj = LinearHeadwise(16, 4, bias=True, out_features=8)
    x = torch.randn(3, 5, 16)
    y = proj(x)
    assert_close(y[1:], proj(x[1:]), 1e-6, "batch slice")
    assert proj(x[:0]).shape == (0, 5, 8)
    with pytest.raises(ValueError, match=r"LinearHeadwise: expected x of shape \(\.\.\., 16\), got \(3, 5, 15\)"):
        proj(x[..., 1:])


@pytest.mark.parametrize("slstm_at", [(1,), "all"])
def test_lm_empty_batch(slstm_at):
    """xLSTMLMModel with B = 0 (mLSTM + sLSTM blocks, and sLSTM only): forward, stateful
    forward, decoding step and generate give empty results of the right shapes."""
    model = small_lm(slstm_at=slstm_at, num_blocks=2)
    idx = torch.zeros(0, 5, dtype=torch.long)
    with torch.no_grad():
        assert model(idx).shape == (0, 5, V)
        logits, state = model(idx, return_state=True)
        ref = model.zero_state(0)
        assert logits.shape == (0, 5, V)
        assert [tuple(t.shape) for s in state for t in s] == [tuple(t.shape) for s in ref for t in s]
        logits, state = model(idx[:, :1], state, return_state=True)
        assert logits.shape == (0, 1, V)
        tok, state = model.decode_step(torch.zeros(0, dtype=torch.long), state, temperature=0.5, top_k=3)
        assert tok.shape == (0,) and tok.dtype == torch.long
        out = model.generate(idx, max_new_tokens=3, temperature=0)
    assert out.shape == (0, 8) and out.dtype == idx.dtype


def test_large_empty_batch():
    model = tiny_model()
    ids = torch.zeros(0, S_ODD, dtype=torch.long)
    with torch.no_grad():
        assert model(ids).shape == (0, S_ODD, V_LARGE)
        logits, state = model(ids, return_state=True)
        assert logits.shape == (0, S_ODD, V_LARGE) and len(state) == model.config.num_blocks
        assert all(tuple(t.shape) == tuple(z.shape) for s, r in zip(state, model.zero_state(0))
                   for t, z in zip(s, r))
        logits, state = model(ids[:, :1], state, return_state=True)
        assert logits.shape == (0, 1, V_LARGE)
        buffers = model.zero_state(0)
        assert model(ids[:, :4], buffers, update_state=True).shape == (0, 4, V_LARGE)
        tok, _ = model.decode_step(torch.zeros(0, dtype=torch.long), state)
        assert tok.shape == (0,)
        assert model.generate(ids, max_new_tokens=2, temperature=0).shape == (0, S_ODD + 2)


@transformers_or_skip
def test_transformers_on_our_kernels_empty_batch():
    """transformers' own xLSTM layers reshape with -1 and fail at B = 0 (not ours to fix); with
    our fused blocks (the default of use_xlstm_triton) a batch of 0 gives empty logits, and
    the backend itself returns empty results."""
    from xlstm_triton.integrations.transformers import TritonMLSTMBackend, use_xlstm_triton
    hf = use_xlstm_triton(_hf(False, torch.float32))
    ids = torch.zeros(0, S_ODD, dtype=torch.long)
    with torch.no_grad():
        assert hf(ids).logits.shape == (0, S_ODD, V_LARGE)
        assert hf(ids[:, :1]).logits.shape == (0, 1, V_LARGE)
    q, v = torch.randn(0, 2, 5, 8), torch.randn(0, 2, 5, 16)
    i = torch.randn(0, 2, 5)
    h, (c, n, m) = TritonMLSTMBackend()(q, q, v, i, i)
    assert h.shape == (0, 2, 5, 16) and c.shape == (0, 2, 8, 16) and n.shape == (0, 2, 8) and m.shape == (0, 2, 1)
    h, _ = TritonMLSTMBackend()(q[:, :, :1], q[:, :, :1], v[:, :, :1], i[..., :1], i[..., :1])
    assert h.shape == (0, 2, 1, 16)


# ---------------------------------------------------------------------- token ids

def _models():
    return [("idx", small_lm(slstm_at=(1,), num_blocks=2), V), ("input_ids", tiny_model(), V_LARGE)]


@pytest.mark.parametrize("which", [0, 1], ids=["xLSTMLMModel", "xLSTMLarge"])
def test_token_ids_out_of_range(which):
    name, model, vocab = _models()[which]
    ids = torch.randint(0, vocab, (2, 6))
    for bad in (vocab, -1, vocab + 7):
        wrong = ids.clone()
        wrong[1, 3] = bad
        msg = rf"{name}: token id {bad} is out of range for the vocabulary size {vocab} \(expected 0 <= id < {vocab}\)"
        with pytest.raises(ValueError, match=msg):
            model(wrong)
        with pytest.raises(ValueError, match=msg.replace(name, "input_ids")):
            model.generate(wrong, max_new_tokens=2)
        with pytest.raises(ValueError, match=msg.replace(name, "tokens")):
            model.decode_step(wrong[:, 3], model.zero_state(2))
    model.check_token_range = False                  # governs the GPU only: CPU always checks
    with pytest.raises(ValueError, match=rf"{name}: token id {vocab} is out of range"):
        model(torch.full((1, 2), vocab))
    last = ids.clone()
    last[:, -1] = vocab - 1                          # the largest valid id works
    with torch.no_grad():
        assert model(last.int()).shape == (2, 6, vocab)


@pytest.mark.parametrize("which", [0, 1], ids=["xLSTMLMModel", "xLSTMLarge"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.bool, torch.float32])
def test_token_ids_dtype(which, dtype):
    name, model, _ = _models()[which]
    ids = torch.ones(2, 4, dtype=dtype)
    msg = rf"{name}: expected an integer tensor of token ids \(torch.int64 or torch.int32\), got {dtype}"
    with pytest.raises(TypeError, match=msg):
        model(ids)
    with pytest.raises(TypeError, match=msg.replace(name, "input_ids")):
        model.generate(ids, max_new_tokens=1)


@pytest.mark.parametrize("which", [0, 1], ids=["xLSTMLMModel", "xLSTMLarge"])
def test_token_ids_device(which):
    """ids on another device than the model (here meta vs CPU; the same holds for CPU ids
    and a CUDA model) raise instead of computing on the ids' device."""
    name, model, _ = _models()[which]
    ids = torch.zeros(2, 4, dtype=torch.long, device="meta")
    with pytest.raises(ValueError, match=rf"{name}: expected token ids on the model's device cpu, got meta"):
        model(ids)
    with pytest.raises(ValueError, match=r"tokens: expected token ids on the model's device cpu, got meta"):
        model.decode_step(ids[:, 0], model.zero_state(2))


@pytest.mark.gpu
def test_token_range_check_on_gpu_syncs_only_when_asked():
    """On CUDA the range check reads the ids on the host (one sync); check_token_range=False
    skips it, decode_step never does it."""
    model = tiny_model("cuda")
    ids = torch.randint(0, V_LARGE, (2, 5), device="cuda")
    wrong = ids.clone()
    wrong[0, 0] = V_LARGE
    with pytest.raises(ValueError, match=rf"input_ids: token id {V_LARGE} is out of range"):
        model(wrong)
    from xlstm_triton.generation import check_token_ids
    torch.cuda.synchronize()
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        check_token_ids(wrong, "input_ids", V_LARGE, ids.device, check_range=False)   # no sync: no error
        with pytest.raises(RuntimeError, match="synchroniz"):
            check_token_ids(ids, "input_ids", V_LARGE, ids.device, check_range=True)
    finally:
        torch.cuda.set_sync_debug_mode(old)
