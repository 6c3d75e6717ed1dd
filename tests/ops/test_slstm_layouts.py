"""Converters between our sLSTM layout and the `xlstm` package's (docs/slstm.md)."""

import pytest
import torch

import xlstm_triton.utils as xt_utils
from tests.helpers import assert_close
from xlstm_triton.ops.slstm import (bias_from_xlstm, bias_to_xlstm, recurrent_from_xlstm,
                                recurrent_to_xlstm, slstm)

NH, DH = 3, 4


def coded_R():
    """R[g, head, out, in] = 1000 g + 100 head + 10 out + in: every element names its position."""
    g, h, o, i = torch.meshgrid(*(torch.arange(n) for n in (4, NH, DH, DH)), indexing="ij")
    return (1000 * g + 100 * h + 10 * o + i).double()


def coded_b():
    g, h, d = torch.meshgrid(*(torch.arange(n) for n in (4, NH, DH)), indexing="ij")
    return (1000 * g + 100 * h + 10 * d).double()


def test_recurrent_cuda_layout_by_hand():
    K = recurrent_to_xlstm(coded_R(), "cuda")
    assert K.shape == (NH, DH, 4 * DH)                    # [head, in, gate * DH + out]
    assert K[2, 1, 3 * DH + 0] == 1000 * 3 + 100 * 2 + 10 * 0 + 1    # o gate, head 2, out 0, in 1
    assert K[0, 3, 1 * DH + 2] == 1000 * 1 + 0 + 10 * 2 + 3          # f gate, head 0, out 2, in 3
    for head, i, col in [(1, 0, 5), (2, 3, 14), (0, 2, 9)]:
        g, o = divmod(col, DH)
        assert K[head, i, col] == 1000 * g + 100 * head + 10 * o + i


def test_recurrent_vanilla_layout_by_hand():
    K = recurrent_to_xlstm(coded_R(), "vanilla")
    assert K.shape == (NH, 4 * DH, DH)                    # [head, gate * DH + out, in]
    assert K[2, 3 * DH + 0, 1] == 1000 * 3 + 100 * 2 + 10 * 0 + 1
    assert K[1, 2 * DH + 3, 0] == 1000 * 2 + 100 * 1 + 10 * 3 + 0    # z gate, head 1, out 3, in 0
    # the vanilla kernel is the cuda kernel transposed per head
    assert torch.equal(K, recurrent_to_xlstm(coded_R(), "cuda").transpose(1, 2))


def test_bias_layouts_by_hand():
    flat_cuda = bias_to_xlstm(coded_b(), "cuda")          # head-major (NH, 4, DH)
    flat_vanilla = bias_to_xlstm(coded_b(), "vanilla")    # gate-major (4, NH, DH)
    assert flat_cuda.shape == flat_vanilla.shape == (4 * NH * DH,)
    # element (gate 1, head 2, d 3)
    assert flat_cuda[(2 * 4 + 1) * DH + 3] == 1000 + 200 + 30
    assert flat_vanilla[(1 * NH + 2) * DH + 3] == 1000 + 200 + 30
    assert not torch.equal(flat_cuda, flat_vanilla)       # a wrong layout guess scrambles gates


@pytest.mark.parametrize("layout", ["cuda", "vanilla"])
def test_round_trips(layout):
    R, b = torch.randn(4, NH, DH, DH), torch.randn(4, NH, DH)
    assert torch.equal(recurrent_from_xlstm(recurrent_to_xlstm(R, layout), layout), R)
    assert torch.equal(bias_from_xlstm(bias_to_xlstm(b, layout), NH, layout), b)
    K = recurrent_to_xlstm(R, layout)
    assert torch.equal(recurrent_to_xlstm(recurrent_from_xlstm(K, layout), layout), K)
    flat = bias_to_xlstm(b, layout)
    assert torch.equal(bias_to_xlstm(bias_from_xlstm(flat, NH, layout), layout), flat)
    # shaped biases as the xlstm module's proxies give them are accepted too
    shaped = flat.reshape(NH, 4, DH) if layout == "cuda" else flat.reshape(4, NH, DH)
    assert torch.equal(bias_from_xlstm(shaped, NH, layout), b)


def test_converters_do_not_modify_and_refuse_wrong_shapes():
    R = torch.randn(4, NH, DH, DH)
    keep = R.clone()
    K = recurrent_to_xlstm(R, "cuda")
    K.zero_()
    assert torch.equal(R, keep)
    with pytest.raises(ValueError, match="vanilla"):
        recurrent_from_xlstm(recurrent_to_xlstm(R, "cuda"), "vanilla")
    with pytest.raises(ValueError, match="cuda"):
        recurrent_from_xlstm(recurrent_to_xlstm(R, "vanilla"), "cuda")
    with pytest.raises(ValueError, match="layout"):
        recurrent_to_xlstm(R, "flashrnn")
    with pytest.raises(ValueError, match="num_heads"):
        bias_from_xlstm(torch.randn(4 * NH * DH + 1), NH, "cuda")


@pytest.mark.parametrize("use_kernels", [False, True], ids=["torch-path", "kernels"])
def test_matches_xlstm_vanilla_cell(use_kernels, monkeypatch):
    """The `xlstm` package's own vanilla sLSTM cell, random weights, zero initial state: our op on
    the converted parameters gives the same outputs. Its cuda-layout parameters, set from the same
    external weights through the package's own conversion, convert to the same R and b."""
    cell_mod = pytest.importorskip("xlstm.blocks.slstm.cell")
    if not use_kernels:
        monkeypatch.setattr(xt_utils, "triton_interpret", lambda: False)
    elif not xt_utils.use_triton(torch.empty(0)):
        pytest.skip("CPU without TRITON_INTERPRET=1: the kernels need the interpreter")
    nh, dh, B, S = 2, 16, 3, 6
    cfg = dict(hidden_size=nh * dh, num_heads=nh)
    vanilla = cell_mod.sLSTMCell_vanilla(cell_mod.sLSTMCellConfig(**cfg, backend="vanilla"))
    cuda = cell_mod.sLSTMCell_cuda(cell_mod.sLSTMCellConfig(**cfg, backend="cuda"), skip_backend_init=True)
    ext_kernel = torch.randn(nh, dh, 4, dh) * 0.3         # the package's external layout
    ext_bias = torch.randn(nh, 4, dh)
    with torch.no_grad():
        vanilla._recurrent_kernel_.copy_(vanilla._recurrent_kernel_ext2int(ext_kernel))
        vanilla._bias_.copy_(vanilla._bias_ext2int(ext_bias))
        cuda._recurrent_kernel_.copy_(cuda._recurrent_kernel_ext2int(ext_kernel))
        cuda._bias_.copy_(cuda._bias_ext2int(ext_bias))
    R = recurrent_from_xlstm(vanilla._recurrent_kernel_.detach(), "vanilla")
    b = bias_from_xlstm(vanilla._bias_.detach(), nh, "vanilla")
    assert torch.equal(recurrent_from_xlstm(cuda._recurrent_kernel_.detach(), "cuda"), R)
    assert torch.equal(bias_from_xlstm(cuda._bias_.detach(), nh, "cuda"), b)
    assert torch.equal(recurrent_to_xlstm(R, "cuda"), cuda._recurrent_kernel_.detach())
    assert torch.equal(bias_to_xlstm(b, "vanilla"), vanilla._bias_.detach())

    x = torch.randn(B, S, 4 * nh * dh)                     # input layout "BSGNH"
    with torch.no_grad():
        out, state = vanilla(x)                            # out (B, NH, S, DH), state (4, B, H)
        h, last = slstm(x.view(B, S, 4, nh, dh), R, b, return_last_state=True)
    assert_close(h, out.permute(0, 2, 1, 3), 2e-5, "h")
    assert_close(last, state.view(4, B, nh, dh), 2e-5, "state")
