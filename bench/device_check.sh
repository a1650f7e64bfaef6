#!/usr/bin/env bash
# The checks that need a CUDA device, as one script (a device session's budget is minutes):
#   1. the gpu-marked tests (replay sweep on CUDA = CPU, CLI replay on CUDA, the monitor's statistics on
#      CUDA against exact torch values, two ranks sharing one GPU);
#   2. the live monitor's overhead at ~100M parameters (issue 15: <= 1% at every=10), side by side.
# Usage: OUT=/some/dir PYTHON=/path/to/python bash bench/device_check.sh   (defaults: bench/out/device, python)
set -u
OUT=${OUT:-bench/out/device}
PY=${PYTHON:-python}
mkdir -p "$OUT"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))" \
    2>&1 | tee "$OUT/device.txt" || exit 2
"$PY" -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tee "$OUT/gpu_tests.log"
# width 7000: 512·w + 2·w² + 256·w ≈ 103M parameters
"$PY" bench/monitor_overhead.py --device cuda --width 7000 --rounds 20 --threads 4 \
    --out "$OUT/monitor_overhead_cuda.json" 2>&1 | tee "$OUT/monitor_overhead_cuda.log"
