#!/usr/bin/env bash
# On a CUDA host: builds tests/cuda/mamba_kernels_check.cu with each tuning variant of the
# selective scan (the -D knobs of attention/cuda/mamba_kernels.cu), checks each against the
# float64 reference and times it at batch 1, 1536 channels, 16 states, bf16. Logs go to $OUT.
#   scripts/mamba-scan-variants.sh ["NAME:-DKNOB=V -DKNOB=V" ...]
set -uo pipefail
out=${OUT:-/tmp/hvlm-scan}
mkdir -p "$out" build-cuda
if [[ $# -eq 0 ]]; then
  # The committed defaults, then each default undone: u/delta/z loaded into registers, the
  # exact two-MUFU gate, groups of 4 steps from shared memory.
  set -- "default:" "registers:-DHVLM_SCAN_ASYNC=0" "exact-gate:-DHVLM_SCAN_FAST_GATE=0" \
    "group4:-DHVLM_SCAN_GROUP_ASYNC=4"
fi
for variant in "$@"; do
  name=${variant%%:*} flags=${variant#*:}
  # shellcheck disable=SC2086
  nvcc -std=c++17 -O3 -arch=sm_90 -I. $flags -Xptxas -v -o "build-cuda/scan-$name" \
    tests/cuda/mamba_kernels_check.cu attention/cuda/mamba_kernels.cu attention/cuda/delta_projection.cu > "$out/scan-$name-build.log" 2>&1 &
done
wait
for variant in "$@"; do
  name=${variant%%:*}
  if [[ ! -x build-cuda/scan-$name ]]; then echo "$name: build FAILED"; tail -5 "$out/scan-$name-build.log"; continue; fi
  check=$("./build-cuda/scan-$name" > "$out/scan-$name-check.log" 2>&1 && echo pass || echo FAIL)
  "./build-cuda/scan-$name" --bench --lengths 8192,65536 > "$out/scan-$name-bench.log" 2>&1
  times=$(grep "softplus+bias" "$out/scan-$name-bench.log" | awk '{printf "%s us  ", $(NF-3)}')
  ready=$(grep "delta ready" "$out/scan-$name-bench.log" | awk '{printf "%s us  ", $(NF-3)}')
  conv=$(grep "causal_conv_silu" "$out/scan-$name-bench.log" | awk '{printf "%s us  ", $(NF-3)}')
  proj=$(grep "dt_proj+softplus" "$out/scan-$name-bench.log" | awk '{printf "%s us  ", $(NF-3)}')
  echo "$name: check $check; at 8192, 65536: scan (softplus+bias) $times| scan (delta ready) $ready| conv $conv| delta_projection $proj"
done
