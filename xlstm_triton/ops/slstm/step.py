"""sLSTM step for decoding: one token, state in and state out, one kernel launch.

It is the forward kernel (fwd.py) run over the single step t = 0 with nothing saved: every program
reads h_{t-1} from the float32 state it is given, so even split heads need no barrier. No host
synchronization and no data-dependent allocation: usable inside a CUDA graph (after a warm-up call
has compiled the kernel).
"""

from __future__ import annotations

import torch

from ...utils import cdiv, new_empty
from .fwd import BATCH_BLOCK, SLSTMConfig, dot_precision, fast_math, slstm_fwd_kernel


def slstm_step_fwd(wx_t, R, b, state, cfg: SLSTMConfig):
    """wx_t (B, 4, NH, DH) (last dim contiguous), R (4, NH, DH, DH) and b (4, NH, DH) contiguous
    in wx_t's dtype, state (4, B, NH, DH) float32 contiguous. Returns h (B, NH, DH) in wx_t's
    dtype and the new state (4, B, NH, DH) float32."""
    B, _, NH, DH = wx_t.shape
    dev = wx_t.device
    h = new_empty((B, 1, NH, DH), wx_t.dtype, dev)
    new_state = new_empty((4, B, NH, DH), torch.float32, dev)
    unused = torch.empty(1, dtype=torch.int32, device=dev)  # barrier counters (not used: one step)
    grid = NH * cfg.ncb * cdiv(B, BATCH_BLOCK)
    slstm_fwd_kernel[(grid,)](
        wx_t, R, b, state, state, h, new_state, h, h, unused, B, 1, 0, 1,
        wx_t.stride(0), 0, wx_t.stride(1), wx_t.stride(2),
        NH=NH, DH=DH, BB=BATCH_BLOCK, BO=cfg.bo, NCB=cfg.ncb, KA=cfg.ka, KB=cfg.kb, BK=cfg.bk,
        RESIDENT=cfg.resident, SAVE=False, SYNC=False, H0_IS_STATE=True,
        DOT_PREC=dot_precision(wx_t.dtype, dev), FAST_MATH=fast_math(dev), num_warps=cfg.num_warps)
    return h.view(B, NH, DH), new_state
