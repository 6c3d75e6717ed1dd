"""The cells' ops: Triton kernels (a file per stage), their PyTorch paths and the public ops
with input checks, dispatch and autograd (`mlstm/op.py`, `slstm/op.py`)."""

from .mlstm import mlstm_chunkwise, mlstm_step
from .slstm import slstm, slstm_step

__all__ = ["mlstm_chunkwise", "mlstm_step", "slstm", "slstm_step"]
