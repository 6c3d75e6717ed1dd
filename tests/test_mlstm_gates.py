"""The gate-preparation kernel of the chunkwise mLSTM against its PyTorch spelling (which the
mLSTM tests check against the float64 recurrence)."""

import pytest
import torch

from xlstm_triton.mlstm.gates import chunkwise_gates_torch, chunkwise_gates_triton

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
