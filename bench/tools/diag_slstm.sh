#!/usr/bin/env bash
# Bounded sLSTM diagnostics on the device: each variant in its own process with a timeout.
# Run from the repository root: bash bench/tools/diag_slstm.sh
# Heads up to 128: the whole-head default kernels against the batch-last forward and backward
# (warpgroup products, fwd_head.py / bwd_head.py; `timing` prints each stage) and against split
# heads (bo columns per program; their backward is the split kernels' reduce-scatter).
set -u
run() { timeout "$1" python3 -m bench.tools.diag_slstm "${@:2}" > /tmp/diag_one.txt 2>&1; code=$?; grep -v Warn /tmp/diag_one.txt | tail -n 2; echo "  (exit $code)"; }
BL='{"fwd_batch_last": true, "bwd_batch_last": true}'
for s in "6 128" "4 128" "12 64"; do
  for v in '{}' "$BL" '{"bo": 16}' '{"bo": 32}'; do run 90 timing $s "$v"; done
done
run 90 timing 12 64 '{"fwd_batch_last": true, "bwd_batch_last": true, "num_warps": 8, "bwd_num_warps": 8}'
run 90 errors 16 64 6 128 bfloat16 "$BL"
run 90 errors 20 64 12 64 float32 "$BL"
run 90 errors 16 64 6 128 bfloat16 '{"bo": 16}'
