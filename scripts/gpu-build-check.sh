#!/usr/bin/env bash
# Builds hvlm on a CUDA host against PyTorch 2.x's LibTorch (with the Debian libraries that
# ../shared/gpu/prepare.sh gathered into .gpu-deps) and runs a short smoke check: the build
# must compile there exactly as on Debian's LibTorch 1.13. Logs go to $OUT when set.
set -euo pipefail
out=${OUT:-/tmp/hvlm-gpu-check}
mkdir -p "$out"
source .gpu-deps/activate.sh
cmake -S . -B build-cuda -G Ninja $HVLM_CMAKE_ARGS "$@" > "$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }
cmake --build build-cuda -j "$(nproc)" > "$out/build.log" 2>&1 || { grep -E "error|Error" -A4 "$out/build.log" | head -80; exit 1; }
echo "build ok"
./build-cuda/bench/hvlm-bench stream --segments 4 2>&1 | tail -2
# The C++ suites only: the Python and end-to-end suites need Debian's python3 packages.
if [ -x build-cuda/tests/cpp/hvlm_attention_tests ]; then
  (cd build-cuda && ctest --output-on-failure -j 8 -L 'cpp|server|client' -E 'Parity' 2>&1 | tail -15)
fi
