#!/usr/bin/env bash
# The device check of issue 34 in one call, for a session that is lent a GPU (about 6-10 minutes on an H100 or
# H200, most of it benchmarks/gpu.py): which card, the GPU-marked tests (the decoders give the CPU's sets on the
# GPU, and the same on CUDA graphs as on eager steps), then benchmarks/gpu.py at full size with a profile: every
# row of the 2026-11-27 file, the counters and the targets judged, and last the rows with the decode steps
# replayed as CUDA graphs. Results go to $OUT (default benchmarks/results), named by card and date.
#
#   OUT=<folder> bash benchmarks/gpu_check.sh
#
# Run from the repository root. The lent machines have torch and transformers but may lack pytest: the tests
# are then skipped with a line saying so, and the benchmark still runs. Without CUDA it rehearses on the CPU
# (the tiny backbone, `benchmarks/gpu.py --tiny`), which is how it is tested here.
set -uo pipefail
out=${OUT:-benchmarks/results}
mkdir -p "$out"
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')" \
  | tee "$out/device.txt"
if python -c "import pytest, hypothesis" 2>/dev/null; then
  python -m pytest -q -p no:cacheprovider -m gpu -rs tests/test_qwen.py 2>&1 | tail -15 | tee "$out/gpu-tests.txt"
else
  echo "pytest or hypothesis missing: GPU tests skipped" | tee "$out/gpu-tests.txt"
fi
if python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  python benchmarks/gpu.py --profile --results-dir "$out" 2>&1 | tee "$out/gpu-benchmark.txt"
else  # the rehearsal: the same script on the tiny backbone, on the CPU
  python benchmarks/gpu.py --tiny --no-ddp --out "$out/cpu-rehearsal.json" 2>&1 | tee "$out/gpu-benchmark.txt"
fi
