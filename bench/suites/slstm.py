"""sLSTM kernels vs FlashRNN vs cuDNN LSTM.

B=16, T=1024; hidden 768 split as 12x64, 6x128, 3x256, 1x768, plus 4x128 (TiRex) and 4x512
(xLSTM 1.3B, hidden 2048). Also the shapes of two models: the paper LM's sLSTM blocks (4 x 256,
E = 1024) at (B, T) = (8, 2048) and (2, 8192), its 16,384 tokens per step; TiRex's cells (4 x 128)
forecasting from a context of 2,048 steps in patches of 32 (T = 64) for 1 and 256 series.
Layout: wx (B, T, 4, NH, DH), R (4, NH, DH, DH), b (4, NH, DH).
"""

from __future__ import annotations

import torch

from bench.harness import Provider, device
from bench.harness.setups import fw_fwbw


def cases(quick: bool = False) -> list[dict]:
    splits = [(12, 64), (6, 128), (3, 256), (1, 768), (4, 128), (4, 512)]
    out = [dict(B=16, T=1024, NH=nh, DH=dh, hidden=nh * dh) for nh, dh in splits]
    out += [dict(B=B, T=T, NH=4, DH=256, hidden=1024, model="paper LM") for B, T in ((8, 2048), (2, 8192))]
    out += [dict(B=B, T=64, NH=4, DH=128, hidden=512, model="TiRex") for B in (1, 256)]
    if quick:
        out = [dict(c, T=64) for c in out[:2]]
    return out


def _slstm_inputs(case, dtype, requires_grad):
    B, T, NH, DH = (case[k] for k in ("B", "T", "NH", "DH"))
    dev = device()
    wx = torch.randn(B, T, 4, NH, DH, device=dev, dtype=dtype)
    R = torch.randn(4, NH, DH, DH, device=dev, dtype=dtype) / DH**0.5
    b = torch.randn(4, NH, DH, device=dev, dtype=dtype)
    for t in (wx, R, b):
        t.requires_grad_(requires_grad)
    return wx, R, b


def _runner(call, case, mode, dtype):
    wx, R, b = _slstm_inputs(case, dtype, mode == "fwbw")
    return fw_fwbw(lambda: call(wx, R, b), mode,
                   lambda: torch.randn(case["B"], case["T"], case["NH"], case["DH"], device=wx.device, dtype=dtype),
                   [wx, R, b])


def flashrnn_backend(backend):
    """Setup of flashrnn's sLSTM with `backend`; the kernels suite uses it too."""
    def setup(case, mode, dtype):
        from flashrnn import flashrnn

        def call(wx, R, b):
            h, _ = flashrnn(wx, R, b, function="slstm", backend=backend, dtype=str(dtype).split(".")[-1])
            return h[0]                  # states (h, c, n, m): take h, (B, T, NH, DH)
        return _runner(call, case, mode, dtype)
    return setup


def ours(case, mode, dtype):
    """Setup of xlstm_triton's slstm; the kernels suite uses it too."""
    from xlstm_triton import slstm
    return _runner(lambda wx, R, b: slstm(wx, R, b), case, mode, dtype)


def ours_batch_last(case, mode, dtype):
    """xlstm_triton's slstm with the whole-head batch-last kernels (fwd_head.py, bwd_head.py;
    config flags, not yet the default)."""
    from xlstm_triton import slstm
    from xlstm_triton.ops.slstm import config_override

    def call(wx, R, b):
        with config_override(fwd_batch_last=True, bwd_batch_last=True):   # the backward keeps the forward's config
            return slstm(wx, R, b)
    return _runner(call, case, mode, dtype)


def _cudnn_lstm(case, mode, dtype):
    H = case["hidden"]
    lstm = torch.nn.LSTM(H, H, batch_first=True).to(device="cuda", dtype=dtype)
    x = torch.randn(case["B"], case["T"], H, device="cuda", dtype=dtype, requires_grad=mode == "fwbw")
    return fw_fwbw(lambda: lstm(x)[0], mode, lambda: torch.randn(case["B"], case["T"], H, device="cuda", dtype=dtype),
                   [x, *lstm.parameters()])


def providers() -> list[Provider]:
    return [
        Provider("xlstm_triton", ours),
        Provider("xlstm_triton.batch_last", ours_batch_last,
                 skip=lambda c: None if c["DH"] <= 128 else "whole heads only (DH <= 128)"),
        Provider("flashrnn.triton_fused", flashrnn_backend("triton_fused")),
        # Builds its CUDA extension with nvcc at first call; give the build its time.
        Provider("flashrnn.cuda_fused", flashrnn_backend("cuda_fused"), timeout_s=600,
                 skip=lambda c: None if (c["NH"], c["DH"]) == (12, 64) else "one try is enough"),
        Provider("flashrnn.vanilla_fwbw", flashrnn_backend("vanilla_fwbw"),
                 skip=lambda c: None if (c["NH"], c["DH"]) == (12, 64) else "PyTorch loop: one split"),
        Provider("torch.nn.LSTM", _cudnn_lstm,
                 skip=lambda c: None if c["NH"] in (1, 4) else "depends on hidden size only"),
    ]


TABLE_KEYS = ["NH", "DH", "B", "T"]
