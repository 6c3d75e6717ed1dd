"""Triton's interpreter, made faster for the test suite: `triton.language` patched once per
kernel launch instead of again on every call of a `@triton.jit` helper inside it.

In the interpreter a launch patches the builtins of `triton.language` (and `.core`) to run on
numpy, runs the program instances, then restores them. A `@triton.jit` function called from a
kernel (our helpers, and `tl.cumsum`, `tl.sort`, `tl.max`, ... of `triton.language.standard`)
patches them again on every call, over `inspect.getmembers` of four modules: in kernels that
call helpers inside their loops that is a quarter to a third of the interpreter's time. Here a
launch patches `triton.language` and `triton.language.core` together (what the nested calls
would have patched: the same module objects), and the nested calls run without patching.
Nothing else changes: the same functions run on the same values.

Applied by tests/conftest.py when the kernels run in the interpreter. Where a Triton release
lacks the internals this relies on, it applies nothing (the suite runs at the old speed); set
XLSTM_TRITON_PLAIN_INTERPRETER=1 to run without it."""

from __future__ import annotations

import types


def install() -> bool:
    """Patches the interpreter in this process; returns whether it did."""
    import triton.language as tl

    try:
        import triton.runtime.interpreter as interp
        patch_lang = interp._patch_lang
        grid_call = interp.GridExecutor.__call__
        function_call = interp.InterpretedFunction.__call__
        interp.InterpretedFunction.rewrite      # noqa: B018 - the nested call's entry point
        error = interp.InterpreterError
    except (ImportError, AttributeError):
        return False
    if getattr(interp, "_xlstm_triton_patched", False):
        return True
    both = types.SimpleNamespace(__globals__={"tl": tl, "core": tl.core})
    depth = [0]

    def patch_both(fn):
        return patch_lang(both)

    def launch(self, *args, **kwargs):
        depth[0] += 1
        try:
            return grid_call(self, *args, **kwargs)
        finally:
            depth[0] -= 1

    def nested_call(self, *args, **kwargs):
        if not depth[0]:                # not inside a launch: Triton's own path
            return function_call(self, *args, **kwargs)
        fn = self.rewrite()
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise error(repr(e)) from e

    interp._patch_lang = patch_both
    interp.GridExecutor.__call__ = launch
    interp.InterpretedFunction.__call__ = nested_call
    interp._xlstm_triton_patched = True
    return True
