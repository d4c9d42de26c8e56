#!/usr/bin/env bash
# One call on the GPU machine: environment, GPU test tier, `openmla check`, `openmla bench`.
# Usage (repository root, on the device): bash benchmarks/device_run.sh [pytest -k expression]
# Logs go to $OUT (or ./device-out when OUT is unset).
set -uo pipefail
out="${OUT:-device-out}"
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv \
  | tee "$out/nvidia-smi.txt"
python3 -c "import torch, triton, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'numpy', numpy.__version__)"
python3 -m openmla info 2>&1 | tee "$out/info.txt"
python3 -m pytest -q -x -m gpu tests ${1:+-k "$1"} 2>&1 | tee "$out/pytest-gpu.txt" | tail -5
python3 -m openmla check 2>&1 | tee "$out/check.txt" | tail -30
python3 -m openmla bench --csv "$out/bench.csv" 2>&1 | tee "$out/bench.txt" | tail -40
