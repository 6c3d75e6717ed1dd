"""mLSTM cell: chunkwise Triton kernels (`fwd.py`, `bwd.py`), gate preparation (`gates.py`),
the decoding step (`step.py`), the PyTorch CPU path (`torch_path.py`), context parallelism
(`context_parallel.py`, with each piece's summary from a zero state in `piece_summary.py`) and
the public ops (`op.py`)."""

from .op import mlstm_chunkwise, mlstm_chunkwise_backward, mlstm_chunkwise_forward, mlstm_step

__all__ = ["mlstm_chunkwise", "mlstm_chunkwise_backward", "mlstm_chunkwise_forward", "mlstm_step"]
