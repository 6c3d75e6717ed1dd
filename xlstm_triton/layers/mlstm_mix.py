"""The paper mLSTM layer's middle in training, recomputing instead of keeping: one custom op pair.

    out = mlstm_layer_mix(layer, xz, cu_seqlens)      # xz = proj_up(x) = [x_m | z], (B, S, 2 F)

is `mLSTMLayer._mix` (conv + SiLU, headwise q, k, v, the gates, the mLSTM, the per-head norm,
`+ skip * x_c`, `* SiLU(z)`) for training where the kernels run, keeping only xz, the mLSTM's
output h and the row statistics of the mLSTM and the norm. The backward (`mlstm_layer_mix_bwd`)
is written out as kernel calls, no autograd inside: it recomputes x_c, q, k, v and the gates
(one memory-bound kernel, as in the forward), runs the fused output's backward, the mLSTM's
backward kernels on the kept h (writing d q and d k into one buffer, what the headwise backward
reads), and the headwise and conv backward kernels (the conv's d x added by the v call's d x
kernel where it writes d x_m); d x_m and d z land in one (B, S, 2 F) buffer, the gradient of
xz. The conv and the gates (igate / fgate of cat(q, k, v)) are formed inside the headwise
forward kernel, x_c from the x_m tile it reads and the gates while q, k, v are in registers,
and in the backward the headwise kernels add the gates' share of d q, d k, d v and form the
gate weights' and biases' gradients (`modules.GateProjection`): q, k, v are not read again for
them.
The parameters' gradients leave the backward op in a few float32 buffers (one per kind, each
cast once) that the autograd function cuts into views: no small copies per parameter.

Both halves are custom ops (`xlstm_triton::mlstm_layer_mix`, `::mlstm_layer_mix_bwd`), so eager
mode and `torch.compile` run the same kernels: the compiler sees two opaque calls per layer (no
selective checkpointing to plan, no graph of its own to recompute), and in eager mode the calls
skip the dispatcher (`utils.KernelOp`).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..modules import (ConvFirst, ConvInputGrad, GateProjection, causal_conv1d_backward_pre, head_norm_gate_backward,
                       head_norm_gate_forward, headwise_linear_backward, headwise_linear_forward,
                       weight_grad_programs)
from ..ops.mlstm import mlstm_chunkwise_backward, mlstm_chunkwise_forward
from ..ops.mlstm.op import default_chunk_size, saved_scores_like
from ..utils import as_dtype, is_seq_major, kernel_op, new_empty

__all__ = ["cell_inputs", "mlstm_layer_mix"]

Tensor = torch.Tensor


def mlstm_layer_mix(layer, xz: Tensor, cu_seqlens: Optional[Tensor]) -> Tensor:
    """`layer._mix` of an `mLSTMLayer` in training through the op pair (module docstring):
    xz (B, S, 2 F) -> the input of proj_down (B, S, F). `cu_seqlens`: checked packed offsets."""
    return _mix(*mix_arguments(layer, xz, cu_seqlens))[0]


def mix_arguments(layer, xz: Tensor, cu_seqlens: Optional[Tensor]) -> tuple:
    """The forward op's arguments for `layer` (an `mLSTMLayer`): xz, its parameters, its config."""
    cell, conv = layer.mlstm_cell, layer.conv1d.conv
    norm = cell.outnorm
    offset = 1.0 if norm.weight is not None and norm.residual_weight else 0.0
    return (xz, conv.weight, conv.bias, layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight,
            layer.q_proj.bias, layer.k_proj.bias, layer.v_proj.bias, cell.igate.weight, cell.igate.bias,
            cell.fgate.weight, cell.fgate.bias, norm.weight, norm.bias, layer.learnable_skip,
            cell.num_heads, float(norm.eps), offset, cu_seqlens)


def _inputs(x_m: Tensor, conv_w, conv_b, q_w, k_w, v_w, q_b, k_b, v_b, ig_w, ig_b, fg_w, fg_b, num_heads: int,
            cu_seqlens, sum_gates: bool = True):
    """x_c = SiLU(conv(x_m)), q, k (headwise of x_c), v (headwise of x_m), each (B, S, F): one
    headwise kernel that reads x_m once, forms x_c in registers (`ConvFirst`) and writes x_c and
    q, k, v (views of one (3, B, S, F) buffer); the gates [i | f] (B, S, 2 NH) float32 = igate /
    fgate of cat(q, k, v), formed inside that kernel while q, k, v are in registers (column-block
    partial sums, the gate biases among them, added up by one sum: q, k, v are not read again;
    with `sum_gates` False the kernel, the same as the forward's so that q, k, v are the same to
    the bit, still writes the partial sums, but they are not added up: None);
    and, without `sum_gates` (the backward), the kernels' arguments that the backward reuses
    (else None): the weights (conv (F, K), q and k stacked, v) in x_m's dtype, the biases, and
    the `GateProjection`s of the q, k and the v columns (igate.weight and fgate.weight as they
    are, no concatenation)."""
    B, S, F = x_m.shape
    N, dtype = B * S, x_m.dtype
    w_conv = as_dtype(conv_w[:, 0, :], dtype).contiguous()
    b_conv = as_dtype(conv_b, dtype)
    w_qkv = as_dtype(torch.stack([q_w, k_w, v_w]), dtype)
    b_qkv = None if q_b is None else as_dtype(torch.stack([q_b, k_b, v_b]), dtype)
    gate_w = (as_dtype(ig_w, dtype), as_dtype(fg_w, dtype))            # (NH, 3 F) each: [q | k | v] columns
    gate_b = (ig_b, fg_b)
    qkv, x_c, partial = headwise_linear_forward(x_m.reshape(N, F), w_qkv, b_qkv, GateProjection(gate_w, 0, gate_b),
                                                conv=ConvFirst(w_conv, b_conv, 2, S, cu_seqlens))
    q, k, v = qkv.view(3, B, S, F)
    if sum_gates:
        return x_c.view(B, S, F), q, k, v, partial.sum(0).view(B, S, 2 * num_heads), None
    gates_qk, gates_v = GateProjection(gate_w, 0), GateProjection(gate_w, 2 * F, gate_b)
    kernel_args = (w_conv, b_conv, w_qkv[:2], w_qkv[2:], None if b_qkv is None else b_qkv[:2],
                   None if b_qkv is None else b_qkv[2:], gates_qk, gates_v)
    return x_c.view(B, S, F), q, k, v, None, kernel_args


def _heads(t: Tensor, num_heads: int) -> Tensor:
    """(B, S, F) -> the recurrence's (B, NH, S, DH) view."""
    return t.unflatten(-1, (num_heads, -1)).transpose(1, 2)


def _gate_weight(ig_w: Tensor, fg_w: Tensor, F: int) -> tuple[Tensor, Tensor, Tensor]:
    """The stacked gate weight [igate; fgate] (2 NH, 3 F) as its q, k and v column blocks."""
    return torch.cat([ig_w, fg_w]).unflatten(1, (3, F)).unbind(1)


def cell_inputs(q, k, v, ig_w, ig_b, fg_w, fg_b, NH: int):
    """q, k, v (B, S, F) -> the recurrence's q, k, v (B, NH, S, DH) views and the gates i, f
    (B, NH, S) = igate / fgate of cat(q, k, v), without building the concatenation."""
    F = q.shape[-1]
    g = torch.cat([ig_b, fg_b]).to(q.dtype)
    for x, w in zip((q, k, v), _gate_weight(ig_w, fg_w, F)):            # (N, 2 NH) outputs: small
        g = torch.addmm(g, x.reshape(-1, F), as_dtype(w, x.dtype).t())
    i, f = g.view(*q.shape[:-1], 2 * NH).split(NH, dim=-1)
    q, k, v = (_heads(t, NH) for t in (q, k, v))
    return q, k, v, i.transpose(1, 2), f.transpose(1, 2)


@kernel_op("xlstm_triton::mlstm_layer_mix")
def _mix(xz: Tensor, conv_w: Tensor, conv_b: Optional[Tensor], q_w: Tensor, k_w: Tensor, v_w: Tensor,
         q_b: Optional[Tensor], k_b: Optional[Tensor], v_b: Optional[Tensor], ig_w: Tensor, ig_b: Tensor,
         fg_w: Tensor, fg_b: Tensor, norm_w: Optional[Tensor], norm_b: Optional[Tensor], skip: Tensor,
         num_heads: int, norm_eps: float, norm_offset: float, cu_seqlens: Optional[Tensor]
         ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(out (B, S, F), and what the backward reads: h (B, S, NH, DH), the norm's float32 mean and
    rstd (B, S, NH), the mLSTM's inv_den, zsign, gate_steps, gate_decay and weighted scores (or
    their placeholder; `mlstm_chunkwise_forward`), and the gates [i | f]
    (B, S, 2 NH) float32, which the backward reads instead of adding up its recomputed kernel's
    partial sums again)."""
    F = xz.shape[-1] // 2
    x_m, z = xz.split(F, dim=-1)
    x_c, q, k, v, gates, _ = _inputs(x_m, conv_w, conv_b, q_w, k_w, v_w, q_b, k_b, v_b, ig_w, ig_b, fg_w, fg_b,
                                     num_heads, cu_seqlens)
    i, f = gates.split(num_heads, dim=-1)
    h, saved = mlstm_chunkwise_forward(*(_heads(t, num_heads) for t in (q, k, v)), i.transpose(1, 2),
                                       f.transpose(1, 2), cu_seqlens=cu_seqlens)
    h = h.transpose(1, 2)                       # (B, S, NH, DH): the kernels' seq-major layout
    out, mean, rstd = head_norm_gate_forward(h, z, norm_w, norm_b, norm_eps, act="silu", skip=skip, x_skip=x_c,
                                             weight_offset=norm_offset)
    return (out, h, mean, rstd, *saved[:5], gates)


@_mix.register_fake
def _(xz, conv_w, conv_b, q_w, k_w, v_w, q_b, k_b, v_b, ig_w, ig_b, fg_w, fg_b, norm_w, norm_b, skip,
      num_heads, norm_eps, norm_offset, cu_seqlens):
    B, S, F2 = xz.shape
    F, NH = F2 // 2, num_heads
    L = default_chunk_size(S)
    NC = -(-S // L)
    f32 = dict(dtype=torch.float32)
    return (xz.new_empty(B, S, F), xz.new_empty(B, S, NH, F // NH), xz.new_empty(B, S, NH, **f32),
            xz.new_empty(B, S, NH, **f32), xz.new_empty(B * NH, NC * L, **f32), xz.new_empty(B * NH, NC * L, **f32),
            xz.new_empty(5, B * NH, NC * L, **f32), xz.new_empty(B * NH, NC, **f32),
            saved_scores_like(xz, B * NH, S, F // NH, F // NH, L), xz.new_empty(B, S, 2 * NH, **f32))


@kernel_op("xlstm_triton::mlstm_layer_mix_bwd")
def _mix_bwd(d_out: Tensor, xz: Tensor, h: Tensor, mean: Tensor, rstd: Tensor, inv_den: Tensor, zsign: Tensor,
             gate_steps: Tensor, gate_decay: Tensor, scores: Tensor, gates: Tensor, conv_w: Tensor,
             conv_b: Optional[Tensor], q_w: Tensor, k_w: Tensor, v_w: Tensor, q_b: Optional[Tensor],
             k_b: Optional[Tensor], v_b: Optional[Tensor], ig_w: Tensor, ig_b: Tensor, fg_w: Tensor, fg_b: Tensor,
             norm_w: Optional[Tensor], norm_b: Optional[Tensor], skip: Tensor, num_heads: int, norm_eps: float,
             norm_offset: float, cu_seqlens: Optional[Tensor]) -> list[Tensor]:
    """The gradient of xz and the parameters' gradients in a few buffers, which `_backward`
    cuts into the parameters' (views, not copies): d conv weight (F, K) and d conv bias (F,)
    (`_absent` without one) in the conv weight's dtype; float32 sums: one buffer of the d q, k, v
    weights (3, F / BS, BS, BS) followed by the gate projection's [d igate; d fgate] weight
    (2 NH, 3 F) row-major and its bias (2 NH,) (one sum of the headwise kernels' per-program
    blocks), d q, k, v biases (3, F) (`_absent` without them), and d norm weight, d norm bias,
    d skip (3, F)."""
    F = xz.shape[-1] // 2
    x_m, z = xz.split(F, dim=-1)
    B, S, _ = x_m.shape
    N, NH = B * S, num_heads
    # The same kernels as the forward, gate columns included: the mLSTM's gate gradients take
    # differences of large sums, so q, k, v should be the forward's to the bit. Recomputing q, k,
    # v with the kernel built without gate columns moved the gate biases' gradients by 1.7e-4 in
    # float32 on an H200 (not in the interpreter; bench/NOTES.md). The gates themselves are the
    # forward's, kept (0.5 MB a layer at 16k tokens): the partial sums are not added up again.
    x_c, q, k, v, _, (w_conv, b_conv, w_qk, w_v, b_qk, b_v, gates_qk, gates_v) = _inputs(
        x_m, conv_w, conv_b, q_w, k_w, v_w, q_b, k_b, v_b, ig_w, ig_b, fg_w, fg_b, NH, cu_seqlens, sum_gates=False)
    i, f = gates.split(NH, dim=-1)
    cell_in = (*(_heads(t, NH) for t in (q, k, v)), i.transpose(1, 2), f.transpose(1, 2))
    d_xz = xz.new_empty(xz.shape)
    d_x_m, d_z = d_xz.split(F, dim=-1)
    h_dot_dh = new_empty((B, S, NH), torch.float32, xz.device)      # the mLSTM backward's dz reads it
    d_h, _, d_x_c, d_norm = head_norm_gate_backward(
        h, z, norm_w, norm_b, mean, rstd, d_out, act="silu", skip=skip, x_skip=x_c, d_gate=d_z,
        weight_offset=norm_offset, h_dot_dh=h_dot_dh, eps=norm_eps)
    d_qk = x_m.new_empty((2, B, S, F))                  # d q, d k: one buffer, read as one below
    d_v = x_m.new_empty((B, S, F))
    saved = (inv_den, zsign, gate_steps, gate_decay, scores, default_chunk_size(S), is_seq_major(cell_in[0]),
             cu_seqlens)
    _, _, _, d_i, d_f = mlstm_chunkwise_backward(*cell_in, h.transpose(1, 2), saved, d_h.transpose(1, 2),
                                                 out=(_heads(d_qk[0], NH), _heads(d_qk[1], NH), _heads(d_v, NH)),
                                                 h_dot_dh=h_dot_dh.transpose(1, 2))
    # The gate projections' backward inside the headwise kernels: d q, k, v get d_gates @ W, and
    # d W = d_gates^T [q | k | v] (from d_gates^T times the kernels' inputs, then the block-
    # diagonal weights), d b = the column sums, per program into one buffer that both calls fill.
    d_gates = (d_i.transpose(1, 2), d_f.transpose(1, 2))                 # (B, S, NH) views, float32
    # per program: d W of q, k, v (3 F BS) and then d W, d b of the gates (2 NH (3 F + 1)), all
    # written by the four kernels, added up by one sum
    programs, n_w = weight_grad_programs(N), 3 * q_w.numel()
    partial = new_empty((programs, n_w + 2 * NH * (3 * F + 1)), torch.float32, xz.device)   # written whole
    d_w = partial[:, :n_w].view((programs, 3) + tuple(q_w.shape))
    d_gate = partial[:, n_w:]
    headwise_linear_backward(x_c.view(N, F), w_qk, d_qk.view(2, N, F), dx=d_x_c.view(N, F), accumulate=True,
                             bias=b_qk, gates=gates_qk, d_gates=d_gates, partial=d_w[:, :2], gate_partial=d_gate)
    # d x_c is whole: the conv's d pre, whose share of d x_m the v call's d x kernel adds where
    # it writes d x_m (no second pass over d x_m)
    d_pre, d_w_conv, d_b_conv = causal_conv1d_backward_pre(x_m, w_conv, b_conv, None, d_x_c.view(B, S, F), True,
                                                           cu_seqlens)
    headwise_linear_backward(x_m.reshape(N, F), w_v, d_v.view(1, N, F), dx=d_x_m.view(N, F), bias=b_v,
                             gates=gates_v, d_gates=d_gates, partial=d_w[:, 2:], gate_partial=d_gate,
                             conv=ConvInputGrad(d_pre.view(N, F), w_conv, S, cu_seqlens))
    d_weights = partial.sum(0)
    d_gate = d_weights[n_w:]
    if q_b is None:
        d_b = _absent(xz)
    else:        # the column sums of d q, d k, d v, plus d gate bias @ their gate weight columns
        d_b = (torch.stack([t.reshape(N, F).sum(0, dtype=torch.float32) for t in (d_qk[0], d_qk[1], d_v)])
               + (d_gate[2 * NH * 3 * F:] @ torch.cat([ig_w, fg_w]).float()).view(3, F))
    return [d_xz, d_w_conv, d_b_conv if conv_b is not None else _absent(xz), d_weights, d_b, d_norm]


@_mix_bwd.register_fake
def _(d_out, xz, h, mean, rstd, inv_den, zsign, gate_steps, gate_decay, scores, gates, conv_w, conv_b, q_w, k_w,
      v_w, q_b, k_b, v_b, ig_w, ig_b, fg_w, fg_b, norm_w, norm_b, skip, num_heads, norm_eps, norm_offset, cu_seqlens):
    F = xz.shape[-1] // 2
    f32 = dict(dtype=torch.float32)
    return [torch.empty_like(xz, memory_format=torch.contiguous_format),
            xz.new_empty(F, conv_w.shape[-1]), xz.new_empty(F) if conv_b is not None else _absent(xz),
            xz.new_empty(3 * q_w.numel() + 2 * num_heads * (3 * F + 1), **f32),
            xz.new_empty(3, F, **f32) if q_b is not None else _absent(xz), xz.new_empty(3, F, **f32)]


def _absent(like: Tensor) -> Tensor:
    """The gradient slot of a bias that is None: a tensor of one element (zero-element tensors
    share the null pointer, which the custom-op rules count as outputs aliasing each other)."""
    return like.new_empty(1)


def _cast_shared(t: Tensor, params: tuple) -> Tensor:
    dtypes = {p.dtype for p in params if p is not None}
    return t.to(dtypes.pop()) if len(dtypes) == 1 else t


def _param_grads(grads: list[Tensor], params: tuple, num_heads: int) -> list[Optional[Tensor]]:
    """`_mix_bwd`'s buffers cut into the gradients of `params` (`_mix`'s parameter arguments, in
    order), each in its parameter's dtype (None for a parameter that is None)."""
    d_w_conv, d_b_conv, d_weights, d_b, d_norm = grads
    NH, F = num_heads, d_norm.shape[-1]
    G, q_w = 2 * NH, params[2]
    # each float32 buffer cast once where all the parameters it holds share a dtype (the casts
    # of the cuts below are then no-ops)
    d_weights = _cast_shared(d_weights, params[2:5] + params[8:12])
    d_norm = _cast_shared(d_norm, params[12:15])
    if d_b.dim() == 2:
        d_b = _cast_shared(d_b, params[5:8])
    n_w = 3 * q_w.numel()         # contiguous cuts: d W of q, k, v, then the gates' d W and d b
    d_w = d_weights[:n_w].view((3,) + tuple(q_w.shape))
    d_gate_w, d_gate_b = d_weights[n_w:n_w + G * 3 * F].view(G, 3 * F), d_weights[n_w + G * 3 * F:]
    cuts = (d_w_conv[:, None, :], d_b_conv, d_w[0], d_w[1], d_w[2], *(d_b if d_b.dim() == 2 else (None,) * 3),
            d_gate_w[:NH], d_gate_b[:NH], d_gate_w[NH:], d_gate_b[NH:], *d_norm)
    return [None if p is None else as_dtype(d, p.dtype) for p, d in zip(params, cuts)]


def _setup_context(ctx, inputs, output):
    ctx.set_materialize_grads(False)     # the 9 outputs kept for the backward send None, not zeros
    (xz, conv_w, conv_b, q_w, k_w, v_w, q_b, k_b, v_b, ig_w, ig_b, fg_w, fg_b, norm_w, norm_b, skip,
     num_heads, norm_eps, norm_offset, cu_seqlens) = inputs
    ctx.save_for_backward(xz, *output[1:], conv_w, conv_b, q_w, k_w, v_w, q_b, k_b, v_b, ig_w, ig_b, fg_w, fg_b,
                          norm_w, norm_b, skip, cu_seqlens)
    ctx.config = (num_heads, norm_eps, norm_offset)


def _backward(ctx, d_out, *unused):
    xz, h, mean, rstd, inv_den, zsign, gate_steps, gate_decay, scores, gates, *params, cu_seqlens = \
        ctx.saved_tensors
    if d_out is None:
        d_out = xz.new_zeros(h.shape[:2] + (xz.shape[-1] // 2,))
    grads = _mix_bwd(d_out.contiguous(), xz, h, mean, rstd, inv_den, zsign, gate_steps, gate_decay, scores, gates,
                     *params, *ctx.config, cu_seqlens)
    return (grads[0], *_param_grads(grads[1:], params, ctx.config[0]), None, None, None, None)


_mix.register_autograd(_backward, setup_context=_setup_context)
