#!/usr/bin/env bash
# On a CUDA host (the device tool's H200): builds hvlm against PyTorch 2.x's LibTorch with our
# CUDA kernels (HVLM_CUDA=auto), checks them, and measures. Stages, in order, as arguments
# (default: all): build, kernels, test, bench, service. Logs and JSON go to $OUT.
#   scripts/gpu-bench.sh build test        # build, then the C++ suites (incl. Cuda.*)
set -euo pipefail
out=${OUT:-/tmp/hvlm-gpu}
mkdir -p "$out"
stages=${*:-build kernels test bench service}
has() { [[ " $stages " == *" $1 "* ]]; }
source .gpu-deps/activate.sh
export OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$out/gpu.txt"

if has build; then
  start=$(date +%s)
  cmake -S . -B build-cuda -G Ninja $HVLM_CMAKE_ARGS > "$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }
  grep "hvlm:" "$out/configure.log"
  cmake --build build-cuda -j "$(nproc)" > "$out/build.log" 2>&1 || { grep -E "error" -A6 "$out/build.log" | head -80; exit 1; }
  echo "build ok in $(( $(date +%s) - start )) s"
fi
if has kernels; then
  nvcc -std=c++17 -O3 -arch=sm_90 -I. -o build-cuda/mamba_kernels_check tests/cuda/mamba_kernels_check.cu \
    attention/cuda/mamba_kernels.cu > "$out/kernels-build.log" 2>&1 || { tail -30 "$out/kernels-build.log"; exit 1; }
  ./build-cuda/mamba_kernels_check > "$out/kernels-check.log" 2>&1 || echo "mamba_kernels_check FAILED"
  tail -25 "$out/kernels-check.log"
  ./build-cuda/mamba_kernels_check --bench > "$out/kernels-bench.log" 2>&1 || echo "mamba_kernels_check --bench failed"
  tail -8 "$out/kernels-bench.log"
fi
if has test; then
  # The C++ suites (the Python and end-to-end suites need Debian's python3 packages).
  (cd build-cuda && ctest -j 8 -L 'cpp|server|client' -E 'Parity' --output-on-failure > "$out/ctest.log" 2>&1) || true
  grep -E "tests passed|Failed|SEGFAULT|Exception" "$out/ctest.log" | head -30
  (cd build-cuda && ./tests/cpp/hvlm_attention_tests --gtest_filter='Cuda.*' 2>&1 | tail -30)
fi
if has bench; then
  ./build-cuda/bench/hvlm-gpu-bench --json "$out/gpu-bench.json" > "$out/gpu-bench.log" 2>&1 || echo "hvlm-gpu-bench failed"
  tail -40 "$out/gpu-bench.log"
fi
if has service; then
  python3 bench/service_bench.py --build build-cuda --config configs/gpu.yaml --sessions 1,64,256 \
    --batching both --duration 8 --skip-in-process --json "$out/service-gpu.json" > "$out/service.log" 2>&1 \
    || echo "service benchmark failed"
  tail -14 "$out/service.log"
fi
