#!/usr/bin/env bash
# Bounded sLSTM diagnostics on the device: each variant in its own process with a timeout.
# Run from the repository root: bash bench/tools/diag_slstm.sh
set -u
run() { timeout "$1" python3 -m bench.tools.diag_slstm "${@:2}" > /tmp/diag_one.txt 2>&1; code=$?; grep -v Warn /tmp/diag_one.txt | tail -n 2; echo "  (exit $code)"; }
for v in '{}' '{"bo": 16, "resident": true, "bwd_num_warps": 4}' '{"bo": 32, "resident": false, "bwd_num_warps": 4}'; do run 60 timing 1 768 "$v"; done
for s in "3 256" "4 512" "12 64" "6 128"; do run 60 timing $s '{}'; done
run 60 timing 3 256 '{"bo": 32, "resident": true}'
run 60 timing 6 128 '{"bwd_num_warps": 16}'
run 60 timing 12 64 '{"bwd_num_warps": 4}'
