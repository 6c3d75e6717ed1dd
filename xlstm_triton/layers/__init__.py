"""The mLSTM and sLSTM layers, on the ops and the shared modules.

    mlstm.py        mlstm_recurrence (the one step / chunkwise dispatch), the paper mLSTMLayer
    mlstm_large.py  the xLSTM-7B mLSTM layer
    slstm.py        the paper sLSTMLayer (its cell holds the recurrent weights)
    state.py        mLSTMState, mLSTMLayerState, sLSTMLayerState and their checks
    config.py       the paper layers' configs (the `xlstm` package's fields)
"""

from .config import FeedForwardConfig, UpProjConfigMixin, mLSTMLayerConfig, sLSTMCellConfig, sLSTMLayerConfig
from .mlstm import mLSTMCell, mLSTMLayer, mlstm_recurrence
from .mlstm_large import mLSTMLargeLayer
from .slstm import refuse_context_parallel, sLSTMCell, sLSTMLayer
from .state import mLSTMLayerState, mLSTMState, sLSTMLayerState

__all__ = ["FeedForwardConfig", "UpProjConfigMixin", "mLSTMLayerConfig", "sLSTMCellConfig", "sLSTMLayerConfig",
           "mLSTMCell", "mLSTMLayer", "mlstm_recurrence", "mLSTMLargeLayer", "sLSTMCell", "sLSTMLayer",
           "mLSTMLayerState", "mLSTMState", "sLSTMLayerState", "refuse_context_parallel"]
