// hvlm-gpu-bench: the GPU figures of docs/benchmarks.md (built only with HVLM_WITH_CUDA).
//   hvlm-gpu-bench [--lengths 1024,8192,65536] [--dtype bfloat16|float16|float32] [--json FILE]
//
// First measures the two ceilings of the card: a large bf16 matrix product (FLOP/s) and a large
// device-to-device copy (bytes read + written per second). Then, for each length n (batch 1,
// dim 768, 12 heads of 64), times every attention core, every module (projections included)
// and the whole five-block stack, each beside
//   - its roofline floor: FLOPs / matmul rate + minimal bytes / copy bandwidth, where minimal
//     bytes = inputs read once + outputs written once + weights read once;
//   - dense attention of the same shape: SDPA, the faster of LibTorch's own choice (cuDNN's
//     fused attention on an H200) and flash attention (what hvlm-server runs).
// Times are medians over CUDA-event-timed repetitions after warm-up, each repetition on
// fresh-enough inputs (inputs are rotated among several sets so caches do not flatter).
#include "attention/attention_stack.h"
#include "attention/cross_memory_attention.h"
#include "attention/dense_attention.h"
#include "attention/local_global_attention.h"
#include "attention/mamba_layer.h"
#include "attention/performer_attention.h"
#include "attention/strided_attention.h"
#include "attention/tensor_checks.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/core/InferenceMode.h>
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace {

using hvlm::AttentionStack;

constexpr int64_t kDim = 768, kHeads = 12, kHeadDim = 64;
constexpr int64_t kWindow = 64, kGlobals = 4, kStride = 8, kFeatures = 256, kMemory = 256;
constexpr int64_t kStateSize = 16, kExpand = 2, kConv = 4;

// Median milliseconds of `fn` (CUDA events around each call), after `warmup` calls.
double time_ms(const std::function<void()>& fn, int reps = 30, int warmup = 5) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> ms;
  at::cuda::CUDAEvent start(cudaEventDefault), stop(cudaEventDefault);
  for (int i = 0; i < reps; ++i) {
    start.record();
    fn();
    stop.record();
    stop.synchronize();
    ms.push_back(start.elapsed_time(stop));
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

struct Ceilings {
  double flops_per_s = 0;   // bf16 matmul
  double bytes_per_s = 0;   // device-to-device copy, read + write
};

Ceilings measure_ceilings(at::ScalarType dtype) {
  Ceilings c;
  const int64_t m = 8192;
  auto a = at::randn({m, m}, at::TensorOptions().device(at::kCUDA).dtype(dtype));
  auto b = at::randn({m, m}, a.options());
  const double mm = time_ms([&] { at::mm(a, b); }, 10, 3);
  c.flops_per_s = 2.0 * m * m * m / (mm * 1e-3);
  auto src = at::randn({int64_t(1) << 29}, at::TensorOptions().device(at::kCUDA).dtype(at::kFloat));  // 2 GiB
  auto dst = at::empty_like(src);
  const double cp = time_ms([&] { dst.copy_(src); }, 10, 3);
  c.bytes_per_s = 2.0 * src.numel() * 4 / (cp * 1e-3);
  return c;
}

struct Row {
  std::string what;
  int64_t n;
  double ms;
  double flops;
  double bytes;
  double dense_ms;  // SDPA of the same shape (cores) or the dense module (modules); 0 if none
};

double floor_ms(const Row& r, const Ceilings& c) {
  return (r.flops / c.flops_per_s + r.bytes / c.bytes_per_s) * 1e3;
}

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) out.push_back(std::stoll(item));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> lengths = {1024, 8192, 65536};
  std::string dtype_name = "bfloat16", json_path;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--lengths" && i + 1 < argc) {
      lengths = parse_list(argv[++i]);
    } else if (arg == "--dtype" && i + 1 < argc) {
      dtype_name = argv[++i];
    } else if (arg == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else {
      std::fprintf(stderr, "usage: hvlm-gpu-bench [--lengths N,N,...] [--dtype bfloat16|float16|float32] [--json FILE]\n");
      return 2;
    }
  }
  if (!torch::cuda::is_available()) {
    std::fprintf(stderr, "hvlm-gpu-bench: no CUDA device\n");
    return 1;
  }
  const at::ScalarType dtype = dtype_name == "float32" ? at::kFloat : dtype_name == "float16" ? at::kHalf : at::kBFloat16;
  const double elem = dtype == at::kFloat ? 4 : 2;
  c10::InferenceMode guard;
  hvlm::prefer_flash_attention();  // as hvlm-server does on a GPU
  const auto props = at::cuda::getCurrentDeviceProperties();
  const Ceilings ceil = measure_ceilings(dtype);
  std::printf("device %s, %d SMs; matmul %.0f TFLOP/s, copy %.0f GB/s (%s)\n", props->name, props->multiProcessorCount,
              ceil.flops_per_s / 1e12, ceil.bytes_per_s / 1e9, dtype_name.c_str());

  const auto cuda = at::TensorOptions().device(at::kCUDA).dtype(dtype);
  auto place = [&](auto module) {
    module->eval();
    module->to(at::Device(at::kCUDA), dtype);
    return module;
  };
  auto local_global = place(hvlm::LocalGlobalAttention(
      hvlm::LocalGlobalAttentionOptions(kDim, kHeads).local_window(kWindow).num_global_tokens(kGlobals)));
  auto strided = place(hvlm::StridedAttention(hvlm::StridedAttentionOptions(kDim, kHeads, kStride)));
  auto performer =
      place(hvlm::PerformerAttention(hvlm::PerformerAttentionOptions(kDim, kHeads).num_random_features(kFeatures)));
  auto cross = place(hvlm::CrossMemoryAttention(hvlm::CrossMemoryAttentionOptions(kDim, kHeads)));
  auto dense = place(hvlm::StandardAttention(hvlm::StandardAttentionOptions(kDim, kHeads)));
  auto mamba = place(hvlm::MambaLayer(hvlm::MambaLayerOptions(kDim).state_size(kStateSize).d_conv(kConv)));
  auto stack = place(AttentionStack(hvlm::StackSpec::parse(R"({"dim": 768, "blocks": [
      {"type": "local_global", "num_heads": 12, "local_window": 64, "num_global_tokens": 4},
      {"type": "cross_memory", "num_heads": 12},
      {"type": "mamba", "state_size": 16},
      {"type": "strided", "num_heads": 12, "stride": 8},
      {"type": "performer", "num_random_features": 256}]})")));

  const double d = kDim, e = kExpand * kDim, r = (kDim + 15) / 16, ns = kStateSize;
  const double proj_flops_per_token = 4 * 2 * d * d, proj_weight_bytes = 4 * d * d * elem;
  std::vector<Row> rows;
  for (const int64_t n : lengths) {
    const double nn = static_cast<double>(n);
    const double io = 2 * nn * d * elem;          // x in, y out
    const double qkvo = 4 * nn * d * elem;        // q, k, v in, out
    constexpr int kSets = 3;                      // rotated inputs
    std::vector<at::Tensor> x, q, k, v, mem;
    for (int s = 0; s < kSets; ++s) {
      x.push_back(at::randn({1, n, kDim}, cuda));
      q.push_back(at::randn({1, kHeads, n, kHeadDim}, cuda));
      k.push_back(at::randn({1, kHeads, n, kHeadDim}, cuda));
      v.push_back(at::randn({1, kHeads, n, kHeadDim}, cuda));
      mem.push_back(at::randn({1, kMemory, kDim}, cuda));
    }
    int set = 0;
    auto next = [&] { return set = (set + 1) % kSets; };
    // Dense baselines: SDPA with LibTorch's own backend choice (cuDNN's fused attention on
    // this card) and with flash attention (what hvlm runs; prefer_flash_attention). The
    // efficient cores are compared with the faster of the two.
    auto sdpa = [&] {
      const int i = next();
      at::scaled_dot_product_attention(q[i], k[i], v[i]);
    };
    at::globalContext().setSDPUseCuDNN(true);
    const double sdpa_cudnn = time_ms(sdpa);
    hvlm::prefer_flash_attention();
    const double sdpa_flash = time_ms(sdpa);
    const double sdpa_core = std::min(sdpa_cudnn, sdpa_flash);
    auto core = [&](const std::string& what, double flops, const std::function<void(int)>& fn) {
      rows.push_back({what, n, time_ms([&] { fn(next()); }), flops, qkvo, sdpa_core});
    };
    auto module = [&](const std::string& what, double core_flops, double extra_bytes, const std::function<void(int)>& fn,
                      double dense_ms) {
      rows.push_back({what, n, time_ms([&] { fn(next()); }), nn * proj_flops_per_token + core_flops,
                      io + proj_weight_bytes + extra_bytes, dense_ms});
    };
    const double dense_core_flops = 4 * nn * nn * d;
    rows.push_back({"dense (SDPA, cuDNN) core", n, sdpa_cudnn, dense_core_flops, qkvo, 0});
    rows.push_back({"dense (SDPA, flash) core", n, sdpa_flash, dense_core_flops, qkvo, 0});
    core("local_global core", 4 * nn * (kWindow + 1 + kGlobals) * d, [&](int i) { local_global->attention_core(q[i], k[i], v[i]); });
    core("strided core", 4 * nn * (nn / kStride) * d, [&](int i) { strided->attention_core(q[i], k[i], v[i]); });
    core("performer core", 8 * nn * kFeatures * d, [&](int i) { performer->attention_core(q[i], k[i], v[i]); });
    // Modules run as in hvlm-server, whose requests' values are checked on the host: inside a
    // FiniteValuesChecked scope (each module's own check of x's values is a device pass plus a
    // wait for the device; the Mamba layer's is reported beside it). The stack checks once.
    const double mamba_checked_ms = time_ms([&] { mamba->forward(x[next()]); });
    std::optional<hvlm::FiniteValuesChecked> checked;
    checked.emplace();
    const double dense_module = time_ms([&] { dense->forward(x[next()]); });
    rows.push_back({"dense module", n, dense_module, nn * proj_flops_per_token + dense_core_flops, io + proj_weight_bytes, 0});
    module("local_global module", 4 * nn * (kWindow + 1 + kGlobals) * d, 0, [&](int i) { local_global->forward(x[i]); }, dense_module);
    module("strided module", 4 * nn * (nn / kStride) * d, 0, [&](int i) { strided->forward(x[i]); }, dense_module);
    module("performer module", 8 * nn * kFeatures * d, 0, [&](int i) { performer->forward(x[i]); }, dense_module);
    module("cross_memory module (m=256)", 4 * nn * kMemory * d, 2.0 * kMemory * d * elem,
           [&](int i) { cross->forward(x[i], mem[i]); }, dense_module);
    const double mamba_flops = nn * (2 * d * 2 * e + 2 * e * (r + 2 * ns) + 2 * r * e + 2 * e * d + 2 * e * kConv + 6 * e * ns);
    const double mamba_weights = (d * 2 * e + e * (r + 2 * ns) + r * e + e * d) * elem;
    rows.push_back({"mamba layer", n, time_ms([&] { mamba->forward(x[next()]); }), mamba_flops, io + mamba_weights, dense_module});
    {
      // Where the Mamba layer's time goes: its three large projections alone (dt_proj runs
      // fused with its softplus, attention/cuda/delta_projection.h; the kernel check times it),
      // and the host's time to issue the layer (when that is the larger, the layer is bound by
      // issuing, not the device).
      const auto u = at::randn({1, n, static_cast<int64_t>(e)}, cuda);
      const double in_ms = time_ms([&] { mamba->in_proj->forward(x[next()]); });
      const double x_ms = time_ms([&] { mamba->x_proj->forward(u); });
      const double out_ms = time_ms([&] { mamba->out_proj->forward(u); });
      std::vector<double> host_ms;
      const double layer_ms = time_ms([&] {
        const auto t0 = std::chrono::steady_clock::now();
        mamba->forward(x[next()]);
        host_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      });
      std::sort(host_ms.begin(), host_ms.end());
      std::printf("mamba layer n=%lld: %.3f ms (host issue %.3f ms; %.3f ms with its own check of x's values): "
                  "in_proj %.3f, x_proj %.3f, out_proj %.3f ms; conv, dt_proj + softplus, scan and the rest %.3f ms\n",
                  static_cast<long long>(n), layer_ms, host_ms[host_ms.size() / 2], mamba_checked_ms, in_ms, x_ms,
                  out_ms, layer_ms - in_ms - x_ms - out_ms);
    }
    checked.reset();
    // The stack: five pre-norm blocks, each with an MLP of hidden 4 * dim.
    const double mlp_flops = 4 * 5 * 2 * nn * d * 4 * d, mlp_bytes = 5 * 8 * d * d * elem;
    double stack_flops = mlp_flops + mamba_flops + 4 * nn * proj_flops_per_token;
    stack_flops += 4 * nn * (kWindow + 1 + kGlobals) * d + 4 * nn * kMemory * d + 4 * nn * (nn / kStride) * d + 8 * nn * kFeatures * d;
    const double stack_bytes = io + mlp_bytes + mamba_weights + 4 * proj_weight_bytes + 2.0 * kMemory * d * elem;
    std::vector<at::Tensor> memories(5);
    memories[1] = mem[0];
    rows.push_back({"whole stack (5 blocks)", n, time_ms([&] { stack->forward(x[next()], memories); }, 10, 3),
                    stack_flops, stack_bytes, 0});
    std::fflush(stdout);
  }

  // A serving pass as hvlm-server's batcher runs it at 256 sessions: ~128 stream segments of
  // 64 tokens, each with 256 memory tokens. Device time (events) and the host's time to issue
  // the pass (the forward call returning, before the device finishes): when the second is the
  // larger, the pass is bound by issuing LibTorch ops, not by the device.
  {
    const int64_t segments = 128, tokens = 64;
    const auto xb = at::randn({segments, tokens, kDim}, cuda);
    std::vector<at::Tensor> memories(5);
    memories[1] = at::randn({segments, kMemory, kDim}, cuda);
    std::vector<double> host_ms;
    const double device_ms = time_ms([&] {
      const auto t0 = std::chrono::steady_clock::now();
      stack->forward(xb, memories);
      host_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    });
    std::sort(host_ms.begin(), host_ms.end());
    std::printf("serving pass (%lld segments x %lld tokens, memory %lld): device %.3f ms, host issue %.3f ms\n",
                static_cast<long long>(segments), static_cast<long long>(tokens), static_cast<long long>(kMemory),
                device_ms, host_ms[host_ms.size() / 2]);
  }

  std::printf("\n%-30s %7s %10s %10s %8s %10s %9s\n", "what", "n", "ms", "floor ms", "x floor", "dense ms", "vs dense");
  for (const Row& row : rows) {
    const double fl = floor_ms(row, ceil);
    std::printf("%-30s %7lld %10.4f %10.4f %8.2f %10.4f %9s\n", row.what.c_str(), static_cast<long long>(row.n), row.ms,
                fl, row.ms / fl, row.dense_ms,
                row.dense_ms > 0 ? (std::to_string(row.dense_ms / row.ms).substr(0, 6) + "x").c_str() : "");
  }
  if (!json_path.empty()) {
    std::ofstream out(json_path);
    out << "{\n  \"device\": \"" << props->name << "\",\n  \"dtype\": \"" << dtype_name
        << "\",\n  \"matmul_flops_per_s\": " << ceil.flops_per_s << ",\n  \"copy_bytes_per_s\": " << ceil.bytes_per_s
        << ",\n  \"rows\": [\n";
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& row = rows[i];
      out << "    {\"what\": \"" << row.what << "\", \"n\": " << row.n << ", \"ms\": " << row.ms << ", \"flops\": " << row.flops
          << ", \"bytes\": " << row.bytes << ", \"floor_ms\": " << floor_ms(row, ceil) << ", \"dense_ms\": " << row.dense_ms
          << "}" << (i + 1 < rows.size() ? "," : "") << "\n";
    }
    out << "  ]\n}\n";
  }
  return 0;
}
