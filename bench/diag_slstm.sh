#!/usr/bin/env bash
# Bounded sLSTM diagnostics on the device: each variant in its own process with a timeout.
set -u
run() { timeout "$1" python3 bench/diag_slstm.py "${@:2}" > /tmp/diag_one.txt 2>&1; code=$?; grep -v Warn /tmp/diag_one.txt | tail -n 2; echo "  (exit $code)"; }
run 45 errors 3 7 1 80 float32 '{}'
run 45 errors 3 7 1 80 float32 '{"bo": 16, "resident": true, "bk": 16}'
run 45 errors 3 7 1 80 float32 '{"bo": 16, "resident": true, "bk": 128, "sync": false}'
run 35 timing 12 64 '{}'
run 35 timing 1 768 '{}'
run 45 timing 1 768 '{"sync": false}'
run 35 timing 1 768 '{"bo": 32}'
