"""Context parallelism of the mLSTM op (`mlstm_chunkwise(..., cp_group=)`): a sequence split in
uneven pieces over 2 and 3 ranks gives the outputs, the final state and every gradient (inputs
and initial state) of one run of the whole sequence. Ranks are processes spawned here: gloo on
the CPU, and NCCL with a GPU each where the machine has enough (float32 and bfloat16). The
reference is the op itself on the whole sequence (checked against float64 references
elsewhere) in the same dtype: in float32 they agree to rounding (1e-4, well below a missing
term); in bfloat16 to the test helpers' bfloat16 tolerances (h and the gradients are rounded
to bfloat16 where the chunking differs)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.distributed import EIGHT_CPU_RANKS, EIGHT_RANKS_REASON, end_process_group, rank_device, reference_device
from tests.helpers import TOL, assert_close
from xlstm_triton import mlstm_chunkwise

NH, DQK, DV, L = 2, 16, 32, 16


def _inputs(S, states, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = dict(q=torch.randn(1, NH, S, DQK, generator=g), k=torch.randn(1, NH, S, DQK, generator=g),
             v=torch.randn(1, NH, S, DV, generator=g), i=torch.randn(1, NH, S, generator=g) * 2,
             f=torch.randn(1, NH, S, generator=g) + 3)          # open forget gates: the state carries
    if states:
        x.update(c_initial=torch.randn(1, NH, DQK, DV, generator=g), n_initial=torch.randn(1, NH, DQK, generator=g),
                 m_initial=torch.randn(1, NH, 1, generator=g))
    return x


def _weights(S):
    """Weights of the loss: on h (1, NH, S, DV) and on the final state's c and n."""
    g = torch.Generator().manual_seed(1)
    return (torch.randn(1, NH, S, DV, generator=g), torch.randn(1, NH, DQK, DV, generator=g),
            torch.randn(1, NH, DQK, generator=g))


def _state_loss(last, wc, wn):
    """A weighted sum of the final state in true scale (c exp(m)), as a later piece uses it."""
    c, n, m = last
    return (c * m[..., None].exp() * wc).sum() + (n * m.exp() * wn).sum()


def _rank(rank, world, pieces, states, path, backend, dtype):
    device = rank_device(rank, backend, torch_path=False)     # gloo ranks: the kernels in the interpreter
    dist.init_process_group(backend, init_method=f"file://{path}/store", rank=rank, world_size=world)
    S = sum(pieces)
    lo, hi = sum(pieces[:rank]), sum(pieces[:rank + 1])
    mine = {k: (t[:, :, lo:hi] if k in "qkvif" else t).to(device, dtype if k in "qkv" else torch.float32)
            .clone().requires_grad_()
            for k, t in _inputs(S, states).items() if k in "qkvif" or rank == 0}   # the initial state: rank 0's
    h, last = mlstm_chunkwise(**mine, return_last_states=True, chunk_size=L, cp_group=dist.group.WORLD)
    w, wc, wn = (t.to(device) for t in _weights(S))
    loss = (h.float() * w[:, :, lo:hi]).sum()
    if rank == world - 1:        # the sequence's final state
        loss = loss + _state_loss(last, wc, wn)
    loss.backward()
    torch.save({"h": h.detach().cpu(), "last": [t.detach().cpu() for t in last],
                "grads": {k: None if t.grad is None else t.grad.cpu() for k, t in mine.items()}}, f"{path}/rank{rank}.pt")
    end_process_group()


BACKENDS = [("gloo", torch.float32), ("nccl", torch.float32), ("nccl", torch.bfloat16)]


@pytest.mark.parametrize("backend, dtype", BACKENDS, ids=["gloo-fp32", "nccl-fp32", "nccl-bf16"])
@pytest.mark.parametrize("pieces, states", [([20, 13], False), ([7, 30, 16], True), ([16, 1, 40], False),
                                            ([5, 1, 19, 3, 16, 7, 1, 12], True)])
def test_pieces_over_ranks_equal_one_run(pieces, states, backend, dtype, tmp_path):
    """Eight pieces: pieces of one step, pieces inside a chunk and across chunk boundaries."""
    S, world = sum(pieces), len(pieces)
    if backend == "gloo" and world > 4 and not EIGHT_CPU_RANKS:
        pytest.skip(EIGHT_RANKS_REASON)
    device = reference_device(backend, world)
    mp.start_processes(_rank, args=(world, pieces, states, str(tmp_path), backend, dtype), nprocs=world,
                       start_method="spawn")
    ref = {k: t.to(device, dtype if k in "qkv" else torch.float32).clone().requires_grad_()
           for k, t in _inputs(S, states).items()}
    h, last = mlstm_chunkwise(**ref, return_last_states=True, chunk_size=L)
    w, wc, wn = (t.to(device) for t in _weights(S))
    ((h.float() * w).sum() + _state_loss(last, wc, wn)).backward()
    fwd, bwd = (1e-4, 1e-4) if dtype == torch.float32 else TOL[dtype]
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    assert_close(torch.cat([g["h"] for g in got], dim=2), h.cpu(), fwd, "h")
    c, n, m = got[-1]["last"]
    last = [t.cpu() for t in last]
    assert_close(c * m[..., None].exp(), last[0] * last[2][..., None].exp(), fwd, "final c (true scale)")
    assert_close(n * m.exp(), last[1] * last[2].exp(), fwd, "final n (true scale)")
    for k in "qkvif":
        assert_close(torch.cat([g["grads"][k] for g in got], dim=2), ref[k].grad.cpu(), bwd, f"d{k}")
    if states:
        for k in ("c_initial", "n_initial"):
            assert_close(got[0]["grads"][k], ref[k].grad.cpu(), bwd, f"d {k} (rank 0)")


def _mismatched_rank(rank, world, path, level):
    """The op (rank 1: one head instead of two) or a model (rank 1: one sequence where rank 0
    has two) over mismatched pieces; each rank saves the error it raised."""
    os.environ["TRITON_INTERPRET"] = "0"
    dist.init_process_group("gloo", init_method=f"file://{path}/store", rank=rank, world_size=world)
    if level == "op":
        x = _inputs(9, False)
        x = {k: t[:, :1] for k, t in x.items()} if rank == 1 else x
        run = lambda: mlstm_chunkwise(**x, cp_group=dist.group.WORLD)       # noqa: E731
    else:
        model, ids = _large_model(), _ids(8)[:2 - rank]
        run = lambda: model(ids, labels=ids, cp_group=dist.group.WORLD)      # noqa: E731
    try:
        run()
        message = "no error"
    except ValueError as e:
        message = str(e)
    torch.save(message, f"{path}/rank{rank}.pt")
    end_process_group()


@pytest.mark.parametrize("level, expected", [
    ("op", ["cp_group: every rank's piece must have the same (B, NH, DQK, DV)",
            "rank 0 has (B, NH, DQK, DV) = (1, 2, 16, 32), rank 1 (1, 1, 16, 32)"]),
    ("model", ["cp_group: every rank's piece must have the same (B, config checksum)",   # once per forward
               "rank 0 has (B, config checksum) = (2, ", "rank 1 (1, "])])
def test_mismatched_pieces_are_named_on_every_rank(level, expected, tmp_path):
    mp.start_processes(_mismatched_rank, args=(2, str(tmp_path), level), nprocs=2, start_method="spawn")
    for r in range(2):
        message = torch.load(tmp_path / f"rank{r}.pt")
        for part in expected:
            assert part in message, message


def test_cp_group_errors_without_a_process_group():
    x = _inputs(9, False)
    if dist.is_initialized():
        pytest.skip("a process group is initialized in this process")
    with pytest.raises(ValueError, match="cp_group: torch.distributed is not initialized"):
        mlstm_chunkwise(**x, cp_group=object())
    with pytest.raises(ValueError, match="cu_seqlens, cp_group: packed sequences are not split over ranks"):
        mlstm_chunkwise(**x, cp_group=object(), cu_seqlens=torch.tensor([0, 4, 9]))


def _model_rank(rank, world, pieces, path, family="large", backend="gloo"):
    """One rank's piece through the model; `family` "large-ddp": xLSTMLarge wrapped by
    `models.context_parallel` (DDP summing over a twin group) instead of cp_reduce_gradients."""
    device = rank_device(rank, backend)
    dist.init_process_group(backend, init_method=f"file://{path}/store", rank=rank, world_size=world)
    from xlstm_triton.models import context_parallel, cp_reduce_gradients
    model = (_paper_model() if family == "paper" else _large_model()).to(device)
    run = context_parallel(model, dist.group.WORLD) if family == "large-ddp" else model
    ids = (_ids(sum(pieces)) % model.config.vocab_size).to(device)
    lo, hi = sum(pieces[:rank]), sum(pieces[:rank + 1])
    piece = ids[:, lo:hi]
    group = dist.group.WORLD
    with torch.no_grad():
        logits = model(piece, cp_group=group)
    loss = run(piece, labels=piece, cp_group=group)
    loss.backward()
    if run is model:
        cp_reduce_gradients(model, group)
    torch.save({"logits": logits.cpu(), "loss": loss.detach().cpu(),
                "grads": {n: p.grad.cpu() for n, p in model.named_parameters()}}, f"{path}/rank{rank}.pt")
    end_process_group()


def _large_model():
    from tests.models.large_helpers import randomize_, tiny_config
    from xlstm_triton.models import xLSTMLarge
    torch.manual_seed(7)
    model = randomize_(xLSTMLarge(tiny_config()), seed=7, gate_scale=1.0)
    model.check_token_range = False
    return model.train()


def _ids(S):
    return torch.randint(0, 64, (2, S), generator=torch.Generator().manual_seed(8))


@pytest.mark.parametrize("family, pieces, backend", [
    ("large-ddp", [20, 13], "gloo"), ("large", [7, 30, 16], "gloo"), ("paper", [2, 17, 11], "gloo"),
    ("large-ddp", [20, 13], "nccl"), ("large", [7, 30, 2, 16], "nccl"), ("paper", [9, 17, 11, 5], "nccl")])
def test_model_over_ranks_equals_one_run(family, pieces, backend, tmp_path, monkeypatch):
    """xLSTMLarge / xLSTMLMModel (mLSTM blocks, their conv windows crossing the pieces, a piece
    of 2 steps included) with cp_group=: the pieces' logits, the loss (the whole sequences'
    mean, every piece's last position scored against the next piece's first token) and, after
    cp_reduce_gradients (or through `models.context_parallel`'s DDP: "large-ddp"), every
    parameter gradient equal one run of the whole sequences. gloo: CPU ranks on the ops'
    PyTorch path; nccl: a GPU per rank, the kernels, float32."""
    world = len(pieces)
    device = reference_device(backend, world)
    mp.start_processes(_model_rank, args=(world, pieces, str(tmp_path), family, backend), nprocs=world,
                       start_method="spawn")
    if backend == "gloo":
        import xlstm_triton.utils as xt_utils
        monkeypatch.setattr(xt_utils, "triton_interpret", lambda: False)
    model = (_paper_model() if family == "paper" else _large_model()).to(device)
    ids = (_ids(sum(pieces)) % model.config.vocab_size).to(device)
    with torch.no_grad():
        logits = model(ids)
    loss = model(ids, labels=ids)
    loss.backward()
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    assert_close(torch.cat([g["logits"] for g in got], dim=1), logits.cpu(), 1e-4, "logits")
    for g in got:
        assert_close(g["loss"], loss.detach().cpu(), 1e-5, "loss")
    for name, p in model.named_parameters():      # 1e-3: the gate biases' gradients are sums of ~1e-4 terms
        assert_close(got[0]["grads"][name], p.grad.cpu(), 1e-3, f"d {name}")


# ------------------------------------------------------------------ the paper architecture

def _conv_rank(rank, world, pieces, path):
    os.environ["TRITON_INTERPRET"] = "0"
    dist.init_process_group("gloo", init_method=f"file://{path}/store", rank=rank, world_size=world)
    from xlstm_triton.modules import CausalConv1d
    conv, x, w = _conv_setup(sum(pieces))
    lo, hi = sum(pieces[:rank]), sum(pieces[:rank + 1])
    piece = x[:, lo:hi].detach().requires_grad_()
    y = conv(piece, silu=True, cp_group=dist.group.WORLD)
    (y * w[:, lo:hi]).sum().backward()
    assert isinstance(conv, CausalConv1d)
    torch.save({"y": y.detach(), "dx": piece.grad, "dw": conv.conv.weight.grad, "db": conv.conv.bias.grad},
               f"{path}/rank{rank}.pt")
    end_process_group()


def _conv_setup(S):
    from xlstm_triton.modules import CausalConv1d
    torch.manual_seed(5)
    conv = CausalConv1d(6, 4).double()
    x = torch.randn(2, S, 6, dtype=torch.float64, requires_grad=True)
    return conv, x, torch.randn(2, S, 6, dtype=torch.float64)


@pytest.mark.parametrize("pieces", [[1, 2, 9]])
def test_conv_halo_over_ranks_equals_one_run(pieces, tmp_path):
    """CausalConv1d(..., cp_group=): each piece's window reaches K-1 = 3 inputs into the ranks
    before it, across pieces shorter than that (1 and 2 rows: the last rank's window spans
    both); outputs and the gradients of the input and the weights (summed over ranks) equal one
    run (float64)."""
    world = len(pieces)
    mp.start_processes(_conv_rank, args=(world, pieces, str(tmp_path)), nprocs=world, start_method="spawn")
    conv, x, w = _conv_setup(sum(pieces))
    y = conv(x, silu=True)
    (y * w).sum().backward()
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    assert_close(torch.cat([g["y"] for g in got], dim=1), y, 1e-12, "y")
    assert_close(torch.cat([g["dx"] for g in got], dim=1), x.grad, 1e-12, "dx")
    assert_close(sum(g["dw"] for g in got), conv.conv.weight.grad, 1e-12, "d weight")
    assert_close(sum(g["db"] for g in got), conv.conv.bias.grad, 1e-12, "d bias")


def _paper_model():
    from tests.helpers import small_lm
    model = small_lm(slstm_at=[], num_blocks=2, seed=3).train()
    model.check_token_range = False
    return model


def test_slstm_refuses_context_parallelism():
    """An sLSTM layer (and a model whose first block is one) names why it cannot be split."""
    from tests.helpers import small_lm
    model = small_lm(slstm_at=[0], num_blocks=2).train()
    ids = torch.randint(0, model.config.vocab_size, (1, 8))
    with pytest.raises(ValueError, match="cp_group: the sLSTM cannot be split over ranks"):
        model(ids, labels=ids, cp_group=object())
    with pytest.raises(ValueError, match="cp_group: a sequence split over ranks runs from a zero state"):
        model(ids, return_state=True, cp_group=object())


def _host_group_rank(rank, world, path):
    dist.init_process_group("gloo", init_method=f"file://{path}/store", rank=rank, world_size=world)
    from xlstm_triton.ops.mlstm import context_parallel as cp
    world_group = dist.group.WORLD
    real_backend = dist.get_backend
    cp.dist.get_backend = lambda g=None: "nccl" if g is world_group else real_backend(g)   # as if NCCL
    made = cp.host_group(world_group)
    again = cp.host_group(world_group)
    x = _inputs(9, False)
    if rank == 1:
        x = {k: t[:, :1] for k, t in x.items()}
    try:    # the piece check itself, over the host group
        cp._check_pieces(x["q"], x["v"], world_group)
        message = "no error"
    except ValueError as e:
        message = str(e)
    try:    # the op with the CPU tensors of a group taken for NCCL's: named before any collective
        mlstm_chunkwise(**x, cp_group=world_group)
        device_error = "no error"
    except ValueError as e:
        device_error = str(e)
    torch.save({"device_error": device_error, "distinct": made is not world_group, "cached": made is again,
                "backend": real_backend(made), "message": message}, f"{path}/rank{rank}.pt")
    end_process_group()


def test_piece_checks_of_an_nccl_group_run_on_a_host_group(tmp_path):
    """With an NCCL group the piece check goes through a gloo group over the same ranks (made
    once, then reused): no GPU wait per call; the mismatch is still named on every rank."""
    mp.start_processes(_host_group_rank, args=(2, str(tmp_path)), nprocs=2, start_method="spawn")
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt")
        assert got["distinct"] and got["cached"] and got["backend"] == "gloo", got
        assert "cp_group: an NCCL group exchanges CUDA tensors; q is on cpu" in got["device_error"], got
        assert "cp_group: every rank's piece must have the same (B, NH, DQK, DV)" in got["message"], got


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cap", [None, 4.0])
def test_piece_summary_equals_the_ops_final_state_from_zero(cap, dtype, monkeypatch):
    """What each rank shares, without running its piece: the state its piece leaves from a zero
    state, in true scale (c e^m, n e^m; each side's own stabilizer m), its log decay F, and the
    gradients of all three for k, v, i, f, equal the op's (extreme gates included). float64:
    the PyTorch path to 1e-10; float32: the gate-chain kernels where the kernels run (the GPU,
    the interpreter), against the float64 op, to float32 accuracy, walking blocks of 16 steps."""
    from xlstm_triton.ops.mlstm import piece_summary
    from xlstm_triton.ops.mlstm.gates import floored_logsigmoid
    from xlstm_triton.ops.mlstm.piece_summary import PieceSummary
    monkeypatch.setattr(piece_summary, "BLOCK", 16)
    from xlstm_triton.utils import soft_cap
    g = torch.Generator().manual_seed(3)
    B, S = 2, 37
    x = dict(q=torch.randn(B, NH, S, DQK, generator=g), k=torch.randn(B, NH, S, DQK, generator=g),
             v=torch.randn(B, NH, S, DV, generator=g), i=torch.randn(B, NH, S, generator=g) * 6,
             f=torch.randn(B, NH, S, generator=g) * 4 + 1)
    x["f"][0, 0, 5] = -60.0                       # a nearly closed forget gate
    x["f"][1, 1, 7] = -2000.0                     # below the floor: forgets, no gradient
    x = {n: t.double().requires_grad_() for n, t in x.items()}
    wc = torch.randn(B, NH, DQK, DV, generator=g, dtype=torch.float64)
    wn = torch.randn(B, NH, DQK, generator=g, dtype=torch.float64)
    wF = torch.randn(B, NH, generator=g, dtype=torch.float64)

    def true_scale_loss(c, n, m, F):
        scale = torch.exp(m.double().reshape(B, NH, 1)).detach()
        c, n = c.double() * scale[..., None], n.double() * scale
        return (wc * c).sum() + (wn * n).sum() + (wF * F.double()).sum(), (c, n, F.double())

    _, (c, n, m) = mlstm_chunkwise(**x, return_last_states=True, gate_soft_cap=cap)
    F = floored_logsigmoid(soft_cap(x["f"], cap)).sum(-1)
    loss, ref_out = true_scale_loss(c, n, m, F)
    ref = torch.autograd.grad(loss, [x[k] for k in "kvif"])
    dev = "cuda" if dtype == torch.float32 and torch.cuda.is_available() else "cpu"
    y = {n: t.detach().to(dev, dtype).requires_grad_() for n, t in x.items()}
    loss, got_out = true_scale_loss(*(t.cpu() for t in PieceSummary.apply(y["k"], y["v"], y["i"], y["f"], cap)))
    got = torch.autograd.grad(loss, [y[k] for k in "kvif"])
    fwd, bwd = (1e-10, 1e-9) if dtype == torch.float64 else (1e-5, 1e-4)
    for name, a, b in zip(("C", "n", "F"), got_out, ref_out):
        assert_close(a, b, fwd, name)
    for name, a, b in zip("kvif", got, ref):
        assert_close(a.double().cpu(), b, bwd, f"d {name}")
