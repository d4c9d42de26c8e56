#!/usr/bin/env bash
# GPU-machine stages, each sized to fit one 10-minute device call (repository root on the device):
#   bash benchmarks/device_run.sh tier [pytest -k expression]   # whole GPU tier (over 10 min on an H100)
#   bash benchmarks/device_run.sh tier-decode [-k expression]   # its decode half (test_gpu, dense, sparse decode, small files)
#   bash benchmarks/device_run.sh tier-prefill [-k expression]  # its prefill half (sparse prefill, MHA)
#   bash benchmarks/device_run.sh sanitize                      # compute-sanitizer over every kernel
#   bash benchmarks/device_run.sh bench                         # `openmla bench` (+ CSV) and graph times
#   bash benchmarks/device_run.sh mha [pytest -k expression]    # every test of tests/test_mha_prefill.py on the GPU (the
#                                                               #   public op's opcheck / torch.compile tests carry no gpu mark;
#                                                               #   about 10 min on an H100: split it with -k)
#   bash benchmarks/device_run.sh sanitize mha_prefill          # the sanitizer over one op's cases
# Logs go to $OUT (or ./device-out when OUT is unset).
set -uo pipefail
out="${OUT:-device-out}"
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
stage="${1:-tier}"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
case "$stage" in
  tier|tier-decode|tier-prefill)
    prefill="tests/test_sparse_prefill.py tests/test_mha_prefill.py"
    case "$stage" in
      tier) files="tests" ;;
      tier-prefill) files="$prefill" ;;
      tier-decode) files=$(ls tests/test_*.py | grep -v -e test_sparse_prefill -e test_mha_prefill) ;;
    esac
    python3 -m pytest -q -m gpu $files -p no:cacheprovider ${2:+-k "$2"} 2>&1 \
      | tee "$out/pytest-$stage.txt" | grep -v '^\.*\s*\[' | tail -15 ;;
  sanitize)
    compute-sanitizer --tool memcheck --print-limit 5 python3 benchmarks/sanitize.py "${@:2}" 2>&1 \
      | tee "$out/sanitize.txt" | grep -v '^=========     ' | tail -30 ;;
  bench)
    python3 -m openmla bench --csv "$out/bench.csv" 2>&1 | tee "$out/bench.txt" | tail -32
    python3 benchmarks/graph_times.py 2>&1 | tee "$out/graph.txt" | tail -12 ;;
  mha)
    python3 -m pytest -q tests/test_mha_prefill.py -p no:cacheprovider ${2:+-k "$2"} 2>&1 \
      | tee "$out/pytest-mha.txt" | grep -v '^\.*\s*\[' | tail -8 ;;
  *) echo "unknown stage $stage (tier | tier-decode | tier-prefill | sanitize | bench | mha)"; exit 2 ;;
esac
