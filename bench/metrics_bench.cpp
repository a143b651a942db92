// hvlm-metrics-bench: what the metrics cost on the hot path and per scrape.
//   hvlm-metrics-bench [--json FILE]
// Times (median of 7 runs, ns per operation) Counter::inc, Histogram::observe and a labelled
// lookup plus inc, each from 1 and 2 threads hammering the same child; the whole per-segment
// bookkeeping of the service (ServiceMetrics::request_done + batch_done + segment_done); and
// Registry::render() of the server's full registry after traffic. docs/benchmarks.md has the
// figures.
#include "server/metrics.h"
#include "server/process_metrics.h"
#include "server/service_metrics.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

// ns per call of `op`, run `iters` times on each of `threads` threads; median of 7 runs.
double ns_per_op(int threads, int64_t iters, const std::function<void()>& op) {
  std::vector<double> runs;
  for (int run = 0; run < 7; ++run) {
    const auto start = Clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&] {
        for (int64_t i = 0; i < iters; ++i) op();
      });
    }
    for (auto& t : pool) t.join();
    const double ns = std::chrono::duration<double, std::nano>(Clock::now() - start).count();
    runs.push_back(ns / static_cast<double>(iters));  // per op as each thread sees it
  }
  std::sort(runs.begin(), runs.end());
  return runs[runs.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
      json_path = argv[++i];
    } else {
      std::fprintf(stderr, "usage: hvlm-metrics-bench [--json FILE]\n");
      return 2;
    }
  }

  hvlm::metrics::Registry registry;
  hvlm::register_process_metrics(registry);
  hvlm::ServiceMetrics service(registry, {"bench", "n/a", "cpu"});
  service.add_stack("video");
  hvlm::SessionStats stats;
  stats.active = 64;
  hvlm::ServiceMetrics::Sources sources;
  sources.sessions = [&stats] { return stats; };
  sources.session_memory_limit_bytes = 4LL << 30;
  sources.queued_requests = [] { return size_t{3}; };
  service.watch(sources);

  auto& counter = registry.counter("bench_counter_total", "bench").get();
  auto& histogram = registry.histogram("bench_seconds", "bench", {}, hvlm::metrics::exponential_buckets(1e-4, 2, 21)).get();
  auto& family = registry.counter("bench_labelled_total", "bench", {"rpc", "code"});
  for (const char* rpc : {"Forward", "StreamSegments", "OpenSession", "CloseSession"}) {
    for (const char* code : {"OK", "INVALID_ARGUMENT", "NOT_FOUND"}) family.labels({rpc, code});
  }

  hvlm::StageTimings timings{1200, 300, 51000, 900, 400};
  const std::vector<int64_t> banks{256};
  struct Row {
    const char* name;
    int threads;
    double ns;
  };
  std::vector<Row> rows;
  const int64_t iters = 2000000;
  for (int threads : {1, 2}) {
    rows.push_back({"Counter::inc", threads, ns_per_op(threads, iters, [&] { counter.inc(); })});
    rows.push_back({"Histogram::observe", threads, ns_per_op(threads, iters, [&] {
                      thread_local double value = 0;
                      value = value > 1 ? 1e-4 : value * 1.001 + 1e-4;  // walks across the buckets
                      histogram.observe(value);
                    })});
    rows.push_back({"Family::labels + inc", threads,
                    ns_per_op(threads, iters / 4, [&] { family.labels({"StreamSegments", "OK"}).inc(); })});
    rows.push_back({"per segment (service)", threads, ns_per_op(threads, iters / 8, [&] {
                      service.request_done("StreamSegments", "video", 0, 0.055);
                      service.batch_done("video", 1);
                      service.segment_done("video", 64, timings, &banks);
                    })});
  }
  std::vector<double> renders;
  size_t bytes = 0;
  for (int i = 0; i < 50; ++i) {
    const auto start = Clock::now();
    bytes = registry.render().size();
    renders.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
  }
  std::sort(renders.begin(), renders.end());
  const double render_us = renders[renders.size() / 2];

  std::printf("%-24s %8s %12s\n", "operation", "threads", "ns/op");
  for (const Row& r : rows) std::printf("%-24s %8d %12.1f\n", r.name, r.threads, r.ns);
  std::printf("render: %.1f us for %zu bytes (the server's registry after traffic)\n", render_us, bytes);

  if (!json_path.empty()) {
    std::ofstream out(json_path);
    out << "{\n  \"ns_per_op\": [\n";
    for (size_t i = 0; i < rows.size(); ++i) {
      out << "    {\"operation\": \"" << rows[i].name << "\", \"threads\": " << rows[i].threads
          << ", \"ns\": " << rows[i].ns << "}" << (i + 1 < rows.size() ? "," : "") << "\n";
    }
    out << "  ],\n  \"render_us\": " << render_us << ",\n  \"render_bytes\": " << bytes << "\n}\n";
  }
  return 0;
}
