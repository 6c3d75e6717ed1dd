#!/usr/bin/env bash
# Runs on the device machine (see README, "GPU"): installs the carried peer wheels, prints the
# environment, runs the GPU tests (TESTS, default tests/) and the benchmark suites (SUITES,
# default none; PROVIDERS, MODES and CTX optional), and copies results and logs to $OUT.
#   TESTS="tests/ops/test_mlstm.py" SUITES="mlstm" PROVIDERS="xlstm_triton" bash bench/device.sh
#   TESTS=none SUITES=model PROVIDERS=xlstm_large,transformer MODES=eager,cudagraph CTX=2048,8192 bash bench/device.sh
# With pytest-xdist among the wheels (pip download --no-deps pytest-xdist execnet -d .whl), the
# tests run in WORKERS processes (default 6): the whole suite in ~5 min on an H100 instead of >10.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
[ -n "${CEILINGS:-}" ] && python3 -m bench.harness.ceilings 2>&1 | tee "$OUT/ceilings.txt"
if [ "${TESTS:-tests}" != "none" ]; then
  XDIST=$(python3 -c "import xdist" 2>/dev/null && echo "-n ${WORKERS:-6}")
  python3 -m pytest -q ${XDIST:-} --durations=15 ${TESTS:-tests} 2>&1 | tee "$OUT/tests.log" | tail -n 40
fi
for s in ${SUITES:-}; do
  python3 -m bench "$s" ${PROVIDERS:+--providers "$PROVIDERS"} ${MODES:+--modes "$MODES"} ${CTX:+--ctx "$CTX"} --log "$OUT/bench_$s.log" 2>&1 | tail -n 60
  cp "bench/results/$s.csv" "$OUT/"
done
exit 0
