"""Context parallelism for the mLSTM: one sequence split in contiguous pieces over the ranks of a
`torch.distributed` process group, exact in the forward and the backward.

The state recurrence is linear in the state. Written in true scale (the stored state times
exp(m)), the state after rank r's piece is

    C_{r+1} = exp(F_r) C_r + D_r          F_r = sum of log sigmoid(f) over the piece (B, NH)
                                          D_r = the piece's final state from a zero state

(and n likewise), so each rank
1. computes its piece's summary (D_r as a stabilized (c, n, m), and F_r) from a zero state:
   from a zero state the recurrence unrolls to one weighted sum of k_t v_t^T (`piece_summary.py`,
   one product per head, no run of the piece); rank 0 folds the sequence's initial state into
   its summary (C_1 = exp(F_0) C_0 + D_0);
2. exchanges the summaries with one all-gather (float32, one flat buffer per rank);
3. folds the summaries of the ranks before it into its own initial state, stabilized as the
   kernels are (m = max of the candidates' exponents);
4. runs its piece from that state.
The backward is autograd's: the initial state's gradient flows through the fold into the
gathered summaries, and the all-gather's backward (an all-reduce of the gathered gradient,
each rank keeping its part) hands every rank the gradient of its own summary, which reaches
its q, k, v, i, f through step 1's op. The stabilizers are constants of the computation (as
`m_initial` is for the op: they cancel), so the gradients are exact.

Cost: one (DQK, S) by (S, DV) product per head for the summary and two for its backward, on
every rank, besides the piece's own run.
"""

from __future__ import annotations

import contextlib
import threading

import torch
import torch.distributed as dist

from .piece_summary import PieceSummary


class _AllGather(torch.autograd.Function):
    """All-gather of equal-shaped tensors along a new first dim, differentiable: the backward
    sums the gathered gradient over the ranks (all-reduce) and keeps this rank's part."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        out = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(out, x.contiguous(), group=group)
        return torch.stack(out)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad[dist.get_rank(ctx.group)], None


def gather_pieces(x: torch.Tensor, group) -> torch.Tensor:
    """Every rank's x (same shape on every rank of `group`) stacked along a new first dim, in
    rank order: (world, *x.shape). Differentiable: each rank gets the gradient of its own x
    summed over the ranks that used it."""
    return _AllGather.apply(x, group)


_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]     # the op's dtypes, numbered


_TWIN_GROUPS: dict = {}     # (group, backend) -> a group over the same ranks with that backend


def twin_group(group, backend: str):
    """A group over `group`'s ranks with `backend`, made once per (group, backend) (its ranks
    only: `use_local_synchronization`): a separate communicator, whose collectives neither
    wait for nor interleave with `group`'s."""
    twin = _TWIN_GROUPS.get((group, backend))
    if twin is None:
        twin = dist.new_group(ranks=dist.get_process_group_ranks(group), backend=backend,
                              use_local_synchronization=True)
        _TWIN_GROUPS[(group, backend)] = twin
    return twin


def host_group(group):
    """A group over `group`'s ranks whose collectives run on the host: `group` itself unless it
    is NCCL's, else its gloo twin. A check through it is a CPU message exchange; through NCCL
    it would wait for the GPU to finish everything queued before (a stall of the host's
    run-ahead, every call)."""
    return group if dist.get_backend(group) != "nccl" else twin_group(group, "gloo")


def _check_pieces(q, v, group):
    """All ranks hold pieces of one batch: the same B, NH, DQK, DV and dtype (one small
    all-gather on the host; every rank raises the same error). Skipped inside
    `pieces_checked(group, ...)`, whose caller checked once for all its calls."""
    if group in getattr(_SCOPE, "groups", ()):
        return
    B, NH, _, DQK = q.shape
    check_same_on_ranks(group, "(B, NH, DQK, DV)", (B, NH, DQK, v.shape[-1]), q.dtype)


def check_same_on_ranks(group, what: str, values: tuple, dtype: torch.dtype) -> None:
    """Every rank of `group` passes the same ints `values` (described by `what`) and dtype: one
    all-gather through `host_group` (no wait for the GPU); every rank raises the same
    ValueError naming the first rank that differs from rank 0."""
    mine = torch.tensor([*values, _DTYPES.index(dtype) if dtype in _DTYPES else -1], dtype=torch.int64)
    checks = host_group(group)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size(checks))]
    dist.all_gather(every, mine, group=checks)
    every = [t.tolist() for t in every]
    for r, other in enumerate(every):
        if other != every[0]:
            raise ValueError(
                f"cp_group: every rank's piece must have the same {what} and dtype; rank 0 has "
                f"{what} = {tuple(every[0][:-1])}, rank {r} {tuple(other[:-1])}"
                + ("" if other[-1] == every[0][-1] else " (and another dtype)"))


_SCOPE = threading.local()      # .groups: the groups whose pieces the caller has checked


@contextlib.contextmanager
def pieces_checked(group, what: str, values: tuple, dtype: torch.dtype):
    """One check that every rank of `group` has the same `values` and dtype
    (`check_same_on_ranks`), then, inside, the mLSTM's per-call check for `group` skipped. A
    model checks its batch size, dtype and the dimensions its layers derive their heads from
    once per forward: per layer, the check is a host round trip between the ranks (~0.3 ms on
    an H200 host, 15 ms a step at 24 layers)."""
    check_same_on_ranks(group, what, values, dtype)
    groups = getattr(_SCOPE, "groups", ())
    _SCOPE.groups = groups + (group,)
    try:
        yield
    finally:
        _SCOPE.groups = groups


def _fold(summaries, logF, c0, n0, m0):
    """The state entering the piece after the given ones (in order), from (c0, n0, m0): each
    step C' = exp(F + m - m') C + exp(m_j - m') C_j with m' = max(F + m, m_j), m detached."""
    c, n, m = c0, n0, m0
    for (cj, nj, mj), Fj in zip(summaries, logF):
        decayed = Fj[..., None] + m                                     # (B, NH, 1)
        m_new = torch.maximum(decayed, mj).detach()
        a, b = torch.exp(decayed - m_new), torch.exp(mj - m_new)
        c = a[..., None] * c + b[..., None] * cj
        n = a * n + b * nj
        m = m_new
    return c, n, m


def mlstm_context_parallel(mlstm_chunkwise, q, k, v, i, f, c_initial, n_initial, m_initial, return_last_states,
                           eps, chunk_size, gate_soft_cap, group):
    """`mlstm_chunkwise` over this rank's piece of a sequence split over `group` in rank order
    (module docstring; the arguments are `mlstm_chunkwise`'s). The initial state is the
    sequence's: read on rank 0 (where its gradient appears), ignored on the others. Returns h
    of the piece and, with return_last_states, the state at the end of the piece."""
    rank = dist.get_rank(group)
    if dist.get_backend(group) == "nccl" and not q.is_cuda:
        raise ValueError(f"cp_group: an NCCL group exchanges CUDA tensors; q is on {q.device} (use a gloo "
                         "group for CPU tensors)")
    _check_pieces(q, v, group)
    B, NH, _, DQK = q.shape
    DV = v.shape[-1]
    sdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    # 1. This piece's summary: its final state from a zero state, one weighted sum (no run of
    # the piece). Rank 0 folds the sequence's initial state into its own, so the later ranks
    # receive it through the gather. Every rank summarizes before it runs its piece: the gather
    # waits only for the summaries, and in the backward (autograd runs the later-made node
    # first) each rank's piece backward is queued before the gather's all-reduce, so no rank's
    # GPU waits in a collective for another rank's piece (rank 0 running its piece first made
    # the others' forward, and its own backward, wait for a whole piece per layer).
    cs, ns, ms, logF = PieceSummary.apply(k, v, i, f, gate_soft_cap)      # logF (B, NH): the decay
    first = rank == 0
    if first and not (c_initial is None and n_initial is None and m_initial is None):
        zeros = dict(dtype=sdt, device=q.device)       # a part not given is zero, as for the op
        start = (torch.zeros(B, NH, DQK, DV, **zeros) if c_initial is None else c_initial.to(sdt),
                 torch.zeros(B, NH, DQK, **zeros) if n_initial is None else n_initial.to(sdt),
                 torch.zeros(B, NH, 1, **zeros) if m_initial is None else m_initial.to(sdt))
        cs, ns, ms = _fold([(cs, ns, ms)], [logF], *start)
    # 2. One all-gather of every rank's summary (a flat float buffer per rank).
    flat = torch.cat([cs.reshape(-1), ns.reshape(-1), ms.reshape(-1), logF.reshape(-1)]).to(sdt)
    every = _AllGather.apply(flat, group)
    if first:
        # Rank 0 runs its piece from the sequence's initial state; it uses no gathered summary,
        # but must run the gather's backward (its collective) like the others: an empty slice
        # of it joins the graph, adding an exact 0.
        out = mlstm_chunkwise(q, k, v, i, f, c_initial, n_initial, m_initial,
                              return_last_states=return_last_states, eps=eps, chunk_size=chunk_size,
                              gate_soft_cap=gate_soft_cap)
        h = out[0] if return_last_states else out
        h = h + every[:0].sum().to(h.dtype)
        return (h, out[1]) if return_last_states else h
    # 3. The pieces before this one folded from a zero state (the first carries the initial one).
    sizes = [B * NH * DQK * DV, B * NH * DQK, B * NH, B * NH]
    parts = [torch.split(row, sizes) for row in every[:rank]]
    summaries = [(c.view(B, NH, DQK, DV), n.view(B, NH, DQK), m.view(B, NH, 1)) for c, n, m, _ in parts]
    logFs = [Fj.view(B, NH) for *_, Fj in parts]
    c, n, m = _fold(summaries[1:], logFs[1:], *summaries[0])      # from rank 0's state after its piece
    # 4. This piece from its own initial state.
    return mlstm_chunkwise(q, k, v, i, f, c, n, m, return_last_states=return_last_states, eps=eps,
                           chunk_size=chunk_size, gate_soft_cap=gate_soft_cap)
