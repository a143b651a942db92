#!/usr/bin/env bash
# Installs every Debian 12 package that hvlm's build, tests and benchmarks need.
# Idempotent and non-interactive: packages already present are skipped, so a
# second run costs one dpkg query. Run as root (or with sudo available).
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config
  # LibTorch (CPU) and an optimized BLAS: without libopenblas0-pthread Debian's
  # LibTorch falls back to the reference BLAS, about 45x slower.
  libtorch-dev libopenblas0-pthread
  # C++ libraries: tests, JSON, gRPC + protobuf (and their code generators), logs, config
  libgtest-dev nlohmann-json3-dev
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libspdlog-dev libyaml-cpp-dev
  # metrics HTTP server (/metrics, /healthz, /readyz); Prometheus and promtool for its tests
  libcivetweb-dev prometheus
  # Python twin, test oracle, plots (Debian's /usr/bin/python3)
  python3 python3-torch python3-numpy python3-matplotlib python3-pytest
  # Python client (hierarchicalvlm.client): gRPC runtime and protoc for its stubs
  python3-grpcio python3-grpc-tools python3-protobuf
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
