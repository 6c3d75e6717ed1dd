"""The gate-preparation kernels of the chunkwise mLSTM against its PyTorch spelling (which the
mLSTM tests check against the float64 recurrence)."""

import pytest
import torch

from xlstm_triton.ops.mlstm import gates as gates_mod
from xlstm_triton.ops.mlstm.gates import chunkwise_gates_torch, chunkwise_gates_triton

FIELDS = ("u2", "r2", "g", "w", "m", "decay", "m_last")
PER_STEP = ("u2", "r2", "g", "w", "m")


def assert_gates_match(out, ref, fields=FIELDS, nan_pattern=True):
    """Same NaN and +-inf entries, finite entries equal up to float32 rounding (the kernels and the
    PyTorch spelling both compute in float64; the sums run in different orders)."""
    assert (out.num_chunks, out.padded_len) == (ref.num_chunks, ref.padded_len)
    for name in fields:
        a, b = getattr(out, name).cpu(), getattr(ref, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        if nan_pattern:
            assert torch.equal(torch.isnan(a), torch.isnan(b)), f"{name}: NaN entries differ"
        inf = torch.isinf(b)
        assert torch.equal(a[inf], b[inf]), f"{name}: infinite entries differ"
        finite = torch.isfinite(b)
        assert torch.isfinite(a[finite]).all(), f"{name}: non-finite where the oracle is finite"
        if finite.any():
            a64, b64 = a[finite].double(), b[finite].double()
            scale = b64.abs().max().clamp_min(1e-30)
            err = (a64 - b64).abs()
            assert (err <= 1e-6 * b64.abs() + 1e-9 * scale).all(), \
                f"{name}: max error {err.max().item():.3g} (scale {scale.item():.3g})"


def random_gates(B, NH, S, seed, i_scale=8.0, f_scale=6.0, f_shift=2.0):
    g = torch.Generator().manual_seed(seed)
    i = torch.randn(B, NH, S, generator=g) * i_scale
    f = torch.randn(B, NH, S, generator=g) * f_scale + f_shift
    return i, f, g


@pytest.mark.parametrize("B,NH,S,L", [
    (1, 2, 37, 16), (2, 1, 64, 16), (1, 1, 130, 64), (2, 3, 5, 16),
    (2, 2, 200, 32),            # 7 chunks, S not a multiple of L
    (1, 2, 320, 64),            # 5 whole chunks
    (1, 3, 1000, 16),           # many chunks (63)
])
@pytest.mark.parametrize("with_m0", [False, True])
def test_gates_kernel_matches_torch(B, NH, S, L, with_m0, device, poison):
    i, f, g = random_gates(B, NH, S, S + L)
    i[0, 0, :3] = torch.tensor([40.0, -60.0, 0.0])[:S]          # extreme gates
    f[-1, -1, :2] = torch.tensor([-30.0, 25.0])[:S]
    m0 = torch.randn(B, NH, 1, generator=g) * 5 if with_m0 else None
    ref = chunkwise_gates_torch(i, f, m0, L)
    out = chunkwise_gates_triton(i.to(device), f.to(device), None if m0 is None else m0.to(device), L)
    assert_gates_match(out, ref)


def test_gates_kernel_soft_cap_on_strided_gates(device, poison):
    """soft_cap=c with i, f as strided views of a (B, S, 2 NH) projection (the 7B layer's layout)
    equals the PyTorch spelling on the same gates; padding stays i = -inf (not -c)."""
    B, NH, S, L = 2, 3, 45, 16
    i, f, g = random_gates(B, NH, S, 11)
    proj = (torch.cat([i, f], dim=1) * 8).transpose(1, 2).contiguous().to(device)        # beyond the cap
    i_view, f_view = proj[..., :NH].transpose(1, 2), proj[..., NH:].transpose(1, 2)
    ref = chunkwise_gates_torch(i_view.cpu().contiguous(), f_view.cpu().contiguous(), None, L, 5.0)
    out = chunkwise_gates_triton(i_view, f_view, None, L, 5.0)
    assert_gates_match(out, ref)


@pytest.mark.parametrize("with_m0", [False, True])
def test_gates_kernel_long_closed_forget_gates(with_m0, device, poison):
    # F falls to about -1e5 (forget gates floored at -1000 and strongly closed ones): the weights
    # are differences of large numbers, which float64 keeps; mixed with open stretches.
    S, L = 700, 32
    i, f, g = random_gates(2, 2, S, 7, i_scale=20.0, f_scale=8.0, f_shift=-4.0)
    f[0, 0, 50:60] = float("-inf")
    f[0, 1, ::7] = float("-inf")
    f[1, 0, 100:300] = -1e4                                      # below the floor
    f[1, 1, 200:400] = 60.0                                      # open: logsigmoid ~ 0
    i[1, 1, 250] = 1e4
    i[0, 1, 300:320] = -1e4
    m0 = torch.randn(2, 2, 1, generator=g) * 50 if with_m0 else None
    ref = chunkwise_gates_torch(i, f, m0, L)
    out = chunkwise_gates_triton(i.to(device), f.to(device), None if m0 is None else m0.to(device), L)
    assert_gates_match(out, ref)
    assert torch.isfinite(ref.m).all()


def test_gates_kernel_infinite_input_gates(device, poison):
    # i = -inf: the step writes nothing. i = +inf: m = +inf from there on, the later weights
    # inf - inf = NaN, in the kernels as in the PyTorch spelling.
    S, L = 90, 16
    i, f, _ = random_gates(1, 3, S, 3)
    i[0, 0, 20:40] = float("-inf")
    i[0, 1, :] = float("-inf")
    i[0, 2, 50] = float("inf")
    ref = chunkwise_gates_torch(i, f, None, L)
    out = chunkwise_gates_triton(i.to(device), f.to(device), None, L)
    assert_gates_match(out, ref)


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


@pytest.mark.parametrize("with_m0", [False, True])
def test_gates_kernel_nan_in_middle_chunk(with_m0, device, poison):
    # A NaN gate in chunk 2 of 5 leaves everything before its step as it was (the chunks run in
    # parallel: the prefix of a chunk must not read the NaN of a later one), and makes the
    # outputs NaN from its step on where the PyTorch spelling has NaN.
    S, L, t_nan = 77, 16, 40                 # chunk 2 covers steps 32..47; the last is partial
    c_nan = t_nan // L
    i, f, g = random_gates(1, 3, S, 11, i_scale=4.0, f_scale=3.0, f_shift=1.0)
    i[0, 0, t_nan] = float("nan")
    f[0, 1, t_nan] = float("nan")
    m0 = torch.randn(1, 3, 1, generator=g) * 3 if with_m0 else None
    ref = chunkwise_gates_torch(i, f, m0, L)
    out = chunkwise_gates_triton(i.to(device), f.to(device), None if m0 is None else m0.to(device), L)
    # Row 2 has no NaN; everywhere the NaN patterns agree (r2 after a NaN forget gate: see
    # test_gates_kernel_non_finite_gates).
    assert_gates_match(out, ref, fields=[n for n in FIELDS if n != "r2"])
    for row in range(3):
        nan_r2 = torch.isnan(ref.r2[row])
        assert torch.equal(torch.isnan(out.r2[row].cpu())[~nan_r2], nan_r2[~nan_r2])
    assert torch.isnan(out.m_last[0, :2].cpu()).all() and torch.isfinite(out.m_last[0, 2].cpu()).all()
    for name in PER_STEP:
        a, b = getattr(out, name).cpu(), getattr(ref, name)
        # Before the NaN's step everything is finite, except w of the NaN's chunk: w pairs each
        # step with the stabilizer at the chunk's end, which comes after the NaN.
        end = c_nan * L if name == "w" else t_nan
        assert torch.isfinite(a[:, :end]).all() and torch.isfinite(b[:, :end]).all(), name
        # From the NaN's step on, the stabilizer and the weights of rows 0 and 1 are NaN.
        if name in ("u2", "m"):
            assert torch.isnan(a[:2, t_nan:S]).all(), name
    assert torch.isfinite(out.decay[:, :c_nan].cpu()).all()
    assert torch.isnan(out.decay[:2, c_nan:].cpu()).all()


def test_gates_kernel_summary_blocks_and_row_slices(device, poison, monkeypatch):
    # Many chunks read in several blocks of summaries, rows launched in several slices: the
    # paths that long sequences (NC > SUMMARY_BLOCK) and huge batches take, at a size the
    # interpreter runs in seconds.
    monkeypatch.setattr(gates_mod, "SUMMARY_BLOCK", 16)
    monkeypatch.setattr(gates_mod, "MAX_GRID_Y", 2)
    S, L = 1000, 16                          # 63 chunks: 4 blocks of 16
    i, f, g = random_gates(1, 5, S, 5)
    f[0, 1, 500:520] = float("-inf")
    i[0, 3, 600] = float("nan")
    m0 = torch.randn(1, 5, 1, generator=g) * 5
    ref = chunkwise_gates_torch(i, f, m0, L)
    out = chunkwise_gates_triton(i.to(device), f.to(device), m0.to(device), L)
    assert_gates_match(out, ref)
    assert torch.isfinite(out.m[3, :600].cpu()).all()
