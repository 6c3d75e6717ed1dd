"""Tests over several processes (gloo ranks on the CPU, NCCL ranks where there are GPUs)."""

import os

import pytest
import torch

# Eight CPU ranks (processes importing torch): ~25 s a case on a 2-core machine, beside the 2- to
# 4-rank cases CI runs; opt in.
EIGHT_CPU_RANKS = os.environ.get("XLSTM_TRITON_EIGHT_RANKS") == "1"
EIGHT_RANKS_REASON = "eight CPU ranks: set XLSTM_TRITON_EIGHT_RANKS=1 to run them"
EIGHT_RANKS = pytest.mark.skipif(not EIGHT_CPU_RANKS, reason=EIGHT_RANKS_REASON)


def rank_device(rank: int, backend: str, torch_path: bool = True) -> str:
    """A spawned rank's device: its own GPU for NCCL; the CPU for gloo, where (`torch_path`) the
    ops take their PyTorch path instead of Triton's interpreter. Call before init_process_group."""
    if backend == "nccl":
        torch.cuda.set_device(rank)
        return f"cuda:{rank}"
    if torch_path:
        os.environ["TRITON_INTERPRET"] = "0"
    return "cpu"


def reference_device(backend: str, world: int) -> str:
    """The one-process reference's device for a test over `world` ranks of `backend`: the CPU
    for gloo, the first GPU for NCCL (skips where there are fewer GPUs than ranks)."""
    if backend != "nccl":
        return "cpu"
    if torch.cuda.device_count() < world:
        pytest.skip(f"NCCL ranks need {world} GPUs, this machine has {torch.cuda.device_count()}")
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")          # no NVLink multicast (shared hosts)
    return "cuda:0"


def end_process_group() -> None:
    """A spawned rank's last step, after its results are written: wait for every rank, tear the
    group down, and leave without the interpreter's teardown (where gloo's threads have aborted a
    finished process: "terminate called without an active exception")."""
    import multiprocessing
    import sys

    import torch.distributed as dist
    dist.barrier()
    dist.destroy_process_group()
    if multiprocessing.parent_process() is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
