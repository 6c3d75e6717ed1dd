"""The references agree with each other, with hand-checkable cases, and with the unstabilized
equations; every check here runs in float64."""

import pytest
import torch
import torch.nn.functional as F

from reference.mlstm import mlstm_parallel, mlstm_recurrent
from reference.slstm import slstm_recurrent
from tests.helpers import assert_close, weighted_sum_loss

D64 = torch.float64


def mlstm_inputs(B, NH, S, DQK, DV, states=False, igate=(-3, 3), fgate=(-3, 6)):
    def u(shape, lo, hi):
        return torch.rand(shape, dtype=D64) * (hi - lo) + lo

    x = dict(q=torch.randn(B, NH, S, DQK, dtype=D64), k=torch.randn(B, NH, S, DQK, dtype=D64),
             v=torch.randn(B, NH, S, DV, dtype=D64), i=u((B, NH, S), *igate), f=u((B, NH, S), *fgate))
    if states:
        x.update(c_initial=torch.randn(B, NH, DQK, DV, dtype=D64),
                 n_initial=torch.randn(B, NH, DQK, dtype=D64),
                 m_initial=torch.randn(B, NH, 1, dtype=D64))
    return x


def slstm_inputs(B, T, NH, DH, states=False, r_scale=0.5):
    x = dict(wx=torch.randn(B, T, 4, NH, DH, dtype=D64),
             R=torch.randn(4, NH, DH, DH, dtype=D64) * r_scale / DH**0.5,
             b=torch.randn(4, NH, DH, dtype=D64))
    if states:
        h, c = torch.randn(2, B, NH, DH, dtype=D64)
        n = torch.rand(B, NH, DH, dtype=D64) + 0.5
        m = torch.randn(B, NH, DH, dtype=D64)
        x["initial_state"] = torch.stack([h, c, n, m])
    return x


def grads_of(fn, inputs, names):
    leaves = {k: v.clone().requires_grad_(k in names) for k, v in inputs.items()}
    out = fn(**leaves)
    flat = [out[0], *out[1]] if isinstance(out[1], tuple) else list(out)
    torch.manual_seed(0)
    weighted_sum_loss([t for t in flat if t.requires_grad]).backward()
    return flat, [leaves[k].grad for k in names]


# ---------------------------------------------------------------- mLSTM

@pytest.mark.parametrize("S", [1, 7, 33])
@pytest.mark.parametrize("states", [False, True])
def test_mlstm_recurrent_equals_parallel(S, states):
    x = mlstm_inputs(2, 3, S, 8, 12, states=states)
    names = ["q", "k", "v", "i", "f"] + (["c_initial", "n_initial"] if states else [])
    out_r, g_r = grads_of(lambda **a: mlstm_recurrent(**a, return_last_states=True), x, names)
    out_p, g_p = grads_of(lambda **a: mlstm_parallel(**a, return_last_states=True), x, names)
    for a, b, name in zip(out_p, out_r, ["h", "c", "n", "m"]):
        assert_close(a, b, 1e-10, name)
    for a, b, name in zip(g_p, g_r, names):
        assert_close(a, b, 1e-10, f"d{name}")


def test_mlstm_extreme_gates_agree():
    x = mlstm_inputs(1, 2, 40, 8, 8, states=True, igate=(-30, 15), fgate=(-12, 12))
    h_r, st_r = mlstm_recurrent(**x, return_last_states=True)
    h_p, st_p = mlstm_parallel(**x, return_last_states=True)
    assert_close(h_p, h_r, 1e-10, "h")
    for a, b in zip(st_p, st_r):
        assert_close(a, b, 1e-10, "state")


@pytest.mark.parametrize("fn", [mlstm_recurrent, mlstm_parallel])
def test_mlstm_split_sequence_carries_state(fn):
    x = mlstm_inputs(2, 2, 19, 8, 4, states=True)
    h_full, st_full = fn(**x, return_last_states=True)
    cut = 8
    first = {k: (v[:, :, :cut] if k in "qkvif" else v) for k, v in x.items()}
    h1, (c, n, m) = fn(**first, return_last_states=True)
    second = {k: v[:, :, cut:] for k, v in x.items() if k in "qkvif"}
    h2, st2 = fn(**second, c_initial=c, n_initial=n, m_initial=m, return_last_states=True)
    assert_close(torch.cat([h1, h2], dim=2), h_full, 1e-10, "h")
    for a, b in zip(st2, st_full):
        assert_close(a, b, 1e-10, "state")


@pytest.mark.parametrize("fn", [mlstm_recurrent, mlstm_parallel])
def test_mlstm_open_forget_gate_is_a_plain_sum(fn):
    # f -> +inf (forget gate 1) and i = 0 (input gate 1): m stays 0, the memory is a plain sum.
    x = mlstm_inputs(2, 2, 9, 8, 5)
    x["f"] = torch.full_like(x["f"], 1e4)
    x["i"] = torch.zeros_like(x["i"])
    h = fn(**x)
    C = torch.cumsum(x["k"][..., :, None] * x["v"][..., None, :], dim=2)   # (B, NH, S, DQK, DV)
    n = torch.cumsum(x["k"], dim=2)
    qs = x["q"] * 8**-0.5
    num = torch.einsum("bhskv,bhsk->bhsv", C, qs)
    den = (n * qs).sum(-1).abs().clamp_min(1.0) + 1e-6
    assert_close(h, num / den[..., None], 1e-12, "h")


@pytest.mark.parametrize("fn", [mlstm_recurrent, mlstm_parallel])
def test_mlstm_matches_unstabilized_equations(fn):
    # Moderate gates: exp(i) cannot overflow, so the memory can be carried unstabilized.
    # With eps = 0 the stabilizer cancels exactly: h = C~^T q / max(|n~^T q|, 1).
    x = mlstm_inputs(2, 2, 15, 8, 6)
    h = fn(**x, eps=0.0)
    C = torch.zeros(2, 2, 8, 6, dtype=D64)
    n = torch.zeros(2, 2, 8, dtype=D64)
    hs = []
    for t in range(15):
        fg = torch.sigmoid(x["f"][:, :, t])[..., None]
        ig = torch.exp(x["i"][:, :, t])[..., None]
        k, v, q = x["k"][:, :, t], x["v"][:, :, t], x["q"][:, :, t] * 8**-0.5
        C = fg[..., None] * C + ig[..., None] * k[..., :, None] * v[..., None, :]
        n = fg * n + ig * k
        num = torch.einsum("bhkv,bhk->bhv", C, q)
        hs.append(num / (n * q).sum(-1, keepdim=True).abs().clamp_min(1.0))
    assert_close(h, torch.stack(hs, dim=2), 1e-12, "h")


@pytest.mark.parametrize("fn", [mlstm_recurrent, mlstm_parallel])
def test_mlstm_outputs_invariant_to_stabilizer_shift(fn):
    # Shift m of the initial state and scale c, n to match: the same memory c * exp(m).
    # With eps = 0 the output does not depend on the stabilizer at all.
    x = mlstm_inputs(2, 2, 11, 8, 4, states=True)
    shift = 3.7
    y = dict(x, c_initial=x["c_initial"] * torch.exp(torch.tensor(-shift, dtype=D64)),
             n_initial=x["n_initial"] * torch.exp(torch.tensor(-shift, dtype=D64)),
             m_initial=x["m_initial"] + shift)
    assert_close(fn(**y, eps=0.0), fn(**x, eps=0.0), 1e-12, "h")


# ---------------------------------------------------------------- sLSTM

def test_slstm_one_step_from_zero_state():
    x = slstm_inputs(3, 1, 2, 8)
    h = slstm_recurrent(**x)
    pre = x["wx"][:, 0] + x["b"]                     # R h_0 = 0 from the zero state
    expected = torch.sigmoid(pre[:, 3]) * torch.tanh(pre[:, 2])
    assert_close(h[:, 0], expected, 1e-14, "h")


def test_slstm_split_sequence_carries_state():
    x = slstm_inputs(2, 17, 3, 8, states=True)
    h_full, st_full = slstm_recurrent(**x, return_last_state=True)
    h1, st = slstm_recurrent(x["wx"][:, :6], x["R"], x["b"], x["initial_state"], return_last_state=True)
    h2, st2 = slstm_recurrent(x["wx"][:, 6:], x["R"], x["b"], st, return_last_state=True)
    assert_close(torch.cat([h1, h2], dim=1), h_full, 1e-12, "h")
    assert_close(st2, st_full, 1e-12, "state")


def test_slstm_matches_unstabilized_equations():
    x = slstm_inputs(2, 12, 2, 8)
    h = slstm_recurrent(**x)
    hp = torch.zeros(2, 2, 8, dtype=D64)
    c = torch.zeros_like(hp)
    n = torch.zeros_like(hp)
    hs = []
    for t in range(12):
        pre = x["wx"][:, t] + torch.einsum("ghoi,bhi->bgho", x["R"], hp) + x["b"]
        ig, fg = torch.exp(pre[:, 0]), torch.sigmoid(pre[:, 1])
        c = fg * c + ig * torch.tanh(pre[:, 2])
        n = fg * n + ig
        hp = torch.sigmoid(pre[:, 3]) * c / n
        hs.append(hp)
    assert_close(h, torch.stack(hs, dim=1), 1e-12, "h")


def test_slstm_outputs_invariant_to_stabilizer_shift():
    x = slstm_inputs(2, 9, 2, 8, states=True)
    h0, c0, n0, m0 = x["initial_state"]
    shift = -2.3
    scale = torch.exp(torch.tensor(-shift, dtype=D64))
    y = dict(x, initial_state=torch.stack([h0, c0 * scale, n0 * scale, m0 + shift]))
    assert_close(slstm_recurrent(**y), slstm_recurrent(**x), 1e-12, "h")


def test_slstm_m_gets_no_gradient_but_others_do():
    x = slstm_inputs(2, 5, 2, 8, states=True)
    names = ["wx", "R", "b", "initial_state"]
    _, grads = grads_of(lambda **a: slstm_recurrent(**a, return_last_state=True), x, names)
    g_state = grads[-1]
    assert torch.all(g_state[3] == 0), "m must get no gradient"
    for g, name in zip(grads, names):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
    assert (g_state[:3].abs().sum(dim=(1, 2, 3)) > 0).all(), "h, c and n get gradients"
