"""The fused LM loss against F.cross_entropy on float64 soft-capped logits: loss and both
gradients, ignored tokens, vocabularies that are not a multiple of the block, several chunks
with a partial last one; errors; compile."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import TOL, assert_close
from xlstm_triton.modules import LinearCrossEntropyLoss, linear_cross_entropy, linear_cross_entropy_torch
from xlstm_triton.modules.linear_cross_entropy import default_chunk_rows


def make(N, E, V, device, dtype, ignored=0.0, scale=1.0):
    hidden = (torch.randn(N, E) * scale).to(device, dtype)
    weight = (torch.randn(V, E) / E**0.5 * 4).to(device, dtype)
    labels = torch.randint(0, V, (N,))
    labels[torch.rand(N) < ignored] = -100
    return hidden, weight, labels.to(device)


def reference(hidden, weight, labels, cap, upstream):
    """float64 loss and gradients from F.cross_entropy on soft-capped logits."""
    h = hidden.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    z = h @ w.t()
    if cap is not None:
        z = cap * torch.tanh(z / cap)
    loss = F.cross_entropy(z, labels.long(), ignore_index=-100)
    (loss * upstream).backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("cap", [None, 30.0, 2.0])
@pytest.mark.parametrize("N, E, V, chunk", [(37, 24, 173, 16), (21, 16, 4133, 8), (5, 8, 3, None)])
def test_matches_float64_cross_entropy(cap, N, E, V, chunk, device):
    dtype = torch.float32
    hidden, weight, labels = make(N, E, V, device, dtype, ignored=0.2, scale=3.0)
    labels[0] = -100                              # at least one ignored token
    hidden.requires_grad_(); weight.requires_grad_()
    loss = linear_cross_entropy(hidden, weight, labels, soft_cap=cap, chunk_rows=chunk)
    (loss * 2.5).backward()
    ref, dh, dw = reference(hidden, weight, labels, cap, 2.5)
    fwd, bwd = TOL[dtype]
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert_close(loss, ref, fwd, "loss")
    assert_close(hidden.grad, dh, bwd, "d hidden")
    assert_close(weight.grad, dw, bwd, "d weight")


def test_leading_dims_int32_labels_and_module(device):
    hidden, weight, labels = make(2 * 9, 16, 50, device, torch.float32)
    hidden, labels = hidden.view(2, 9, 16), labels.view(2, 9).to(torch.int32)
    loss = LinearCrossEntropyLoss(soft_cap=5.0)(hidden, weight, labels)
    ref, _, _ = reference(hidden.reshape(-1, 16), weight, labels.reshape(-1), 5.0, 1.0)
    assert_close(loss, ref, 2e-3, "loss")


def test_float64_runs_the_plain_spelling_and_gradchecks():
    hidden, weight, labels = make(6, 5, 7, "cpu", torch.float64, ignored=0.3)
    labels[1] = 3
    torch.autograd.gradcheck(lambda h, w: linear_cross_entropy(h, w, labels, soft_cap=3.0),
                             (hidden.requires_grad_(), weight.requires_grad_()))


def test_no_counted_token_gives_nan_like_cross_entropy(device):
    hidden, weight, labels = make(7, 8, 11, device, torch.float32)
    labels[:] = -100
    ours = linear_cross_entropy(hidden, weight, labels)
    plain = linear_cross_entropy_torch(hidden, weight, labels)
    assert torch.isnan(ours) and torch.isnan(plain)


def test_nan_hidden_gives_nan_loss(device):
    hidden, weight, labels = make(9, 8, 11, device, torch.float32)
    hidden[4, 2] = float("nan")
    assert torch.isnan(linear_cross_entropy(hidden, weight, labels, chunk_rows=4))


def test_no_grad_call_keeps_no_gradient_buffers(device):
    hidden, weight, labels = make(9, 8, 11, device, torch.float32)
    with torch.no_grad():
        loss = linear_cross_entropy(hidden.requires_grad_(), weight, labels)
    ref, _, _ = reference(hidden, weight, labels, None, 1.0)
    assert loss.grad_fn is None
    assert_close(loss, ref, 2e-3, "loss")


def test_default_chunk_rows():
    assert default_chunk_rows(16384, 1024, 50304) == 1024      # 16 chunks at the LM shapes
    assert default_chunk_rows(5, 8, 3) == 8                   # never more than the rows (rounded up)
    assert default_chunk_rows(100, 8, 10**6) == 16            # at least 16


def test_errors(device):
    hidden, weight, labels = make(6, 8, 11, device, torch.float32)
    with pytest.raises(ValueError, match=r"weight: expected shape \(V, E\) with E = 8"):
        linear_cross_entropy(hidden, weight[:, :4], labels)
    with pytest.raises(TypeError, match=r"weight: expected dtype in \(float32\)"):
        linear_cross_entropy(hidden, weight.double(), labels)
    with pytest.raises(TypeError, match=r"labels: expected dtype in \(int64, int32\)"):
        linear_cross_entropy(hidden, weight, labels.float())
    with pytest.raises(ValueError, match=r"labels: expected shape \(6,\)"):
        linear_cross_entropy(hidden, weight, labels[:5])
    with pytest.raises(ValueError, match="soft_cap: expected None or a number > 0"):
        linear_cross_entropy(hidden, weight, labels, soft_cap=0.0)
    with pytest.raises(ValueError, match="chunk_rows: expected None or an int >= 1"):
        linear_cross_entropy(hidden, weight, labels, chunk_rows=0)


def test_compiles_fullgraph(device):
    hidden, weight, labels = make(19, 8, 40, device, torch.float32)
    hidden.requires_grad_()

    def step(h):
        return linear_cross_entropy(h * 2.0, weight, labels, soft_cap=7.0, chunk_rows=8)

    loss = torch.compile(step, fullgraph=True, backend="inductor")(hidden)
    loss.backward()
    ref, dh, _ = reference(hidden * 2.0, weight, labels, 7.0, 1.0)
    assert_close(loss, ref, 2e-3, "loss")
    assert_close(hidden.grad, dh * 2.0, 5e-3, "d hidden")


@pytest.mark.gpu
def test_gpu_bf16_at_the_lm_shape():
    """bf16 at a 7B-like head (V = 50,304, cap 30), 2,000 tokens: the bf16 tolerances, and less
    peak memory than the plain spelling's float32 logits."""
    hidden, weight, labels = make(2000, 512, 50304, "cuda", torch.bfloat16, ignored=0.1)
    hidden.requires_grad_(); weight.requires_grad_()
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = linear_cross_entropy(hidden, weight, labels, soft_cap=30.0)
    loss.backward()
    fused_peak = torch.cuda.max_memory_allocated() - base
    ref, dh, dw = reference(hidden, weight, labels, 30.0, 1.0)
    assert_close(loss, ref, 3e-2, "loss")
    assert_close(hidden.grad, dh, 6e-2, "d hidden")
    assert_close(weight.grad, dw, 6e-2, "d weight")
    hidden.grad = weight.grad = None
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    linear_cross_entropy_torch(hidden, weight, labels, soft_cap=30.0).backward()
    plain_peak = torch.cuda.max_memory_allocated() - base
    assert fused_peak < 0.5 * plain_peak, (fused_peak, plain_peak)


@pytest.mark.gpu
def test_gpu_weight_gradient_accumulates_in_place():
    """The chunks' d weight is added into one float32 buffer: the bf16 product lands in the
    accumulator itself (no new (V, E) buffer and no copy of it per chunk), with the value of
    the float32 product of the same bf16 operands; for contiguous operands and for the loss's
    own layout (the transposed logit gradients of a chunk, a row slice of the hidden states)."""
    # the module (the package's `linear_cross_entropy` is the function of the same name)
    lce = importlib.import_module("xlstm_triton.modules.linear_cross_entropy")
    z = torch.randn(40, 300, device="cuda").bfloat16()
    hidden = torch.randn(100, 64, device="cuda").bfloat16()
    for a, b in ((z.t().contiguous(), hidden[:40].contiguous()), (z.t(), hidden[20:60])):
        acc = torch.randn(300, 64, device="cuda")
        want = acc.double() + a.double() @ b.double()
        ptr = acc.data_ptr()
        out = lce._accumulate(acc, a, b)
        assert out.data_ptr() == ptr, "the product went to a new buffer"
        assert_close(out, want, 1e-5, "acc + a @ b")
