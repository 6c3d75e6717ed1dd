"""Training across GPUs: xLSTMLarge steps under DDP, FSDP2 and context parallelism on 1, 2, 4 GPUs.

Data parallel (providers xlstm_large.ddp and xlstm_large.fsdp, .fsdp_keep, .fsdp_plain): xLSTMLarge
at E=2048, 24 blocks, 8 heads, context 4096, B=4 per GPU (16,384 tokens per GPU and step: weak
scaling), bf16, fused AdamW. `fsdp`: `shard_blocks` as a user gets it (blocks resharded after
their forward but the last, the next block's all-gather issued ahead); `fsdp_keep`: nothing
resharded after the forward (no all-gather in the backward, every parameter held gathered from
forward to backward); `fsdp_plain`: every unit resharded, no explicit prefetch (FSDP's own
defaults).
Column `scaling`: tokens/s of the group / (GPUs x tokens/s of one GPU in the same run).
Context parallel (xlstm_large.cp): one sequence of 32k to 256k tokens, split in equal pieces over
the GPUs (`cp_group`), the same model; column `speedup`: tokens/s / one GPU's in the same run
("oom" where it does not fit: the longest trainable sequence per GPU count).
Beside it (transformer.cp): the Transformer of the same parameter count (`bench/baselines`,
d=2048) with PyTorch's own context-parallel attention
(`torch.distributed.tensor.experimental.context_parallel`: ring attention over load-balanced
shards of the sequence, SDPA's flash / efficient kernels; GPUs only), gradients averaged by DDP
over the group.

Each case starts its ranks (one process per GPU, NCCL; gloo on the CPU for --quick), runs
warm-up steps, then times `steps` steps (wall clock of the whole step after a device sync,
every rank); the row's ms is the median over steps of the slowest rank's step, `host_ms` the
same of the time until the step's call returned (before the wait for the GPU: near ms where the
host bounds the step), its memory the largest peak over ranks.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import torch

from bench.harness import Provider, Unavailable

LARGE = dict(E=2048, blocks=24, heads=8, vocab=50304)
DP_CONTEXT, DP_BATCH = 4096, 4
CP_CONTEXTS = (32768, 65536, 131072, 262144)
WORLDS = (1, 2, 4)
WARMUP, STEPS = 3, 10


def cases(quick: bool = False) -> list[dict]:
    if quick:
        tiny = dict(E=64, blocks=2, heads=2, vocab=256, quick=True)
        return ([dict(tiny, parallel="dp", world=w, ctx=32, B=2) for w in (1, 2)]
                + [dict(tiny, parallel="cp", world=w, ctx=64, B=1) for w in (1, 2)])
    return ([dict(LARGE, parallel="dp", world=w, ctx=DP_CONTEXT, B=DP_BATCH) for w in WORLDS]
            + [dict(LARGE, parallel="cp", world=w, ctx=L, B=1) for L in CP_CONTEXTS for w in WORLDS])


_ONE_RANK: dict = {}    # (provider, ctx) -> tokens/s of the world-1 case in this worker


def _setup(wrap: str):
    def setup(case, mode, dtype):
        world = case["world"]
        cuda = torch.cuda.is_available() and not case.get("quick")
        if cuda and world > torch.cuda.device_count():
            raise Unavailable(f"{world} GPUs needed, this machine has {torch.cuda.device_count()}")
        if not cuda and not case.get("quick"):
            raise Unavailable("the full-size cases need GPUs")
        if wrap == "transformer" and not cuda:
            raise Unavailable("PyTorch's context-parallel attention runs on GPUs only (SDPA's CUDA kernels)")
        dtype_name = str(dtype).split(".")[-1] if cuda else "float32"

        def run():
            result = _spawn(case, wrap, dtype_name, cuda)
            tokens = case["B"] * case["ctx"] * (world if case["parallel"] == "dp" else 1)
            tps = tokens / result["ms"] * 1e3
            key = (wrap, case["ctx"])
            if world == 1:
                _ONE_RANK[key] = tps
            one = _ONE_RANK.get(key)
            cols = dict(tokens_per_s=round(tps, 1), gpus=world if cuda else 0, ranks=world,
                        host_ms=round(result["host_ms"], 1))
            if one and world > 1:
                if case["parallel"] == "dp":
                    cols["scaling"] = round(tps / (world * one), 3)
                else:
                    cols["speedup"] = round(tps / one, 3)
            run.columns = cols
            return result["ms"], result["peak_mib"], result["peak_requested_mib"]
        run.measures_itself = True
        return run
    return setup


def _spawn(case, wrap, dtype_name, cuda, task=None, all_ranks: bool = False):
    """Runs the case's ranks, each calling task(case, wrap, dtype, device, world) -> dict
    (default `_measure_rank`); returns rank 0's dict, or with `all_ranks` every rank's (or
    raises what a rank reported)."""
    import torch.multiprocessing as mp

    world = case["world"]
    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.start_processes(_rank, args=(world, case, wrap, dtype_name, cuda, tmp, task or _measure_rank),
                                 nprocs=world, join=False, start_method="spawn")
        deadline = time.monotonic() + 1200
        try:
            while not ctx.join(timeout=5):
                if time.monotonic() > deadline:
                    raise RuntimeError("ranks did not finish within 20 minutes")
        except Exception as e:   # a rank died: report what it wrote, else the exception
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            statuses = [_read(f"{tmp}/rank{r}.json") for r in range(world)]
            if any(s and s.get("status") == "oom" for s in statuses):
                raise torch.cuda.OutOfMemoryError("a rank ran out of memory") from None
            if not all(s and s.get("status") == "ok" for s in statuses):
                raise RuntimeError(f"ranks failed: {[s for s in statuses if s] or e}") from None
            # every rank measured and wrote its result, then one died while exiting (gloo's
            # threads can abort the process at teardown): the measurement stands
            print(f"note: a rank exited badly after its result was written: {e}", file=sys.stderr)
        results = [_read(f"{tmp}/rank{r}.json") for r in range(world)]
    result = results[0]
    if result is None or result.get("status") != "ok":
        if result and result.get("status") == "oom":
            raise torch.cuda.OutOfMemoryError("a rank ran out of memory")
        raise RuntimeError(f"rank 0: {result}")
    return results if all_ranks else result


def _read(path):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _rank(rank, world, case, wrap, dtype_name, cuda, tmp, task):
    """One rank of a case (a spawned process): task's dict, with a status, into rank<r>.json."""
    import torch.distributed as dist

    if not cuda:
        os.environ["TRITON_INTERPRET"] = "0"      # the ops' PyTorch path on CPU ranks
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{tmp}/store", rank=rank,
                            world_size=world)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    out = f"{tmp}/rank{rank}.json"
    try:
        result = dict(status="ok", **task(case, wrap, getattr(torch, dtype_name), device, world))
    except Exception as e:   # noqa: BLE001 - recorded for the parent
        # cuBLAS reports a full device as its own allocation failure, not as torch's OOM error
        oom = isinstance(e, torch.cuda.OutOfMemoryError) or "CUBLAS_STATUS_ALLOC_FAILED" in str(e)
        result = dict(status="oom" if oom else "error", error=f"{type(e).__name__}: {e}"[:300])
    with open(out, "w") as fh:
        json.dump(result, fh)
    if result["status"] != "ok":
        os._exit(1)     # the other ranks may wait in a collective: the parent ends them
    dist.barrier()      # no rank tears its process group down while another still uses it
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)         # no interpreter teardown (gloo's threads have aborted finished ranks there)


def large_config(case):
    """The case's xLSTMLarge config (fused weights, but for the --quick CPU cases)."""
    from xlstm_triton.models import xLSTMLargeConfig
    return xLSTMLargeConfig(vocab_size=case["vocab"], embedding_dim=case["E"], num_blocks=case["blocks"],
                            num_heads=case["heads"], **({} if case.get("quick") else dict(weight_mode="fused")))


def _transformer_step(case, dtype, device, world):
    """The Transformer of xLSTMLarge's parameter count, one sequence of case["ctx"] tokens split
    over the ranks by PyTorch's context parallelism (world 1: the plain model)."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    from bench.baselines.transformer import TransformerLM, matching_config
    from xlstm_triton.models import data_parallel, xLSTMLarge

    with torch.device("meta"):
        params = sum(p.numel() for p in xLSTMLarge(large_config(case)).parameters())
    torch.manual_seed(0)
    with torch.device(device):
        model = TransformerLM(matching_config(params, case["vocab"], case["E"], head_dim=128))
    model = model.to(dtype=dtype).train()
    run = data_parallel(model) if world > 1 else model
    optimizer = torch.optim.AdamW(run.parameters(), lr=1e-6, fused=True)
    gen = torch.Generator().manual_seed(0)                      # the same whole sequence on every rank
    tokens = torch.randint(0, case["vocab"], (1, case["ctx"]), generator=gen).to(device)
    targets = torch.cat([tokens[:, 1:], torch.full_like(tokens[:, :1], -100)], dim=1)
    positions = torch.arange(case["ctx"], device=device)[None]
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor.experimental import context_parallel as torch_context_parallel
        mesh = init_device_mesh("cuda", (world,))
        buffers = [tokens, targets, positions]
        # shards the buffers in place, once (load-balanced for causal attention), then keeps
        # SDPA's ring-attention dispatch on for the steps inside
        scope = torch_context_parallel(mesh, buffers=buffers, buffer_seq_dims=[1, 1, 1],
                                       no_restore_buffers=set(buffers))
    else:
        scope = contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(scope)
    stack.enter_context(sdpa_kernel(backends))

    def step():
        optimizer.zero_grad(set_to_none=True)
        run(tokens, positions=positions, targets=targets).backward()
        optimizer.step()
    step.close = stack.close
    return step


def _measure_rank(case, wrap, dtype, device, world) -> dict:
    """One rank's measurement of the case (`_time_steps`), as the dict `_rank` writes."""
    step = make_step(case, wrap, dtype, device, world)
    try:
        ms, host_ms, peak, requested = _time_steps(step, case, device)
    finally:
        step.close()
    return dict(ms=ms, host_ms=host_ms, peak_mib=peak, peak_requested_mib=requested)


def make_step(case, wrap, dtype, device, world):
    """This rank's training step of the case under `wrap` (ddp, fsdp, fsdp_keep, fsdp_plain, cp,
    transformer): a callable with a `close()` for what it holds open. Inside a process group."""
    import torch.distributed as dist

    from xlstm_triton.models import context_parallel, data_parallel, shard_blocks, xLSTMLarge

    if wrap == "transformer":
        return _transformer_step(case, dtype, device, world)

    torch.manual_seed(0)
    with torch.device(device):
        model = xLSTMLarge(large_config(case))
    model = model.to(dtype=dtype).train()
    model.check_token_range = False
    cp = case["parallel"] == "cp"
    rank, group = dist.get_rank(), dist.group.WORLD
    run = (data_parallel(model) if wrap == "ddp" else shard_blocks(model) if wrap == "fsdp"
           else shard_blocks(model, reshard_after_forward=False) if wrap == "fsdp_keep"
           else shard_blocks(model, reshard_after_forward=True, prefetch=0) if wrap == "fsdp_plain"
           else context_parallel(model, group) if world > 1 else model)
    # fused AdamW on GPUs, FSDP's DTensor shards included (one kernel a parameter group)
    optimizer = torch.optim.AdamW(run.parameters(), lr=1e-6, fused=device.type == "cuda")
    length = case["ctx"]
    if cp:   # equal pieces, the remainder on the last rank
        length = case["ctx"] // world + (case["ctx"] % world if rank == world - 1 else 0)
    gen = torch.Generator().manual_seed(rank)
    tokens = torch.randint(0, case["vocab"], (case["B"], length), generator=gen).to(device)
    extra = dict(cp_group=group) if cp and world > 1 else {}

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = run(tokens, labels=tokens, **extra)
        loss.backward()     # context parallel: the wrapper sums the gradients over the group
        optimizer.step()
    step.close = lambda: None
    return step


def _time_steps(step, case, device):
    """Warm-up steps, then the median over timed steps of the slowest rank's step (ms), the
    median over steps of the slowest rank's host time (the call's return, before the wait for
    the GPU: a step whose host time is near its step time is bound by the host), and the
    largest peak memory over the ranks (allocator blocks, requested bytes; MiB)."""
    import torch.distributed as dist

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    steps = 2 if case.get("quick") else STEPS
    for _ in range(1 if case.get("quick") else WARMUP):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, host = [], []
    for _ in range(steps):
        dist.barrier()
        start = time.perf_counter()
        step()
        host.append((time.perf_counter() - start) * 1e3)
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    slowest = torch.tensor([times, host], dtype=torch.float64, device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    if device.type == "cuda":
        stats = torch.cuda.memory_stats(device)
        mem = torch.tensor([stats["allocated_bytes.all.peak"], stats.get("requested_bytes.all.peak", 0)],
                           dtype=torch.float64, device=device)
        dist.all_reduce(mem, op=dist.ReduceOp.MAX)
        peak, requested = (float(x) / 2**20 for x in mem.tolist())
    else:
        peak = requested = None
    return float(slowest[0].median()), float(slowest[1].median()), peak, requested


def providers() -> list[Provider]:
    dp = dict(modes=("train",), timeout_s=7200.0, applies=lambda c: c["parallel"] == "dp")
    cp = dict(modes=("train",), timeout_s=7200.0, applies=lambda c: c["parallel"] == "cp")
    return [
        Provider("xlstm_large.ddp", _setup("ddp"), **dp),
        Provider("xlstm_large.fsdp", _setup("fsdp"), **dp),
        Provider("xlstm_large.fsdp_keep", _setup("fsdp_keep"), **dp),
        Provider("xlstm_large.fsdp_plain", _setup("fsdp_plain"), **dp),
        Provider("xlstm_large.cp", _setup("cp"), **cp),
        Provider("transformer.cp", _setup("transformer"), **cp),
    ]


TABLE_KEYS = ["parallel", "world", "ctx", "B"]
