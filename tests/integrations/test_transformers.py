"""Hugging Face `transformers` xLSTM (xLSTMForCausalLM) on our kernels: `use_xlstm_triton`
patches a loaded model in place, `xLSTMLarge.from_transformers` builds ours from its weights.
The original model (its native PyTorch mLSTM backend) is the reference: logits, greedy
generation, cached prefill + decoding and gradients must agree. Both of transformers' layer
implementations are covered: the `xlstm` package's (used when it is installed, with
mlstm_kernels' backend) and transformers' built-in one."""

from __future__ import annotations

import importlib.util
import sys
from unittest import mock

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install transformers)")
if not hasattr(transformers, "xLSTMForCausalLM"):
    pytest.skip(f"transformers {transformers.__version__} has no xLSTM model (needs >= 4.55)", allow_module_level=True)

try:
    import transformers.models.xlstm.modeling_xlstm as hf_xlstm
except ImportError as e:      # e.g. the xlstm package installed without mlstm_kernels
    pytest.skip(f"transformers' xLSTM model does not import: {e}", allow_module_level=True)

from tests.helpers import assert_close  # noqa: E402
from tests.helpers import rel_err  # noqa: E402
from tests.models.large_helpers import (BF16_TAME, CHUNK, NH, S_ODD, E, L, V, randomize_,  # noqa: E402
                                     reference_logits, tiny_model)
from xlstm_triton.integrations.transformers import (FusedBlockForward, FusedLossForward, TritonMLSTMBackend,  # noqa: E402
                                                    remove_xlstm_triton, use_xlstm_triton)
from xlstm_triton.models import (from_transformers_state_dict, to_transformers_state_dict,  # noqa: E402
                                 xLSTMLarge)

# ---------------------------------------------------------------------- the two implementations

_BUILTIN = None


def _builtin_module():
    """transformers' own xLSTM classes. When the `xlstm` package is installed, modeling_xlstm
    takes its layers from there; a second copy of the module, loaded while
    `is_xlstm_available()` answers False, gives the built-in ones."""
    global _BUILTIN
    if not hf_xlstm.external_xlstm:
        return hf_xlstm
    if _BUILTIN is None:
        import transformers.utils as tu
        name = "transformers.models.xlstm._modeling_xlstm_builtin_for_tests"
        spec = importlib.util.spec_from_file_location(name, hf_xlstm.__file__)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            with mock.patch.object(tu, "is_xlstm_available", lambda: False):
                spec.loader.exec_module(module)
        except Exception as e:       # a transformers release that does not load this way
            del sys.modules[name]
            pytest.skip(f"cannot load transformers' built-in xLSTM layers separately: {e}")
        _BUILTIN = module
    return _BUILTIN


@pytest.fixture(params=["xlstm-package", "builtin"])
def impl(request):
    """The modeling module whose xLSTMForCausalLM a test builds."""
    if request.param == "xlstm-package":
        if not hf_xlstm.external_xlstm:
            pytest.skip("the xlstm package is not installed: transformers uses its built-in layers only")
        return hf_xlstm
    return _builtin_module()


def hf_config(weight_mode="single", **kw):
    fields = dict(vocab_size=V, hidden_size=E, num_hidden_layers=L, num_heads=NH, chunk_size=CHUNK,
                  weight_mode=weight_mode)
    fields.update(kw)
    return transformers.xLSTMConfig(**fields)


def build_hf(module, config):
    """module.xLSTMForCausalLM(config). transformers' weight init fails for weight_mode "fused"
    (transformers 5.23: a shape mismatch in `_init_weights`, also in `from_pretrained`), so a
    fused model is built without it; the tests overwrite every weight anyway."""
    if config.weight_mode != "fused":
        return module.xLSTMForCausalLM(config)
    with mock.patch.object(module.xLSTMPreTrainedModel, "_init_weights", lambda self, m: None):
        return module.xLSTMForCausalLM(config)


def hf_model(module=hf_xlstm, weight_mode="single", device="cpu", seed=0, gate_scale=4.0, weight_scale=1.0, **kw):
    model = build_hf(module, hf_config(weight_mode, **kw))
    return randomize_(model, seed, gate_scale, weight_scale).to(device).eval()


def uses_triton(model) -> bool:
    backends = [m.mlstm_backend for m in model.modules() if hasattr(m, "mlstm_backend")]
    return bool(backends) and all(isinstance(b, TritonMLSTMBackend) for b in backends)


# ---------------------------------------------------------------------- parity

@pytest.mark.parametrize("mode", ["single", "fused"])
def test_logits_original_patched_ours_agree(impl, mode):
    model = hf_model(impl, mode)
    ids = torch.randint(0, V, (2, S_ODD))
    with torch.no_grad():
        ref = model(ids).logits
        ours = xLSTMLarge.from_transformers(model, copy=True, chunk_size=CHUNK)
        assert ours.config.weight_mode == mode
        out_ours = ours(ids)
        state_before = {k: t.clone() for k, t in model.state_dict().items()}
        assert use_xlstm_triton(model) is model and uses_triton(model)
        out_patched = model(ids).logits
    assert ref.abs().max() > 1.0                     # random weights: logits far from uniform
    assert_close(out_patched, ref, 1e-4, "patched transformers vs original")
    assert_close(out_ours, ref, 1e-4, "xLSTMLarge vs original")
    after = model.state_dict()
    assert after.keys() == state_before.keys()
    assert all(torch.equal(after[k], t) for k, t in state_before.items())


def test_greedy_generate_same_tokens(impl):
    model = hf_model(impl)
    ids = torch.randint(0, V, (2, S_ODD))
    new = 4
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=new, do_sample=False)
        ours = xLSTMLarge.from_transformers(model, chunk_size=CHUNK).generate(ids, new, temperature=0)
        use_xlstm_triton(model)
        patched = model.generate(ids, max_new_tokens=new, do_sample=False)
    assert ref.shape == (2, S_ODD + new) and torch.equal(ref[:, :S_ODD], ids)
    assert torch.equal(patched, ref), (patched[:, S_ODD:], ref[:, S_ODD:])
    assert torch.equal(ours, ref), (ours[:, S_ODD:], ref[:, S_ODD:])


def test_patched_cache_prefill_and_decode_equal_full_forward(impl):
    """transformers' own cache object carries our states: prefill (21 tokens, not a multiple of
    the chunk), a further chunk, then one token at a time == one full forward of the original."""
    model = hf_model(impl)
    ids = torch.randint(0, V, (2, S_ODD + 6))
    with torch.no_grad():
        ref = model(ids).logits
        use_xlstm_triton(model)
        cache = hf_xlstm.xLSTMCache(model.config, 2, dtype=torch.float32)
        parts = []
        for a, b in [(0, 21), (21, S_ODD)] + [(t, t + 1) for t in range(S_ODD, ids.shape[1])]:
            out = model(ids[:, a:b], cache_params=cache, use_cache=True)
            assert out.cache_params is cache
            parts.append(out.logits)
        ours = xLSTMLarge.from_transformers(model, chunk_size=CHUNK)
        _, state = ours(ids, return_state=True)
    assert_close(torch.cat(parts, dim=1), ref, 1e-4, "cached prefill + decode vs full forward")
    assert int(cache.seqlen_offset) == ids.shape[1]
    for j, s in enumerate(state):                    # the cache holds the model's state
        c, n, m = cache.rnn_state[j]
        assert_close(c * m[..., None].exp(), s.c * s.m[..., None].exp(), 1e-4, f"cache c, block {j}")
        assert_close(n * m.exp(), s.n * s.m.exp(), 1e-4, f"cache n, block {j}")


def test_backend_decodes_into_the_given_state():
    """S == 1 without autograd: the given state (the layer's cache, here bfloat16) is updated
    in place and returned; with autograd a new float32 state is returned and the given one kept."""
    B, NH_, DQK, DV = 2, 2, 16, 32
    q, k = torch.randn(2, B, NH_, 1, DQK)
    v = torch.randn(B, NH_, 1, DV)
    i, f = torch.randn(2, B, NH_, 1)
    given = (torch.randn(B, NH_, DQK, DV), torch.randn(B, NH_, DQK), torch.randn(B, NH_, 1))
    backend = TritonMLSTMBackend()
    h_ref, ref = backend(q, k, v, i, f, *[t.clone() for t in given])        # float32 in place
    cache = [t.bfloat16() for t in given]
    before = [t.clone() for t in cache]
    with torch.no_grad():
        h, state = backend(q, k, v, i, f, *cache)
    assert all(a is b for a, b in zip(state, cache)) and all(t.dtype == torch.bfloat16 for t in state)
    for a, b, name in zip(state, ref, "cnm"):
        assert_close(a.float(), b, 1e-2, f"bf16 cache {name}")
    assert_close(h, h_ref, 2e-2, "h from a bf16 cache")
    q.requires_grad_(True)
    cache = [t.clone() for t in before]
    h, state = backend(q, k, v, i, f, *cache)
    assert all(a is not b for a, b in zip(state, cache)) and state[0].dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(cache, before))
    h.sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_patched_gradients_match_original():
    model = hf_model()
    ids = torch.randint(0, V, (1, 24))
    w = torch.randn(1, 24, V)
    model.train()

    def grads():
        model.zero_grad()
        (model(ids, use_cache=False).logits * w).sum().backward()    # training: no cache
        return {k: p.grad.clone() for k, p in model.named_parameters()}

    ref = grads()
    use_xlstm_triton(model)
    got = grads()
    assert ref.keys() == got.keys()
    for k in ref:
        assert ref[k].abs().sum() > 0, k
        assert_close(got[k], ref[k], 1e-3, f"grad {k}")      # float32 sums of many terms


def test_fused_loss_matches_transformers_loss():
    """With labels the patched model computes transformers' loss (shifted, -100 skipped, mean or
    sum / num_items_in_batch) without logits; its gradients match the original's."""
    model = hf_model().train()
    ids = torch.randint(0, V, (2, 21))
    labels = ids.clone()
    labels[1, 4:10] = -100

    def run(**kw):
        model.zero_grad()
        out = model(ids, labels=labels, use_cache=False, **kw)
        (out.loss * 2.0).backward()
        return out, {k: p.grad.clone() for k, p in model.named_parameters()}

    ref, ref_grads = run()
    ref_sum, _ = run(num_items_in_batch=17)
    use_xlstm_triton(model)
    assert isinstance(model.__dict__["forward"], FusedLossForward)
    out, grads = run()
    out_sum, _ = run(num_items_in_batch=17)
    assert out.logits is None and ref.logits is not None
    assert_close(out.loss, ref.loss, 1e-5, "loss")
    assert_close(out_sum.loss, ref_sum.loss, 1e-5, "loss over num_items_in_batch")
    for k in ref_grads:
        assert_close(grads[k], ref_grads[k], 1e-3, f"grad {k}")
    with torch.no_grad():
        assert model(ids).logits.shape == (2, 21, V)         # no labels: the model's own forward
    remove_xlstm_triton(model)
    assert "forward" not in model.__dict__


def test_train_mode_any_length():
    """Backend mode "train" (return_last_states from the config): the native chunkwise kernel
    needs S % chunk == 0, ours takes any length and gives the same logits."""
    model = hf_model(mode="train")
    ids = torch.randint(0, V, (1, S_ODD))
    with torch.no_grad():
        with pytest.raises((AssertionError, ValueError), match="divisible by chunk size"):
            model(ids)                                  # transformers' own backend refuses
        ref = hf_model()(ids).logits                    # same seed: same weights, inference mode
        use_xlstm_triton(model)
        backend = model.backbone.blocks[0].mlstm_layer.mlstm_backend
        assert backend.mode == "train" and backend.return_last_states
        out = model(ids).logits
        q, k, v = torch.randn(1, NH, 20, 8), torch.randn(1, NH, 20, 8), torch.randn(1, NH, 20, 16)
        h = backend(q, k, v, torch.randn(1, NH, 20), torch.randn(1, NH, 20), return_last_states=False)
    assert isinstance(h, torch.Tensor) and h.shape == (1, NH, 20, 16)
    assert_close(out, ref, 1e-4, "train mode, odd length")


# ---------------------------------------------------------------------- weights and checkpoints

@pytest.mark.parametrize("mode", ["single", "fused"])
def test_state_dict_round_trip_to_transformers(mode):
    ours = tiny_model(weight_mode=mode)
    hf_sd = to_transformers_state_dict(ours.state_dict())
    model = build_hf(hf_xlstm, hf_config(mode)).eval()
    model.load_state_dict(hf_sd, strict=True)
    assert set(model.state_dict()) == set(hf_sd)
    back = from_transformers_state_dict(model.state_dict())
    assert back.keys() == ours.state_dict().keys()
    assert all(torch.equal(back[k], t) for k, t in ours.state_dict().items())
    ids = torch.randint(0, V, (1, S_ODD))
    with torch.no_grad():
        assert_close(model(ids).logits, ours(ids), 1e-4, "transformers with our weights")


def test_from_transformers_shares_or_copies_weights():
    model = hf_model()
    shared = xLSTMLarge.from_transformers(model)
    copied = xLSTMLarge.from_transformers(model, copy=True)
    fused = xLSTMLarge.from_transformers(model, weight_mode="fused", chunk_size=CHUNK)
    assert shared.lm_head.weight.data_ptr() == model.lm_head.weight.data_ptr()
    assert shared.embedding.weight.data_ptr() == model.backbone.embeddings.weight.data_ptr()
    assert copied.lm_head.weight.data_ptr() != model.lm_head.weight.data_ptr()
    assert not shared.training and all(p.requires_grad for p in shared.parameters())
    ids = torch.randint(0, V, (1, 20))
    with torch.no_grad():
        assert_close(fused(ids), copied(ids), 1e-5, "fused from a single-mode transformers model")
        model.lm_head.weight.mul_(2)                     # visible in the shared model only
        assert torch.equal(shared.lm_head.weight, model.lm_head.weight)
        assert not torch.equal(copied.lm_head.weight, model.lm_head.weight)


def test_save_pretrained_sharded_checkpoint_loads(tmp_path):
    """transformers writes the 7B's format (config.json, index json, shards); ours loads it."""
    model = hf_model()
    model.save_pretrained(tmp_path, max_shard_size="300KB")
    shards = sorted(tmp_path.glob("*.safetensors"))
    assert (tmp_path / "model.safetensors.index.json").exists() and len(shards) >= 2
    ours = xLSTMLarge.from_pretrained(tmp_path, chunk_size=CHUNK)
    ids = torch.randint(0, V, (2, S_ODD))
    with torch.no_grad():
        assert_close(ours(ids), model(ids).logits, 1e-4, "loaded from transformers' save_pretrained")


# ---------------------------------------------------------------------- API and errors

def test_backbone_only_idempotent_and_remove():
    model = hf_model()
    backbone = model.backbone                            # an xLSTMModel
    ids = torch.randint(0, V, (1, 20))
    with torch.no_grad():
        ref = backbone(ids).last_hidden_state
        original = type(backbone.blocks[0].mlstm_layer.mlstm_backend)
        use_xlstm_triton(backbone)
        use_xlstm_triton(model, chunk_size=16)           # again: only the chunk size changes
        assert uses_triton(backbone)
        assert {m.mlstm_backend.chunk_size for m in model.modules() if hasattr(m, "mlstm_backend")} == {16}
        for block in backbone.blocks:                    # our block forward, on the block's own parameters
            fwd = block.__dict__["forward"]
            assert isinstance(fwd, FusedBlockForward) and fwd.block.mlstm_layer.config.chunk_size == 16
            assert [id(p) for p in fwd.block.parameters()] == [id(p) for p in block.parameters()]
        assert_close(backbone(ids).last_hidden_state, ref, 1e-4, "patched xLSTMModel")
        use_xlstm_triton(model, fuse_blocks=False)       # the backends only
        assert uses_triton(backbone) and not any("forward" in b.__dict__ for b in backbone.blocks)
        assert_close(backbone(ids).last_hidden_state, ref, 1e-4, "patched xLSTMModel, backends only")
        use_xlstm_triton(model)
        remove_xlstm_triton(model)
        assert type(backbone.blocks[0].mlstm_layer.mlstm_backend) is original
        assert not any("forward" in b.__dict__ for b in backbone.blocks)
        assert torch.equal(backbone(ids).last_hidden_state, ref)


def test_errors():
    model = hf_model()
    with pytest.raises(ValueError, match="chunk_size"):
        use_xlstm_triton(model, chunk_size=24)
    with pytest.raises(TypeError, match="no xLSTM layer"):
        use_xlstm_triton(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="expected a transformers xLSTM model"):
        use_xlstm_triton("xLSTM-7b")
    with pytest.raises(TypeError, match="LM head"):
        xLSTMLarge.from_transformers(model.backbone)
    with pytest.raises(TypeError, match="xLSTMForCausalLM"):
        xLSTMLarge.from_transformers(torch.nn.Linear(2, 2))
    backend = TritonMLSTMBackend()
    q = torch.randn(1, NH, 4, 8)
    with pytest.raises(TypeError, match="both q and query"):
        backend(q, q, q, q[..., 0], q[..., 0], query=q)
    with pytest.raises(TypeError, match="missing f"):
        backend(q, q, q, q[..., 0])
    with pytest.raises(ValueError, match="mode"):
        backend(q, q, q, q[..., 0], q[..., 0], mode="decode")
    with pytest.raises(ValueError, match=r"i: expected shape \(1, 2, 4\)"):
        backend(q, q, q, q[..., :2, 0], q[..., 0])


# ---------------------------------------------------------------------- benchmark suite

def test_bench_suite_large_smoke(monkeypatch):
    """bench/suites/large.py follows the suite conventions and runs at tiny shapes on CPU."""
    from bench import harness
    from bench.suites import large as suite

    monkeypatch.setenv("TRITON_INTERPRET", "0")          # timing only: the ops' PyTorch path
    assert suite.__doc__ and suite.TABLE_KEYS
    full = suite.cases(quick=False)
    assert {c["ctx"] for c in full if c["phase"] == "prefill"} == {2048, 8192, 32768}
    assert {c["B"] for c in full if c["phase"] == "decode"} == {1, 16}
    assert all((c["E"], c["NH"], c["vocab"]) == (4096, 8, 50304) for c in full)
    floor_b1 = next(c["floor_ms"] for c in full if c["phase"] == "decode" and c["B"] == 1)
    assert 4.0 < floor_b1 < 5.0                          # 13.7 GB of bf16 weights at 3 TB/s
    providers = {p.name: p for p in suite.providers()}
    assert {"transformers", "transformers+mlstm_kernels", "transformers+xlstm_triton"} <= set(providers)
    quick = suite.cases(quick=True)
    for name, provider in providers.items():
        if "mlstm_kernels" in name and torch.cuda.is_available():
            continue    # its xl_chunk kernel may abort the process without the provider's env
        cases = [c for c in quick if provider.applies(c)]
        rows = list(harness.measure_cases(provider, cases, "float32"))
        assert len(rows) == len(cases) and all(r["mode"] == "fw" for r in rows), name
        for r in rows:
            if "graph" in name or "mlstm_kernels" in name:
                expected = {"ok"} if torch.cuda.is_available() else {"unavailable"}
            else:
                expected = {"ok"}
            assert r["status"] in expected, (name, r["status"], r["error"])
            if r["status"] == "ok":
                assert r["ms"] > 0 and r["columns"]["ms_per_layer"] > 0
                assert ("tokens_per_s" in r["columns"]) == (r["case"]["phase"] == "prefill")
    patched = suite._hf_model(quick[0], torch.float32, "xlstm_triton")
    assert uses_triton(patched)


# ---------------------------------------------------------------------- GPU

MLSTM_KERNELS = dict(chunkwise_kernel="chunkwise--triton_limit_chunk", sequence_kernel="native_sequence__triton",
                     step_kernel="triton", chunk_size=64)


def _bf16_paths(weights: dict, ids: torch.Tensor) -> dict:
    """Logits of each bf16 path over the same (bf16) weights: transformers' native backend,
    transformers + mlstm_kernels (when it can run), patched, ours, and the patched model's
    cached prefill + one-token decoding; plus the float64 reference on these weights."""
    S0 = ids.shape[1] - 16
    out = {}
    with torch.no_grad():
        model = hf_model(device="cuda", **weights).to(torch.bfloat16)
        ours = xLSTMLarge.from_transformers(model)
        out["reference"] = reference_logits(ours.state_dict(), ours.config, ids)
        out["native"] = model(ids).logits
        out["ours"] = ours(ids)
        use_xlstm_triton(model)
        out["patched"] = model(ids).logits
        cache = hf_xlstm.xLSTMCache(model.config, ids.shape[0], dtype=torch.float32, device="cuda")
        parts = [model(ids[:, :S0], cache_params=cache, use_cache=True).logits]
        parts += [model(ids[:, t:t + 1], cache_params=cache, use_cache=True).logits for t in range(S0, ids.shape[1])]
        out["patched prefill + decode"] = torch.cat(parts, dim=1)
        cache = hf_xlstm.xLSTMCache(model.config, ids.shape[0], dtype=torch.bfloat16, device="cuda")
        parts = [model(ids[:, :S0], cache_params=cache, use_cache=True).logits]   # generate's cache dtype
        parts += [model(ids[:, t:t + 1], cache_params=cache, use_cache=True).logits for t in range(S0, ids.shape[1])]
        out["patched prefill + decode, bf16 cache"] = torch.cat(parts, dim=1)
        if hf_xlstm.external_xlstm:
            mk = hf_model(device="cuda", **weights, **MLSTM_KERNELS).to(torch.bfloat16)
            out["mlstm_kernels"] = mk(ids).logits
    return out


@pytest.mark.gpu
def test_gpu_bf16_logits_within_2e2():
    """A model with small gate and projection weights (its bf16 rounding is amplified little):
    every path within 2e-2 of float64 on the same weights."""
    ids = torch.randint(0, V, (2, 77), device="cuda")
    out = _bf16_paths(dict(num_hidden_layers=2, **BF16_TAME), ids)
    ref = out.pop("reference")
    for name in ("ours", "patched", "patched prefill + decode", "patched prefill + decode, bf16 cache"):
        assert_close(out[name], ref, 2e-2, f"bf16 {name} vs float64")
    assert_close(out["patched"], out["native"], 2e-2, "bf16 patched vs transformers native")


@pytest.mark.gpu
def test_gpu_bf16_no_less_accurate_than_transformers():
    """Large gate weights, 3 blocks: bf16 rounding moves every path's logits by several %;
    ours must be no further from float64 than transformers' own bf16 paths. Eight prompts:
    over two, the ratio of our error to transformers' ranged from 0.47 to 1.58 with the seed
    (H100, seeds 0-3), so one draw decided the test; over eight it was 0.68-0.79."""
    ids = torch.randint(0, V, (8, 77), device="cuda")
    out = _bf16_paths(dict(num_hidden_layers=3), ids)
    ref = out.pop("reference")
    err = {name: rel_err(t, ref) for name, t in out.items()}
    peers = [err["native"]] + ([err["mlstm_kernels"]] if "mlstm_kernels" in err else [])
    for name in ("ours", "patched", "patched prefill + decode"):
        assert err[name] <= 1.1 * min(peers), err


@pytest.mark.gpu
def test_gpu_float32_greedy_generate(monkeypatch):
    """Greedy tokens on the GPU in float32 (no TF32): original, patched and ours agree."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    ids = torch.randint(0, V, (2, 77), device="cuda")
    model = hf_model(device="cuda", num_hidden_layers=3)
    with torch.no_grad():
        g_ref = model.generate(ids, max_new_tokens=8, do_sample=False)
        g_ours = xLSTMLarge.from_transformers(model).generate(ids, 8, temperature=0)
        use_xlstm_triton(model)
        g_patched = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(g_patched, g_ref) and torch.equal(g_ours, g_ref)


def test_packed_documents_through_the_patched_model():
    """A packing collator's batch (1, S) with position_ids restarting at each document (or
    cu_seq_lens_q): the patched model's loss is the mean over the documents' own next-token
    pairs and its logits are each document's alone; the gradients equal those of the documents
    run one by one (summed by their counted tokens)."""
    model = hf_model().train()
    use_xlstm_triton(model)
    lengths = [6, 1, 21, 9]
    ids = torch.randint(0, V, (1, sum(lengths)))
    cu = torch.tensor([0] + lengths).cumsum(0)
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    bounds = list(zip(cu[:-1].tolist(), cu[1:].tolist()))

    def grads():
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    loss = model(ids, labels=ids, position_ids=position_ids, use_cache=False).loss
    loss.backward()
    packed_grads = grads()
    model.zero_grad()
    total = sum(model(ids[:, a:b], labels=ids[:, a:b], use_cache=False).loss * (b - a - 1)
                for a, b in bounds if b - a > 1) / sum(b - a - 1 for a, b in bounds)
    total.backward()
    assert_close(loss, total, 1e-5, "packed loss")
    for k, g in grads().items():
        assert_close(packed_grads[k], g, 1e-3, f"grad {k}")
    with torch.no_grad():
        logits = model(ids, cu_seq_lens_q=cu.to(torch.int32), max_length_q=21, use_cache=False).logits
        alone = torch.cat([model(ids[:, a:b], use_cache=False).logits for a, b in bounds], dim=1)
    assert_close(logits, alone, 1e-4, "packed logits")
    with pytest.raises(ValueError, match="position_ids: packed documents start at position 0"):
        model(ids, labels=ids, position_ids=position_ids + 1, use_cache=False)
    use_xlstm_triton(model, fuse_blocks=False)
    with pytest.raises(ValueError, match="fuse_blocks=True"):
        model(ids, labels=ids, position_ids=position_ids, use_cache=False)
    remove_xlstm_triton(model)
