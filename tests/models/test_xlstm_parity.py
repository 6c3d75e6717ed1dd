"""Parity of xlstm_triton.nn with the `xlstm` package (its paper-architecture modules, run on
CPU with the `vanilla` sLSTM backend and its PyTorch mLSTM): same config in both, their state
dict loaded into ours, same outputs in float32; same initialization from the same seed.

Their cuda-backend checkpoints (the layout our modules store) are made from vanilla ones with
the package's own sLSTM cell layout conversions (`_recurrent_kernel_int2ext` /
`_recurrent_kernel_ext2int`, `_bias_int2ext` / `_bias_ext2int`); a cuda-backend model is built
on CPU with its CUDA extension build stubbed out (construction only, it never runs).

Where the two could differ by more than rounding (none of it shows up at these tolerances):
- mLSTM stabilizer: their parallel form uses m_t = max_s log D_ts, ours the recurrent
  m_t = max(F_t, that) (the state starts from m_0 = 0). The stabilizer only moves the eps term:
  h = C~q / (max(|n~q|, 1) + eps e^m). They differ only when every i_s < F_s (all input gates
  below the cumulative log forget gate), and then by at most eps = 1e-6 relative.
- sLSTM: their vanilla cell takes m = i when n == 0 for the WHOLE state (`torch.all`), ours
  elementwise (as their CUDA kernel does); the same for zero and for everywhere-nonzero
  states. Their min(exp(.), 1) gate clamps never bind (m is a maximum). No n >= 1 clamp there
  (that one is FlashRNN's).
"""

from __future__ import annotations

import copy

import pytest
import torch

import xlstm_triton.nn as xnn
from tests.helpers import assert_close
from tests.helpers import E, NH, V, lm_config

xlstm = pytest.importorskip("xlstm")
cellmod = pytest.importorskip("xlstm.blocks.slstm.cell")

TOL = 1e-4
B, S = 2, 12


@pytest.fixture
def no_cuda_build(monkeypatch):
    """Lets the xlstm package build cuda-backend sLSTM cells on CPU (no extension compiled)."""
    monkeypatch.setattr(cellmod, "sLSTMCellFuncGenerator", lambda *a, **k: None)


# --------------------------------------------------------------------------------- builders

def layer_config(mod, kind, backend="vanilla"):
    if kind == "mlstm":
        return mod.mLSTMLayerConfig(embedding_dim=E, num_heads=NH, context_length=S)
    return mod.sLSTMLayerConfig(embedding_dim=E, num_heads=NH, backend=backend)


def block_config(mod, kind, backend="vanilla"):
    if kind == "mlstm":
        return mod.mLSTMBlockConfig(mlstm=layer_config(mod, kind), _num_blocks=1, _block_idx=0)
    return mod.sLSTMBlockConfig(slstm=layer_config(mod, kind, backend), feedforward=mod.FeedForwardConfig(),
                                _num_blocks=1, _block_idx=0)


def build(mod, what, backend="vanilla"):
    """The same module from the xlstm package (mod=xlstm) or ours (mod=xnn)."""
    kind, _, level = what.partition("-")
    if level == "layer":
        cls = mod.mLSTMLayer if kind == "mlstm" else mod.sLSTMLayer
        return cls(layer_config(mod, kind, backend))
    if level == "block":
        cls = mod.mLSTMBlock if kind == "mlstm" else mod.sLSTMBlock
        return cls(block_config(mod, kind, backend))
    cfg = lm_config(mod, backend=backend, context_length=S)
    if what == "stack":
        return mod.xLSTMBlockStack(cfg)
    return mod.xLSTMLMModel(cfg)


def randomize_(model, gen):
    """Every parameter random (their init zeroes many weights): matrices ~ N(0, 1/fan_in),
    vectors (biases, norm offsets, skip weights) ~ N(0, 0.5^2)."""
    with torch.no_grad():
        for p in model.parameters():
            std = 0.5 if p.dim() == 1 else p.shape[-1] ** -0.5
            p.copy_(torch.randn(p.shape, generator=gen) * std)


def cuda_layout_state_dict(vanilla_model, cuda_model):
    """Their vanilla model's state dict, sLSTM cells re-laid out by the package's own
    internal/external conversions into a cuda-backend model (whose state dict is returned)."""
    sd = vanilla_model.state_dict()
    cuda_cells = dict(cuda_model.named_modules())
    for name, cell in vanilla_model.named_modules():
        if isinstance(cell, cellmod.sLSTMCell_vanilla):
            target = cuda_cells[name]
            assert isinstance(target, cellmod.sLSTMCell_cuda)
            pre = name + "." if name else ""
            sd[pre + "_recurrent_kernel_"] = target._recurrent_kernel_ext2int(
                cell._recurrent_kernel_int2ext(sd[pre + "_recurrent_kernel_"]))
            sd[pre + "_bias_"] = target._bias_ext2int(cell._bias_int2ext(sd[pre + "_bias_"]))
    cuda_model.load_state_dict(sd)          # strict: the shapes are the cuda model's own
    return cuda_model.state_dict()


def theirs_and_ours(what, layout, gen, device="cpu"):
    """Their (vanilla-backend, randomized) module and ours loaded from its checkpoint in
    `layout`."""
    theirs = build(xlstm, what, "vanilla")
    randomize_(theirs, gen)
    ours = build(xnn, what)
    if layout == "vanilla":
        ours.load_state_dict(xnn.convert_xlstm_state_dict(theirs.state_dict(), "vanilla"))
    else:
        ours.load_state_dict(cuda_layout_state_dict(theirs, build(xlstm, what, "cuda")))
    return theirs.to(device).eval(), ours.to(device).eval()


def compare(theirs, ours, what, gen, device):
    with torch.no_grad():
        if what == "lm":
            x = torch.randint(0, V, (B, S), generator=gen).to(device)
        else:
            x = torch.randn(B, S, E, generator=gen).to(device)
        assert_close(ours(x), theirs(x), TOL, what)


# --------------------------------------------------------------------------------- parity

WHAT = ["mlstm-layer", "slstm-layer", "mlstm-block", "slstm-block", "stack", "lm"]


@pytest.mark.usefixtures("no_cuda_build")
@pytest.mark.parametrize("layout", ["vanilla", "cuda"])
@pytest.mark.parametrize("what", WHAT)
def test_outputs_match_xlstm(what, layout, path, device):
    """Every block type, a 4-block stack with slstm_at=[1, 3] and the LM over it."""
    gen = torch.Generator().manual_seed(0)
    theirs, ours = theirs_and_ours(what, layout, gen, device)
    compare(theirs, ours, what, gen, device)


@pytest.mark.parametrize("i_shift", [-8.0, 0.0, 8.0], ids=["i-8", "i0", "i+8"])
def test_mlstm_gate_regimes_match_xlstm(i_shift, path, device):
    """Input gates far below the forget gates' log product (where the stabilizers differ) and
    far above (m ~ 8, so the eps e^m term is ~3e-3 of the normalizer): still equal."""
    gen = torch.Generator().manual_seed(1)
    theirs = build(xlstm, "mlstm-layer")
    randomize_(theirs, gen)
    with torch.no_grad():
        theirs.mlstm_cell.igate.bias.add_(i_shift)
        theirs.mlstm_cell.igate.weight.mul_(0.1)
    ours = build(xnn, "mlstm-layer")
    ours.load_state_dict(theirs.state_dict())
    compare(theirs.to(device).eval(), ours.to(device).eval(), "mlstm-layer", gen, device)


def test_slstm_layer_with_state_matches_xlstm(path, device):
    """Their sLSTM layer carries (conv, sLSTM) states through `forward(..., return_last_state)`
    in the same form as ours (conv: the last K-1 inputs): chunked runs agree."""
    gen = torch.Generator().manual_seed(2)
    theirs, ours = theirs_and_ours("slstm-layer", "vanilla", gen, device)
    x = torch.randn(B, 2 * S, E, generator=gen).to(device)
    with torch.no_grad():
        y1, st = theirs(x[:, :S], return_last_state=True)
        y2, _ = theirs(x[:, S:], conv_state=st["conv_state"], slstm_state=st["slstm_state"],
                       return_last_state=True)
        o1, ost = ours(x[:, :S], return_state=True)
        o2 = ours(x[:, S:], ost)
    assert_close(torch.cat([o1, o2], 1), torch.cat([y1, y2], 1), TOL, "y")
    assert_close(ost.slstm, st["slstm_state"].view(4, B, NH, E // NH), TOL, "state")
    assert_close(ost.conv, st["conv_state"], 0.0, "conv state")


def test_decoding_matches_xlstm_step(path, device):
    """Token-by-token decoding of the LM: ours (state in, state out) against their `step`."""
    gen = torch.Generator().manual_seed(3)
    theirs, ours = theirs_and_ours("lm", "vanilla", gen, device)
    idx = torch.randint(0, V, (B, 6), generator=gen).to(device)
    their_state, our_state = None, None
    with torch.no_grad():
        for t in range(idx.shape[1]):
            a, their_state = theirs.step(idx[:, t:t + 1], their_state)
            b, our_state = ours.step(idx[:, t:t + 1], our_state)
            assert_close(b, a, TOL, f"logits at step {t}")


# --------------------------------------------------------------------------------- init

@pytest.mark.usefixtures("no_cuda_build")
@pytest.mark.parametrize("what", ["mlstm-layer", "slstm-layer", "mlstm-block", "slstm-block", "lm"])
def test_same_seed_same_parameters(what):
    """Seeded construction (and reset_parameters) draws the same random numbers as the xlstm
    package: identical parameters, names and shapes (cuda backend: no conversion at all)."""
    def made(mod, backend, reset):
        torch.manual_seed(7)
        m = build(mod, what, backend)
        if reset:
            torch.manual_seed(8)
            m.reset_parameters()
        return m.state_dict()

    for reset in (False, True):
        ours = made(xnn, "vanilla", reset)
        for backend in ("vanilla", "cuda"):
            sd = made(xlstm, backend, reset)
            if backend == "vanilla":
                sd = xnn.convert_xlstm_state_dict(sd, "vanilla")
            assert list(sd) == list(ours)
            for k in sd:
                assert sd[k].shape == ours[k].shape, k
                assert torch.equal(sd[k], ours[k]), f"{k} (backend {backend}, reset {reset})"


def test_init_facts():
    """Spot checks of the package's init: forget-gate biases (mLSTM linspace(3, 6); sLSTM
    power law from +5 to -7 in the forget slot, which the `igate` module feeds), zero recurrent
    weights, LayerNorm offsets 0."""
    model = xnn.xLSTMLMModel(lm_config(xnn))
    m_cell = model.xlstm_block_stack.blocks[0].xlstm.mlstm_cell
    assert torch.equal(m_cell.fgate.bias.detach(), torch.linspace(3.0, 6.0, NH))
    assert not m_cell.fgate.weight.any() and not m_cell.igate.weight.any()
    s_cell = model.xlstm_block_stack.blocks[1].xlstm.slstm_cell
    _, b = s_cell.weights()
    assert b[1, :, 0].allclose(torch.full((NH,), 5.0)) and b[1, :, -1].allclose(torch.full((NH,), -7.0))
    assert not b[[0, 2, 3]].any() and not s_cell._recurrent_kernel_.any()
    # block dependence: a later block's curve (larger exponent) stays higher inside the head
    _, b3 = model.xlstm_block_stack.blocks[3].xlstm.slstm_cell.weights()
    assert (b3[1, :, 5] > b[1, :, 5]).all() and b3[1, :, 0].allclose(b[1, :, 0])
    assert not model.xlstm_block_stack.post_blocks_norm.weight.any()


# --------------------------------------------------------------------------------- converter

@pytest.mark.usefixtures("no_cuda_build")
def test_convert_state_dict():
    gen = torch.Generator().manual_seed(4)
    vanilla = build(xlstm, "lm", "vanilla")
    randomize_(vanilla, gen)
    sd = vanilla.state_dict()
    keep = copy.deepcopy(sd)
    cuda_sd = cuda_layout_state_dict(vanilla, build(xlstm, "lm", "cuda"))
    converted = xnn.convert_xlstm_state_dict(sd, slstm_layout="vanilla")
    assert all(torch.equal(sd[k], keep[k]) for k in sd)                  # input untouched
    assert list(converted) == list(cuda_sd)
    assert all(torch.equal(converted[k], cuda_sd[k]) for k in cuda_sd)
    again = xnn.convert_xlstm_state_dict(cuda_sd, slstm_layout="cuda")   # cuda: unchanged
    assert all(torch.equal(again[k], cuda_sd[k]) for k in cuda_sd)

    ours = build(xnn, "lm")
    with pytest.raises(RuntimeError, match="convert_xlstm_state_dict"):
        ours.load_state_dict(sd)                                         # vanilla, unconverted
    with pytest.raises(ValueError, match="not a cuda-layout"):
        xnn.convert_xlstm_state_dict(sd, slstm_layout="cuda")
    with pytest.raises(ValueError, match="not a vanilla-layout"):
        xnn.convert_xlstm_state_dict(cuda_sd, slstm_layout="vanilla")
    with pytest.raises(ValueError, match="slstm_layout"):
        xnn.convert_xlstm_state_dict(sd, slstm_layout="flashrnn")
    bias_only = {k: v for k, v in sd.items() if not k.endswith("_recurrent_kernel_")}
    with pytest.raises(ValueError, match="missing"):
        xnn.convert_xlstm_state_dict(bias_only, slstm_layout="vanilla")


def test_weight_decay_groups_match_xlstm():
    theirs, ours = build(xlstm, "lm"), build(xnn, "lm")
    assert ours.get_weight_decay_optim_group_param_names() == \
        theirs.get_weight_decay_optim_group_param_names()
