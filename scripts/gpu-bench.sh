#!/usr/bin/env bash
# On a CUDA host (the device tool's H200): builds hvlm against PyTorch 2.x's LibTorch with our
# CUDA kernels (HVLM_CUDA=auto), checks them, and measures. Stages, in order, as arguments
# (default: all): build, kernels, test, bench, pass, service. Logs and JSON go to $OUT.
#   scripts/gpu-bench.sh build test        # build, then the C++ suites (incl. Cuda.*)
set -euo pipefail
out=${OUT:-/tmp/hvlm-gpu}
mkdir -p "$out" build-cuda
stages=${*:-build kernels test bench pass service}
has() { [[ " $stages " == *" $1 "* ]]; }
source .gpu-deps/activate.sh
export OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$out/gpu.txt"
lscpu | grep -E "^(CPU\(s\)|Thread|Core|Socket|Model name|NUMA node)" >> "$out/gpu.txt" || true

# The standalone kernel checks (tests/cuda/X_check.cu against attention/cuda/X.cu, no
# LibTorch) compile in the background, beside the CMake build when both stages run.
checks=$(ls tests/cuda/*_check.cu)
if has kernels; then
  for check in $checks; do
    name=$(basename "$check" _check.cu)
    sources=("attention/cuda/${name}.cu")
    [[ $name == mamba_kernels ]] && sources+=(attention/cuda/delta_projection.cu attention/cuda/mamba_input.cu)  # checked there too
    nvcc -std=c++17 -O3 -arch=sm_90 -I. -o "build-cuda/${name}_check" "$check" "${sources[@]}" \
      > "$out/${name}-build.log" 2>&1 &
  done
fi
if has build; then
  start=$(date +%s)
  cmake -S . -B build-cuda -G Ninja $HVLM_CMAKE_ARGS > "$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }
  grep "hvlm:" "$out/configure.log" || true
  cmake --build build-cuda -j "$(nproc)" > "$out/build.log" 2>&1 || { grep -E "error" -A6 "$out/build.log" | head -80; exit 1; }
  echo "build ok in $(( $(date +%s) - start )) s"
fi
if has kernels; then
  wait  # the checks' compiles
  for check in $checks; do
    name=$(basename "$check" _check.cu)
    if [[ ! -x "build-cuda/${name}_check" ]]; then
      echo "${name}_check: build FAILED"; tail -20 "$out/${name}-build.log"; continue
    fi
    "./build-cuda/${name}_check" > "$out/${name}-check.log" 2>&1 || echo "${name}_check FAILED"
    grep -E "FAIL|PASS.*fail|PASSED|failed" "$out/${name}-check.log" | tail -12 || true
    bench_args=()
    [[ $name == mamba_kernels ]] && bench_args=(--lengths 8192,65536)
    "./build-cuda/${name}_check" --bench "${bench_args[@]}" > "$out/${name}-bench.log" 2>&1 || echo "${name}_check --bench failed"
    grep -E "bench|scan|conv|delta|input" "$out/${name}-bench.log" | tail -18 || true
  done
fi
if has test; then
  # The C++ suites (the Python and end-to-end suites need Debian's python3 packages).
  (cd build-cuda && ctest -j 16 -L 'cpp|server|client' -E 'Parity' --output-on-failure > "$out/ctest.log" 2>&1) || true
  grep -E "tests passed|Failed|SEGFAULT|Exception" "$out/ctest.log" | head -30 || true
  (cd build-cuda && ./tests/cpp/hvlm_attention_tests --gtest_filter='Cuda.*' 2>&1 | tail -30)
fi
if has bench; then
  ./build-cuda/bench/hvlm-gpu-bench --json "$out/gpu-bench.json" > "$out/gpu-bench.log" 2>&1 || echo "hvlm-gpu-bench failed"
  tail -40 "$out/gpu-bench.log"
fi
if has pass; then
  # The batcher's pass as hvlm-server runs it (configs/gpu.yaml): the host's issue time (the
  # batcher thread's work) by phase, for passes of 64, 128 and 256 sessions' segments.
  for sessions in 64 128 256; do
    ./build-cuda/bench/hvlm-session-bench --config configs/gpu.yaml --batch "$sessions" --warmup 20 \
      --segments 30 --json "$out/batched-pass-$sessions.json" | tail -2 || echo "hvlm-session-bench --batch $sessions failed"
  done
fi
if has service; then
  # Warm-up 20 segments per session: the banks (capacity 256, 16 tokens per segment) fill
  # during a session's first 16 segments, each of which is a new shape; the figures are the
  # steady state after that.
  python3 bench/service_bench.py --build build-cuda --config configs/gpu.yaml --sessions ${SERVICE_SESSIONS:-1,64,256} \
    --batching ${SERVICE_BATCHING:-both} --duration 8 --warmup ${SERVICE_WARMUP:-20} --skip-in-process \
    --json "$out/service-gpu.json" > "$out/service.log" 2>&1 || echo "service benchmark failed"
  tail -20 "$out/service.log"
  # 256 sessions with batching again: twice more as above (its p99 varies from run to run by
  # several ms), with float32 features on the wire (the load client's default is the stack's
  # dtype, bfloat16 here), and with the sessions sharing 4 connections (64 each) instead of one
  # each. SERVICE_VARIANTS replaces the list:
  # "name:service_bench.py flags" entries separated by ';' (empty: none).
  IFS=';' read -ra variants <<< "${SERVICE_VARIANTS-repeat2:;repeat3:;f32wire:--wire-dtype float32;4conn:--channels 4}"
  for variant in "${variants[@]}"; do
    name=${variant%%:*}
    if [[ $variant != *:* || -z $name || ! $name =~ ^[A-Za-z0-9_-]+$ ]]; then
      echo "SERVICE_VARIANTS: '$variant' is not name:flags (name of letters, digits, _ or -)"; continue
    fi
    # shellcheck disable=SC2086
    python3 bench/service_bench.py --build build-cuda --config configs/gpu.yaml --sessions 256 --batching on \
      --duration 8 --warmup ${SERVICE_WARMUP:-20} --skip-in-process ${variant#*:} \
      --json "$out/service-gpu-$name.json" > "$out/service-$name.log" 2>&1 || echo "service benchmark ($name) failed"
    echo "$name:"; grep -E "^\| on" "$out/service-$name.log" || true
  done
fi
