"""sLSTM op against the float64 reference (reference/slstm.py).

On CPU the Triton kernels run in the interpreter (small shapes; the split-head modes are forced
with `config_override`); tests marked gpu run the real kernels at the benchmark's head sizes.
"""

import dataclasses

import pytest
import torch

import xlstm_triton.utils as xt_utils
from reference.slstm import slstm_recurrent
from tests.helpers import TOL, assert_close, weighted_sum_loss
from xlstm_triton.ops.slstm import config_override, slstm, slstm_step
from xlstm_triton.ops.slstm import fwd as slstm_fwd_module

NAMES = ("wx", "R", "b", "initial_state")


@pytest.fixture(autouse=True)
def _check_barrier(monkeypatch):
    # persistent split-head launches report a barrier that gave up waiting (GPU only)
    monkeypatch.setattr(slstm_fwd_module, "CHECK_BARRIER", True)
STATE_SLOTS = ("h", "c", "n", "m")


def make_inputs(B, T, NH, DH, dtype=torch.float32, device="cpu", states=False, r_scale=0.5,
                fresh_fraction=0.0):
    """Random inputs in `dtype`. States: h, c ~ N(0, 1), n in [0.5, 1.5) (with `fresh_fraction` of
    the elements set to n = 0, a fresh state), m ~ N(0, 1)."""
    x = dict(wx=torch.randn(B, T, 4, NH, DH), R=torch.randn(4, NH, DH, DH) * r_scale / DH**0.5,
             b=torch.randn(4, NH, DH))
    if states:
        h, c, m = torch.randn(3, B, NH, DH)
        n = torch.rand(B, NH, DH) + 0.5
        n = torch.where(torch.rand(B, NH, DH) < fresh_fraction, torch.zeros_like(n), n)
        x["initial_state"] = torch.stack([h, c, n, m])
    return {k: v.to(device=device, dtype=dtype) for k, v in x.items()}


def run_with_grads(fn, inputs, seed=0):
    """fn(**inputs, return_last_state=True); a weighted-sum loss over h and the last state
    (weights fixed by `seed`); returns h, state and the gradients of every input."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    h, state = fn(**leaves, return_last_state=True)
    weighted_sum_loss([h, state], generator=torch.Generator().manual_seed(seed)).backward()
    return h, state, {k: v.grad for k, v in leaves.items()}


def reference_with_grads(inputs, seed=0):
    return run_with_grads(slstm_recurrent, {k: v.double() for k, v in inputs.items()}, seed)


def check_against_reference(inputs, dtype, seed=0):
    tol_fw, tol_bw = TOL[dtype]
    h, state, grads = run_with_grads(slstm, inputs, seed)
    h_ref, state_ref, grads_ref = reference_with_grads(inputs, seed)
    assert h.dtype == dtype and state.dtype == torch.float32
    assert_close(h, h_ref, tol_fw, "h")
    for i, slot in enumerate(STATE_SLOTS):
        assert_close(state[i], state_ref[i], tol_fw, f"last state {slot}")
    for k in inputs:
        assert grads[k].dtype == inputs[k].dtype, k
        if k == "initial_state":
            assert torch.all(grads[k][3] == 0), "m gets no gradient"
            for i, slot in enumerate(STATE_SLOTS[:3]):
                assert_close(grads[k][i], grads_ref[k][i], tol_bw, f"d initial {slot}")
        else:
            assert_close(grads[k], grads_ref[k], tol_bw, f"d{k}")


# ---------------------------------------------------------------- against the reference (CPU too)

def packed_recurrent(bounds):
    """The float64 loop over packed sequences: each alone from its own state row."""
    def reference(wx, R, b, initial_state=None, return_last_state=False):
        hs, last = [], []
        for n, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
            state = None if initial_state is None else initial_state[:, n:n + 1]
            if lo == hi:
                last.append(wx.new_zeros(4, 1, *wx.shape[3:]) if state is None else state)
                continue
            h, state = slstm_recurrent(wx[:, lo:hi], R, b, state, return_last_state=True)
            hs.append(h)
            last.append(state)
        return torch.cat(hs, dim=1), torch.cat(last, dim=1)
    return reference


def packed_inputs(states, device):
    """Inputs of five packed sequences (lengths 1, 5, 0, 12, 3: an empty one), with initial
    states per sequence if `states`; their offsets as a list and as a tensor."""
    lengths = [1, 5, 0, 12, 3]
    inputs = make_inputs(1, sum(lengths), 2, 16, device=device)
    if states:
        inputs["initial_state"] = make_inputs(len(lengths), 1, 2, 16, device=device, states=True)["initial_state"]
    bounds = [0]
    for length in lengths:
        bounds.append(bounds[-1] + length)
    return inputs, bounds, torch.tensor(bounds, device=device)


@pytest.mark.parametrize("states", [False, True])
def test_packed_sequences_equal_each_alone(states, device, poison):
    """cu_seqlens: h, one last state per sequence and all gradients equal each sequence run alone."""
    inputs, bounds, cu = packed_inputs(states, device)
    N = len(bounds) - 1
    h, state, grads = run_with_grads(lambda **kw: slstm(**kw, cu_seqlens=cu), inputs)
    h_ref, state_ref, grads_ref = run_with_grads(packed_recurrent(bounds), {k: v.double() for k, v in inputs.items()})
    tol_fw, tol_bw = TOL[torch.float32]
    assert state.shape == (4, N, 2, 16)
    assert_close(h, h_ref, tol_fw, "h")
    for i, slot in enumerate(STATE_SLOTS):
        assert_close(state[i], state_ref[i], tol_fw, f"last state {slot}")
    for k in inputs:
        parts = grads[k][:3] if k == "initial_state" else grads[k]       # m gets no gradient
        ref = grads_ref[k][:3] if k == "initial_state" else grads_ref[k]
        assert_close(parts, ref, tol_bw, f"d{k}")
    with pytest.raises(ValueError, match=r"initial_state: expected shape \(4, 5, 2, 16\) = \(4, N, NH, DH\)"):
        slstm(inputs["wx"], inputs["R"], inputs["b"], torch.zeros(4, 1, 2, 16, device=device), cu_seqlens=cu)


@pytest.mark.parametrize("states", [False, True])
def test_packed_sequences_without_last_states_run_as_one_padded_batch(states, device, poison, monkeypatch):
    """cu_seqlens without return_last_state: one batched call (the per-sequence calls must not
    run), h and all gradients equal each sequence run alone in float64."""
    import importlib
    slstm_op = importlib.import_module("xlstm_triton.ops.slstm.op")    # the package name is also the function's
    inputs, bounds, cu = packed_inputs(states, device)
    N = len(bounds) - 1
    calls = []
    batched = slstm_op.slstm
    monkeypatch.setattr(slstm_op, "slstm", lambda wx, *a, **k: calls.append(wx.shape[0]) or batched(wx, *a, **k))
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    h = batched(**leaves, cu_seqlens=cu)
    assert calls == [N], calls                     # one call, N rows
    x64 = {k: v.double().requires_grad_(True) for k, v in inputs.items()}
    h_ref, _ = packed_recurrent(bounds)(**x64)
    weighted_sum_loss([h], generator=torch.Generator().manual_seed(1)).backward()
    weighted_sum_loss([h_ref], generator=torch.Generator().manual_seed(1)).backward()
    tol_fw, tol_bw = TOL[torch.float32]
    assert_close(h, h_ref, tol_fw, "h")
    for k in inputs:
        parts = leaves[k].grad[:3] if k == "initial_state" else leaves[k].grad      # m gets no gradient
        ref = x64[k].grad[:3] if k == "initial_state" else x64[k].grad
        assert_close(parts, ref, tol_bw, f"d{k}")


def test_packed_sequences_read_checked_offsets_once(device, monkeypatch):
    """Offsets a model checked once (`checked_cu_seqlens`, given on the CPU) keep their values:
    the sLSTM pads its batch from them without reading the tensor again (on a GPU each read is
    a wait for it), with the result of plain offsets."""
    from xlstm_triton.checks import checked_cu_seqlens
    inputs, bounds, cu = packed_inputs(False, device)
    checked = checked_cu_seqlens(torch.tensor(bounds), bounds[-1], device)
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: pytest.fail("the offsets were read again"))
    h = slstm(**inputs, cu_seqlens=checked)
    monkeypatch.undo()
    assert torch.equal(h, slstm(**inputs, cu_seqlens=cu))


@pytest.mark.gpu
def test_checked_offsets_passed_again_are_not_read(monkeypatch):
    """Device offsets checked once (`checked_cu_seqlens`) and passed to a model step after step
    (which checks them again each step): kept values, no read of the tensor (a wait for the GPU)."""
    from xlstm_triton.checks import checked_cu_seqlens
    inputs, bounds, cu = packed_inputs(False, "cuda")
    checked = checked_cu_seqlens(torch.tensor(bounds), bounds[-1], "cuda")
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: pytest.fail("the offsets were read again"))
    again = checked_cu_seqlens(checked, bounds[-1], "cuda")
    h = slstm(**inputs, cu_seqlens=again)
    monkeypatch.undo()
    assert again.data_ptr() == checked.data_ptr()          # no copy either
    assert torch.equal(h, slstm(**inputs, cu_seqlens=cu))


# (B, T, NH, DH, dtype, config override, initial states)
CASES = [
    (3, 7, 2, 16, torch.float32, None, False),
    (2, 1, 1, 32, torch.float32, None, True),
    (2, 64, 2, 32, torch.float32, None, True),
    (2, 300, 1, 16, torch.float32, None, True),
    (17, 7, 1, 48, torch.float32, None, True),              # two batch blocks, DH not a power of 2
    (3, 7, 2, 16, torch.bfloat16, None, True),
    (3, 64, 1, 32, torch.bfloat16, None, False),
    (3, 7, 2, 16, torch.float16, None, True),
    # split heads: several programs per head exchange h_t / dpre_t through global memory
    (3, 7, 2, 32, torch.float32, dict(bo=16, bk=16), True),             # R streamed in chunks
    (3, 7, 1, 80, torch.float32, dict(bo=16, bk=16), True),             # 5 column blocks
    (3, 7, 1, 80, torch.float32, None, True),                           # default: fp32 R too big, split
    (3, 7, 2, 48, torch.bfloat16, dict(bo=16, resident=True), True),   # R held as 32 + 16 rows
    (3, 7, 1, 112, torch.float32, dict(bo=16, resident=True), True),   # R held as 64 + 64 (padded)
    (3, 7, 1, 64, torch.bfloat16, dict(bo=32, resident=True), False),  # R held, one block
    (17, 7, 1, 32, torch.bfloat16, dict(bo=16, bk=16), True),
    (2, 1, 1, 32, torch.float32, dict(bo=16, bk=16), True),
    (2, 5, 1, 144, torch.float32, dict(bo=16, bk=16), True),           # 9 column blocks; dR/db on cuBLAS
]


@pytest.mark.parametrize("B,T,NH,DH,dtype,override,states", CASES,
                         ids=[f"B{c[0]}-T{c[1]}-{c[2]}x{c[3]}-{str(c[4])[6:]}-{'split' if c[5] else 'whole'}"
                              f"{'-state' if c[6] else ''}" for c in CASES])
def test_matches_reference(B, T, NH, DH, dtype, override, states, device, poison):
    inputs = make_inputs(B, T, NH, DH, dtype, device, states=states, fresh_fraction=0.2 if states else 0)
    with config_override(**(override or {})):
        check_against_reference(inputs, dtype)


@pytest.mark.parametrize("DH", [32, 144], ids=["kernel", "cublas"])   # the two paths (dr_db.py)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dr_db_both_paths_match_float64(DH, dtype, device):
    from xlstm_triton.ops.slstm.dr_db import SMALL_HEAD, slstm_dr_db
    assert (DH <= SMALL_HEAD) == (DH == 32)
    B, T, NH = 3, 37, 2
    dwx = torch.randn(B, T, 4, NH, DH, device=device).to(dtype)
    h = torch.randn(B, T, NH, DH, device=device).to(dtype)
    state0 = torch.randn(4, B, NH, DH, device=device)
    dR, db = slstm_dr_db(dwx, h, state0)
    assert dR.dtype == db.dtype == torch.float32
    h_prev = torch.cat([state0[0].to(dtype)[:, None], h[:, :-1]], 1).double()
    ref_R = torch.einsum("btgno,btni->gnoi", dwx.double(), h_prev)
    ref_b = dwx.double().sum((0, 1))
    tol = TOL[dtype][0]
    assert (dR.double() - ref_R).norm() / ref_R.norm() < tol
    assert (db.double() - ref_b).norm() / ref_b.norm() < tol


def test_strong_recurrent_weights(device, poison):
    inputs = make_inputs(3, 64, 2, 16, torch.float32, device, states=True, r_scale=4.0)
    check_against_reference(inputs, torch.float32)


def test_fresh_state_extreme_input_gate(device, poison):
    """Fresh state (n = 0) with i~ = -100 at the first step: f' = exp(logf + m - i~) would overflow
    float32; the reference (float64) multiplies it by c = n = 0. Must stay finite and agree."""
    inputs = make_inputs(2, 5, 1, 16, torch.float32, device)
    inputs["wx"][:, 0, 0] = -100.0
    inputs["b"][0] = 0.0
    check_against_reference(inputs, torch.float32)


@pytest.mark.parametrize("override", [None, dict(bo=16, bk=16)], ids=["whole", "split"])
def test_state_carry_equals_one_call(override, device, poison):
    """Two calls with the state carried equal one call, outputs and gradients (the second call's
    initial-state gradient flows back into the first)."""
    inputs = make_inputs(2, 13, 2, 32, torch.float32, device, states=True)
    with config_override(**(override or {})):
        h_full, st_full, g_full = run_with_grads(slstm, inputs)

        def two_calls(wx, R, b, initial_state, return_last_state):
            h1, st = slstm(wx[:, :5], R, b, initial_state, return_last_state=True)
            h2, st = slstm(wx[:, 5:], R, b, st, return_last_state=True)
            return torch.cat([h1, h2], dim=1), st

        h_two, st_two, g_two = run_with_grads(two_calls, inputs)
    assert_close(h_two, h_full, 1e-6, "h")
    assert_close(st_two, st_full, 1e-6, "state")
    for k in NAMES:
        assert_close(g_two[k], g_full[k], 1e-5, f"d{k}")


@pytest.mark.parametrize("override", [None, dict(bo=16, bk=16)], ids=["whole", "split"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_step_repeated_equals_sequence(override, dtype, device, poison):
    inputs = make_inputs(3, 9, 2, 32, dtype, device, states=True)
    with config_override(**(override or {})):
        h_seq, st_seq = slstm(**inputs, return_last_state=True)
        state = inputs["initial_state"]
        hs = []
        with torch.no_grad():
            for t in range(inputs["wx"].shape[1]):
                h_t, state = slstm_step(inputs["wx"][:, t], inputs["R"], inputs["b"], state)
                assert h_t.shape == (3, 2, 32) and h_t.dtype == dtype and state.dtype == torch.float32
                hs.append(h_t)
    assert_close(torch.stack(hs, dim=1), h_seq, 1e-6, "h")
    assert_close(state, st_seq, 1e-6, "state")


def test_step_with_grad_matches_reference(device, poison):
    inputs = make_inputs(2, 1, 2, 16, torch.float32, device, states=True)
    step = dict(wx_t=inputs["wx"][:, 0], R=inputs["R"], b=inputs["b"], state=inputs["initial_state"])
    leaves = {k: v.clone().requires_grad_(True) for k, v in step.items()}
    h, st = slstm_step(**leaves)
    weighted_sum_loss([h, st], generator=torch.Generator().manual_seed(1)).backward()
    h_ref, st_ref, g_ref = reference_with_grads(inputs, seed=1)
    assert_close(h, h_ref[:, 0], 2e-3, "h")
    assert_close(st, st_ref, 2e-3, "state")
    assert_close(leaves["wx_t"].grad, g_ref["wx"][:, 0], 5e-3, "dwx")
    assert_close(leaves["R"].grad, g_ref["R"], 5e-3, "dR")
    assert_close(leaves["state"].grad[:3], g_ref["initial_state"][:3], 5e-3, "dstate")


def test_inference_saves_nothing_for_backward(device, monkeypatch):
    """Without grad mode (or without inputs that require grad) the forward saves no activations;
    in training a split head stores its steps, a whole head leaves them to the backward, which
    recomputes them (once per backward)."""
    from xlstm_triton.ops.slstm import op

    saves, recomputes = [], []
    real_fwd, real_recompute = op.slstm_fwd, op.slstm_step_coefficients
    monkeypatch.setattr(op, "slstm_fwd", lambda *a, save: saves.append(save) or real_fwd(*a, save=save))
    monkeypatch.setattr(op, "slstm_step_coefficients", lambda *a: recomputes.append(1) or real_recompute(*a))
    x = {k: v.requires_grad_(True) for k, v in make_inputs(2, 3, 1, 32, torch.float32, device).items()}
    with torch.no_grad():
        h = slstm(**x)
    assert not h.requires_grad
    slstm(**{k: v.detach() for k, v in x.items()})
    h = slstm(**x)                          # whole head (DH = 32): nothing stored
    assert h.requires_grad
    with op.config_override(bo=16, sync=False):
        h_split = slstm(**x)                # two column blocks: the steps stored
    assert saves == [False, False, False, True]
    h.sum().backward()
    assert recomputes == [1]
    h_split.sum().backward()
    assert recomputes == [1]


@pytest.mark.parametrize("B, T, NH, DH, dtype", [(20, 5, 1, 48, torch.float32), (3, 7, 2, 16, torch.bfloat16),
                                                 (16, 4, 2, 32, torch.float32)])
@pytest.mark.parametrize("variant", ["fwd_batch_last", "bwd_batch_last", "both"])
def test_whole_head_batch_last_kernels(variant, B, T, NH, DH, dtype, device, poison):
    """The whole-head batch-last kernels (configs fwd_batch_last, bwd_batch_last: transposed
    tiles, R on the left of the product, per-step tensors (T, ., NH, DH, Bp)), alone and
    together, against float64: a batch padded to the next 16 (20 -> 32, 3 -> 16) and not (16),
    head sizes padded to powers of 2 (48 -> 64), initial states with fresh elements (n = 0), the
    output, the last state, every gradient."""
    from xlstm_triton.ops.slstm.fwd import pick_config
    flags = dict(fwd_batch_last=True, bwd_batch_last=True) if variant == "both" else {variant: True}
    x = make_inputs(B, T, NH, DH, dtype, device, states=True, fresh_fraction=0.2)
    with config_override(**flags):
        cfg = pick_config(NH, DH, B, dtype, torch.device(device))
        assert (cfg.fwd_batch_last, cfg.bwd_batch_last) == (variant != "bwd_batch_last", variant != "fwd_batch_last")
        check_against_reference(x, dtype)
    with pytest.raises(ValueError, match="are for whole heads"):
        with config_override(bo=16, **flags):
            slstm(**make_inputs(2, 3, 1, 32, torch.float32, device))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_recomputed_steps_equal_what_the_forward_stores(dtype, device):
    """The whole-head backward's first stage: the gate pre-activations recomputed from wx and h
    equal the ones the forward stores (same operands: float32 summation order only), and the
    step coefficients equal float64 formulas of the forward's own (c, n, m), fresh states
    (n = 0) included."""
    from xlstm_triton.ops.slstm.fwd import pick_config, slstm_fwd
    from xlstm_triton.ops.slstm.recompute import recompute_pre, step_coefficients

    B, T, NH, DH = 3, 9, 2, 32
    x = make_inputs(B, T, NH, DH, dtype, device, states=True, fresh_fraction=0.3)
    cfg = pick_config(NH, DH, B, dtype, torch.device(device))
    assert cfg.ncb == 1 and not cfg.saves_steps
    state0 = x["initial_state"].float().contiguous()
    h, _, pre, cnm = slstm_fwd(x["wx"], x["R"], x["b"], state0, cfg, save=True)
    assert_close(recompute_pre(x["wx"], x["R"], x["b"], h, state0, cfg), pre, 1e-5, "pre")
    coef = step_coefficients(pre, state0).double()

    p, st = pre.double(), state0.double()
    prev = torch.cat([st[None, 1:], cnm.double()[:-1]])            # (c, n, m) before each step
    c_p, n_p, m_p = prev.unbind(1)
    i_pre, f_pre, z_pre, o_pre = p.unbind(1)
    logf = torch.nn.functional.logsigmoid(f_pre)
    m = torch.where(n_p == 0, i_pre, torch.maximum(i_pre, logf + m_p))
    i, f = torch.exp(i_pre - m), torch.exp(torch.clamp(logf + m_p - m, max=60.0))
    z, o = torch.tanh(z_pre), torch.sigmoid(o_pre)
    c, n = f * c_p + i * z, f * n_p + i
    a, s = o / n, f * torch.sigmoid(-f_pre)
    want = torch.stack([a, a * c / n, a * c * (1 - o), z * i, i, i * (1 - z * z), c_p * s, n_p * s, f], 1)
    for slot, name in enumerate(["A", "Q", "P", "D", "I", "F", "G", "H", "FG"]):
        assert_close(coef[:, slot], want[:, slot], 1e-4, name)

    # the batch-last layouts (T, ., NH, DH, Bp) of the same values; the padding rows finite
    cfg_last = dataclasses.replace(cfg, bwd_batch_last=True)
    pre_last = recompute_pre(x["wx"], x["R"], x["b"], h, state0, cfg_last)
    coef_last = step_coefficients(pre_last, state0, batch_last=True)
    assert pre_last.shape == (T, 4, NH, DH, 16) and coef_last.shape == (T, 9, NH, DH, 16)
    assert torch.isfinite(pre_last).all() and torch.isfinite(coef_last).all()
    assert_close(pre_last[..., :B].permute(0, 1, 4, 2, 3), pre, 1e-5, "batch-last pre")
    assert_close(coef_last[..., :B].permute(0, 1, 4, 2, 3).double(), coef, 1e-6, "batch-last coefficients")


def test_noncontiguous_and_mixed_dtype_inputs(device, poison):
    base = make_inputs(3, 7, 2, 16, torch.bfloat16, device, states=True)
    expected = slstm(**base, return_last_state=True)
    # the same values, every input a strided view; R and b given in float32 (cast to wx's dtype)
    wx = base["wx"].transpose(1, 2).contiguous().transpose(1, 2)
    wx2 = torch.stack([base["wx"], torch.zeros_like(base["wx"])], dim=-1)[..., 0]  # last dim stride 2
    R = base["R"].float().transpose(2, 3).contiguous().transpose(2, 3)
    b = base["b"].float().transpose(0, 1).contiguous().transpose(0, 1)
    st = base["initial_state"].float().transpose(1, 2).contiguous().transpose(1, 2)
    assert not (wx.is_contiguous() or wx2.is_contiguous() or R.is_contiguous() or st.is_contiguous())
    for w in (wx, wx2):
        h, last = slstm(w, R, b, st, return_last_state=True)
        assert_close(h, expected[0], 0.0, "h")
        assert_close(last, expected[1], 0.0, "state")


def test_inputs_not_modified(device, poison):
    for override in (None, dict(bo=16, bk=16)):
        inputs = make_inputs(2, 6, 1, 32, torch.float32, device, states=True)
        saved = {k: v.clone() for k, v in inputs.items()}
        with config_override(**(override or {})):
            _, _, grads = run_with_grads(slstm, inputs)
            slstm_step(inputs["wx"][:, 0], inputs["R"], inputs["b"], inputs["initial_state"])
        for k in inputs:
            assert torch.equal(inputs[k], saved[k]), f"{k} was modified"


def test_torch_path_matches_reference(monkeypatch):
    """CPU without TRITON_INTERPRET: the PyTorch path, same contract (float32 and bfloat16)."""
    monkeypatch.setattr(xt_utils, "triton_interpret", lambda: False)
    from xlstm_triton.ops.slstm import torch_path

    calls = []
    real = torch_path.slstm_torch
    from xlstm_triton.ops.slstm import op
    monkeypatch.setattr(op, "slstm_torch", lambda *a: calls.append(1) or real(*a))
    for dtype in (torch.float32, torch.bfloat16):
        inputs = make_inputs(3, 20, 2, 12, dtype, "cpu", states=True, fresh_fraction=0.2)  # DH 12 ok here
        check_against_reference(inputs, dtype)
    assert calls, "the PyTorch path was not taken"
    inputs = make_inputs(2, 4, 1, 8, torch.float32, "cpu", states=True)
    h_seq, st_seq = slstm(**inputs, return_last_state=True)
    state = inputs["initial_state"]
    for t in range(4):
        h_t, state = slstm_step(inputs["wx"][:, t], inputs["R"], inputs["b"], state)
        assert_close(h_t, h_seq[:, t], 1e-6, "h_t")
    assert_close(state, st_seq, 1e-6, "state")


def test_barrier_path_is_chosen_only_for_co_resident_split_grids(monkeypatch):
    """The persistent path's barrier (SYNC) is code the interpreter never runs (it runs programs one
    after another, a spin would never end); it runs on the GPU (test_gpu_split_paths). The
    launcher picks it only on CUDA, in split mode, with a grid no larger than the SM count."""
    monkeypatch.setattr(slstm_fwd_module, "num_sms", lambda device: 132)
    cfg = slstm_fwd_module.SLSTMConfig(ncb=4, bo=16, ka=0, kb=0, bk=16, resident=False, num_warps=4)
    assert slstm_fwd_module.use_sync(cfg, 132, torch.device("cuda"))
    assert not slstm_fwd_module.use_sync(cfg, 133, torch.device("cuda"))
    assert not slstm_fwd_module.use_sync(cfg, 8, torch.device("cpu"))
    no_sync = slstm_fwd_module.SLSTMConfig(ncb=4, bo=16, ka=0, kb=0, bk=16, resident=False, num_warps=4, sync=False)
    assert not slstm_fwd_module.use_sync(no_sync, 8, torch.device("cuda"))
    whole = slstm_fwd_module.SLSTMConfig(ncb=1, bo=64, ka=64, kb=0, bk=64, resident=True, num_warps=8)
    assert not slstm_fwd_module.use_sync(whole, 8, torch.device("cuda"))


def sm90_code(*names) -> dict:
    """`bench.tools.sm90_code` of the named kernel shapes in a subprocess (TRITON_INTERPRET
    replaces triton.jit here): name -> registers, spills, shared memory, the step loop's
    instruction counts, the PTX barrier counts. Skips without Triton's NVIDIA backend."""
    import json
    import os
    import subprocess
    import sys

    triton = pytest.importorskip("triton")
    if "nvidia" not in getattr(triton.backends, "backends", {}):
        pytest.skip("Triton's NVIDIA backend is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-m", "bench.tools.sm90_code", *names], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = {n: json.loads(line) for n, line in (ln.split(" ", 1) for ln in r.stdout.strip().splitlines()) if n in names}
    assert sorted(got) == sorted(names), r.stdout
    return got


def test_split_kernels_compile_for_sm90_with_release_acquire_barrier():
    """The persistent split-head kernels (1 x 256, bf16, R held; the forward with and without
    the steps' stores) compiled for sm_90 on this machine (no GPU needed): the barrier's lowering, a GPU-scope release add after the step's
    stores, GPU-scope acquire polls, L1-bypassing loads of the exchanged tensors; no register
    spills (stack frame and local memory, as cuobjdump reports them for Triton's cubin); shared
    memory within an H100's 227 KB."""
    for name, info in sm90_code("fwd_split_256", "fwd_split_256_train", "bwd_split_256").items():
        ptx = info["ptx"]
        assert ptx["release"] >= 1 and ptx["acquire"] >= 1, (name, ptx)
        assert ptx["cg_load"] >= 1 and ptx["bar"] >= 2, (name, ptx)
        assert info["shared"] <= 227 * 1024 and info["spill_bytes"] <= 64, (name, info)


def test_batch_last_head_kernels_compile_for_sm90_with_warpgroup_products():
    """The whole-head batch-last forward and backward compiled for sm_90 on this machine: their
    recurrent product is warpgroup products (the variants' point), no register spills, shared
    memory within an H100's 227 KB (R held: 128 KB at DH = 128)."""
    for name, info in sm90_code("bwd_head_128_batch_last", "bwd_head_64_batch_last", "fwd_head_128_batch_last",
                                "fwd_head_64_batch_last_w4").items():
        assert info["loop"]["wgmma"] > 0 and info["loop"]["hmma"] == 0, (name, info)
        assert info["spill_bytes"] == 0 and info["shared"] <= 227 * 1024, (name, info)


# ---------------------------------------------------------------------------------- bad inputs

def _bad(device):
    x = make_inputs(2, 3, 2, 16, torch.float32, device, states=True)
    wx, R, b, st = x["wx"], x["R"], x["b"], x["initial_state"]
    other = "meta"
    return [
        ("wx", TypeError, dict(wx=wx.numpy() if device == "cpu" else wx.cpu().numpy())),
        ("wx", TypeError, dict(wx=wx.to(torch.int32))),
        ("wx", TypeError, dict(wx=wx.to(torch.complex64))),
        ("wx", ValueError, dict(wx=wx[0])),
        ("gate dim", ValueError, dict(wx=wx[:, :, :3])),
        ("R", ValueError, dict(R=R[:, :1])),
        ("R", ValueError, dict(R=R[..., :8])),
        ("R", ValueError, dict(R=R[0])),
        ("R", TypeError, dict(R=R.to(torch.int64))),
        ("b", ValueError, dict(b=b[:, :, :8])),
        ("b", ValueError, dict(b=b.reshape(-1))),
        ("initial_state", ValueError, dict(initial_state=st[:3])),
        ("initial_state", ValueError, dict(initial_state=st[:, :1])),
        ("initial_state", TypeError, dict(initial_state=st.to(torch.int32))),
        ("same device", ValueError, dict(R=R.to(other))),
        ("same device", ValueError, dict(initial_state=st.to(other))),
    ], dict(wx=wx, R=R, b=b, initial_state=st)


def test_bad_inputs_raise_clear_errors(device):
    cases, good = _bad(device)
    for needle, exc, change in cases:
        args = dict(good, **change)
        with pytest.raises(exc, match=needle):
            slstm(**args)
    # the step op checks the same way
    with pytest.raises(ValueError, match="wx_t"):
        slstm_step(good["wx"], good["R"], good["b"], good["initial_state"])
    with pytest.raises(ValueError, match="state"):
        slstm_step(good["wx"][:, 0], good["R"], good["b"], good["initial_state"][:, :1])
    with pytest.raises(ValueError, match="state"):
        slstm_step(good["wx"][:, 0], good["R"], good["b"], None)


def test_head_size_not_multiple_of_16_refused_by_kernels(device):
    if not xt_utils.use_triton(torch.empty(0, device=device)):
        pytest.skip("the PyTorch path takes any head size")
    x = make_inputs(2, 3, 1, 24, torch.float32, device)
    with pytest.raises(ValueError, match="multiple of 16"):
        slstm(**x)


# ------------------------------------------------------------------------------------------ GPU

GPU_HEADS = [(12, 64), (4, 16), (4, 32), (6, 128), (4, 128), (3, 256), (1, 768), (4, 512)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("NH,DH", GPU_HEADS, ids=[f"{a}x{b}" for a, b in GPU_HEADS])
def test_gpu_head_sizes(NH, DH, dtype, poison):
    inputs = make_inputs(16, 64, NH, DH, dtype, "cuda", states=True, fresh_fraction=0.1)
    check_against_reference(inputs, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B, NH, DH", [(16, 12, 64), (20, 6, 128), (16, 4, 128), (5, 4, 16), (33, 4, 32)])
def test_gpu_whole_head_batch_last_kernels(B, NH, DH, dtype, poison):
    """The batch-last whole-head forward and backward (configs fwd_batch_last, bwd_batch_last)
    on the GPU: the warpgroup products, the pipelined batch-last loads, batches padded (20 -> 32,
    5 -> 16, 33 -> 48); float32 inputs are refused there (3xTF32 does not fit)."""
    inputs = make_inputs(B, 64, NH, DH, dtype, "cuda", states=True, fresh_fraction=0.1)
    with config_override(fwd_batch_last=True, bwd_batch_last=True):
        check_against_reference(inputs, dtype)
        with pytest.raises(ValueError, match="take 16-bit inputs on the GPU"):
            slstm(**{k: v.float() for k, v in inputs.items()})


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("NH,DH", [(12, 64), (1, 768)], ids=["12x64", "1x768"])
def test_gpu_long_sequence(NH, DH, dtype, poison):
    inputs = make_inputs(5, 300, NH, DH, dtype, "cuda", states=True)
    check_against_reference(inputs, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("override", [dict(bo=16, bk=16), dict(bo=16, bk=32, sync=False),
                                      dict(bo=32, resident=True, num_warps=8),
                                      dict(bo=16, resident=True)],
                         ids=["barrier", "per-step", "barrier-resident-32", "barrier-resident-16"])
def test_gpu_split_paths(override, poison):
    """The split-head paths at a small head: the persistent barrier path (validated only here) and
    the per-step launches, against the reference."""
    inputs = make_inputs(19, 64, 2, 64, torch.float32, "cuda", states=True)
    with config_override(**override):
        check_against_reference(inputs, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("NH,DH", [(12, 64), (1, 768)], ids=["12x64", "1x768"])
def test_gpu_no_recompile_across_batch_sizes(NH, DH):
    """The batch size is a runtime argument: no recompile when it changes. Split heads choose
    their column block from how many batch blocks fit the SMs, so a much larger batch may compile
    one more variant (bounded: column blocks of 16, 32 or 64), never one per batch size."""
    from xlstm_triton.ops.slstm.bwd import slstm_bwd_kernel
    from xlstm_triton.ops.slstm.dr_db import slstm_dr_db_kernel
    from xlstm_triton.ops.slstm.fwd import slstm_fwd_kernel

    kernels = (slstm_fwd_kernel, slstm_bwd_kernel, slstm_dr_db_kernel)

    def n_compiled():  # device_caches[device] = (kernel_cache, ...) in Triton 3.x
        return [sum(len(v[0]) for v in k.device_caches.values()) for k in kernels]

    def call(B):
        x = make_inputs(B, 5, NH, DH, torch.bfloat16, "cuda", states=True)
        run_with_grads(slstm, x)
        with torch.no_grad():
            slstm(**x)
        torch.cuda.synchronize()

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    same_config = [B for B in (1, 3, 16, 17, 31, 32) if (B + 15) // 16 * NH * max(1, DH // 16) <= sms
                   or DH <= 128]
    call(same_config[0])
    before = n_compiled()
    for B in same_config[1:]:
        call(B)
    assert n_compiled() == before, f"recompiled for batch sizes {same_config}"
    for B in (40, 64, 100):
        call(B)
    grown = [a - b for a, b in zip(n_compiled(), before)]
    # Only a new column block compiles anything: one forward variant with and one without saving
    # for the backward, one of each backward kernel.
    dev = torch.device("cuda")
    new_blocks = ({slstm_fwd_module.pick_config(NH, DH, B, torch.bfloat16, dev).bo for B in (40, 64, 100)}
                  - {slstm_fwd_module.pick_config(NH, DH, same_config[0], torch.bfloat16, dev).bo})
    assert grown[0] <= 2 * len(new_blocks) and all(g <= len(new_blocks) for g in grown[1:]), (grown, new_blocks)


@pytest.mark.gpu
@pytest.mark.parametrize("T", [1, 7])
@pytest.mark.parametrize("NH,DH", [(12, 64), (1, 768)], ids=["12x64", "1x768"])
def test_gpu_short_sequences(NH, DH, T, poison):
    inputs = make_inputs(3, T, NH, DH, torch.bfloat16, "cuda", states=True, fresh_fraction=0.2)
    check_against_reference(inputs, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("NH,DH", [(2, 64), (1, 768)], ids=["2x64", "1x768"])
def test_gpu_step_in_cuda_graph(NH, DH):
    x = make_inputs(4, 6, NH, DH, torch.bfloat16, "cuda", states=True)
    h_seq, st_seq = slstm(**x, return_last_state=True)
    wx_t = x["wx"][:, 0].clone()
    state = x["initial_state"].float().clone()
    with torch.no_grad():
        slstm_step(wx_t, x["R"], x["b"], state)  # compile outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            h_out, st_out = slstm_step(wx_t, x["R"], x["b"], state)
        hs = []
        for t in range(6):
            wx_t.copy_(x["wx"][:, t])
            graph.replay()
            hs.append(h_out.clone())
            state.copy_(st_out)
    torch.cuda.synchronize()
    assert_close(torch.stack(hs, dim=1), h_seq, 1e-6, "h")
    assert_close(state, st_seq, 1e-6, "state")


def test_empty_config_override_keeps_the_heuristic():
    """config_override() with no keywords must leave the choice to pick_config (an empty override
    once forced a whole head, which cannot hold a float32 R of head size 80 on the GPU)."""
    dev = torch.device("cpu")
    with config_override():
        got = slstm_fwd_module.pick_config(1, 80, 3, torch.float32, dev)
    assert got == slstm_fwd_module.pick_config(1, 80, 3, torch.float32, dev)
    with config_override(bo=16, bk=16):
        assert slstm_fwd_module.pick_config(1, 80, 3, torch.float32, dev).bo == 16


# ---------------------------------------------------------------- float64, empty batches, NaN

def test_float64_runs_the_pytorch_path_exactly(device):
    # float64 (what gradcheck runs with) takes the PyTorch path on every device, in float64.
    x = make_inputs(2, 5, 2, 8, torch.float64, device, states=True)
    h, state, grads = run_with_grads(slstm, x)
    h_ref, state_ref, grads_ref = reference_with_grads(x)
    assert h.dtype == state.dtype == torch.float64
    assert_close(h, h_ref, 1e-12, "h")
    assert_close(state[:3], state_ref[:3], 1e-12, "state")
    for k in ("wx", "R", "b"):
        assert_close(grads[k], grads_ref[k], 1e-12, f"d{k}")
    leaves = [x["wx"][:1, :3].clone().requires_grad_(), x["R"].clone().requires_grad_()]
    assert torch.autograd.gradcheck(lambda wx, R: slstm(wx, R, x["b"]), leaves)
    h_t, new = slstm_step(x["wx"][:, 0], x["R"], x["b"], x["initial_state"])
    h_t_ref = slstm_recurrent(x["wx"][:, :1], x["R"], x["b"], x["initial_state"])[:, 0]
    assert_close(h_t, h_t_ref, 1e-12, "step")


@pytest.mark.parametrize("B,NH", [(0, 2), (2, 0)])
def test_empty_batch_or_heads_give_empty_results(B, NH, device):
    x = make_inputs(B, 3, NH, 16, torch.float32, device, states=True)
    leaves = {k: v.requires_grad_() for k, v in x.items()}
    h, state = slstm(**leaves, return_last_state=True)
    assert h.shape == (B, 3, NH, 16) and state.shape == (4, B, NH, 16)
    (h.sum() + state.sum()).backward()
    assert leaves["R"].grad.shape == x["R"].shape and (leaves["R"].grad == 0).all()
    h_t, new = slstm_step(x["wx"][:, 0].detach(), x["R"].detach(), x["b"].detach(),
                          x["initial_state"].detach())
    assert h_t.shape == (B, NH, 16) and new.shape == (4, B, NH, 16)


@pytest.mark.parametrize("gate", range(4))
def test_nan_pre_activation_propagates(gate, device):
    # A NaN gate pre-activation must make h and the state NaN from its step on, as in the
    # reference; a minimum or maximum that drops the NaN let c and n grow to ~1e25 with a
    # finite h.
    x = make_inputs(2, 6, 1, 16, torch.float32, device, states=True)
    x["wx"][1, 2, gate, 0, 3] = float("nan")
    h, state = slstm(**x, return_last_state=True)
    h_ref, state_ref = slstm_recurrent(**{k: v.double() for k, v in x.items()}, return_last_state=True)
    assert torch.equal(torch.isfinite(h).cpu(), torch.isfinite(h_ref).cpu())
    assert torch.equal(torch.isfinite(state[:3]).cpu(), torch.isfinite(state_ref[:3]).cpu())
    assert torch.isnan(h[1, 2:]).any() and torch.isfinite(h[:, :2]).all() and torch.isfinite(h[0]).all()
