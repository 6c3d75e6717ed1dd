import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels run in Triton's interpreter (set before triton loads).
    os.environ.setdefault("TRITON_INTERPRET", "1")
    if os.environ["TRITON_INTERPRET"] == "1" and os.environ.get("XLSTM_TRITON_PLAIN_INTERPRETER") != "1":
        from tests.interpreter_patch import install

        install()       # triton.language patched once per launch, not per nested @jit call


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped on CPU)")
    config.addinivalue_line("markers", "slow: long-running; deselect with -m 'not slow'")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; run the suite on the device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device():
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def poison():
    """Kernel outputs start as NaN inside the test: unwritten elements fail the comparison."""
    from xlstm_triton.utils import poison_outputs

    with poison_outputs():
        yield


@pytest.fixture(autouse=True)
def _seed(request):
    # Fresh random inputs per test, reproducible from the test's name.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(params=["kernels", "torch-path"])
def path(request, monkeypatch, device):
    """Run a test through the Triton kernels (CUDA, or the interpreter on CPU) and through the
    PyTorch path of the ops (CPU only)."""
    import xlstm_triton.utils as xt_utils     # after TRITON_INTERPRET is set above

    if request.param == "torch-path":
        if device != "cpu":
            pytest.skip("the ops' PyTorch path runs for CPU tensors only")
        monkeypatch.setattr(xt_utils, "triton_interpret", lambda: False)
    elif not xt_utils.use_triton(torch.empty(0, device=device)):
        pytest.skip("CPU without TRITON_INTERPRET=1: the kernels need the interpreter")
    if device == "cuda":    # float32 parity: no TF32 in convolutions and matmuls
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    return request.param
