"""xlstm-triton: Triton kernels and PyTorch modules for the xLSTM (mLSTM and sLSTM cells)."""

__version__ = "0.1.0"

from .mlstm import mlstm_chunkwise, mlstm_step  # noqa: F401
from .slstm import slstm, slstm_step  # noqa: F401
from .utils import poison_outputs  # noqa: F401
from . import nn  # noqa: F401,E402
from . import models  # noqa: F401,E402
