"""Tests over several processes (gloo ranks on the CPU, NCCL ranks where there are GPUs)."""

import os

import pytest

# Eight CPU ranks (processes importing torch): ~25 s a case on a 2-core machine, beside the 2- to
# 4-rank cases CI runs; opt in.
EIGHT_CPU_RANKS = os.environ.get("XLSTM_TRITON_EIGHT_RANKS") == "1"
EIGHT_RANKS_REASON = "eight CPU ranks: set XLSTM_TRITON_EIGHT_RANKS=1 to run them"
EIGHT_RANKS = pytest.mark.skipif(not EIGHT_CPU_RANKS, reason=EIGHT_RANKS_REASON)
