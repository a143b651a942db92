// hvlm-session-bench: the in-process cost of one session segment, the baseline for the RPC
// path's overhead (docs/benchmarks.md). It builds the config's stack exactly as hvlm-server
// does and runs segments through the same session path (SessionStore + run_segment: forward
// with the session's memory banks and mamba states, then the bank update), without gRPC.
//   hvlm-session-bench [--config configs/default.yaml] [--stack NAME] [--segment 64]
//                      [--segments 40] [--warmup 5] [--json FILE]
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
#include <fstream>
#include <map>
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

}  // namespace

int main(int argc, char** argv) {
  hvlm::use_passive_openmp_wait(argv);
  std::map<std::string, std::string> args{{"config", "configs/default.yaml"}, {"stack", ""},
                                          {"segment", "64"}, {"segments", "40"},
                                          {"warmup", "5"}, {"json", ""}};
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
    const std::string id = sessions.open(*stack, "").session_id;
    const int64_t t = std::stoll(args["segment"]);
    const int warmup = std::stoi(args["warmup"]);
    const int n = std::stoi(args["segments"]);
    std::vector<double> ms;
    for (int s = 0; s < warmup + n; ++s) {
      const at::Tensor x = at::randn({1, t, stack->dim()});
      const auto start = std::chrono::steady_clock::now();
      hvlm::run_segment(sessions, id, std::nullopt, x, nullptr, nullptr);
      const double elapsed =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      if (s >= warmup) ms.push_back(elapsed);
    }
    const double p50 = percentile(ms, 0.5), p90 = percentile(ms, 0.9), p99 = percentile(ms, 0.99);
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
