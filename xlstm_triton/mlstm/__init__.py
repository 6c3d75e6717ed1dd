"""mLSTM cell: chunkwise Triton kernels (`fwd.py`, `bwd.py`), gate preparation (`gates.py`),
the PyTorch CPU path (`torch_path.py`) and the public op (`op.py`)."""

from .op import mlstm_chunkwise

__all__ = ["mlstm_chunkwise"]
