#!/usr/bin/env bash
# Bounded sLSTM diagnostics on the device: each variant in its own process with a timeout.
# Run from the repository root: bash bench/tools/diag_slstm.sh
# Heads up to 128, for a training config per head size: the whole-head default against the
# whole-head backward's batch-last variant (warpgroup products, bwd.py) and against split heads
# (bo columns per program; their backward is the split kernels' reduce-scatter). The inference
# forward of whole heads is faster than split heads' (6x128 1.81 against 2.13 ms).
set -u
run() { timeout "$1" python3 -m bench.tools.diag_slstm "${@:2}" > /tmp/diag_one.txt 2>&1; code=$?; grep -v Warn /tmp/diag_one.txt | tail -n 2; echo "  (exit $code)"; }
for s in "6 128" "4 128" "12 64"; do
  for v in '{}' '{"bwd_batch_last": true}' '{"bo": 16}' '{"bo": 32}'; do run 90 timing $s "$v"; done
done
run 90 errors 16 64 6 128 bfloat16 '{"bwd_batch_last": true}'
run 90 errors 20 64 12 64 float32 '{"bwd_batch_last": true}'
run 90 errors 16 64 6 128 bfloat16 '{"bo": 16}'
run 90 timing 12 64 '{"bwd_batch_last": true, "bwd_num_warps": 8}'
