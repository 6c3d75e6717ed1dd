"""xlstm-triton: Triton kernels and PyTorch modules for the xLSTM (mLSTM and sLSTM cells).

    xlstm_triton.ops            the cells' ops (also at the top level: mlstm_chunkwise, ...)
    xlstm_triton.nn             the xlstm package's paper architecture (layers, blocks, LM)
    xlstm_triton.models         the xLSTM-7B architecture (xLSTMLarge)
    xlstm_triton.integrations   transformers' xLSTM on these kernels

`nn`, `models` and `integrations` are imported on first use.
"""

import importlib

__version__ = "0.1.0"

# The old import paths xlstm_triton.mlstm / xlstm_triton.slstm are modules re-exporting the
# ops; they are loaded first so that the op names below are what the top level binds.
from . import mlstm, slstm  # noqa: F401,E402
from .ops import mlstm_chunkwise, mlstm_step, slstm, slstm_step  # noqa: F401,E402,F811

_LAZY = ("nn", "models", "integrations")


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
