#!/usr/bin/env bash
# The GPU check (issues 3 and 5), one short script for a machine with CUDA:
#   bash scripts/gpu-check.sh [RESULTS_DIR]
# Runs the tests marked `gpu` (CUDA paths against the CPU results) and the extraction and sweep
# benchmarks on CUDA, writing their JSON and logs to RESULTS_DIR. Needs torch, numpy, scipy,
# scikit-learn, pyarrow, pyyaml, pytest and hypothesis; not Ray (the benchmarks call the library).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gradstats.py tests/test_coalitions.py tests/test_attacks.py 2>&1 | tee "$out/gpu-tests.log"
echo "gpu tests: exit ${PIPESTATUS[0]}"
python3 -m flows.bench.extract --device cuda --json > "$out/bench-extract-cuda.json" 2> "$out/bench-extract-cuda.log"; echo "bench extract: exit $?"
python3 -m flows.bench.sweep --device cuda --json > "$out/bench-sweep-cuda.json" 2> "$out/bench-sweep-cuda.log"; echo "bench sweep: exit $?"
tail -c 2000 "$out/bench-extract-cuda.json"; echo; tail -c 2000 "$out/bench-sweep-cuda.json"
