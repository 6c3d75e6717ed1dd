"""Old import path of the mLSTM ops (`xlstm_triton.ops.mlstm`), kept as a re-export."""

from .ops.mlstm import mlstm_chunkwise, mlstm_step

__all__ = ["mlstm_chunkwise", "mlstm_step"]
