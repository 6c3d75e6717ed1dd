"""Chunkwise mLSTM op against the float64 reference (reference/mlstm.py).

On CPU the Triton kernels run in Triton's interpreter (small shapes); the same tests run at
larger shapes on a GPU. Every check compares outputs, final states and all gradients under a
plain weighted-sum loss on h and on the final states, by relative Frobenius norm.
"""

import pytest
import torch
import triton
import triton.language as tl

import xlstm_triton.ops.mlstm.op as mlstm_op
import xlstm_triton.ops.mlstm.bwd as mlstm_bwd
import xlstm_triton.ops.mlstm.gates as mlstm_gates
from reference.mlstm import mlstm_parallel, mlstm_recurrent
from tests.helpers import TOL, assert_close
from xlstm_triton import mlstm_chunkwise
from xlstm_triton.ops.mlstm.torch_path import mlstm_chunkwise_torch
from xlstm_triton.utils import num_sms, packed_sequence

GPU = torch.cuda.is_available()
NAMES = ["q", "k", "v", "i", "f", "c_initial", "n_initial"]


# Gate ranges of the tests. "normal" forgets within a few steps, so a state that is wrong at a
# chunk boundary barely shows in h; "memory" keeps every step within ~2% of the last one's weight
# (log f >= -0.02, equal-sized input gates), so each step's contribution through the chunk
# states is as large as its contribution inside a chunk.
GATES = dict(normal={}, extreme=dict(igate=(-10.0, 12.0), fgate=(-12.0, 12.0)),
             memory=dict(igate=(-0.5, 0.5), fgate=(4.0, 8.0)))


def make_inputs(B, NH, S, DQK, DV, device, dtype=torch.float32, states=False,
                igate=(-3.0, 3.0), fgate=(-3.0, 6.0)):
    def u(lo, hi):
        return torch.rand(B, NH, S, device=device) * (hi - lo) + lo

    x = dict(q=torch.randn(B, NH, S, DQK, device=device, dtype=dtype),
             k=torch.randn(B, NH, S, DQK, device=device, dtype=dtype),
             v=torch.randn(B, NH, S, DV, device=device, dtype=dtype),
             i=u(*igate).to(dtype), f=u(*fgate).to(dtype))
    if states:
        x["c_initial"] = torch.randn(B, NH, DQK, DV, device=device)
        x["n_initial"] = torch.randn(B, NH, DQK, device=device)
        x["m_initial"] = torch.randn(B, NH, 1, device=device)
    return x


def run_and_grad(fn, x, weights=None, **kw):
    """Runs fn on leaf copies of x; returns outputs (h, c, n, m), the gradients of NAMES, and the
    loss weights used (a plain weighted sum over h, c and n)."""
    leaves = {k: (t.clone().requires_grad_(k in NAMES)) for k, t in x.items()}
    h, (c, n, m) = fn(**leaves, return_last_states=True, **kw)
    outs = [h, c, n]
    if weights is None:
        weights = [torch.randn(o.shape, dtype=torch.float64, device=o.device) for o in outs]
    sum((o.double() * w).sum() for o, w in zip(outs, weights)).backward()
    grads = {k: leaves[k].grad for k in NAMES if k in leaves}
    return (h, c, n, m), grads, weights


def check_against_reference(x, dtype, reference=mlstm_recurrent, fn=mlstm_chunkwise, **kw):
    x64 = {k: t.double() for k, t in x.items()}
    ref_out, ref_grads, weights = run_and_grad(reference, x64)
    out, grads, _ = run_and_grad(fn, x, weights, **kw)
    fw_tol, bw_tol = TOL[dtype]
    for a, b, name in zip(out, ref_out, ["h", "c_last", "n_last", "m_last"]):
        assert_close(a, b, fw_tol, name)
    for name in grads:
        assert_close(grads[name], ref_grads[name], bw_tol, f"d{name}")


def packed_recurrent(cu_seqlens):
    """The float64 definition over packed sequences: `mlstm_recurrent` on each sequence alone,
    from its own state row; the outputs concatenated, the final states stacked."""
    bounds = cu_seqlens.tolist()

    def reference(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None, return_last_states=False):
        hs, last = [], []
        for n, (a, b) in enumerate(zip(bounds, bounds[1:])):
            initial = [None if t is None else t[n:n + 1] for t in (c_initial, n_initial, m_initial)]
            h, state = mlstm_recurrent(*(t[:, :, a:b] for t in (q, k, v, i, f)), *initial, return_last_states=True)
            hs.append(h)
            last.append(state)
        h = torch.cat(hs, dim=2)
        return (h, tuple(torch.cat(parts) for parts in zip(*last))) if return_last_states else h
    return reference


# ---------------------------------------------------------------- kernels vs reference

CPU_CASES = [  # (B, NH, S, DQK, DV, chunk_size)
    (1, 2, 1, 16, 16, 16),
    (2, 1, 7, 16, 32, 16),
    (1, 2, 63, 32, 16, 32),
    (1, 1, 65, 16, 48, 32),
    (2, 1, 100, 32, 32, 64),
]


@pytest.mark.parametrize("B,NH,S,DQK,DV,L", CPU_CASES)
@pytest.mark.parametrize("states", [False, True])
def test_matches_reference_fp32(B, NH, S, DQK, DV, L, states, device, poison):
    x = make_inputs(B, NH, S, DQK, DV, device, states=states)
    check_against_reference(x, torch.float32, chunk_size=L)


def test_backward_reads_given_h_dot_dh(device, poison):
    """`mlstm_chunkwise_backward` given the dots h . dh (formed by a caller where it wrote dh, as
    the paper layer's head norm does) equals the backward that forms them itself; the dots
    matter in these inputs (zeros in their place change the gradients)."""
    from xlstm_triton.ops.mlstm import mlstm_chunkwise_backward, mlstm_chunkwise_forward
    if not mlstm_op.use_kernels(torch.zeros(1, device=device)):
        pytest.skip("CPU without TRITON_INTERPRET=1: the kernels' forward and backward only")
    x = make_inputs(2, 2, 45, 16, 32, device)
    inputs = [x[n] for n in "qkvif"]
    h, saved = mlstm_chunkwise_forward(*inputs, chunk_size=16)
    dh = torch.randn_like(h)
    want = mlstm_chunkwise_backward(*inputs, h, saved, dh)
    dot = (h.double() * dh.double()).sum(-1).float()                      # (B, NH, S)
    got = mlstm_chunkwise_backward(*inputs, h, saved, dh, h_dot_dh=dot.transpose(1, 2).contiguous().transpose(1, 2))
    wrong = mlstm_chunkwise_backward(*inputs, h, saved, dh, h_dot_dh=torch.zeros_like(dot))
    for name, g, w, z in zip(("dq", "dk", "dv", "di", "df"), got, want, wrong):
        assert_close(g, w, 1e-5, name)
    assert max(((z - w).norm() / w.norm()).item() for z, w in zip(wrong, want)) > 1e-2


@pytest.mark.parametrize("split", [1, 3, 16])
@pytest.mark.parametrize("states", [False, True])
def test_matches_reference_long_memory(states, split, device, poison, monkeypatch):
    """Open forget gates over seven chunks: every state at a chunk boundary carries weight in h
    (and the gate gradients' suffix sums cross blocks of 16 steps, 7 blocks a row walked by
    `split` programs at most: one, three of up to three blocks, one a block)."""
    monkeypatch.setattr(mlstm_bwd, "GATE_BLOCK", 16)
    monkeypatch.setattr(mlstm_bwd, "GATE_SPLIT", split)
    x = make_inputs(2, 1, 100, 16, 32, device, states=states, **GATES["memory"])
    check_against_reference(x, torch.float32, chunk_size=16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_matches_reference_16bit(dtype, device, poison):
    x = make_inputs(2, 2, 37, 32, 16, device, dtype=dtype, states=True)
    check_against_reference(x, dtype, chunk_size=16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("states", [False, True])
@pytest.mark.parametrize("lengths", [[1, 2, 15, 16, 17, 0, 40], [33]])
def test_packed_sequences_equal_each_alone(lengths, states, dtype, device, poison):
    """cu_seqlens: h, one final state per sequence and every gradient (initial states
    included) equal each sequence run alone in float64; lengths around the chunk (16), empty."""
    torch.manual_seed(len(lengths))
    S, N = sum(lengths), len(lengths)
    x = make_inputs(1, 2, S, 16, 32, device, dtype=dtype)
    if states:
        x.update(c_initial=torch.randn(N, 2, 16, 32, device=device), n_initial=torch.randn(N, 2, 16, device=device),
                 m_initial=torch.randn(N, 2, 1, device=device))
    cu = torch.tensor([0] + lengths, dtype=torch.int32, device=device).cumsum(0, dtype=torch.int32)
    check_against_reference(x, dtype, reference=packed_recurrent(cu),
                            fn=lambda **kw: mlstm_chunkwise(**kw, cu_seqlens=cu), chunk_size=16)


@pytest.mark.parametrize("dtype, once", [(torch.float32, False), (torch.bfloat16, False), (torch.float32, True)])
@pytest.mark.parametrize("lengths, gates", [
    ([1, 2, 15, 16, 17, 0, 40, 3, 1], "normal"),          # starts inside chunks, at chunk starts, empty
    ([5, 31, 1, 1, 2, 50], "extreme"),                    # closed forget gates, large input gates
    ([70], "normal"),                                     # one sequence: the batch path
    ([5, 51, 40, 20], "memory"),                          # open forget gates: the states carry across chunks
])
def test_packed_sequences_fused_equal_each_alone(lengths, gates, dtype, once, device, poison, monkeypatch):
    """cu_seqlens without initial or final states runs all sequences in one launch set (the
    kernels restart at each sequence's first step; the per-sequence loop must not run): h and
    the gradients of q, k, v, i, f equal each sequence run alone in float64 (weighted-sum loss
    on h), with boundaries anywhere in the chunks of 16."""
    from xlstm_triton.utils import use_kernels
    if not use_kernels(torch.zeros(1, device=device)):
        pytest.skip("CPU without TRITON_INTERPRET=1: packed sequences loop over the PyTorch path")
    monkeypatch.setattr(mlstm_op, "_mlstm_packed", lambda *a, **k: pytest.fail("the per-sequence loop ran"))
    monkeypatch.setattr(mlstm_bwd, "GATE_BLOCK", 16)      # the gate gradients' sums cross blocks
    monkeypatch.setattr(mlstm_gates, "CHAIN_SLOTS", 2)    # a program walks several chains
    # several feature blocks; the intra-chunk matrices formed per block, or once (`scores`, `dscores`)
    monkeypatch.setattr(mlstm_op, "CONFIG_OVERRIDES", dict(block_k_grad=16, block_v=16, scores=once, dscores=once))
    torch.manual_seed(sum(lengths))
    S = sum(lengths)
    x = make_inputs(1, 2, S, 16, 32, device, dtype=dtype, **GATES[gates])
    cu = torch.tensor([0] + lengths, device=device).cumsum(0)
    reference = packed_recurrent(cu)
    x64 = {k: t.double().requires_grad_() for k, t in x.items()}
    leaves = {k: t.clone().requires_grad_() for k, t in x.items()}
    h = mlstm_chunkwise(**leaves, cu_seqlens=cu, chunk_size=16)
    h_ref = reference(**x64)
    weight = torch.randn(h_ref.shape, dtype=torch.float64, device=device)
    (h.double() * weight).sum().backward()
    (h_ref * weight).sum().backward()
    fw_tol, bw_tol = TOL[dtype]
    assert_close(h, h_ref, fw_tol, "h")
    for name in ("q", "k", "v", "i", "f"):
        assert_close(leaves[name].grad, x64[name].grad, bw_tol, f"d{name}")


@pytest.mark.parametrize("tops", [False, True])
@pytest.mark.parametrize("lengths", [[5, 51, 40, 20, 1, 70, 3, 16, 32], [300]])
def test_chain_starts_list_each_chain_once_longest_first(lengths, tops, device):
    """The state kernels' work list over a packed row: every chain's start exactly once (chunk
    c starts a chain where it does not continue chunk c - 1's state; the backward's list adds
    the last chunk), the longest chains first."""
    from xlstm_triton.utils import use_kernels
    if not use_kernels(torch.zeros(1, device=device)):
        pytest.skip("a Triton kernel: the GPU or TRITON_INTERPRET=1")
    L, S = 16, sum(lengths)
    NC = -(-S // L)
    cu = torch.tensor([0] + lengths, device=device).cumsum(0)
    first = [0] * S
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        first[a:b] = [a] * (b - a)

    def carries(c):        # chunk c's last step is in a sequence begun before c, going on after it
        end = min(c * L + L, S)
        return first[end - 1] < c * L and (end == S or first[end] != end)

    starts = [c for c in range(NC) if not carries(c) or (tops and c == NC - 1)]
    chains, count, _ = mlstm_gates.chain_starts(cu.to(torch.int32), S, NC, L, tops=tops)
    got = chains[:int(count)].tolist()
    assert sorted(got) == starts
    after = dict(zip(starts, starts[1:] + [NC])) if not tops else dict(zip(starts, [-1] + starts[:-1]))
    length = [abs(after[c] - c) for c in got]
    assert length == sorted(length, reverse=True), (got, length)


@triton.jit
def _search_kernel(cu_ptr, NSEQ, STEPS, seq_ptr, first_ptr, S, TOTAL, BLOCK: tl.constexpr):
    pos = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    seq, first = packed_sequence(cu_ptr, NSEQ, STEPS, pos, S)
    tl.store(seq_ptr + pos, seq, mask=pos < TOTAL)
    tl.store(first_ptr + pos, first, mask=pos < TOTAL)


@pytest.mark.parametrize("lengths", [[1], [7], [3, 0, 0, 5, 1], [0, 4, 9, 0], [1] * 37, [2, 300, 0, 1, 64, 17]])
def test_packed_sequence_search_finds_each_steps_sequence(lengths, device):
    """The kernels' binary search over the offsets: every step's sequence (empty ones skipped)
    and its first step, and steps past the end count as the last step."""
    from xlstm_triton.utils import packed_kernel_args, packed_sequence_ids, use_kernels
    if not use_kernels(torch.zeros(1, device=device)):
        pytest.skip("a Triton kernel: the GPU or TRITON_INTERPRET=1")
    S = sum(lengths)
    cu = torch.tensor([0] + lengths, device=device).cumsum(0).to(torch.int32)
    total = S + 5
    seq = torch.full((total,), -1, dtype=torch.int32, device=device)
    first = torch.full((total,), -1, dtype=torch.int32, device=device)
    _search_kernel[(triton.cdiv(total, 64),)](*packed_kernel_args(cu, None), seq, first, S, total, BLOCK=64)
    ids = packed_sequence_ids(cu, S)
    starts = cu[:-1][ids.long()]
    assert seq[:S].tolist() == ids.tolist()
    assert first[:S].tolist() == starts.tolist()
    assert seq[S:].tolist() == [ids[-1].item()] * 5 and first[S:].tolist() == [starts[-1].item()] * 5
    # the reference, from the offsets alone
    bounds = cu.tolist()
    want = [max(j for j in range(len(lengths)) if bounds[j] <= t) for t in range(S)]
    assert ids.tolist() == want


def test_checked_offsets_keep_no_index():
    """Offsets a model checked once per step keep no per-step index: the kernels search the
    offsets themselves, so packed rows need no memory beyond them."""
    from xlstm_triton.checks import checked_cu_seqlens
    checked = checked_cu_seqlens(torch.tensor([0, 3, 3, 7]), 7, "cpu")
    assert checked.dtype == torch.int32 and checked.tolist() == [0, 3, 3, 7]
    assert not [k for k, v in vars(checked).items() if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize("once", [False, True], ids=["scores_per_block", "scores_once"])
def test_packed_sequences_fused_keep_non_finite_values_inside_their_sequence(once, device, monkeypatch):
    """A NaN in one packed sequence's input reaches no other sequence's output (fused path)."""
    from xlstm_triton.utils import use_kernels
    if not use_kernels(torch.zeros(1, device=device)):
        pytest.skip("CPU without TRITON_INTERPRET=1: packed sequences loop over the PyTorch path")
    monkeypatch.setattr(mlstm_op, "_mlstm_packed", lambda *a, **k: pytest.fail("the per-sequence loop ran"))
    monkeypatch.setattr(mlstm_op, "CONFIG_OVERRIDES", dict(block_v=16, scores=once))    # two DV blocks
    lengths = [7, 5, 20]
    x = make_inputs(1, 1, sum(lengths), 16, 32, device)
    x["v"][0, 0, 9] = float("nan")                      # inside the second sequence (steps 7..11)
    x["f"][0, 0, 10] = float("nan")
    cu = torch.tensor([0] + lengths, device=device).cumsum(0)
    h = mlstm_chunkwise(**x, cu_seqlens=cu, chunk_size=16)
    finite = torch.isfinite(h[0, 0]).all(-1)
    assert finite[:7].all() and finite[12:].all(), finite.tolist()
    assert not finite[9:12].any()
    assert_close(h[:, :, 12:], packed_recurrent(torch.tensor([0, 20]))(
        *(x[k][:, :, 12:].double() for k in ("q", "k", "v", "i", "f"))), TOL[torch.float32][0], "h after")


def test_packed_sequences_bad_offsets_are_named(device):
    x = make_inputs(1, 1, 10, 16, 16, device)
    with pytest.raises(ValueError, match=r"cu_seqlens: expected offsets from 0 to the packed length 10"):
        mlstm_chunkwise(**x, cu_seqlens=torch.tensor([0, 4, 9], device=device))
    with pytest.raises(ValueError, match=r"c_initial: expected shape \(2, 1, 16, 16\) = \(N, NH, DQK, DV\)"):
        mlstm_chunkwise(**x, c_initial=torch.zeros(1, 1, 16, 16, device=device),
                        cu_seqlens=torch.tensor([0, 4, 10], device=device))


def test_extreme_gates(device, poison):
    x = make_inputs(1, 2, 65, 16, 32, device, states=True, igate=(-30.0, 15.0), fgate=(-12.0, 12.0))
    check_against_reference(x, torch.float32, reference=mlstm_parallel, chunk_size=16)


@pytest.mark.parametrize("once", [False, True])
def test_several_tiles_and_feature_blocks_per_program(once, device, poison, monkeypatch):
    # Chunks of 4 tiles and heads split into several DQK / DV blocks in every kernel; the
    # intra-chunk matrices formed per feature block, or once (`scores`, `dscores`).
    monkeypatch.setattr(mlstm_op, "CONFIG_OVERRIDES", dict(
        tile=16, tile_states=16, block_k=16, block_v=16, block_k_states=16, block_v_states=32,
        block_k_grad=16, block_v_grad=16, scores=once, dscores=once))
    x = make_inputs(2, 1, 70, 48, 40, device, states=True)     # DQK, DV not powers of two
    check_against_reference(x, torch.float32, chunk_size=64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_intra_chunk_matrices_once_give_the_per_block_results(dtype, device, poison, monkeypatch):
    """The intra-chunk matrices formed once (`scores` in the forward, `dscores` in the
    backward) are the ones the kernels form per feature block, in the precision the products
    take them: the same h and gradients to rounding (the normalizer's float32 sums in another
    order)."""
    B, NH, S, DQK, DV, L, bk = (2, 2, 300, 256, 256, 128, 128) if GPU else (1, 2, 45, 32, 32, 16, 16)
    x = make_inputs(B, NH, S, DQK, DV, device, dtype=dtype, states=True)
    runs = []
    for once in (False, True):
        monkeypatch.setattr(mlstm_op, "CONFIG_OVERRIDES", dict(block_k_grad=bk, block_k=bk, block_v=bk,
                                                               scores=once, dscores=once))
        out, g, weights = run_and_grad(mlstm_chunkwise, x, runs[0][2] if runs else None, chunk_size=L)
        runs.append((out, g, weights))
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert_close(runs[1][0][0], runs[0][0][0], tol, "h")
    for name in runs[0][1]:
        assert_close(runs[1][1][name], runs[0][1][name], tol, f"d{name}")


@pytest.mark.parametrize("L", [16, 32, 128])
def test_chunk_sizes_longer_and_shorter_than_sequence(L, device, poison):
    x = make_inputs(1, 1, 50, 16, 16, device, states=True)
    check_against_reference(x, torch.float32, chunk_size=L)


def test_carrying_the_state_equals_one_call(device, poison):
    x = make_inputs(2, 2, 53, 16, 32, device, states=True)
    h, (c, n, m) = mlstm_chunkwise(**x, return_last_states=True, chunk_size=16)
    cut = 21
    first = {k: (t[:, :, :cut] if k in "qkvif" else t) for k, t in x.items()}
    h1, (c1, n1, m1) = mlstm_chunkwise(**first, return_last_states=True, chunk_size=16)
    second = {k: t[:, :, cut:] for k, t in x.items() if k in "qkvif"}
    h2, (c2, n2, m2) = mlstm_chunkwise(**second, c_initial=c1, n_initial=n1, m_initial=m1,
                                       return_last_states=True, chunk_size=32)
    assert_close(torch.cat([h1, h2], dim=2), h, 1e-5, "h")
    for a, b, name in zip((c2, n2, m2), (c, n, m), "cnm"):
        assert_close(a, b, 1e-5, name)


def test_non_contiguous_inputs_and_inputs_untouched(device):
    B, NH, S, D = 2, 2, 33, 16
    qkv = torch.randn(B, S, NH, 3 * D, device=device)              # a fused projection's layout
    q, k, v = (t.transpose(1, 2) for t in qkv.split(D, dim=-1))     # strided views
    i, f = torch.randn(2, B, S, NH, device=device).transpose(2, 3)
    before = [t.clone() for t in (q, k, v, i, f)]
    h = mlstm_chunkwise(q, k, v, i, f, chunk_size=16)
    ref = mlstm_recurrent(*(t.double() for t in (q, k, v, i, f)))
    assert_close(h, ref, TOL[torch.float32][0], "h")
    for a, b in zip((q, k, v, i, f), before):
        assert torch.equal(a, b), "an input was modified"


def test_no_states_asked_no_state_gradients(device):
    x = make_inputs(1, 1, 20, 16, 16, device)
    leaves = {k: t.requires_grad_() for k, t in x.items()}
    mlstm_chunkwise(**leaves, chunk_size=16).sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in leaves.values())


# ---------------------------------------------------------------- the PyTorch CPU path

@pytest.mark.parametrize("S,L", [(1, 16), (45, 16), (100, 64)])
def test_torch_path_matches_reference(S, L):
    x = make_inputs(2, 2, S, 16, 24, "cpu", states=True)
    check_against_reference(x, torch.float32, fn=mlstm_chunkwise_torch, chunk_size=L)


def test_torch_path_extreme_gates():
    x = make_inputs(1, 2, 40, 8, 8, "cpu", states=True, igate=(-30.0, 15.0), fgate=(-12.0, 12.0))
    check_against_reference(x, torch.float32, reference=mlstm_parallel, fn=mlstm_chunkwise_torch,
                            chunk_size=16)


def test_dispatch_without_interpreter_uses_torch_path(monkeypatch):
    import xlstm_triton.utils as utils

    monkeypatch.setattr(utils, "triton_interpret", lambda: False)
    calls = []
    monkeypatch.setattr(mlstm_op, "mlstm_chunkwise_torch",
                        lambda *a, **k: calls.append(1) or mlstm_chunkwise_torch(*a, **k))
    x = make_inputs(1, 1, 5, 16, 16, "cpu")
    mlstm_chunkwise(**x)
    assert calls == [1]


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("change,error,words", [
    (dict(k=torch.randn(1, 2, 9, 16)), ValueError, "k: expected shape (1, 2, 8, 16)"),
    (dict(v=torch.randn(1, 3, 8, 16)), ValueError, "v: expected shape"),
    (dict(i=torch.randn(1, 2, 7)), ValueError, "i: expected shape (1, 2, 8)"),
    (dict(q=torch.randn(2, 8, 16)), ValueError, "q: expected 4 dims"),
    (dict(q=torch.ones(1, 2, 8, 16, dtype=torch.int64)), TypeError, "q: expected dtype"),
    (dict(v=torch.randn(1, 2, 8, 16, dtype=torch.float16)), TypeError, "one dtype"),
    (dict(c_initial=torch.randn(1, 2, 16, 15)), ValueError, "c_initial: expected shape (1, 2, 16, 16)"),
    (dict(n_initial=torch.randn(1, 2, 15)), ValueError, "n_initial: expected shape"),
    (dict(m_initial=torch.randn(1, 2)), ValueError, "m_initial: expected shape (1, 2, 1)"),
    (dict(chunk_size=48), ValueError, "chunk_size"),
    (dict(chunk_size=8), ValueError, "chunk_size"),
    (dict(q="not a tensor"), TypeError, "q: expected a torch.Tensor"),
])
def test_bad_input_is_named(change, error, words):
    x = make_inputs(1, 2, 8, 16, 16, "cpu")
    x.update(change)
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        mlstm_chunkwise(**x)


@pytest.mark.gpu
def test_mixed_devices_are_refused():
    x = make_inputs(1, 2, 8, 16, 16, "cuda")
    x["f"] = x["f"].cpu()
    with pytest.raises(ValueError, match="f: expected device cuda"):
        mlstm_chunkwise(**x)


# ---------------------------------------------------------------- GPU: larger shapes

@pytest.mark.gpu
@pytest.mark.parametrize("S", [1, 7, 63, 65, 100, 257, 1000])
@pytest.mark.parametrize("L", [64, 128, 256])
def test_gpu_odd_lengths_bf16(S, L, poison):
    x = make_inputs(2, 3, S, 64, 128, "cuda", dtype=torch.bfloat16, states=True)
    check_against_reference(x, torch.bfloat16, reference=mlstm_parallel, chunk_size=L)


@pytest.mark.gpu
@pytest.mark.parametrize("DQK,DV,dtype", [
    (16, 16, torch.bfloat16), (32, 64, torch.bfloat16), (128, 256, torch.bfloat16),
    (256, 512, torch.bfloat16), (512, 512, torch.bfloat16), (80, 48, torch.bfloat16),
    (64, 128, torch.float32), (256, 512, torch.float32), (64, 128, torch.float16), (256, 512, torch.float16)])
def test_gpu_head_dims(DQK, DV, dtype, poison):
    x = make_inputs(2, 2, 200, DQK, DV, "cuda", dtype=dtype, states=True)
    check_against_reference(x, dtype, reference=mlstm_parallel)


@pytest.mark.gpu
@pytest.mark.parametrize("fill", [False, True])
def test_gpu_state_tiles_follow_the_walk_count(fill, poison):
    # Heads of (512, 512): 16 tiles of 128 x 128 per (batch, head) walk; fewer programs than SMs
    # -> 64-row tiles.
    B = num_sms(torch.device("cuda")) // 16 + 1 if fill else 2
    x = make_inputs(B, 1, 200, 512, 512, "cuda", dtype=torch.bfloat16, states=True)
    assert mlstm_op._config(x["q"], x["v"], 64).block_k_states == (128 if fill else 64)
    check_against_reference(x, torch.bfloat16, reference=mlstm_parallel, chunk_size=64)


@pytest.mark.gpu
def test_gpu_extreme_gates(poison):
    x = make_inputs(2, 2, 300, 64, 64, "cuda", dtype=torch.float32, states=True,
                    igate=(-30.0, 15.0), fgate=(-12.0, 12.0))
    check_against_reference(x, torch.float32, reference=mlstm_parallel, chunk_size=64)


@pytest.mark.gpu
def test_gpu_compiles_fullgraph_and_captures_in_cuda_graph():
    x = make_inputs(2, 2, 128, 64, 64, "cuda", dtype=torch.bfloat16)
    expected = mlstm_chunkwise(**x)

    @torch.compile(fullgraph=True)
    def model(q, k, v, i, f):
        return mlstm_chunkwise(q, k, v, i, f) * 2.0

    assert_close(model(**x), expected * 2.0, 1e-2, "compiled")
    static = {k: t.clone() for k, t in x.items()}
    mlstm_chunkwise(**static)                       # warm up (compile) outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = mlstm_chunkwise(**static)
    fresh = make_inputs(2, 2, 128, 64, 64, "cuda", dtype=torch.bfloat16)
    for k in static:
        static[k].copy_(fresh[k])
    graph.replay()
    assert_close(out, mlstm_chunkwise(**fresh), 1e-6, "graph replay")


@pytest.mark.gpu
def test_gpu_no_recompile_across_batch_and_length():
    from xlstm_triton.ops.mlstm import bwd, fwd

    kernels = [fwd.chunkwise_fwd_states_kernel, fwd.chunkwise_fwd_output_kernel, bwd.chunkwise_bwd_dq_kernel]

    def compiled():   # JITFunction.device_caches[device][0] is its dict of compiled variants
        return sum(len(entry[0]) for kern in kernels for entry in kern.device_caches.values())

    def step(B, S):
        x = make_inputs(B, 2, S, 64, 64, "cuda", dtype=torch.bfloat16)
        leaves = {k: t.requires_grad_() for k, t in x.items()}
        mlstm_chunkwise(**leaves, chunk_size=64).sum().backward()

    step(2, 256)
    before = compiled()
    for B, S in [(3, 256), (1, 512), (5, 1024), (2, 2048)]:
        step(B, S)
    assert compiled() == before, "kernels recompiled for a new batch or length"


def test_gradient_from_the_final_state_alone(device, poison):
    # A loss on the returned state only: dh never reaches the op (autograd sends None).
    x = make_inputs(1, 2, 40, 16, 16, device, states=True)
    leaves = {k: (t.clone().requires_grad_(k in NAMES)) for k, t in x.items()}
    _, (c, n, _) = mlstm_chunkwise(**leaves, return_last_states=True, chunk_size=16)
    (c.sum() + n.sum()).backward()
    ref = {k: (t.double().clone().requires_grad_(k in NAMES)) for k, t in x.items()}
    _, (cr, nr, _) = mlstm_recurrent(**ref, return_last_states=True)
    (cr.sum() + nr.sum()).backward()
    for k in NAMES:
        if ref[k].grad is None:          # q only reaches h: no gradient at all
            assert leaves[k].grad is None or not leaves[k].grad.any(), f"d{k} should be zero"
        else:
            assert_close(leaves[k].grad, ref[k].grad, TOL[torch.float32][1], f"d{k}")


def test_compiled_backward_with_strided_inputs():
    # The fake (meta) backward must promise the strides the kernels return (contiguous).
    B, S, NH, D = 2, 16, 2, 16

    def f(x, i, fg):
        q = x.view(B, S, NH, D).transpose(1, 2)          # a strided (B, NH, S, D) view
        return mlstm_chunkwise(q, q, q, i, fg, chunk_size=16)

    x = torch.randn(B, S, NH * D, requires_grad=True)
    i, fg = torch.randn(2, B, NH, S)
    torch.compile(f, backend="aot_eager")(x, i, fg).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    f(x2, i, fg).sum().backward()
    assert_close(x.grad, x2.grad, 1e-6, "dx")


# ---------------------------------------------------------------- non-finite values, causality

@pytest.mark.parametrize("fn", [mlstm_chunkwise, mlstm_chunkwise_torch], ids=["op", "torch_path"])
@pytest.mark.parametrize("name", ["q", "k", "v", "i", "f"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("once", [False, True], ids=["scores_per_block", "scores_once"])
def test_non_finite_values_reach_only_their_own_and_later_steps(fn, name, value, once, device, monkeypatch):
    # A NaN or Inf at step `pos` must leave every earlier output untouched, inside its chunk
    # too: the set of non-finite outputs is the recurrence's, and the finite ones match it.
    # (f = -inf, "forget everything", gives finite outputs in the recurrence.) The output
    # kernel's products with v take a second, exact path only where the first is not finite;
    # with `once` the chunk's scores and the normalizer's dot come from the scores kernel.
    if once and fn is mlstm_chunkwise_torch:
        pytest.skip("the config is the kernels'")
    monkeypatch.setattr(mlstm_op, "CONFIG_OVERRIDES", dict(block_v=16, scores=once))    # two DV blocks
    B, NH, S, D, L = 2, 2, 40, 32, 16
    for pos in (0, 7, 16, 17, 39):    # first step, inside a chunk, chunk starts, last step
        x = make_inputs(B, NH, S, D, D, device)
        if name in "qkv":
            x[name][1, 0, pos, 3] = value
        else:
            x[name][1, 0, pos] = value
        ref = mlstm_recurrent(**{k: t.double() for k, t in x.items()})
        out = fn(**x, chunk_size=L)
        finite = torch.isfinite(ref)
        assert torch.equal(torch.isfinite(out).cpu(), finite.cpu()), \
            f"{name}[{pos}] = {value}: non-finite outputs {(~torch.isfinite(out)).sum().item()}, " \
            f"recurrence {(~finite).sum().item()}"
        assert_close(out[finite], ref[finite], TOL[torch.float32][0], f"finite outputs ({name}[{pos}])")


def test_forget_everything_gate_gradients(device, poison):
    # f = -inf at a few steps (inside a chunk and at a chunk start): outputs, states and every
    # gradient but f's stay finite and match the recurrence.
    x = make_inputs(1, 2, 40, 16, 16, device, states=True)
    x["f"][0, 0, 5] = float("-inf")
    x["f"][0, 1, 16] = float("-inf")
    x64 = {k: t.double() for k, t in x.items()}
    ref_out, ref_grads, weights = run_and_grad(mlstm_recurrent, x64)
    out, grads, _ = run_and_grad(mlstm_chunkwise, x, weights, chunk_size=16)
    for a, b, name in zip(out, ref_out, ["h", "c_last", "n_last", "m_last"]):
        assert_close(a, b, TOL[torch.float32][0], name)
    for name in ("q", "k", "v", "i", "c_initial", "n_initial"):
        assert_close(grads[name], ref_grads[name], TOL[torch.float32][1], f"d{name}")
    finite_f = torch.isfinite(x["f"])
    assert_close(grads["f"][finite_f], ref_grads["f"][finite_f], TOL[torch.float32][1], "df")
    assert (grads["f"][~finite_f] == 0).all(), "the floored forget gate gets no gradient"


def test_nan_gate_gives_nan_stabilizer_and_state(device):
    # A NaN gate must not vanish in a maximum (tl.maximum drops NaN): the final m, c, n are NaN.
    for name in ("i", "f"):
        x = make_inputs(1, 1, 20, 16, 16, device)
        x[name][0, 0, 3] = float("nan")
        h, (c, n, m) = mlstm_chunkwise(**x, chunk_size=16, return_last_states=True)
        assert torch.isnan(m).all() and torch.isnan(c).all() and torch.isnan(n).all(), name
        assert torch.isfinite(h[0, 0, :3]).all() and torch.isnan(h[0, 0, 3:]).all(), name


# ---------------------------------------------------------------- torch.compile

COMPILE_CASES = [  # (S, gate dtype, q/k/v a transposed view of a (B, S, NH * D) tensor)
    (16, torch.float32, False),
    (20, torch.float32, False),     # S not a multiple of the chunk: padded gate gradients
    (33, torch.float32, True),
    (20, torch.bfloat16, False),
]


@pytest.mark.parametrize("S,gate_dtype,strided", COMPILE_CASES)
def test_compiled_forward_and_backward_inductor(S, gate_dtype, strided, device):
    # Inductor checks every custom-op output against the fake implementation's layout (size
    # and strides): a gradient returned as a strided view of a padded buffer fails here.
    B, NH, D = 2, 2, 16
    dtype = torch.float32

    def f(x, i, fg):
        if strided:
            q = x.view(B, S, NH, D).transpose(1, 2)
        else:
            q = x.view(B, NH, S, D)
        return mlstm_chunkwise(q, q * 0.5, q.flip(-1), i, fg, chunk_size=16)

    torch._dynamo.reset()
    x = torch.randn(B, S, NH * D, device=device, dtype=dtype)
    i = torch.randn(B, NH, S, device=device, dtype=gate_dtype)
    fg = (torch.randn(B, NH, S, device=device) + 2).to(gate_dtype)
    w = torch.randn(B, NH, S, D, device=device, dtype=torch.float64)
    results = []
    for fn in (torch.compile(f, backend="inductor", fullgraph=True), f):
        leaves = [t.clone().requires_grad_() for t in (x, i, fg)]
        out = fn(*leaves)
        (out.double() * w).sum().backward()
        for t in [out] + [t.grad for t in leaves]:
            assert t.is_contiguous() or t is out
        results.append([out] + [t.grad for t in leaves])
    for a, b, name in zip(*results, ["h", "dx", "di", "df"]):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert_close(a, b, 1e-5, name)


# ---------------------------------------------------------------- float64 and empty batches

def test_float64_runs_the_pytorch_path_exactly(device):
    # float64 (what gradcheck runs with) takes the PyTorch path on every device, in float64.
    x = {k: t.double() for k, t in make_inputs(1, 2, 20, 16, 16, device, states=True).items()}
    ref_out, ref_grads, weights = run_and_grad(mlstm_recurrent, x)
    out, grads, _ = run_and_grad(mlstm_chunkwise, x, weights, chunk_size=16)
    for a, b, name in zip(out, ref_out, ["h", "c_last", "n_last", "m_last"]):
        assert a.dtype == torch.float64
        assert_close(a, b, 1e-10, name)
    for name in grads:
        assert_close(grads[name], ref_grads[name], 1e-10, f"d{name}")


@pytest.mark.parametrize("B,NH", [(0, 2), (2, 0)])
def test_empty_batch_or_heads_give_empty_results(B, NH, device):
    x = make_inputs(B, NH, 20, 16, 32, device, states=True)
    leaves = {k: t.requires_grad_(k in NAMES) for k, t in x.items()}
    h, (c, n, m) = mlstm_chunkwise(**leaves, return_last_states=True, chunk_size=16)
    assert h.shape == (B, NH, 20, 32) and c.shape == (B, NH, 16, 32) and m.shape == (B, NH, 1)
    (h.sum() + c.sum()).backward()
    for name in NAMES:
        assert leaves[name].grad.shape == x[name].shape, name


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_results_do_not_depend_on_stale_memory(dtype):
    # The same inputs twice, the caching allocator's free memory filled with different values in
    # between: every output and gradient must be bitwise the same (a kernel variant that read
    # stale memory, or raced, changed h and the gradients in the last bits).
    x = make_inputs(2, 2, 200, 256, 512, "cuda", dtype=dtype, states=True)
    weights = None
    results = []
    for fill in (float("nan"), 0.0, -7.0):
        junk = torch.full((1 << 28,), fill, device="cuda")
        del junk
        out, grads, weights = run_and_grad(mlstm_chunkwise, x, weights)
        results.append(list(out) + [grads[k] for k in NAMES])
    for other in results[1:]:
        for a, b, name in zip(results[0], other, ["h", "c", "n", "m"] + [f"d{k}" for k in NAMES]):
            assert torch.equal(a, b), f"{name} changed between identical calls"


def test_seq_major_inputs_get_seq_major_outputs(device):
    """q, k, v as transposed views of (B, S, NH * D) projections: h and dq, dk, dv come back in
    (B, S, NH, D) memory order (a layer reshapes them without copies), with the same values as
    for contiguous inputs."""
    if not mlstm_op.use_kernels(torch.zeros(1, device=device)):
        pytest.skip("CPU without TRITON_INTERPRET=1: the PyTorch path returns contiguous tensors")
    torch.manual_seed(3)
    B, S, NH, DQK, DV = 2, 37, 3, 16, 32
    proj = [torch.randn(B, S, NH * d, device=device) for d in (DQK, DQK, DV)]
    i, f = torch.randn(B, NH, S, device=device), torch.randn(B, NH, S, device=device) + 2
    dh = torch.randn(B, NH, S, DV, device=device)
    results = []
    for seq_major in (True, False):
        leaves = [p.clone().requires_grad_() for p in proj]
        qkv = [t.unflatten(-1, (NH, -1)).transpose(1, 2) for t in leaves]
        if not seq_major:
            qkv = [t.contiguous() for t in qkv]
        h = mlstm_chunkwise(*qkv, i, f, chunk_size=16)
        if seq_major:
            assert h.transpose(1, 2).is_contiguous()
        else:
            assert h.is_contiguous()
        (h * dh).sum().backward()
        assert all(t.grad.is_contiguous() for t in leaves)     # (B, S, NH * D), as the projections
        results.append([h.detach()] + [t.grad for t in leaves])
    for a, b, name in zip(*results, ["h", "dq", "dk", "dv"]):
        assert_close(a, b, 1e-6, name)


def _capped_reference(cap):
    """The float64 recurrence on gates soft-capped by PyTorch beforehand."""
    def reference(q, k, v, i, f, **kw):
        return mlstm_recurrent(q, k, v, cap * torch.tanh(i / cap), cap * torch.tanh(f / cap), **kw)
    return reference


@pytest.mark.parametrize("states", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gate_soft_cap_inside_the_kernels(states, dtype, device, poison):
    """gate_soft_cap=c equals the recurrence on c * tanh(i / c), c * tanh(f / c): outputs, states and
    every gradient (di, df through the cap's derivative), with gates far beyond the cap, and the
    gates given as strided views of a (B, S, 2 NH) projection, as the 7B layer passes them."""
    torch.manual_seed(3)
    B, NH, S, cap = 2, 3, 45, 5.0
    x = make_inputs(B, NH, S, 16, 32, device, dtype=dtype, states=states, igate=(-40.0, 40.0), fgate=(-30.0, 30.0))
    proj = torch.cat([x.pop("i"), x.pop("f")], dim=1).transpose(1, 2).contiguous()   # (B, S, 2 NH)

    def run(fn, proj, x, **kw):
        proj = proj.clone().requires_grad_()
        leaves = {k: t.clone().requires_grad_(k in NAMES) for k, t in x.items()}
        i, f = proj[..., :NH].transpose(1, 2), proj[..., NH:].transpose(1, 2)
        h, (c, n, m) = fn(**leaves, i=i, f=f, return_last_states=True, **kw)
        torch.manual_seed(4)
        loss = sum((o.double() * torch.randn(o.shape, dtype=torch.float64, device=o.device)).sum() for o in (h, c, n))
        loss.backward()
        return [h, c, n, m], {"gates": proj.grad, **{k: leaves[k].grad for k in leaves if k in NAMES}}

    ref_out, ref_grads = run(_capped_reference(cap), proj.double(), {k: t.double() for k, t in x.items()})
    out, grads = run(mlstm_chunkwise, proj, x, chunk_size=16, gate_soft_cap=cap)
    fw_tol, bw_tol = TOL[dtype]
    for a, b, name in zip(out, ref_out, ["h", "c_last", "n_last", "m_last"]):
        assert_close(a, b, fw_tol, name)
    for name in ref_grads:
        assert_close(grads[name], ref_grads[name], bw_tol, f"d{name}")


def test_gate_soft_cap_is_checked(device):
    x = make_inputs(1, 1, 8, 16, 16, device)
    for bad in (0.0, -1.0, float("nan"), "15", True):
        with pytest.raises(ValueError, match="gate_soft_cap"):
            mlstm_chunkwise(**x, gate_soft_cap=bad)
