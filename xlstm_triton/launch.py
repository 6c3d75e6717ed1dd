"""Kernel launches with less host time: `cached_launch`.

`kernel[grid](*args)` on a `triton.jit` function binds and specializes every argument, builds a
cache key and looks the compiled kernel up before it launches: 40-70 us of host time per launch
on the H200 machines' hosts, where the launch proper (the compiled kernel's launcher) is ~20 us.
An eager training step launches hundreds of kernels, and its GPU work is shorter than that host
time. `cached_launch` wraps a jit function; `wrapped[grid](*args, **meta)` looks the compiled
kernel up by a cheaper key and calls its launcher directly.

The key holds, for every positional argument, a tensor's dtype and its address modulo 16, an
int's value, and any other argument's type and value; the keywords' names and values (constexprs
and launch options: num_warps, ...); and the number of positional arguments. That is at least as
fine as Triton's own specialization (pointer dtype and 16-byte alignment, integers' value 1,
divisibility by 16 and width, constexpr values), so one key never meets two Triton
specializations: a key seen before maps to the compiled kernel Triton chose for it, by Triton's
own launch the first time. (A keyword is keyed by its value alone: a call site that passed a
constexpr as 1 and later as 1.0 or True would reuse the first kernel; ours pass one type each.)
Integer values (sizes, strides) in the key make a new shape a new entry: a training loop's few
shapes hit; more than `MAX_ENTRIES` keys clear a kernel's table. How a call's keywords fill the
parameters is worked out once per set of keyword names (`CachedLaunch._layout`).

Every launch runs on the device of its first tensor argument (the current device is switched
for it if need be).

Triton's path runs instead with XLSTM_TRITON_LAUNCH_CACHE=0 in the environment (or
`launch.ENABLED = False`), in the interpreter, while Triton's launch hooks are set (profilers),
for callable grids and for keyword arguments that are not kernel parameters or launch options.
"""

from __future__ import annotations

import inspect
import operator
import os

import torch
import triton
from triton.runtime.jit import JITFunction

MAX_ENTRIES = 512
ENABLED = os.environ.get("XLSTM_TRITON_LAUNCH_CACHE", "1") != "0"
_TENSORS = (torch.Tensor, torch.nn.Parameter)
_LAUNCH_OPTIONS = frozenset({"num_warps", "num_stages", "num_ctas", "maxnreg", "launch_pdl"})


def _runtime_knobs():
    knobs = getattr(triton, "knobs", None)
    return getattr(knobs, "runtime", None)


def _hook_set(hook) -> bool:
    """Whether a Triton launch hook is set: not None and, for a hook chain, not empty."""
    return hook is not None and bool(getattr(hook, "calls", True))


class CachedLaunch:
    """A `triton.jit` function launched as `wrapped[grid](*args, **meta)` through a host-side
    cache of its compiled kernels (module docstring). Other attributes are the jit function's."""

    def __init__(self, kernel):
        self.kernel = kernel
        params = inspect.signature(kernel.fn).parameters
        self.arg_names = tuple(params)
        self.defaults = {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}
        self.table = {}
        # Under TRITON_INTERPRET=1 (at decoration time) triton.jit made an interpreted function:
        # no compiled kernels to cache.
        self.compiles = isinstance(kernel, JITFunction)
        self.constexprs = frozenset(p.name for p in kernel.params if p.is_constexpr) if self.compiles else frozenset()
        self.layouts = {}
        self.__doc__, self.__name__ = kernel.fn.__doc__, kernel.fn.__name__

    def __getattr__(self, name):
        return getattr(self.kernel, name)

    def __getitem__(self, grid):
        return lambda *args, **meta: self.on_device_of(grid, args, meta)

    def on_device_of(self, grid, args, meta):
        """`launch` on the GPU of the first tensor argument: Triton (and the cached launcher)
        launch on the current device, which need not be the tensors' (a model on cuda:1 called
        while cuda:0 is current)."""
        first = args[0] if args and type(args[0]) in _TENSORS else next(
            (a for a in args if isinstance(a, torch.Tensor)), None)
        index = -1 if first is None else first.get_device()      # -1: a CPU tensor (interpreter)
        if index >= 0 and index != torch._C._cuda_getDevice():   # a CUDA tensor: CUDA is initialized
            with torch.cuda.device(index):
                return self.launch(grid, args, meta, index)
        return self.launch(grid, args, meta, index)

    def launch(self, grid, args, meta, device: int = -1):
        """`device`: the current CUDA device's index where the caller knows it (else looked up)."""
        kernel = self.kernel
        knobs = _runtime_knobs()
        if (not ENABLED or not self.compiles or type(grid) is not tuple or knobs is None
                or _hook_set(knobs.launch_enter_hook) or _hook_set(knobs.launch_exit_hook)):
            return kernel[grid](*args, **meta)
        n = len(args)
        layout_key = (n, *meta)
        layout = self.layouts.get(layout_key)
        if layout is None:
            layout = self.layouts[layout_key] = self._layout(n, meta)
        if layout is False:         # a missing argument or an unknown keyword: Triton's own path
            return kernel[grid](*args, **meta)
        absent, tail = layout
        if device < 0:
            device = torch.cuda.current_device()
        # keyword arguments are constexprs and launch options (`_layout`): keyed by value
        key = (device, layout_key, tuple(meta.values()), tuple([
            a if type(a) is int else (a.dtype, a.data_ptr() & 15) if isinstance(a, torch.Tensor) else (type(a), a)
            for a in args]))
        try:
            compiled = self.table.get(key)
        except TypeError:           # an unhashable argument
            return kernel[grid](*args, **meta)
        if compiled is None:
            compiled = kernel[grid](*args, **meta)
            if compiled is not None and all(hasattr(compiled, a) for a in ("run", "function", "packed_metadata")):
                if len(self.table) >= MAX_ENTRIES:
                    self.table.clear()
                self.table[key] = compiled
            return compiled
        values = args + tail({**absent, **meta}) if absent else args + tail(meta)
        g = grid + (1, 1)
        compiled.run(g[0], g[1], g[2], torch._C._cuda_getCurrentRawStream(device), compiled.function,
                     compiled.packed_metadata, None, None, None, *values)
        return compiled

    def _layout(self, n: int, meta: dict):
        """How a call with `n` positional arguments and `meta`'s keywords fills the kernel's
        parameters: (the defaults it leaves to the signature, a function of the keywords giving
        the parameters after the n-th in order), or False where the cached path does not apply:
        a parameter without a value, a keyword that is neither a constexpr after the n-th
        parameter nor a launch option (a tensor by keyword would be keyed by value)."""
        rest = self.arg_names[n:]
        for k in meta:
            if not (k in _LAUNCH_OPTIONS or (k in self.constexprs and k in rest)):
                return False
        if any(k not in meta and k not in self.defaults for k in rest):
            return False
        absent = {k: self.defaults[k] for k in rest if k not in meta}
        if not rest:
            return absent, lambda m: ()
        pick = operator.itemgetter(*rest)
        return absent, (pick if len(rest) > 1 else lambda m: (pick(m),))


def cached_launch(kernel) -> CachedLaunch:
    """Decorator over `triton.jit`: launches through `CachedLaunch` (the module docstring)."""
    return CachedLaunch(kernel)
