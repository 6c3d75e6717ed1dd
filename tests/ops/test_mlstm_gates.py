"""The gate-preparation kernel of the chunkwise mLSTM against its PyTorch spelling (which the
mLSTM tests check against the float64 recurrence)."""

import pytest
import torch

from xlstm_triton.ops.mlstm.gates import chunkwise_gates_torch, chunkwise_gates_triton

FIELDS = ("u2", "r2", "g", "w", "m", "decay", "m_last")


@pytest.mark.parametrize("B,NH,S,L", [(1, 2, 37, 16), (2, 1, 64, 16), (1, 1, 130, 64), (2, 3, 5, 16)])
@pytest.mark.parametrize("with_m0", [False, True])
def test_gates_kernel_matches_torch(B, NH, S, L, with_m0, device, poison):
    g = torch.Generator().manual_seed(S + L)
    i = torch.randn(B, NH, S, generator=g) * 8
    f = torch.randn(B, NH, S, generator=g) * 6 + 2
    i[0, 0, :3] = torch.tensor([40.0, -60.0, 0.0])[:S]          # extreme gates
    f[-1, -1, :2] = torch.tensor([-30.0, 25.0])[:S]
    m0 = torch.randn(B, NH, 1, generator=g) * 5 if with_m0 else None
    ref = chunkwise_gates_torch(i, f, m0, L)
    i, f = i.to(device), f.to(device)
    out = chunkwise_gates_triton(i, f, None if m0 is None else m0.to(device), L)
    assert (out.num_chunks, out.padded_len) == (ref.num_chunks, ref.padded_len)
    for name in FIELDS:
        a, b = getattr(out, name).cpu(), getattr(ref, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        finite = torch.isfinite(b)
        assert torch.equal(torch.isfinite(a), finite), f"{name}: non-finite entries differ"
        scale = b[finite].abs().max().clamp_min(1e-30)
        assert (a[finite].double() - b[finite].double()).abs().max() <= 1e-6 * scale, name


def test_gates_kernel_non_finite_gates(device, poison):
    # NaN gates stay NaN through every maximum (the stabilizer too); f = -inf (forget all) is
    # floored, so it gives finite weights. Kernel and PyTorch spelling agree on both.
    i, f = torch.randn(2, 2, 2, 40)
    f[0, 0, 5] = f[0, 1, 16] = float("-inf")
    i[1, 0, 7] = float("nan")
    f[1, 1, 20] = float("nan")
    ref = chunkwise_gates_torch(i, f, None, 16)
    out = chunkwise_gates_triton(i.to(device), f.to(device), None, 16)
    for name in FIELDS:
        a, b = getattr(out, name).cpu(), getattr(ref, name)
        # r2 after a NaN forget gate: the kernel's chunk-local cumsum restarts finite in later
        # chunks, the PyTorch spelling's is NaN; every weight pairs it with the NaN u2 of those
        # steps, so the weights agree (checked through u2, g, w, m, decay).
        if name != "r2":
            assert torch.equal(torch.isnan(a), torch.isnan(b)), f"{name}: NaN entries differ"
        batch0 = b[0] if b.dim() == 3 else b[:2]          # (B*NH, ...) rows of batch 0
        assert not torch.isnan(batch0).any(), f"{name}: f = -inf gave a NaN"
    assert torch.isnan(ref.m_last[1]).all() and torch.isfinite(ref.m_last[0]).all()
    assert torch.isfinite(ref.m[:2]).all() and torch.isfinite(out.m[:2].cpu()).all()
