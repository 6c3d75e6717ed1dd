"""Bad configs, inputs and states fail early with messages that name the problem."""

from __future__ import annotations

import pytest
import torch

import xlstm_triton.nn as xnn
from tests.helpers import E, V, lm_config, small_lm


@pytest.mark.parametrize("change, match", [
    (dict(vocab_size=-1), "vocab_size must be set"),
    (dict(slstm_at=[4]), "slstm_at: position 4"),
    (dict(slstm_at=[-5]), "slstm_at: position -5"),
    (dict(embedding_dim=33), r"num_heads=2 must divide embedding_dim=33"),
])
def test_bad_lm_configs(change, match):
    with pytest.raises(ValueError, match=match):
        xnn.xLSTMLMModel(lm_config(xnn, **change))


def test_bad_layer_configs():
    with pytest.raises(ValueError, match="embedding_dim must be set"):
        xnn.mLSTMLayer(xnn.mLSTMLayerConfig())
    with pytest.raises(ValueError, match=r"num_heads=3 must divide the inner dim 64"):
        xnn.mLSTMLayer(xnn.mLSTMLayerConfig(embedding_dim=E, num_heads=3))
    with pytest.raises(ValueError, match="qkv_proj_blocksize=5"):
        xnn.mLSTMLayer(xnn.mLSTMLayerConfig(embedding_dim=E, qkv_proj_blocksize=5))
    with pytest.raises(ValueError, match="embedding_dim must be set"):
        xnn.sLSTMLayer(xnn.sLSTMLayerConfig())
    with pytest.raises(ValueError, match="function='lstm' is not supported"):
        xnn.sLSTMLayer(xnn.sLSTMLayerConfig(embedding_dim=E, function="lstm"))
    with pytest.raises(ValueError, match="gradient_recurrent_clipval"):
        xnn.sLSTMLayer(xnn.sLSTMLayerConfig(embedding_dim=E, gradient_recurrent_clipval=1.0))
    with pytest.raises(ValueError, match="bias_init"):
        xnn.sLSTMLayer(xnn.sLSTMLayerConfig(embedding_dim=E, bias_init="ones"))
    with pytest.raises(ValueError, match="act_fn"):
        xnn.FeedForwardConfig(act_fn="tanh")
    cfg = xnn.xLSTMBlockStackConfig(mlstm_block=xnn.mLSTMBlockConfig(), slstm_block=None,
                                    num_blocks=2, embedding_dim=E, slstm_at=[1])
    with pytest.raises(ValueError, match="block 1 is an sLSTM block.*slstm_block is None"):
        xnn.xLSTMBlockStack(cfg)


def test_config_semantics_follow_xlstm():
    """Derived fields as in the xlstm package: inner dim, FFN dim, slstm_at='all'."""
    cfg = lm_config(xnn, embedding_dim=96)
    assert cfg.mlstm_block.mlstm._inner_embedding_dim == 192
    assert cfg.mlstm_block.mlstm.embedding_dim == 96 and cfg.block_map == [0, 1, 0, 1]
    block = xnn.sLSTMBlock(cfg.slstm_block)
    assert block.ffn.config._proj_up_dim == 128                    # 1.3 * 96 -> 128
    only_s = xnn.xLSTMBlockStackConfig(slstm_block=xnn.sLSTMBlockConfig(), num_blocks=3, embedding_dim=E)
    assert only_s.slstm_at == [0, 1, 2]


def test_bad_inputs():
    model = small_lm((1,), num_blocks=2)
    with pytest.raises(TypeError, match="integer tensor of token ids"):
        model(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"token ids of shape \(B, S\)"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one token"):
        model(torch.zeros(2, 0, dtype=torch.long))
    layer = model.xlstm_block_stack.blocks[0].xlstm
    with pytest.raises(ValueError, match=rf"expected x of shape \(B, S, {E}\)"):
        layer(torch.randn(2, 5, E + 1))
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(torch.zeros(1, 2, dtype=torch.long), -1)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 2, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 2, top_k=0)


def test_bad_states():
    model = small_lm((1,), num_blocks=2)
    idx = torch.randint(0, V, (2, 4))
    with torch.no_grad():
        _, state = model(idx, return_state=True)
    with pytest.raises(ValueError, match="tuple of 2 block states"):
        model(idx, state[:1])
    with pytest.raises(ValueError, match=r"mLSTMLayerState.c: expected shape \(3, "):
        model(idx[:1].expand(3, -1), state)                      # batch size changed
    with pytest.raises(TypeError, match="expected an sLSTMLayerState"):
        model(idx, (state[0], state[0][:3]))
    bad = state[1]._replace(slstm=state[1].slstm[:3])
    with pytest.raises(ValueError, match=r"sLSTMLayerState.slstm: expected shape \(4, 2, 2, 16\)"):
        model(idx, (state[0], bad))
    with pytest.raises(ValueError, match="conv state"):
        xnn.CausalConv1d(8, 4)(torch.randn(2, 3, 8), torch.randn(2, 4, 8))
