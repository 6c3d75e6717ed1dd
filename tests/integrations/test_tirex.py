"""TiRex (`tirex-ts`, the `tirex` test extra) on xlstm-triton's sLSTM: `use_xlstm_triton` on a TiRex
built from a config with random weights (the pretrained ones are not downloaded in tests).

Two references for the forecasts:
- TiRex's own cell equations in float32 (its torch backend's loop, `sLSTMCellTorch`, fed float32
  weights and states instead of bfloat16): the same computation as ours, so to 1e-4 (float32
  sums in another order over a few steps and blocks: ~1e-7 measured).
- TiRex's torch backend as shipped: it rounds the states to bfloat16 after every step, so to
  bfloat16's tolerance of the test helpers (3e-2; ~6e-4 measured at these sizes).
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.helpers import TOL, assert_close

tirex_models = pytest.importorskip("tirex.models.tirex", reason="the TiRex tests need the `tirex` extra (tirex-ts)")
from tirex.models.slstm.cell import sLSTMCellTorch  # noqa: E402

from xlstm_triton.integrations.tirex import (TritonSLSTMCellForward, remove_xlstm_triton, tirex_cells,  # noqa: E402
                                             use_xlstm_triton)

QUANTILES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def tiny_tirex(device, num_heads=4, embedding_dim=64, seed=0):
    """TiRex's architecture at a test size: patches of 8, 2 sLSTM blocks of 4 heads of 16, a
    context of 64 steps (8 tokens); weights drawn at a scale that opens and closes the gates."""
    cfg = dict(input_patch_size=8, output_patch_size=8, quantiles=QUANTILES, input_ff_dim=128,
               block_kwargs=dict(embedding_dim=embedding_dim, num_heads=num_heads, num_blocks=2,
                                 ffn_proj_factor=2.6667))
    torch.manual_seed(seed)
    model = tirex_models.TiRexZero(backend="torch", model_config=cfg, train_ctx_len=64)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
        for cell in tirex_cells(model):
            cell._bias_.normal_(0.0, 2.0)
    return model.to(device).eval()


def float32_equations(model):
    """`model` with its cells running TiRex's own recurrence loop in float32 (no bfloat16)."""
    model = copy.deepcopy(model)
    for cell in tirex_cells(model):
        def impl(x, state, cell=cell):
            bias = cell._bias_.float().view(cell.config.num_heads, 4, -1).permute(1, 0, 2).reshape(-1)
            return sLSTMCellTorch.slstm_forward(x.float().reshape(x.shape[0], x.shape[1], -1), state.float(),
                                                cell._recurrent_kernel_.float(), bias)
        cell._impl_torch = impl
    return model


def series(batch, length, device):
    return torch.randn(batch, length, device=device).cumsum(-1)


@pytest.mark.parametrize("batch, length, horizon", [(3, 50, 20), (1, 64, 8), (2, 90, 33)])
def test_forecasts_equal_tirex(batch, length, horizon, device):
    """Quantile forecasts (short contexts padded with NaN, long ones cut, horizons over several
    patches) equal TiRex's float32 equations and, to bfloat16 rounding, its torch backend."""
    model = tiny_tirex(device)
    context = series(batch, length, device)
    theirs, _ = model.forecast(context, prediction_length=horizon)
    reference, _ = float32_equations(model).forecast(context, prediction_length=horizon)
    ours, mean = use_xlstm_triton(copy.deepcopy(model)).forecast(context, prediction_length=horizon)
    assert ours.shape == (batch, horizon, len(QUANTILES)) and torch.isfinite(ours).all()
    assert_close(ours, reference, 1e-4, "forecast vs float32 equations")
    assert_close(ours, theirs, TOL[torch.bfloat16][0], "forecast vs torch backend")
    assert torch.equal(mean, ours[:, :, QUANTILES.index(0.5)])


def test_cell_carries_a_given_state(device):
    """The replaced cell with a state in (h, c, n, m nonzero): outputs and last state equal
    TiRex's float32 recurrence."""
    model = tiny_tirex(device)
    cell = tirex_cells(model)[0]
    B, S, E = 3, 7, 64
    x = torch.randn(B, S, 4 * E, device=device) * 2
    state = torch.stack([torch.randn(B, E), torch.randn(B, E), torch.rand(B, E) + 0.5, torch.randn(B, E)]).to(device)
    y, last = TritonSLSTMCellForward(cell)(x, state)
    ref_cell = tirex_cells(float32_equations(model))[0]
    y_ref, last_ref = ref_cell(x, state)
    fwd, _ = TOL[torch.float32]
    assert y.shape == (B, 4, S, 16) and last.shape == (4, B, E)
    assert_close(y, y_ref, fwd, "y")
    assert_close(last[:3], last_ref[:3], fwd, "h, c, n")      # m: another stabilizer is as right


def test_remove_restores_the_cells(device):
    model = tiny_tirex(device)
    context = series(2, 40, device)
    theirs, _ = model.forecast(context, prediction_length=8)
    use_xlstm_triton(model)
    assert all(isinstance(c.__dict__.get("forward"), TritonSLSTMCellForward) for c in tirex_cells(model))
    use_xlstm_triton(model)                    # again: still one wrapper per cell
    remove_xlstm_triton(model)
    assert not any("forward" in c.__dict__ for c in tirex_cells(model))
    again, _ = model.forecast(context, prediction_length=8)
    assert torch.equal(again, theirs)


def test_bad_inputs_are_named(device):
    with pytest.raises(ValueError, match="has no TiRex sLSTM cells"):
        use_xlstm_triton(torch.nn.Linear(2, 2))
    cell = tirex_cells(tiny_tirex(device))[0]
    forward = TritonSLSTMCellForward(cell)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, S, 4 \* E\) = \(B, S, 256\)"):
        forward(torch.zeros(2, 5, 64, device=device))
    with pytest.raises(ValueError, match=r"state: expected shape \(4, B, E\) = \(4, 2, 64\)"):
        forward(torch.zeros(2, 5, 256, device=device), torch.zeros(4, 3, 64, device=device))
