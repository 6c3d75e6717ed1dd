"""Argument checks shared by the ops, layers and models: every error names the argument and
says what was expected (shape, dtype, device) and what was given."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _dtype_names(dtypes) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def on_device(t: torch.Tensor, device) -> bool:
    """Whether tensor `t` is on `device` (a torch.device or its name); a device named without an
    index ("cuda") means the current one of its type, as torch allocates there."""
    device = torch.device(device)
    if device.index is None and device.type not in ("cpu", "meta"):
        current = torch.get_device_module(device.type).current_device() if t.device.type == device.type else None
        return t.device.type == device.type and t.device.index in (None, current)
    return t.device == device


def check_tensor(name: str, t, shape: Optional[Sequence[int]] = None, *, ndim: Optional[int] = None,
                 doc: Optional[str] = None, dtypes: Optional[Sequence[torch.dtype]] = FLOAT_DTYPES,
                 device: Optional[torch.device] = None, device_of: str = "the other inputs",
                 allow_none: bool = False) -> None:
    """Raise unless `t` is a tensor of `shape` (or of `ndim` dims), with a dtype in `dtypes`
    (None: any), on `device` (None: any).

    `doc` spells the shape with its symbols, e.g. "(B, NH, S, DQK)": messages then read
    "expected shape (2, 4, 128, 64) = (B, NH, S, DQK)". `device_of` names where `device` comes
    from. TypeError for a wrong type or dtype, ValueError for a wrong shape or device."""
    if shape is not None:
        want = f"{tuple(shape)} = {doc}" if doc else f"{tuple(shape)}"
    else:
        want = doc or f"{ndim} dims"
    if t is None:
        if allow_none:
            return
        raise TypeError(f"{name}: expected a tensor of shape {want}, got None")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape {want}, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype in ({_dtype_names(dtypes)}), got {t.dtype}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {want}, got {tuple(t.shape)}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dims {doc or ''}, got shape {tuple(t.shape)}")
    if device is not None and not on_device(t, device):
        raise ValueError(f"{name}: expected device {device} (the same device as {device_of}), "
                         f"got {t.device}")


def check_chunk_size(chunk_size, name: str = "chunk_size") -> None:
    """The mLSTM chunk size: None (picked per sequence length) or a power of two >= 16."""
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool)
                                   or chunk_size < 16 or chunk_size & (chunk_size - 1)):
        raise ValueError(f"{name}: expected None or a power of two >= 16, got {chunk_size!r}")


def check_layer_input(owner: str, x, embedding_dim: int) -> None:
    """A layer's input: a tensor (B, S, E) with E = embedding_dim; a ValueError naming `owner`."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != embedding_dim:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{owner}: expected x of shape (B, S, {embedding_dim}), got {got}")


def check_embedding_dim(config) -> int:
    """A layer config's `embedding_dim`, which must be set (> 0); returns it."""
    E = config.embedding_dim
    if not isinstance(E, int) or E <= 0:
        raise ValueError(f"{type(config).__name__}.embedding_dim must be set (> 0), got {E!r} (inside "
                         f"an xLSTMBlockStackConfig the stack sets it)")
    return E


def check_features(name: str, t, doc: str) -> int:
    """A float tensor of shape (..., F) with at least one dim; returns F. `doc` spells the shape."""
    check_tensor(name, t, doc=doc)
    if t.dim() < 1:
        raise ValueError(f"{name}: expected shape {doc}, got {tuple(t.shape)}")
    return t.shape[-1]


def check_cu_seqlens(cu_seqlens, total: int, batch: int, device: torch.device, name: str = "cu_seqlens") -> int:
    """Packed sequences: `cu_seqlens` (N + 1,) int32 or int64 on `device`, starting at 0,
    non-decreasing, ending at `total` (the packed length S), with a batch of 1. Returns N.

    The values are checked where they can be read without waiting for the GPU: a CPU tensor,
    or a CUDA one outside CUDA-graph capture and `torch.compile` (one copy of N + 1 integers to
    the host, a wait for the GPU; offsets given as a CPU tensor avoid it), unless they come from
    `checked_cu_seqlens` (a model checks them once per step, its layers then skip the read)."""
    if isinstance(cu_seqlens, torch.Tensor) and cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name}: expected dtype int32 or int64, got {cu_seqlens.dtype}")
    check_tensor(name, cu_seqlens, ndim=1, doc="(N + 1,)", dtypes=(torch.int32, torch.int64))
    if cu_seqlens.device.type != "cpu" and not on_device(cu_seqlens, device):
        raise ValueError(f"{name}: expected device {device} (the same device as x) or the CPU, "
                         f"got {cu_seqlens.device}")
    if batch != 1:
        raise ValueError(f"{name}: packed sequences need a batch of 1 (x of shape (1, S, ...)), got B = {batch}")
    if cu_seqlens.numel() < 2:
        raise ValueError(f"{name}: expected at least 2 offsets (N + 1 for N >= 1 sequences), got "
                         f"{cu_seqlens.numel()}")
    if getattr(cu_seqlens, "_xlstm_triton_checked", None) == total:
        return cu_seqlens.numel() - 1
    readable = cu_seqlens.device.type == "cpu" or not (
        torch.compiler.is_compiling() or torch.cuda.is_current_stream_capturing())
    if readable:
        values = cu_seqlens.tolist()
        if values[0] != 0 or values[-1] != total:
            raise ValueError(f"{name}: expected offsets from 0 to the packed length {total}, got "
                             f"{values[0]} ... {values[-1]}")
        if any(b < a for a, b in zip(values, values[1:])):
            raise ValueError(f"{name}: expected non-decreasing offsets, got {values}")
    return cu_seqlens.numel() - 1


def host_offsets(cu_seqlens: torch.Tensor) -> list:
    """The values of packed offsets as a list, for host-side code (loops or padding over the
    sequences): those `checked_cu_seqlens` kept when it read them, else one read (a wait for
    the GPU for a CUDA tensor). Under torch.compile always the read (a graph break)."""
    kept = None if torch.compiler.is_compiling() else getattr(cu_seqlens, "_xlstm_triton_values", None)
    return list(kept) if kept is not None else cu_seqlens.tolist()


def checked_cu_seqlens(cu_seqlens, total: int, device: torch.device, name: str = "cu_seqlens") -> torch.Tensor:
    """`check_cu_seqlens` once (batch of 1), then the offsets on `device` as int32, marked as
    checked for `total` steps: the layers a model passes them to skip the values' host read (one
    GPU sync per layer otherwise). Offsets given on the CPU also keep their values on the tensor
    for host-side code (`host_offsets`: the sLSTM's padding over the sequences). Offsets this
    returned can be passed again, step after step: no check, copy or read then."""
    check_cu_seqlens(cu_seqlens, total, 1, device, name)
    values = (cu_seqlens.tolist() if cu_seqlens.device.type == "cpu"
              else getattr(cu_seqlens, "_xlstm_triton_values", None))
    if cu_seqlens.device.type == "cpu" and torch.device(device).type == "cuda":
        cu_seqlens = cu_seqlens.to(torch.int32).pin_memory()     # copied without waiting for the GPU
    cu = cu_seqlens.to(device=device, dtype=torch.int32, non_blocking=True)
    if cu is cu_seqlens:
        cu = cu.view(cu.shape)          # mark a view, not the caller's tensor
    if not torch.compiler.is_compiling():
        cu._xlstm_triton_checked = total
        if values is not None:
            cu._xlstm_triton_values = tuple(values)
    return cu


def check_context_parallel_call(cp_group, state=None, return_state: bool = False, cu_seqlens=None,
                                position_ids=None) -> None:
    """With `cp_group` (a sequence split over ranks), a model, layer or convolution runs from a
    zero state with no state out and no packed documents: ValueError otherwise."""
    if cp_group is not None and (state is not None or return_state or cu_seqlens is not None
                                 or position_ids is not None):
        raise ValueError("cp_group: a sequence split over ranks runs from a zero state, without a state in or "
                         "out and without packed documents")
