"""Pieces of provider setups that several suites share: the timed function of a forward or
forward+backward call, and causal attention on random q, k, v."""

from __future__ import annotations

from typing import Callable


def fw_fwbw(forward: Callable, mode: str, make_dout: Callable, grad_to_none: list) -> Callable[[], None]:
    """The function a setup returns: mode "fw" calls `forward()` under torch.no_grad(); "fwbw"
    calls `forward().backward(dout)` with `dout = make_dout()` (made here, once, and only for
    "fwbw") and lists `grad_to_none`, whose .grad the harness resets between calls."""
    import torch

    if mode == "fw":
        def fn():
            with torch.no_grad():
                forward()
        return fn
    dout = make_dout()

    def fn():
        forward().backward(dout)
    fn.grad_to_none = grad_to_none
    return fn


def attention_call(attend: Callable, shape: tuple, mode: str, dtype) -> Callable[[], None]:
    """`fw_fwbw` of `attend(q, k, v)` on random q, k, v of `shape` on CUDA (requiring grad for
    "fwbw"), the output gradient of the same shape."""
    import torch

    grad = mode == "fwbw"
    q, k, v = (torch.randn(shape, device="cuda", dtype=dtype, requires_grad=grad) for _ in range(3))
    return fw_fwbw(lambda: attend(q, k, v), mode, lambda: torch.randn(shape, device="cuda", dtype=dtype),
                   [q, k, v])
