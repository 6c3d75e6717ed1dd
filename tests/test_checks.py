"""The shared argument checks: a device named without an index is the current one of its type."""
import pytest
import torch

from xlstm_triton.checks import check_cu_seqlens, check_tensor, on_device


def test_cpu_tensor_is_not_on_a_cuda_device():
    t = torch.zeros(2)
    assert on_device(t, "cpu") and on_device(t, torch.device("cpu"))
    assert not on_device(t, "cuda") and not on_device(t, "cuda:0")
    with pytest.raises(ValueError, match="t: expected device cuda"):
        check_tensor("t", t, device="cuda")


@pytest.mark.gpu
def test_cuda_without_index_means_the_current_device():
    """Tensors on cuda:0 (the current device) pass checks that name the device "cuda", the way
    users and tests spell it; offsets on cuda:0 are accepted for x on "cuda"."""
    t = torch.zeros(2, device="cuda")
    assert t.device == torch.device("cuda", torch.cuda.current_device())
    assert on_device(t, "cuda") and on_device(t, t.device)
    check_tensor("t", t, device="cuda")
    cu = torch.tensor([0, 3, 5], device="cuda:0", dtype=torch.int32)
    assert check_cu_seqlens(cu, 5, 1, "cuda") == 2
    if torch.cuda.device_count() > 1:
        other = torch.zeros(2, device=f"cuda:{1 - torch.cuda.current_device() % 2}")
        assert not on_device(other, "cuda")
