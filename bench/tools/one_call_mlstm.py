"""One forward+backward call of the chunkwise mLSTM at a benchmark shape, for `ncu`:

    ncu --clock-control none -k regex:chunkwise_fwd_states -c 1 python3 -m bench.tools.one_call_mlstm
"""

import json
import sys

import torch

import xlstm_triton.ops.mlstm.op as op
from xlstm_triton import mlstm_chunkwise

B, NH, S, DQK, DV = 8, 8, 8192, 256, 512
if len(sys.argv) > 1:
    op.CONFIG_OVERRIDES.update(json.loads(sys.argv[1]))
q, k = (torch.randn(B, NH, S, DQK, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
v = torch.randn(B, NH, S, DV, device="cuda", dtype=torch.bfloat16, requires_grad=True)
i, f = (torch.randn(B, NH, S, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
for _ in range(2):
    mlstm_chunkwise(q, k, v, i, f).backward(torch.randn_like(v))
torch.cuda.synchronize()
