#!/usr/bin/env bash
# One device call for the sLSTM kernels (run from the repository root, PYTHONPATH=$PWD): their
# GPU tests (the default and the batch-last kernels), the quick bench's CUDA-graph modes, then
# the timing diagnostics of diag_slstm.sh (default / batch-last / split heads, stage by stage).
set -u
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/ops/test_slstm.py -k gpu 2>&1 | tail -n 6
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/bench/test_bench_smoke.py -k graph_modes 2>&1 | tail -n 3
bash bench/tools/diag_slstm.sh
