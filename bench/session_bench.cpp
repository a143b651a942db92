// hvlm-session-bench: the in-process cost of one session segment, the baseline for the RPC
// path's overhead (docs/benchmarks.md). It builds the config's stack exactly as hvlm-server
// does and runs segments through the same session path (SessionStore + run_segment: forward
// with the session's memory banks and mamba states, then the bank update), without gRPC.
// With --batch S, S sessions' segments go through one batched pass per iteration, as
// hvlm-server's batcher runs them, timing apart the host's issue of the pass
// (launch_segment_batch; on a GPU it returns before the device is done, and it is the
// batcher thread's work) and its finish (the wait for the device, each session's commit).
// The memory banks fill during a session's first capacity / tokens_per_segment segments, each
// a new shape: --warmup 20 measures the steady state of the default stacks.
//   hvlm-session-bench [--config configs/default.yaml] [--stack NAME] [--segment 64]
//                      [--segments 40] [--warmup 5] [--batch S] [--json FILE]
#include "attention/openmp_wait_policy.h"
#include "server/config.h"
#include "server/log.h"
#include "server/segment_runner.h"
#include "server/session_store.h"
#include "server/stack_registry.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <fstream>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const double rank = p * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(rank);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - static_cast<double>(lo));
}

struct Percentiles {
  double p50, p90, p99;
};
Percentiles percentiles(const std::vector<double>& v) {
  return {percentile(v, 0.5), percentile(v, 0.9), percentile(v, 0.99)};
}

// --batch: `batch` sessions, one segment each per pass; returns the JSON fields it measured.
std::string bench_batched(hvlm::SessionStore& sessions, const hvlm::HostedStack& stack, int64_t batch,
                          int64_t tokens, int warmup, int passes) {
  std::vector<std::string> ids;
  for (int64_t i = 0; i < batch; ++i) ids.push_back(sessions.open(stack, "").session_id);
  std::vector<double> issue_ms, finish_ms;
  // The issue's phases (hvlm::BatchIssueTimings), in its order.
  const char* const phase_names[] = {"gather", "inputs", "forward", "update", "copies"};
  constexpr int kPhases = 5;
  std::vector<double> phase_ms[kPhases];
  for (int pass = 0; pass < warmup + passes; ++pass) {
    std::vector<hvlm::PreparedSegment> segments;
    for (const std::string& id : ids) {
      segments.push_back(hvlm::prepare_segment(sessions, id, std::nullopt,
                                               at::randn({1, tokens, stack.dim()}), nullptr));
    }
    const auto start = std::chrono::steady_clock::now();
    const auto launched = hvlm::launch_segment_batch(segments);
    const auto issued = std::chrono::steady_clock::now();
    const std::vector<hvlm::SegmentOutcome> outcomes = hvlm::finish_segment_batch(sessions, *launched, nullptr);
    const auto finished = std::chrono::steady_clock::now();
    for (const auto& outcome : outcomes) {
      if (outcome.error) std::rethrow_exception(outcome.error);
    }
    if (pass >= warmup) {
      issue_ms.push_back(std::chrono::duration<double, std::milli>(issued - start).count());
      finish_ms.push_back(std::chrono::duration<double, std::milli>(finished - issued).count());
      const hvlm::BatchIssueTimings& t = hvlm::issue_timings(*launched);
      const int64_t phases[kPhases] = {t.gather, t.inputs, t.forward, t.update, t.copies};
      for (int i = 0; i < kPhases; ++i) phase_ms[i].push_back(phases[i] * 1e-3);
    }
  }
  const Percentiles issue = percentiles(issue_ms), finish = percentiles(finish_ms);
  std::printf("batched pass, stack %s, %lld sessions x %lld x %lld on %s: host issue p50 %.3f ms "
              "(p90 %.3f), finish p50 %.3f ms (p90 %.3f) over %d passes\n",
              stack.name.c_str(), static_cast<long long>(batch), static_cast<long long>(tokens),
              static_cast<long long>(stack.dim()), stack.device.str().c_str(), issue.p50, issue.p90,
              finish.p50, finish.p90, passes);
  std::string phases_json;
  std::printf("  issue by phase, p50 ms:");
  for (int i = 0; i < kPhases; ++i) {
    const double p50 = percentile(phase_ms[i], 0.5);
    std::printf(" %s %.3f", phase_names[i], p50);
    char item[64];
    std::snprintf(item, sizeof item, "%s\"%s\": %.4f", i ? ", " : "", phase_names[i], p50);
    phases_json += item;
  }
  std::printf("\n");
  char fields[256];
  std::snprintf(fields, sizeof fields,
                "\"batch\": %lld, \"issue_ms\": {\"p50\": %.4f, \"p90\": %.4f, \"p99\": %.4f}, "
                "\"finish_ms\": {\"p50\": %.4f, \"p90\": %.4f, \"p99\": %.4f}",
                static_cast<long long>(batch), issue.p50, issue.p90, issue.p99, finish.p50, finish.p90,
                finish.p99);
  return std::string(fields) + ", \"issue_phase_p50_ms\": {" + phases_json + "}";
}

}  // namespace

int main(int argc, char** argv) {
  hvlm::use_passive_openmp_wait(argv);
  std::map<std::string, std::string> args{{"config", "configs/default.yaml"}, {"stack", ""},
                                          {"segment", "64"}, {"segments", "40"},
                                          {"warmup", "5"}, {"batch", "0"}, {"json", ""}};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    if (key.rfind("--", 0) != 0 || !args.count(key.substr(2))) {
      std::fprintf(stderr, "hvlm-session-bench: unknown flag %s\n", key.c_str());
      return 2;
    }
    args[key.substr(2)] = argv[i + 1];
  }
  try {
    hvlm::ServerConfig config = hvlm::ServerConfig::load(args["config"]);
    hvlm::log::configure("warn", "text");
    const int threads = hvlm::resolved_intra_op_threads(config);
    at::set_num_threads(threads);
    auto stacks = hvlm::StackRegistry::create(config);
    const std::string name = args["stack"].empty() ? config.stacks.front().name : args["stack"];
    const hvlm::HostedStack* stack = stacks->find(name);
    if (stack == nullptr) throw std::runtime_error("no stack " + name);
    hvlm::SessionStore sessions({});
    const int64_t t = std::stoll(args["segment"]);
    const int warmup = std::stoi(args["warmup"]);
    const int n = std::stoi(args["segments"]);
    const int64_t batch = std::stoll(args["batch"]);
    if (t < 1 || warmup < 0 || n < 1 || batch < 0 || batch > 4096) {
      throw std::runtime_error("--segment and --segments must be >= 1, --warmup >= 0, --batch 0..4096");
    }
    if (batch > 0) {
      const std::string fields = bench_batched(sessions, *stack, batch, t, warmup, n);
      if (!args["json"].empty()) {
        std::ofstream(args["json"]) << "{\"mode\": \"batched\", \"stack\": \"" << name
                                    << "\", \"device\": \"" << stack->device.str()
                                    << "\", \"segment_tokens\": " << t << ", \"passes\": " << n << ", "
                                    << fields << "}\n";
      }
      return 0;
    }
    const std::string id = sessions.open(*stack, "").session_id;
    std::vector<double> ms;
    for (int s = 0; s < warmup + n; ++s) {
      const at::Tensor x = at::randn({1, t, stack->dim()});
      const auto start = std::chrono::steady_clock::now();
      hvlm::run_segment(sessions, id, std::nullopt, x, nullptr, nullptr);
      const double elapsed =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      if (s >= warmup) ms.push_back(elapsed);
    }
    const auto [p50, p90, p99] = percentiles(ms);
    std::printf("in-process session segment, stack %s, %lld x %lld, %d intra-op threads: "
                "p50 %.2f ms, p90 %.2f ms, p99 %.2f ms over %d segments\n",
                name.c_str(), static_cast<long long>(t), static_cast<long long>(stack->dim()), threads,
                p50, p90, p99, n);
    if (!args["json"].empty()) {
      std::ofstream(args["json"]) << "{\"mode\": \"in-process\", \"stack\": \"" << name
                                  << "\", \"segment_tokens\": " << t << ", \"segments\": " << n
                                  << ", \"latency_ms\": {\"p50\": " << p50 << ", \"p90\": " << p90
                                  << ", \"p99\": " << p99 << "}}\n";
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hvlm-session-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
