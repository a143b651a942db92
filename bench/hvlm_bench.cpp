// hvlm-bench: measures the attention library on this machine.
//
//   hvlm-bench sweep  [--ns 512,1024,...] [--json FILE] [--mechanisms a,b] [--threads N]
//                     [--max-seconds S] [--dense-limit-gib G]
//       The seed's efficiency comparison with measured numbers: dense (standard) attention and
//       each mechanism at dim 768, 12 heads, batch 1; median time and peak extra memory of the
//       attention core and of the whole module; for Mamba the scan and the projections apart.
//   hvlm-bench stream --spec FILE [--weights FILE] [--segments N] [--segment-len T]
//                     [--memory-tokens M] [--threads N]
//       Streams synthetic video-segment features through a stack as one long video: mamba
//       states carried over, the last M output tokens as every cross_memory block's memory.
#include "attention/attention_stack.h"
#include "attention/dense_attention.h"
#include "attention/local_global_attention.h"
#include "attention/mamba_layer.h"
#include "attention/openmp_wait_policy.h"
#include "attention/performer_attention.h"
#include "attention/cross_memory_attention.h"
#include "attention/strided_attention.h"
#include "attention/weights.h"
#include "bench/memory_tracker.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <nlohmann/json.hpp>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <numeric>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace hvlm::bench {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr int64_t kDim = 768;
constexpr int64_t kHeads = 12;
constexpr int64_t kHeadDim = kDim / kHeads;
constexpr double kMiB = 1024.0 * 1024.0;

struct Args {
  std::map<std::string, std::string> values;
  std::string get(const std::string& key, const std::string& fallback) const {
    auto it = values.find(key);
    return it == values.end() ? fallback : it->second;
  }
};

Args parse_args(int argc, char** argv, int first) {
  Args args;
  for (int i = first; i < argc; ++i) {
    std::string key = argv[i];
    if (key.rfind("--", 0) != 0 || i + 1 >= argc) {
      throw std::invalid_argument("expected --option value, got '" + key + "'");
    }
    args.values[key.substr(2)] = argv[++i];
  }
  return args;
}

std::vector<int64_t> parse_list(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(std::stoll(item));
  return out;
}

std::vector<std::string> split_names(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(item);
  return out;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Measurement {
  double median_ms = 0, min_ms = 0;
  int reps = 0;
  double peak_tensor_mib = 0, peak_rss_mib = -1;
};

// One warm-up call, then timed calls until `max_seconds` have passed (at least 3, at most 20),
// then one more call under the memory tracker.
Measurement measure(const std::function<void()>& fn, double max_seconds) {
  fn();
  std::vector<double> times;
  const auto start = Clock::now();
  while (times.size() < 20 &&
         (times.size() < 3 ||
          std::chrono::duration<double>(Clock::now() - start).count() < max_seconds)) {
    const auto t0 = Clock::now();
    fn();
    times.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  Measurement m;
  m.median_ms = median(times);
  m.min_ms = *std::min_element(times.begin(), times.end());
  m.reps = static_cast<int>(times.size());
  reset_peaks();
  fn();
  m.peak_tensor_mib = peak_extra_tensor_bytes() / kMiB;
  const int64_t rss = peak_extra_resident_bytes();
  m.peak_rss_mib = rss < 0 ? -1 : rss / kMiB;
  return m;
}

struct Row {
  std::string mechanism, part;
  int64_t n;
  Measurement m;
};

// The conv and selective-scan stages alone, on inputs shaped like MambaLayer's at length n.
std::function<void()> mamba_scan_work(MambaLayer& layer, int64_t n) {
  const int64_t e = layer->inner_dim(), s = layer->options.state_size(), r = layer->dt_rank();
  const int64_t k = layer->options.d_conv();
  auto xz = at::randn({1, n, 2 * e});
  auto x_dbl = at::randn({1, n, r + 2 * s});
  auto delta = at::softplus(at::randn({1, n, e}) - 4.0);
  return [=, &layer]() {
    auto conv_state = at::zeros({1, e, k - 1});
    auto ssm_state = at::zeros({1, e, s});
    auto u = layer->conv_stage(xz, conv_state);
    layer->scan_stage(u, x_dbl, delta, xz, ssm_state);
  };
}

// MambaLayer's four linear projections at sequence length n.
std::function<void()> mamba_projection_work(MambaLayer& layer, int64_t n) {
  const int64_t e = layer->inner_dim(), s = layer->options.state_size(), r = layer->dt_rank();
  auto x = at::randn({1, n, kDim});
  auto u = at::randn({1, n, e});
  auto dt = at::randn({1, n, r + 2 * s}).narrow(-1, 0, r);
  return [=, &layer]() {
    layer->in_proj->forward(x);
    layer->x_proj->forward(u);
    layer->dt_proj->forward(dt);
    layer->out_proj->forward(u);
  };
}

int run_sweep(const Args& args) {
  const auto ns = parse_list(args.get("ns", "512,1024,2048,4096,8192,16384"));
  const auto mechanisms = split_names(
      args.get("mechanisms", "dense,strided,local_global,performer,mamba,cross_memory"));
  const double max_seconds = std::stod(args.get("max-seconds", "2"));
  const double dense_limit = std::stod(args.get("dense-limit-gib", "12")) * 1024 * kMiB;
  const std::string json_path = args.get("json", "");
  c10::InferenceMode inference;
  at::manual_seed(0);

  std::vector<Row> rows;
  auto record = [&](const std::string& mech, const std::string& part, int64_t n,
                    const std::function<void()>& fn) {
    Row row{mech, part, n, measure(fn, max_seconds)};
    std::fprintf(stderr, "  %-13s %-11s n=%-6lld median %10.2f ms  peak %9.1f MiB tensors, %9.1f MiB rss\n",
                 mech.c_str(), part.c_str(), static_cast<long long>(n), row.m.median_ms,
                 row.m.peak_tensor_mib, row.m.peak_rss_mib);
    rows.push_back(row);
  };

  StandardAttention dense(StandardAttentionOptions(kDim, kHeads));
  StridedAttention strided(StridedAttentionOptions(kDim, kHeads, 8));
  LocalGlobalAttention local_global(
      LocalGlobalAttentionOptions(kDim, kHeads).local_window(64).num_global_tokens(4));
  PerformerAttention performer(
      PerformerAttentionOptions(kDim, kHeads).num_random_features(256).kernel_type("softmax"));
  CrossMemoryAttention cross(CrossMemoryAttentionOptions(kDim, kHeads));
  MambaLayer mamba(MambaLayerOptions(kDim).state_size(16).expand_factor(2.0));
  for (torch::nn::Module* m : std::vector<torch::nn::Module*>{
           dense.get(), strided.get(), local_global.get(), performer.get(), cross.get(), mamba.get()}) {
    m->eval();
  }
  auto memory = at::randn({1, 256, kDim});

  for (int64_t n : ns) {
    auto x = at::randn({1, n, kDim});
    auto q = at::randn({1, kHeads, n, kHeadDim});
    auto k = at::randn({1, kHeads, n, kHeadDim});
    auto v = at::randn({1, kHeads, n, kHeadDim});
    for (const auto& mech : mechanisms) {
      if (mech == "dense") {
        // scores and probabilities, [H, n, n] each
        if (2.0 * kHeads * n * n * sizeof(float) > dense_limit) {
          std::fprintf(stderr, "  dense         skipped     n=%lld (needs more than --dense-limit-gib)\n",
                       static_cast<long long>(n));
          continue;
        }
        record(mech, "core", n, [&] { dense->attention_core(q, k, v); });
        record(mech, "module", n, [&] { dense->forward(x); });
      } else if (mech == "strided") {
        record(mech, "core", n, [&] { strided->attention_core(q, k, v); });
        record(mech, "module", n, [&] { strided->forward(x); });
      } else if (mech == "local_global") {
        record(mech, "core", n, [&] { local_global->attention_core(q, k, v); });
        record(mech, "module", n, [&] { local_global->forward(x); });
      } else if (mech == "performer") {
        record(mech, "core", n, [&] { performer->attention_core(q, k, v); });
        record(mech, "module", n, [&] { performer->forward(x); });
      } else if (mech == "cross_memory") {
        record(mech, "module", n, [&] { cross->forward(x, memory); });
      } else if (mech == "mamba") {
        record(mech, "module", n, [&] { mamba->forward(x); });
        record(mech, "scan", n, mamba_scan_work(mamba, n));
        record(mech, "projections", n, mamba_projection_work(mamba, n));
      } else {
        throw std::invalid_argument("unknown mechanism '" + mech + "'");
      }
    }
  }

  // The table: one row per mechanism and part, one column per n.
  std::map<std::pair<std::string, std::string>, std::map<int64_t, Measurement>> table;
  for (const auto& r : rows) table[{r.mechanism, r.part}][r.n] = r.m;
  std::printf("\nmedian time in ms (peak extra tensor memory in MiB), dim %lld, %lld heads, batch 1, %d threads\n",
              static_cast<long long>(kDim), static_cast<long long>(kHeads), at::get_num_threads());
  std::printf("%-26s", "mechanism / part");
  for (int64_t n : ns) std::printf(" %20lld", static_cast<long long>(n));
  std::printf("\n");
  for (const auto& [key, by_n] : table) {
    std::printf("%-26s", (key.first + " / " + key.second).c_str());
    for (int64_t n : ns) {
      auto it = by_n.find(n);
      if (it == by_n.end()) {
        std::printf(" %20s", "-");
      } else {
        char cell[64];
        std::snprintf(cell, sizeof(cell), "%.1f (%.0f)", it->second.median_ms,
                      it->second.peak_tensor_mib);
        std::printf(" %20s", cell);
      }
    }
    std::printf("\n");
  }

  if (!json_path.empty()) {
    json out;
    out["torch_version"] = TORCH_VERSION;
    out["threads"] = at::get_num_threads();
    out["dim"] = kDim;
    out["num_heads"] = kHeads;
    out["config"] = {{"strided", {{"stride", 8}}},
                     {"local_global", {{"local_window", 64}, {"num_global_tokens", 4}}},
                     {"performer", {{"num_random_features", 256}, {"kernel_type", "softmax"}}},
                     {"mamba", {{"state_size", 16}, {"expand_factor", 2.0}}},
                     {"cross_memory", {{"memory_tokens", 256}}}};
    out["rows"] = json::array();
    for (const auto& r : rows) {
      out["rows"].push_back({{"mechanism", r.mechanism}, {"part", r.part}, {"n", r.n},
                             {"median_ms", r.m.median_ms}, {"min_ms", r.m.min_ms},
                             {"reps", r.m.reps}, {"peak_tensor_mib", r.m.peak_tensor_mib},
                             {"peak_rss_mib", r.m.peak_rss_mib}});
    }
    std::ofstream(json_path) << out.dump(2) << "\n";
    std::fprintf(stderr, "wrote %s\n", json_path.c_str());
  }
  return 0;
}

int run_stream(const Args& args) {
  const std::string spec_path = args.get("spec", "configs/video_stack.json");
  const int64_t segments = std::stoll(args.get("segments", "16"));
  const int64_t segment_len = std::stoll(args.get("segment-len", "64"));
  const int64_t memory_tokens = std::stoll(args.get("memory-tokens", "256"));
  std::ifstream in(spec_path);
  if (!in) throw std::invalid_argument("cannot open spec '" + spec_path + "'");
  std::stringstream text;
  text << in.rdbuf();
  at::manual_seed(0);
  AttentionStack stack(StackSpec::parse(text.str()));
  const std::string weights = args.get("weights", "");
  if (weights.empty()) {
    std::printf("stack %s: %zu blocks, dim %lld, seeded random weights (no --weights given)\n",
                spec_path.c_str(), stack->num_blocks(), static_cast<long long>(stack->spec().dim));
  } else {
    load_weights(*stack, weights);
    std::printf("stack %s: %zu blocks, dim %lld, weights %s\n", spec_path.c_str(),
                stack->num_blocks(), static_cast<long long>(stack->spec().dim), weights.c_str());
  }
  stack->eval();
  const size_t nb = stack->num_blocks();
  std::vector<MambaState> states(nb);
  std::vector<at::Tensor> memories(nb);
  at::Tensor history = at::empty({1, 0, stack->spec().dim});
  std::vector<double> times;
  for (int64_t s = 0; s < segments; ++s) {
    auto x = at::randn({1, segment_len, stack->spec().dim});
    for (size_t i : stack->memory_blocks()) memories[i] = history;
    const auto t0 = Clock::now();
    auto out = stack->forward(x, memories, states);
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    times.push_back(ms);
    states = out.states;
    history = at::cat({history, out.y}, 1);
    if (history.size(1) > memory_tokens) {
      history = history.narrow(1, history.size(1) - memory_tokens, memory_tokens).contiguous();
    }
    std::printf("segment %3lld: %lld tokens, memory %lld tokens, %8.2f ms, output mean %+.4f\n",
                static_cast<long long>(s), static_cast<long long>(segment_len),
                static_cast<long long>(memories.empty() || stack->memory_blocks().empty()
                                           ? 0 : memories[stack->memory_blocks()[0]].size(1)),
                ms, out.y.mean().item<double>());
  }
  std::vector<double> sorted = times;
  std::sort(sorted.begin(), sorted.end());
  auto pct = [&](double p) { return sorted[std::min(sorted.size() - 1, static_cast<size_t>(p * sorted.size()))]; };
  std::printf("segments %lld, p50 %.2f ms, p90 %.2f ms, max %.2f ms, %.1f segments/s\n",
              static_cast<long long>(segments), median(times), pct(0.9), sorted.back(),
              1000.0 * segments / std::accumulate(times.begin(), times.end(), 0.0));
  return 0;
}

}  // namespace
}  // namespace hvlm::bench

int main(int argc, char** argv) {
  using namespace hvlm::bench;
  hvlm::use_passive_openmp_wait(argv);
  install_tracking_allocator();
  if (argc < 2 || (std::string(argv[1]) != "sweep" && std::string(argv[1]) != "stream")) {
    std::fprintf(stderr, "usage: hvlm-bench sweep|stream [--option value ...] (see the source header)\n");
    return 2;
  }
  try {
    const auto args = parse_args(argc, argv, 2);
    const int threads = std::stoi(args.get("threads", std::to_string(std::thread::hardware_concurrency())));
    at::set_num_threads(std::max(1, threads));
    return std::string(argv[1]) == "sweep" ? run_sweep(args) : run_stream(args);
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "hvlm-bench: %s\n", e.what_without_backtrace());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hvlm-bench: %s\n", e.what());
  }
  return 1;
}
