"""The public chunkwise mLSTM op: input checks, kernel configuration, autograd, dispatch.

`mlstm_chunkwise` runs the Triton kernels for CUDA tensors (and for CPU tensors under
TRITON_INTERPRET=1), and the PyTorch path of `torch_path.py` for other CPU tensors, float64
tensors (on any device) and empty batches (B or NH = 0). The Triton
path is registered as two `torch.library` custom ops (forward and backward, with fake
implementations), so models using it compile under `torch.compile(fullgraph=True)`.
"""

from __future__ import annotations

import numbers

from dataclasses import dataclass
from typing import Optional

import torch
import triton.language as tl

from ...checks import check_chunk_size, check_cu_seqlens, check_tensor, host_offsets
from ...utils import (cdiv, is_seq_major, kernel_op, new_empty_bhsd, next_power_of_2, num_sms, soft_cap,
                      triton_interpret, use_kernels)
from .bwd import chunkwise_bwd
from .context_parallel import mlstm_context_parallel
from .fwd import chunkwise_fwd_output, chunkwise_fwd_states, intra_dtype
from .gates import ChunkGates, chunkwise_gates
from .step import mlstm_step_torch, mlstm_step_triton
from .torch_path import mlstm_chunkwise_torch


@dataclass(frozen=True)
class ChunkwiseConfig:
    """Tile sizes of the kernels. chunk_size: state granularity L; tile: rows per program BT
    (a divisor of L); block_k/block_v: feature blocks of the output and dv kernels;
    *_states: of the two state recurrences (which read a chunk as L / tile_states row tiles);
    *_grad: of the dq and dk kernels. scores: the forward forms each chunk's weighted scores
    once (a (B*NH, S_pad, L) buffer) for the output kernel's DV blocks; dscores: the backward
    forms each chunk's intra-chunk matrices once (two such buffers: the score gradients for
    the dq and dk kernels, the weighted scores for dv); otherwise each of those kernels forms
    them again for every one of its feature blocks. num_stages_output is 1: with 2 stages,
    Triton 3.6 on H100 compiles the output kernel's non-finite marking into code whose h
    changed in the last bits between identical calls (tests/ops/test_mlstm.py, stale-memory
    test); 1 stage costs nothing measurable there (bench/NOTES.md)."""
    chunk_size: int
    tile: int
    tile_states: int
    block_k: int
    block_v: int
    block_k_states: int
    block_v_states: int
    block_k_grad: int
    block_v_grad: int
    num_warps: int
    num_stages: int
    num_stages_output: int
    num_warps_states: int
    num_stages_states: int
    state_dtype: torch.dtype
    dot_dtype: tl.dtype
    precision: str
    scores: bool = False
    dscores: bool = False


MAX_CHUNK_SIZE = 128       # the default chunk size's cap (a module constant for tuning runs)


def default_chunk_size(S: int) -> int:
    """Chunk size when none is given: MAX_CHUNK_SIZE (128), smaller for short sequences."""
    return max(16, min(MAX_CHUNK_SIZE, next_power_of_2(S)))


def make_config(S: int, DQK: int, DV: int, dtype: torch.dtype, chunk_size: int, walks: int = 0, sms: int = 0,
                **overrides) -> ChunkwiseConfig:
    """The kernels' tiles for heads of (DQK, DV) over S steps. `walks` (B * NH, the state walks
    run side by side) and `sms` (the device's SM count): 0 where unknown."""
    pk, pv = max(16, next_power_of_2(DQK)), max(16, next_power_of_2(DV))
    tile = min(64, chunk_size)
    if dtype == torch.bfloat16:
        state_dtype, dot_dtype, precision = torch.bfloat16, tl.bfloat16, "tf32"
    else:
        # float16 states could overflow and fp16 x fp32 products don't exist: float32 operands.
        state_dtype, dot_dtype = torch.float32, tl.float32
        precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    if triton_interpret():
        # The interpreter multiplies bf16 operands of tl.dot as raw bits (Triton 3.9): give it
        # float32 operands. States keep their storage dtype, so only the products differ.
        dot_dtype = tl.float32
    # Heads of (512, 512) (the paper LM at E=1024): 128 x 128 state tiles read k and v half as
    # often as 64 x 64 ones; the two state kernels took 0.61 -> 0.40 and 0.33 -> 0.22 ms on an
    # H200 (B=8, NH=4, S=2048, bench/NOTES.md). Smaller heads keep 64 x 64 (tuned before).
    state_block = 128 if pk >= 512 and pv >= 512 else 64
    block_k_states = min(pk, state_block)
    # Fewer state-walk programs than SMs (the paper LM at S=8192: B * NH = 8 walks x 16 tiles
    # for 132 SMs): 64 x 128 tiles, twice the programs. Both state kernels, H100, per layer at
    # 16,384 tokens: 0.574 -> 0.491 and 0.310 -> 0.250 ms; with 512 programs (S=2048) 64-row
    # tiles were slower (0.439 -> 0.507, 0.233 -> 0.258; bench/NOTES.md).
    # Smaller heads keep their 64 x 64 tiles (not measured with fewer).
    if state_block == 128 and walks * cdiv(pk, 128) * cdiv(pv, 128) < sms:
        block_k_states = 64
    block_k, block_v = min(pk, 128), min(pv, 128)       # the grad kernels' blocks are the same size
    # Where a kernel's grid splits DV (output, dv) or DQK (dq, dk) into several blocks, each block
    # formed the chunk's intra-chunk matrix again: form it once instead (`scores`, `dscores`).
    # H200, one layer's forward / forward+backward at 16,384 tokens, S=2048 (bench/NOTES.md):
    # (512, 512) x 4 heads 0.61 / 2.05 -> 0.53 / 1.79 ms, (256, 512) x 8 0.82 / 2.62 -> 0.72 / 2.26.
    # Over two DV blocks only (DV = 256) the forward's extra kernel cost more than it saved
    # ((128, 256) x 16 at S=8192: 1.81 -> 1.92 ms), the backward's still paid (6.61 -> 6.18).
    scores = pv > 2 * block_v
    dscores = pk > block_k or pv > block_v
    cfg = dict(chunk_size=chunk_size, tile=tile, tile_states=min(128, chunk_size),
               block_k=block_k, block_v=block_v,
               block_k_states=block_k_states, block_v_states=min(pv, state_block),
               block_k_grad=block_k, block_v_grad=block_v, scores=scores, dscores=dscores,
               num_warps=4, num_stages=2, num_stages_output=1, num_warps_states=4, num_stages_states=2,
               state_dtype=state_dtype, dot_dtype=dot_dtype,
               precision=precision)
    cfg.update(overrides)
    return ChunkwiseConfig(**cfg)


# Tests and tuning runs may replace entries of a config through this dict (empty by default).
CONFIG_OVERRIDES: dict = {}


_CONFIGS: dict = {}         # make_config's results by their arguments (host time per call)


def _config(q, v, chunk_size):
    return _config_for(q.shape[0] * q.shape[1], q.shape[2], q.shape[3], v.shape[3], q.dtype, q.device, chunk_size)


def _config_for(rows, S, DQK, DV, dtype, device, chunk_size):
    """`make_config`'s result for B * NH = rows heads of (DQK, DV) over S steps on `device`."""
    sms = num_sms(device) if device.type == "cuda" else 0
    key = (S, DQK, DV, dtype, chunk_size, rows, sms,
           tuple(sorted(CONFIG_OVERRIDES.items())), triton_interpret(),
           torch.backends.cuda.matmul.allow_tf32)      # everything make_config reads
    cfg = _CONFIGS.get(key)
    if cfg is None:
        if len(_CONFIGS) >= 256:
            _CONFIGS.clear()
        cfg = _CONFIGS[key] = make_config(*key[:7], **CONFIG_OVERRIDES)
    return cfg


# ---------------------------------------------------------------------- custom ops

@kernel_op("xlstm_triton::mlstm_chunkwise_fwd")
def _mlstm_chunkwise_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor,
                         f: torch.Tensor, c_initial: Optional[torch.Tensor],
                         n_initial: Optional[torch.Tensor], m_initial: Optional[torch.Tensor],
                         eps: float, chunk_size: int, seq_major: bool, gate_soft_cap: Optional[float],
                         cu_seqlens: Optional[torch.Tensor]
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """h, the final state (c, n, m), and what the backward reads: the row statistics inv_den,
    zsign, the gate arrays (`ChunkGates.pack`: ~20 bytes per step and head, kept instead
    of recomputed) and, where the config forms them once (`scores`), the chunks' weighted
    scores (B*NH, S_pad, L) (`saved_scores_like`), which spare the backward a product over DQK.
    `cu_seqlens`: packed sequences' offsets (N + 1,) int32 on q's device, zero initial states;
    the final state is then meaningless (not returned by `mlstm_chunkwise`)."""
    cfg = _config(q, v, chunk_size)
    gates = chunkwise_gates(i, f, m_initial, chunk_size, gate_soft_cap, cu_seqlens)
    states, nstates, c_last, n_last = chunkwise_fwd_states(k, v, gates, c_initial, n_initial, cfg, cu_seqlens)
    h, inv_den, zsign, scores = chunkwise_fwd_output(q, k, v, states, nstates, gates, eps, cfg, seq_major,
                                                     cu_seqlens)
    return (h, c_last, n_last, gates.m_last.float(), inv_den, zsign, *gates.pack(),
            _no_scores(q) if scores is None else scores)


@_mlstm_chunkwise_fwd.register_fake
def _(q, k, v, i, f, c_initial, n_initial, m_initial, eps, chunk_size, seq_major, gate_soft_cap, cu_seqlens):
    B, NH, S, DQK = q.shape
    DV = v.shape[-1]
    NC = -(-S // chunk_size)
    S_pad = NC * chunk_size
    f32 = dict(dtype=torch.float32, device=q.device)
    return (new_empty_bhsd(B, NH, S, DV, q.dtype, q.device, seq_major), q.new_empty(B, NH, DQK, DV, **f32),
            q.new_empty(B, NH, DQK, **f32), q.new_empty(B, NH, 1, **f32), q.new_empty(B * NH, S_pad, **f32),
            q.new_empty(B * NH, S_pad, **f32), q.new_empty(5, B * NH, S_pad, **f32), q.new_empty(B * NH, NC, **f32),
            saved_scores_like(q, B * NH, S, DQK, DV, chunk_size))


def _no_scores(like):
    """The forward op's output in place of the weighted scores where the config forms none:
    one float32 element (custom-op outputs are tensors; the backward tells it by its shape)."""
    return like.new_empty(1, dtype=torch.float32)


def saved_scores_like(like, rows, S, DQK, DV, chunk_size):
    """An empty tensor (on `like`'s device) of the shape and dtype of the forward's kept scores
    for B * NH = rows heads of (DQK, DV) over S steps in `like`'s dtype: (rows, S_pad, L) where
    the config forms them once, else the (1,) float32 placeholder (for the ops' fakes)."""
    cfg = _config_for(rows, S, DQK, DV, like.dtype, like.device, chunk_size)
    if not cfg.scores:
        return _no_scores(like)
    return like.new_empty(rows, cdiv(S, chunk_size) * chunk_size, chunk_size, dtype=intra_dtype(cfg))


@kernel_op("xlstm_triton::mlstm_chunkwise_bwd")
def _mlstm_chunkwise_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor,
                         f: torch.Tensor, c_initial: Optional[torch.Tensor],
                         n_initial: Optional[torch.Tensor],
                         h: torch.Tensor, inv_den: torch.Tensor, zsign: torch.Tensor,
                         gate_steps: torch.Tensor, gate_decay: torch.Tensor, scores: torch.Tensor,
                         dh: torch.Tensor, dc_last: Optional[torch.Tensor],
                         dn_last: Optional[torch.Tensor], chunk_size: int, seq_major: bool,
                         gate_soft_cap: Optional[float], cu_seqlens: Optional[torch.Tensor]
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                    torch.Tensor, torch.Tensor, torch.Tensor]:
    cfg = _config(q, v, chunk_size)
    gates = ChunkGates.unpack(gate_steps, gate_decay)
    if dh.stride(-1) != 1:
        dh = dh.contiguous()
    # Upstream gradients may be broadcast views (the gradient of .sum() has stride 0).
    dc_last, dn_last = (None if t is None else t.contiguous() for t in (dc_last, dn_last))
    return chunkwise_bwd(q, k, v, i, f, h, dh, dc_last, dn_last, c_initial, n_initial, gates,
                         inv_den, zsign, cfg, seq_major, gate_soft_cap, cu_seqlens=cu_seqlens, scores=scores)


@_mlstm_chunkwise_bwd.register_fake
def _(q, k, v, i, f, c_initial, n_initial, h, inv_den, zsign, gate_steps, gate_decay, scores, dh, dc_last,
      dn_last, chunk_size, seq_major, gate_soft_cap, cu_seqlens):
    B, NH, S, DQK = q.shape
    DV = v.shape[-1]
    f32 = dict(dtype=torch.float32, device=q.device)
    # Fresh gradients, laid out as (B, S, NH, D) if seq_major (as the kernels allocate them).
    like = dict(dtype=q.dtype, device=q.device, seq_major=seq_major)
    return (new_empty_bhsd(B, NH, S, DQK, **like), new_empty_bhsd(B, NH, S, DQK, **like),
            new_empty_bhsd(B, NH, S, DV, **like),
            i.new_empty(B, NH, S), f.new_empty(B, NH, S),
            q.new_empty(B, NH, DQK, DV, **f32), q.new_empty(B, NH, DQK, **f32))


def _setup_context(ctx, inputs, output):
    ctx.set_materialize_grads(False)     # unused outputs send None, not zero tensors
    q, k, v, i, f, c_initial, n_initial, m_initial, eps, chunk_size, seq_major, gate_soft_cap, cu_seqlens = inputs
    h, _, _, _, inv_den, zsign, gate_steps, gate_decay, scores = output
    ctx.save_for_backward(q, k, v, i, f, c_initial, n_initial, h, inv_den, zsign, gate_steps, gate_decay, scores,
                          cu_seqlens)
    ctx.chunk_size, ctx.seq_major, ctx.gate_soft_cap = chunk_size, seq_major, gate_soft_cap
    ctx.state_dtypes = (None if c_initial is None else c_initial.dtype,
                        None if n_initial is None else n_initial.dtype)


def _backward(ctx, dh, dc_last, dn_last, dm_last, d_inv_den, d_zsign, d_gate_steps, d_gate_decay, d_scores):
    q, k, v, i, f, c_initial, n_initial, h, inv_den, zsign, gate_steps, gate_decay, scores, cu_seqlens = \
        ctx.saved_tensors
    if dh is None:
        dh = torch.zeros_like(h)
    if cu_seqlens is not None:
        dc_last = dn_last = None             # packed sequences: no final state is returned
    dq, dk, dv, di, df, dc0, dn0 = _mlstm_chunkwise_bwd(
        q, k, v, i, f, c_initial, n_initial, h, inv_den, zsign, gate_steps, gate_decay, scores, dh,
        dc_last, dn_last, ctx.chunk_size, ctx.seq_major, ctx.gate_soft_cap, cu_seqlens)
    c_dtype, n_dtype = ctx.state_dtypes
    dc0 = None if c_dtype is None else dc0.to(c_dtype)
    dn0 = None if n_dtype is None else dn0.to(n_dtype)
    return dq, dk, dv, di, df, dc0, dn0, None, None, None, None, None, None


_mlstm_chunkwise_fwd.register_autograd(_backward, setup_context=_setup_context)


@kernel_op("xlstm_triton::mlstm_step")
def _mlstm_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor,
                c: torch.Tensor, n: torch.Tensor, m: torch.Tensor, eps: float,
                gate_soft_cap: Optional[float]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The decoding step kernel: h and the new state (c, n, m) in float32."""
    h, (c, n, m) = mlstm_step_triton(q, k, v, i, f, c, n, m, eps, False, gate_soft_cap)
    return h, c, n, m


@_mlstm_step.register_fake
def _(q, k, v, i, f, c, n, m, eps, gate_soft_cap):
    B, NH, DQK = q.shape
    DV = v.shape[-1]
    f32 = dict(dtype=torch.float32)
    return (q.new_empty(B, NH, DV), q.new_empty(B, NH, DQK, DV, **f32), q.new_empty(B, NH, DQK, **f32),
            q.new_empty(B, NH, 1, **f32))


@kernel_op("xlstm_triton::mlstm_step_inplace", mutates_args=("c", "n", "m"))
def _mlstm_step_inplace(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor,
                        f: torch.Tensor, c: torch.Tensor, n: torch.Tensor, m: torch.Tensor,
                        eps: float, gate_soft_cap: Optional[float]) -> torch.Tensor:
    """The decoding step kernel writing the new state into c, n, m (in their dtype): h."""
    return mlstm_step_triton(q, k, v, i, f, c, n, m, eps, True, gate_soft_cap)[0]


@_mlstm_step_inplace.register_fake
def _(q, k, v, i, f, c, n, m, eps, gate_soft_cap):
    return q.new_empty(q.shape[0], q.shape[1], v.shape[-1])


# ---------------------------------------------------------------------- public op

def check_soft_cap(gate_soft_cap) -> Optional[float]:
    """None, or the cap as a float (> 0)."""
    if gate_soft_cap is None:
        return None
    if isinstance(gate_soft_cap, bool) or not isinstance(gate_soft_cap, numbers.Real) or not gate_soft_cap > 0:
        raise ValueError(f"gate_soft_cap: expected None or a number > 0, got {gate_soft_cap!r}")
    return float(gate_soft_cap)


def mlstm_chunkwise(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None,
                    return_last_states=False, eps=1e-6, chunk_size=None, gate_soft_cap=None, cu_seqlens=None,
                    cp_group=None):
    """Chunkwise-parallel mLSTM over a whole sequence (docs/mlstm.md), exact forward and backward.

    Args:
        q, k: (B, NH, S, DQK) queries and keys; v: (B, NH, S, DV) values. float32, bfloat16,
            float16 or float64 (PyTorch path), all three the same dtype; any strides. B or NH
            may be 0 (an empty result).
        i, f: (B, NH, S) input and forget gate pre-activations (any float dtype).
        c_initial (B, NH, DQK, DV), n_initial (B, NH, DQK), m_initial (B, NH, 1): optional
            initial state (stabilized: the memory is c * exp(m)); missing parts are zeros.
        return_last_states: also return the state after the last step.
        eps: added to the normalizer.
        chunk_size: state chunk length L (a power of two >= 16); None picks one per shape.
        gate_soft_cap: if given (> 0), the gates are cap * tanh(i / cap), cap * tanh(f / cap)
            of the given i, f (xLSTM-7B's soft cap), applied inside the kernels.
        cu_seqlens: packed sequences: (N + 1,) int32 / int64 offsets of N sequences laid end to
            end along S, with B = 1 (`checks.check_cu_seqlens`). Each sequence starts from its
            own initial state (c_initial (N, NH, DQK, DV), n_initial (N, NH, DQK), m_initial
            (N, NH, 1); zeros where not given) and return_last_states gives one final state per
            sequence, (N, ...). Without initial states and final states (training) all
            sequences run in one launch set, the kernels restarting at each sequence's first
            step; with them, one call per sequence. The offsets' values are read on the host
            (free for a CPU tensor) unless they come from `checks.checked_cu_seqlens`.
        cp_group: context parallelism: a `torch.distributed` process group over which one
            sequence is split in contiguous pieces, in rank order; q, k, v, i, f are this
            rank's piece (the same B, NH, DQK, DV on every rank; S may differ). The initial
            state is the sequence's, read on rank 0; h is the piece's, and return_last_states
            gives the state at the piece's end. Exact forward and backward (one all-gather of
            the pieces' float32 states; `context_parallel.py`). Every rank must call it.

    Returns:
        h (B, NH, S, DV) in q's dtype (laid out in memory as (B, S, NH, DV) when q is: a
        transposed view of a (B, S, NH * DQK) projection gets h and d q, d k, d v that its layer
        reshapes for free); with return_last_states, (h, (c, n, m)) with c
        (B, NH, DQK, DV), n (B, NH, DQK), m (B, NH, 1) in float32 (float64 for float64 inputs).

    Gradients flow to q, k, v, i, f, c_initial and n_initial (m_initial gets none: the
    stabilizer cancels). CUDA tensors run Triton kernels; CPU tensors run a PyTorch path (or
    the kernels in Triton's interpreter when TRITON_INTERPRET=1); float64 and empty inputs run
    the PyTorch path everywhere.

    Non-finite values stay causal: a NaN or Inf in q, k, v, i or f at step t makes outputs
    non-finite from step t on (as the recurrence does) and never earlier ones. A forget gate of
    -inf forgets the state exactly.
    """
    check_tensor("q", q, ndim=4, doc="(B, NH, S, DQK)")
    triton_path = use_kernels(q)
    B, NH, S, DQK = q.shape
    dev = dict(device=q.device, device_of="q")
    check_tensor("k", k, (B, NH, S, DQK), doc="(B, NH, S, DQK)", **dev)
    check_tensor("v", v, ndim=4, doc="(B, NH, S, DV)")
    DV = v.shape[-1]
    check_tensor("v", v, (B, NH, S, DV), doc="(B, NH, S, DV)", **dev)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v: expected one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    check_tensor("i", i, (B, NH, S), doc="(B, NH, S)", **dev)
    check_tensor("f", f, (B, NH, S), doc="(B, NH, S)", **dev)
    rows, R = B, "B"
    if cu_seqlens is not None:
        rows, R = check_cu_seqlens(cu_seqlens, S, B, q.device), "N"       # a state per sequence
    check_tensor("c_initial", c_initial, (rows, NH, DQK, DV), doc=f"({R}, NH, DQK, DV)", allow_none=True, **dev)
    check_tensor("n_initial", n_initial, (rows, NH, DQK), doc=f"({R}, NH, DQK)", allow_none=True, **dev)
    check_tensor("m_initial", m_initial, (rows, NH, 1), doc=f"({R}, NH, 1)", allow_none=True, **dev)
    if S < 1 or DQK < 1 or DV < 1:
        raise ValueError(f"q, v: expected S, DQK, DV >= 1, got S={S}, DQK={DQK}, DV={DV}")
    check_chunk_size(chunk_size)
    if chunk_size is None:
        chunk_size = default_chunk_size(S)
    if not eps >= 0:
        raise ValueError(f"eps: expected a number >= 0, got {eps!r}")
    gate_soft_cap = check_soft_cap(gate_soft_cap)
    if cp_group is not None:
        import torch.distributed as dist
        if cu_seqlens is not None:
            raise ValueError("cu_seqlens, cp_group: packed sequences are not split over ranks; give one of them")
        if not dist.is_initialized():
            raise ValueError("cp_group: torch.distributed is not initialized (init_process_group first)")
        if dist.get_world_size(cp_group) > 1:
            return mlstm_context_parallel(mlstm_chunkwise, q, k, v, i, f, c_initial, n_initial, m_initial,
                                          return_last_states, eps, chunk_size, gate_soft_cap, cp_group)
    if cu_seqlens is not None:
        if (triton_path and not return_last_states and c_initial is None and n_initial is None
                and m_initial is None):
            # One launch set for all sequences: the kernels restart at each sequence's first step.
            q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
            cu_seqlens = cu_seqlens.to(device=q.device, dtype=torch.int32)
            return _mlstm_chunkwise_fwd(q, k, v, i, f, None, None, None, float(eps), chunk_size, is_seq_major(q),
                                        gate_soft_cap, cu_seqlens)[0]
        return _mlstm_packed(q, k, v, i, f, c_initial, n_initial, m_initial, return_last_states, eps,
                             chunk_size, gate_soft_cap, cu_seqlens)

    if not triton_path:
        if gate_soft_cap is not None:
            i, f = soft_cap(i, gate_soft_cap), soft_cap(f, gate_soft_cap)
        return mlstm_chunkwise_torch(q, k, v, i, f, c_initial, n_initial, m_initial,
                                     return_last_states, eps, chunk_size)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    c_initial, n_initial, m_initial = (None if t is None else t.contiguous()
                                       for t in (c_initial, n_initial, m_initial))
    # Inputs laid out as (B, S, NH, D) (the layers' views of their projections) get h and the
    # gradients of q, k, v in that layout too: no copies on either side of the op.
    h, c, n, m, *_ = _mlstm_chunkwise_fwd(q, k, v, i, f, c_initial, n_initial, m_initial,
                                            float(eps), chunk_size, is_seq_major(q), gate_soft_cap, None)
    return (h, (c, n, m)) if return_last_states else h


def _mlstm_packed(q, k, v, i, f, c_initial, n_initial, m_initial, return_last_states, eps, chunk_size,
                  gate_soft_cap, cu_seqlens):
    """`mlstm_chunkwise` over packed sequences (its docstring): one call per sequence. An empty
    sequence's final state is its initial one."""
    bounds = host_offsets(cu_seqlens)
    NH, DQK, DV = q.shape[1], q.shape[3], v.shape[3]
    state_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    hs, last = [], []
    for n, (a, b) in enumerate(zip(bounds, bounds[1:])):
        initial = [None if t is None else t[n:n + 1] for t in (c_initial, n_initial, m_initial)]
        if a == b:
            shapes = ((NH, DQK, DV), (NH, DQK), (NH, 1))
            last.append([q.new_zeros((1, *shape), dtype=state_dtype) if t is None else t.to(state_dtype)
                         for t, shape in zip(initial, shapes)])
            continue
        part = (t[:, :, a:b] for t in (q, k, v, i, f))
        out = mlstm_chunkwise(*part, *initial, return_last_states=True, eps=eps, chunk_size=chunk_size,
                              gate_soft_cap=gate_soft_cap)
        hs.append(out[0])
        last.append(out[1])
    h = torch.cat(hs, dim=2)
    if not return_last_states:
        return h
    return h, tuple(torch.cat(parts, dim=0) for parts in zip(*last))


def mlstm_chunkwise_forward(q, k, v, i, f, eps=1e-6, chunk_size=None, cu_seqlens=None):
    """The kernels' forward alone, for a layer that recomputes q, k, v, i, f in its backward
    instead of keeping them (it owns the autograd): no autograd, Triton path only, zero
    initial state. Same arguments as `mlstm_chunkwise`; packed sequences as `cu_seqlens` (N + 1,)
    int32 on q's device (`checks.checked_cu_seqlens`). Returns h and `saved`,
    what `mlstm_chunkwise_backward` needs besides the inputs (float32 row statistics, the gate
    arrays, the weighted scores where the config keeps them, the chunk size, the layout and
    cu_seqlens)."""
    chunk_size = default_chunk_size(q.shape[2]) if chunk_size is None else chunk_size
    seq_major = is_seq_major(q)
    h, _, _, _, *saved = _mlstm_chunkwise_fwd(q, k, v, i, f, None, None, None, float(eps), chunk_size,
                                              seq_major, None, cu_seqlens)
    return h, (*saved, chunk_size, seq_major, cu_seqlens)


def mlstm_chunkwise_backward(q, k, v, i, f, h, saved, dh, out=None, h_dot_dh=None):
    """The gradients (dq, dk, dv, di, df) of `mlstm_chunkwise_forward`'s h, given dh; q, k, v,
    i, f as they were in the forward (recomputed), h and saved from it. No autograd (the
    kernels, not the custom op): `out`, optional (dq, dk, dv) tensors (q's, k's, v's shapes,
    unit last stride) to write the gradients into; `h_dot_dh`, optional (B, NH, S) float32,
    any strides: the sums over DV of h * dh, where the caller formed them (the head norm's
    backward writes them exactly, from its own sums)."""
    inv_den, zsign, gate_steps, gate_decay, scores, chunk_size, seq_major, cu_seqlens = saved
    if dh.stride(-1) != 1:
        dh = dh.contiguous()
    return chunkwise_bwd(q, k, v, i, f, h, dh, None, None, None, None,
                         ChunkGates.unpack(gate_steps, gate_decay), inv_den, zsign,
                         _config(q, v, chunk_size), seq_major, None, out, cu_seqlens, h_dot_dh, scores)[:5]


def mlstm_step(q, k, v, i, f, c, n, m, eps=1e-6, inplace=False, gate_soft_cap=None):
    """One mLSTM time step (decoding), state in and out (docs/mlstm.md).

    Args:
        q, k: (B, NH, DQK); v: (B, NH, DV); i, f: (B, NH, 1) or (B, NH) gate pre-activations;
        c (B, NH, DQK, DV), n (B, NH, DQK), m (B, NH, 1): the state (float32, or any float
            dtype: it is read as it is stored and computed with in float32).
        inplace: write the new state into c, n, m themselves (contiguous tensors; they keep
            their dtype, e.g. a bfloat16 cache) and return them: for decoding loops with
            static state buffers (CUDA graphs) or a cache. Not with autograd.
        gate_soft_cap: if given, i and f are first soft-capped, cap * tanh(x / cap), inside the
            kernel (xLSTM-7B caps its gate pre-activations at 15: two fewer kernels per step).
    Returns:
        h (B, NH, DV) in q's dtype and the new state (c, n, m): float32 tensors, or with
        `inplace` the given ones.

    On CUDA one Triton kernel reads the state once and writes the new one once (no host sync:
    usable inside CUDA graphs). Inputs that need gradients, CPU tensors without
    TRITON_INTERPRET=1, float64 and empty (B or NH = 0) inputs take a differentiable PyTorch
    path.
    """
    check_tensor("q", q, ndim=3, doc="(B, NH, DQK)")
    B, NH, DQK = q.shape
    triton_path = use_kernels(q)
    dev = dict(device=q.device, device_of="q")
    check_tensor("k", k, (B, NH, DQK), doc="(B, NH, DQK)", **dev)
    check_tensor("v", v, ndim=3, doc="(B, NH, DV)")
    DV = v.shape[-1]
    check_tensor("v", v, (B, NH, DV), doc="(B, NH, DV)", **dev)
    for name, t in (("i", i), ("f", f)):
        if isinstance(t, torch.Tensor) and t.dim() == 3:
            check_tensor(name, t, (B, NH, 1), doc="(B, NH, 1)", **dev)
        else:
            check_tensor(name, t, (B, NH), doc="(B, NH) or (B, NH, 1)", **dev)
    check_tensor("c", c, (B, NH, DQK, DV), doc="(B, NH, DQK, DV)", **dev)
    check_tensor("n", n, (B, NH, DQK), doc="(B, NH, DQK)", **dev)
    check_tensor("m", m, (B, NH, 1), doc="(B, NH, 1)", **dev)
    if DQK < 1 or DV < 1:
        raise ValueError(f"q, v: expected DQK, DV >= 1, got DQK={DQK}, DV={DV}")
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (q, k, v, i, f, c, n))
    if inplace:
        if needs_grad:
            raise ValueError("inplace=True: the state is overwritten, which autograd cannot "
                             "differentiate; use it without gradients (decoding)")
        for name, t in (("c", c), ("n", n), ("m", m)):
            if not t.is_contiguous():
                raise ValueError(f"{name}: inplace=True needs a contiguous state tensor")
    gate_soft_cap = check_soft_cap(gate_soft_cap)
    if triton_path and not needs_grad:
        if inplace:
            h = _mlstm_step_inplace(q, k, v, i, f, c, n, m, float(eps), gate_soft_cap)
            return h, (c, n, m)
        h, c, n, m = _mlstm_step(q, k, v, i, f, c, n, m, float(eps), gate_soft_cap)
        return h, (c, n, m)
    h, new = mlstm_step_torch(q, k, v, i, f, c, n, m, eps, gate_soft_cap)
    if not inplace:
        return h, new
    for dst, src in zip((c, n, m), new):
        dst.copy_(src)
    return h, (c, n, m)
