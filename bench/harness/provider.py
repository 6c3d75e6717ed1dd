"""What a suite is made of: `Provider` (one implementation, its setup and options), the
`Unavailable` a setup raises when it cannot run here, and the checks setups use for that."""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

MODES = ("fw", "fwbw")


@dataclasses.dataclass
class Provider:
    """One implementation. `setup(case, mode, dtype)` allocates inputs and returns a zero-argument
    function that runs one forward (mode "fw") or forward+backward (mode "fwbw") call.
    `skip(case)` may return a reason to leave a case out (recorded as status "skipped");
    `applies(case)` False leaves it out without a row (a case of another kernel family).

    Optional attributes of the returned function: `grad_to_none` (tensors whose .grad is reset
    between calls), `calls_per_run` (the time is divided by it, e.g. steps in one CUDA graph),
    `columns` (a dict of extra CSV columns, or a function of the measured ms returning one),
    `rep_ms` (do_bench's timing budget, default 200 ms: raise it for calls of tens of ms, which
    would otherwise be the median of two or three), `measures_itself` (True: calling the function
    runs the whole measurement and returns (ms, peak MiB, requested peak MiB), e.g. a step run
    by processes it spawns).

    `one_case_per_worker`: each case in a fresh worker process, for peaks compared across cases
    (a worker's allocator otherwise carries the block splits of the cases before)."""
    name: str
    setup: Callable[[dict, str, "torch.dtype"], Callable[[], None]]
    env: dict = dataclasses.field(default_factory=dict)
    skip: Callable[[dict], str | None] = lambda case: None
    modes: tuple = MODES
    timeout_s: float = 900.0
    applies: Callable[[dict], bool] = lambda case: True
    one_case_per_worker: bool = False


class Unavailable(Exception):
    """Raised by a setup that cannot run on this machine (no CUDA, a package not installed)."""


def device() -> str:
    """Where the suites allocate: "cuda" when there is a GPU, else "cpu" (smoke tests)."""
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def require_cuda(what: str) -> None:
    import torch
    if not torch.cuda.is_available():
        raise Unavailable(f"{what} needs CUDA; this machine has none")


def require_module(name: str):
    """Imports `name` or raises Unavailable (an optional peer such as flash_attn)."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise Unavailable(f"{name} not importable: {e}") from e


def case_label(case: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in case.items() if not k.startswith("_"))
