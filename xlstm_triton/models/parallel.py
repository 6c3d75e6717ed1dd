"""Data-parallel training of either model family on `torch.distributed`.

    torchrun --nproc-per-node 4 train.py           # in train.py:
    dist.init_process_group("nccl"); torch.cuda.set_device(local_rank)
    model = shard_blocks(xLSTMLarge(cfg).cuda())                # FSDP2: one unit per block
    # or: model = data_parallel(xLSTMLarge(cfg).cuda())         # DDP

`shard_blocks` applies FSDP2 (`torch.distributed.fsdp.fully_shard`) the usual way: one unit per
block (each block's parameters gathered for its forward and backward, resharded after), then
the model itself (embedding, final norm, LM head). The blocks are the modules with a
`forward_residual` (the ones `compile_blocks` compiles), so both families shard alike.
`data_parallel` wraps the model in `DistributedDataParallel` on the device of its parameters.
Our ops launch on their tensors' device, so a rank's kernels run on its own GPU.
"""

from __future__ import annotations

import contextlib
import zlib
from typing import Optional

from torch import nn

from ..ops.mlstm.context_parallel import pieces_checked, twin_group
from .training import model_blocks


def shard_blocks(model: nn.Module, mesh=None, mp_policy=None, reshard_after_forward: Optional[bool] = None,
                 prefetch: int = 1, **fsdp_kwargs) -> nn.Module:
    """FSDP2 over `mesh` (a 1-D `DeviceMesh`; None: all ranks of the default group, on the
    device type of the model's parameters): each block a unit, then the model. mp_policy: a
    `MixedPrecisionPolicy` (e.g. bfloat16 parameters, float32 gradient reduction). Returns
    `model` (its parameters now `DTensor` shards). The batch each rank passes is its own;
    gradients are averaged over the ranks.

    reshard_after_forward: None (default) frees every block's gathered parameters after its
    forward but the last block's and the model's own (embedding, norm, head): the backward
    starts with those, so freeing them would only gather them again at once (one block and the
    head held through the backward). True or False: every unit alike (False keeps all of them
    gathered from forward to backward: no all-gather in the backward, the whole model's
    parameters held on each rank).

    prefetch: in the forward, each unit issues the all-gathers of the next `prefetch` blocks as
    soon as its own is done (the model's own unit those of the first blocks), so they are queued
    ahead of the unit's compute even when the host does not run ahead of the GPU (an eager step
    bound by its launches); 0 leaves it to FSDP, which issues a block's all-gather when the host
    reaches that block. Each prefetched block's parameters are held gathered one unit earlier."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    blocks = model_blocks(model)
    if not blocks:
        raise ValueError(f"shard_blocks: {type(model).__name__} has no blocks with forward_residual "
                         "(expected an xLSTMLarge or xLSTMLMModel)")
    if not isinstance(prefetch, int) or prefetch < 0:
        raise ValueError(f"shard_blocks: prefetch must be an int >= 0, got {prefetch!r}")
    if mesh is None:
        # All ranks, on the device type of the parameters (FSDP's own default is the machine's
        # accelerator, wrong for a model kept on the CPU with gloo on a machine with GPUs).
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        mesh = init_device_mesh(next(model.parameters()).device.type, (dist.get_world_size(),))
    kwargs = dict(mesh=mesh, **fsdp_kwargs)
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    for n, block in enumerate(blocks):
        last = n == len(blocks) - 1
        fully_shard(block, reshard_after_forward=not last if reshard_after_forward is None else reshard_after_forward,
                    **kwargs)
        # The models call a block's forward_residual, not its forward: FSDP gathers for it too.
        register_fsdp_forward_method(block, "forward_residual")
    fully_shard(model, reshard_after_forward=bool(reshard_after_forward), **kwargs)
    if prefetch:
        model.set_modules_to_forward_prefetch(blocks[:prefetch])
        for n, block in enumerate(blocks[:-1]):
            block.set_modules_to_forward_prefetch(blocks[n + 1:n + 1 + prefetch])
    return model


def data_parallel(model: nn.Module, process_group=None, **ddp_kwargs) -> nn.Module:
    """`DistributedDataParallel(model)` on the device of the model's parameters (its GPU, or
    the CPU with gloo). Returns the wrapper; the model is `wrapper.module`."""
    device = next(model.parameters()).device
    ids: Optional[list] = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, process_group=process_group, **ddp_kwargs)


def context_parallel(model: nn.Module, group, **ddp_kwargs) -> nn.Module:
    """Wraps `model` for training on pieces of sequences split over `group` (called as
    `wrapper(input_ids, labels=labels, cp_group=group)`): `DistributedDataParallel` over a
    second group of the same ranks, its gradient buckets summed instead of averaged. The sum
    is what `cp_reduce_gradients` computes, but DDP starts each bucket's all-reduce as soon as
    the backward has produced it, so the reduction overlaps the rest of the backward (on two
    H200s over NVLink the step time did not change: 1.4B bfloat16 gradients take ~8 ms there;
    it matters on slower links). Its own group keeps DDP's collectives apart from the
    context-parallel ones of the layers, which run in the same backward. Returns the wrapper;
    the model is `wrapper.module`."""
    import torch.distributed as dist

    ddp_group = twin_group(group, dist.get_backend(group))
    wrapper = data_parallel(model, process_group=ddp_group, **ddp_kwargs)
    wrapper.register_comm_hook(ddp_group, _sum_buckets)
    return wrapper


def _sum_buckets(group, bucket):
    """DDP communication hook: the bucket summed over `group` (DDP's default averages)."""
    import torch.distributed as dist
    work = dist.all_reduce(bucket.buffer(), group=group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def cp_checked(model: nn.Module, x, cp_group):
    """The scope of a model's forward over pieces split over `cp_group` (None: no scope): one
    check that every rank has the same batch size, dtype and model configuration (a checksum
    of the config's repr), instead of the mLSTM layers' check per call (`pieces_checked`)."""
    if cp_group is None:
        return contextlib.nullcontext()
    signature = model.__dict__.get("_cp_signature")
    if signature is None:
        signature = model.__dict__["_cp_signature"] = zlib.crc32(repr(model.config).encode())
    return pieces_checked(cp_group, "(B, config checksum)", (x.shape[0], signature), x.dtype)


def cp_reduce_gradients(model: nn.Module, group, bucket_mib: int = 256) -> None:
    """Context parallelism: after the backward of a model run on pieces of sequences split over
    `group` (`xLSTMLarge(..., cp_group=group)`), each rank holds its piece's part of the
    parameter gradients; this sums them over the group, so every rank holds the whole
    sequences' gradients, as one GPU would. The gradients go in buckets of up to `bucket_mib`
    MiB of one dtype (one all-reduce each, as DDP buckets them): one collective per parameter
    paid each call's latency, hundreds per step. With FSDP on the other dimension of a 2-D
    (data x context) mesh (`shard_blocks(model, mesh=mesh["dp"])`, each gradient a `DTensor`
    shard), it sums each rank's shard: the context ranks of one data rank hold the same
    shards."""
    import torch
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    grads = [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
             for p in model.parameters() if p.grad is not None]
    limit = bucket_mib * 2**20
    buckets: dict = {}                  # (dtype, device) -> list of buckets, each a list of grads
    for g in grads:
        rows = buckets.setdefault((g.dtype, g.device), [[]])
        if rows[-1] and sum(t.numel() for t in rows[-1]) * g.element_size() + g.numel() * g.element_size() > limit:
            rows.append([])
        rows[-1].append(g)
    for rows in buckets.values():
        for bucket in rows:
            if len(bucket) == 1:
                dist.all_reduce(bucket[0], group=group)
                continue
            flat = _flatten_dense_tensors(bucket)
            dist.all_reduce(flat, group=group)
            torch._foreach_copy_(bucket, _unflatten_dense_tensors(flat, bucket))


__all__ = ["shard_blocks", "data_parallel", "context_parallel", "cp_reduce_gradients"]

