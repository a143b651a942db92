# hvlm: `make run`, `make test` and `make bench` each install missing Debian packages,
# configure (once) and build incrementally.
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
PYTHON ?= /usr/bin/python3
CMAKE_ARGS ?=

.PHONY: all deps configure build run test bench bench-service clean

all: build

deps:
	@bash scripts/install-deps.sh

$(BUILD_DIR)/build.ninja:
	cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_ARGS)

configure: deps $(BUILD_DIR)/build.ninja

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

CONFIG ?= configs/default.yaml

# hvlm-server in the foreground with the default 768-dim video stack; Ctrl-C stops it.
run: build
	$(BUILD_DIR)/server/hvlm-server --config $(CONFIG)

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS)

bench: build
	$(BUILD_DIR)/bench/hvlm-bench sweep --json docs/benchmarks/cpu.json
	$(PYTHON) bench/plot.py docs/benchmarks/cpu.json docs/benchmarks
	$(PYTHON) bench/service_bench.py --build $(BUILD_DIR) --json docs/benchmarks/service.json
	$(BUILD_DIR)/bench/hvlm-metrics-bench --json docs/benchmarks/metrics.json

# Only the service benchmark (hvlm-server over loopback, 1/8/64 sessions).
bench-service: build
	$(PYTHON) bench/service_bench.py --build $(BUILD_DIR) --json docs/benchmarks/service.json

clean:
	rm -rf $(BUILD_DIR)
