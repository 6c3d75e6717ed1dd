"""`xlstm_triton.launch.cached_launch`: the host-side cache of compiled kernels must give the
results of Triton's own launch, and must not reuse a kernel across specializations (pointer
alignment, integer values, constexprs, launch options)."""

import pytest
import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

import xlstm_triton.launch as launch_module

from xlstm_triton.launch import CachedLaunch, cached_launch


@cached_launch
@triton.jit
def axpb_kernel(x_ptr, y_ptr, n, alpha, shift, BLOCK: tl.constexpr, NEGATE: tl.constexpr = False):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    y = x * alpha + shift
    if NEGATE:
        y = -y
    tl.store(y_ptr + offs, y, mask=offs < n)


def _launch(x, alpha=2.0, shift=3, negate=None, num_warps=4):
    y = torch.empty_like(x)
    meta = {} if negate is None else dict(NEGATE=negate)
    axpb_kernel[(triton.cdiv(x.numel(), 128),)](x, y, x.numel(), alpha, shift, BLOCK=128, num_warps=num_warps, **meta)
    return y


def _expected(x, alpha=2.0, shift=3, negate=False):
    y = x * alpha + shift
    return -y if negate else y


def test_wrapper_keeps_the_jit_function():
    assert isinstance(axpb_kernel, CachedLaunch)
    assert axpb_kernel.arg_names[:2] == ("x_ptr", "y_ptr") and axpb_kernel.defaults == {"NEGATE": False}
    assert axpb_kernel.fn.__name__ == "axpb_kernel"       # attributes of the jit function


def test_results_equal_reference(device):
    x = torch.randn(1000, device=device)
    torch.testing.assert_close(_launch(x), _expected(x))
    torch.testing.assert_close(_launch(x, negate=True), _expected(x, negate=True))


def _compiled_wrapper():
    """`axpb_kernel` as a wrapper of a compiled jit function, also under TRITON_INTERPRET=1."""
    return CachedLaunch(JITFunction(axpb_kernel.fn))


def test_layout_fills_parameters_in_signature_order():
    w = _compiled_wrapper()
    assert w.constexprs == {"BLOCK", "NEGATE"}
    absent, tail = w._layout(5, dict(num_warps=4, BLOCK=128))
    assert absent == {"NEGATE": False}
    assert tail({**absent, "num_warps": 4, "BLOCK": 128}) == (128, False)
    absent, tail = w._layout(5, dict(NEGATE=True, num_warps=8, BLOCK=64))
    assert absent == {} and tail(dict(NEGATE=True, num_warps=8, BLOCK=64)) == (64, True)
    absent, tail = w._layout(7, {})                     # everything positional
    assert absent == {} and tail({}) == ()
    assert w._layout(4, dict(shift=3, BLOCK=128)) is False       # a parameter that is not a constexpr
    assert w._layout(5, dict(BLOCK=128, grid=1)) is False         # neither a parameter nor an option
    assert w._layout(6, dict(BLOCK=128)) is False                 # BLOCK given twice
    assert w._layout(5, dict(num_warps=4)) is False               # BLOCK without a value


class _FakeCompiled:
    """Stands in for a compiled kernel: records what its launcher is given."""
    function = packed_metadata = None

    def __init__(self):
        self.calls = []

    def run(self, *args):
        self.calls.append(args)


class _FakeJit:
    """Stands in for the jit function's own launch: returns one fake compiled kernel, counts launches."""

    def __init__(self):
        self.compiled, self.launches = _FakeCompiled(), 0

    def __getitem__(self, grid):
        def run(*args, **meta):
            self.launches += 1
            return self.compiled
        return run


def test_cached_path_hands_the_launcher_every_parameter_in_order(monkeypatch):
    """The cached path (here without a GPU: the launcher and the stream stubbed) gives the
    compiled kernel's launcher the grid and every parameter in signature order, defaults
    included, and misses on a new alignment, integer or constexpr."""
    w = _compiled_wrapper()
    fake = _FakeJit()
    w.kernel = fake
    monkeypatch.setattr(launch_module, "_runtime_knobs",
                        lambda: type("Knobs", (), dict(launch_enter_hook=None, launch_exit_hook=None))())
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: 1234, raising=False)
    buf = torch.zeros(300)
    x, y = buf[:128], buf[128:256]
    w.launch((3,), (x, y, 128, 2.0, 3), dict(BLOCK=128, num_warps=4), 0)        # a miss: Triton's path
    w.launch((3,), (x, y, 128, 2.0, 3), dict(BLOCK=128, num_warps=4), 0)        # a hit
    assert fake.launches == 1
    (call,) = fake.compiled.calls
    assert call[:4] == (3, 1, 1, 1234)
    assert call[9:11] == (x, y) and call[11:] == (128, 2.0, 3, 128, False)
    for args, meta in (((buf[1:129], y, 128, 2.0, 3), dict(BLOCK=128, num_warps=4)),     # 4-byte offset
                       ((x, y, 127, 2.0, 3), dict(BLOCK=128, num_warps=4)),             # another n
                       ((x, y, 128, 2.0, 3), dict(BLOCK=128, NEGATE=True, num_warps=4)),  # a constexpr
                       ((x, y, 128, 2.0, 3), dict(BLOCK=128, num_warps=8))):             # an option
        before = fake.launches
        w.launch((3,), args, meta, 0)
        assert fake.launches == before + 1


class _NoTritonLaunch:
    """Stands in for the jit function: any launch through Triton's path fails."""

    def __getitem__(self, grid):
        raise AssertionError("launched through Triton's path, not the cache")


@pytest.mark.gpu
def test_cache_hits_and_misses(monkeypatch):
    axpb_kernel.table.clear()
    buf = torch.randn(4096 + 64, device="cuda")
    x = buf[:4096]
    _launch(x)                                        # compiles, fills one entry
    assert len(axpb_kernel.table) == 1
    x2 = buf[64:64 + 4096]                            # other data, same key (64 floats: aligned)
    monkeypatch.setattr(axpb_kernel, "kernel", _NoTritonLaunch())
    torch.testing.assert_close(_launch(x2), _expected(x2))          # served from the table
    for changed in (dict(x=x, alpha=-0.5),           # a float: by value (it may be a constexpr)
                    dict(x=buf[1:4097]),             # 4-byte offset: not 16-byte aligned
                    dict(x=buf[:4095]),              # another n
                    dict(x=x, shift=1),              # an int equal to 1: Triton specializes it
                    dict(x=x, negate=True),          # a constexpr
                    dict(x=x, num_warps=8)):         # a launch option
        with pytest.raises(AssertionError, match="Triton's path"):
            _launch(**changed)


@pytest.mark.gpu
def test_misaligned_view_gets_its_own_kernel():
    axpb_kernel.table.clear()
    buf = torch.randn(8192 + 3, device="cuda")
    for offset in (0, 1, 0, 3, 1, 0):                # aligned and misaligned views, interleaved
        x = buf[offset:offset + 8192]
        torch.testing.assert_close(_launch(x), _expected(x))
    torch.cuda.synchronize()
    keys = {key[-1][0] for key in axpb_kernel.table}        # (dtype, address modulo 16) of x
    assert keys == {(torch.float32, 0), (torch.float32, 4), (torch.float32, 12)}


@pytest.mark.gpu
def test_launch_hooks_take_triton_path(monkeypatch):
    calls = []
    hook = lambda *a: calls.append(a)       # noqa: E731
    chain = triton.knobs.runtime.launch_enter_hook
    if hasattr(chain, "calls"):             # a hook chain (newer Triton)
        monkeypatch.setattr(chain, "calls", [hook])
    else:
        monkeypatch.setattr(triton.knobs.runtime, "launch_enter_hook", hook)
    x = torch.randn(300, device="cuda")
    _launch(x)
    _launch(x)
    assert len(calls) == 2


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs: launches on a device that is not the current one")
def test_ops_run_on_their_tensors_device_not_the_current_one():
    """With cuda:0 current, the ops and a model training step on tensors of cuda:1 run there
    (every launch switches to its first tensor's device) and give cuda:0's results."""
    from tests.helpers import small_lm
    from xlstm_triton import mlstm_chunkwise, slstm

    def run(device):
        g = torch.Generator().manual_seed(0)
        q, k = (torch.randn(2, 2, 70, 16, generator=g).to(device).requires_grad_() for _ in range(2))
        v = torch.randn(2, 2, 70, 32, generator=g).to(device).requires_grad_()
        i, f = (torch.randn(2, 2, 70, generator=g).to(device).requires_grad_() for _ in range(2))
        h = mlstm_chunkwise(q, k, v, i, f)
        wx = torch.randn(2, 9, 4, 2, 32, generator=g).to(device).requires_grad_()
        R = (torch.randn(4, 2, 32, 32, generator=g) * 0.1).to(device).requires_grad_()
        b = torch.randn(4, 2, 32, generator=g).to(device).requires_grad_()
        hs = slstm(wx, R, b)
        (h.sum() + hs.sum()).backward()
        model = small_lm(slstm_at=(1,), num_blocks=2, device=device).train()
        ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=g).to(device)
        loss = model(ids, labels=ids)
        loss.backward()
        return [t.detach().cpu() for t in (h, hs, q.grad, wx.grad, R.grad, loss)] + \
            [p.grad.cpu() for p in model.parameters()]

    torch.cuda.set_device(0)
    here = run("cuda:0")
    there = run("cuda:1")
    assert torch.cuda.current_device() == 0
    for a, b in zip(here, there):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
