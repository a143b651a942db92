// Standalone correctness check and benchmark of attention/cuda/window_attention (no LibTorch,
// no gtest). For a set of shapes, window widths, global-token counts, dtypes and layouts it
// fills q, k, v with random values, runs the kernels, and compares with a float64 host
// reference of LocalGlobalAttention's core (docs/attention.md):
//   a global query attends to every key; any other query i attends to the keys j with
//   |i - j| <= half plus the global keys outside that window, one softmax over both.
// Outputs are poisoned (NaN) first and written into a layout with 8 padding elements after
// every token's heads: every real element must be written and finite, every padding element
// must keep its guard value. Errors are norm-wise, ||out - ref|| / ||ref||, per case.
//
//   nvcc -std=c++17 -O3 -arch=sm_90 -I. -o check tests/cuda/window_attention_check.cu \
//        attention/cuda/window_attention.cu
//   ./check            correctness; exit code 0 only if every case passes
//   ./check --bench    times the whole core (bf16, 12 heads of 64, half 32, 4 global tokens)
//                      at n = 8192 and 65536 (median of 50 after warm-up)
#include "../../attention/cuda/window_attention.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace wk = hvlm::kernels::cuda;
using wk::DType;

#define CUDA_CHECK(expr)                                                                          \
  do {                                                                                            \
    const cudaError_t err_ = (expr);                                                              \
    if (err_ != cudaSuccess) {                                                                    \
      std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(err_)); \
      std::exit(2);                                                                               \
    }                                                                                             \
  } while (0)

namespace {

class Rng {  // splitmix64
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  float uniform(float lo, float hi) {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return lo + (hi - lo) * static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
  }

 private:
  uint64_t state_;
};

const char* dtype_name(DType t) { return t == DType::kFloat32 ? "fp32" : t == DType::kBFloat16 ? "bf16" : "fp16"; }
size_t dtype_size(DType t) { return t == DType::kFloat32 ? 4 : 2; }

void put(DType t, uint8_t* buf, size_t i, float v) {
  if (t == DType::kFloat32) {
    std::memcpy(buf + 4 * i, &v, 4);
  } else if (t == DType::kBFloat16) {
    const __nv_bfloat16 h = __float2bfloat16_rn(v);
    std::memcpy(buf + 2 * i, &h, 2);
  } else {
    const __half h = __float2half_rn(v);
    std::memcpy(buf + 2 * i, &h, 2);
  }
}

float get(DType t, const uint8_t* buf, size_t i) {
  if (t == DType::kFloat32) {
    float v;
    std::memcpy(&v, buf + 4 * i, 4);
    return v;
  }
  if (t == DType::kBFloat16) {
    __nv_bfloat16 h;
    std::memcpy(&h, buf + 2 * i, 2);
    return __bfloat162float(h);
  }
  __half h;
  std::memcpy(&h, buf + 2 * i, 2);
  return __half2float(h);
}

std::vector<int32_t> global_positions(int64_t n, int64_t g) {
  std::vector<int32_t> out;
  if (g <= 0) return out;
  if (g >= n) {
    for (int64_t i = 0; i < n; ++i) out.push_back(static_cast<int32_t>(i));
    return out;
  }
  for (int64_t t = 0; t < g; ++t) out.push_back(static_cast<int32_t>(t * n / g));
  return out;
}

// A [batch, heads, n, hd] operand in one of two layouts, with its host copy.
struct Operand {
  bool token_major = false;  // [batch, n, heads, hd] (+ padding) instead of [batch, heads, n, hd]
  int64_t pad = 0;           // elements after each token's heads (token-major only)
  wk::HeadStrides strides;
  size_t elements = 0;
  std::vector<uint8_t> host;
  void* device = nullptr;

  size_t at(int64_t b, int64_t h, int64_t t) const {
    return static_cast<size_t>(b * strides.batch + h * strides.head + t * strides.token);
  }
};

Operand make_operand(DType dtype, int64_t batch, int64_t heads, int64_t n, int64_t hd, bool token_major, int64_t pad) {
  Operand o;
  o.token_major = token_major;
  o.pad = pad;
  if (token_major) {
    o.strides.token = heads * hd + pad;
    o.strides.head = hd;
    o.strides.batch = n * o.strides.token;
  } else {
    o.strides.token = hd;
    o.strides.head = n * hd;
    o.strides.batch = heads * n * hd;
  }
  o.elements = static_cast<size_t>(batch * o.strides.batch);
  o.host.assign(o.elements * dtype_size(dtype), 0);
  CUDA_CHECK(cudaMalloc(&o.device, std::max<size_t>(16, o.host.size())));
  return o;
}

struct Case {
  DType dtype;
  int64_t batch, heads, n, hd, half, globals;
  bool token_major;
  float magnitude = 1.0f;
};

double tolerance(DType t) { return t == DType::kFloat32 ? 1e-5 : t == DType::kBFloat16 ? 1.5e-2 : 4e-3; }

bool run_case(const Case& c, Rng& rng) {
  const size_t es = dtype_size(c.dtype);
  Operand q = make_operand(c.dtype, c.batch, c.heads, c.n, c.hd, c.token_major, 0);
  Operand k = make_operand(c.dtype, c.batch, c.heads, c.n, c.hd, c.token_major, c.token_major ? 8 : 0);
  Operand v = make_operand(c.dtype, c.batch, c.heads, c.n, c.hd, false, 0);
  Operand out = make_operand(c.dtype, c.batch, c.heads, c.n, c.hd, true, 8);
  for (Operand* o : {&q, &k, &v}) {
    for (size_t i = 0; i < o->elements; ++i) put(c.dtype, o->host.data(), i, rng.uniform(-c.magnitude, c.magnitude));
    CUDA_CHECK(cudaMemcpy(o->device, o->host.data(), o->host.size(), cudaMemcpyHostToDevice));
  }
  // Poison: NaN everywhere, then a guard value in the padding.
  // Exactly representable in all three dtypes (12345 is not, in bf16 or fp16).
  const float guard = 1536.0f;
  for (size_t i = 0; i < out.elements; ++i) put(c.dtype, out.host.data(), i, NAN);
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t t = 0; t < c.n; ++t)
      for (int64_t p = 0; p < out.pad; ++p) put(c.dtype, out.host.data(), out.at(b, c.heads - 1, t) + c.hd + p, guard);
  CUDA_CHECK(cudaMemcpy(out.device, out.host.data(), out.host.size(), cudaMemcpyHostToDevice));

  const auto gpos = global_positions(c.n, c.globals);
  wk::WindowAttentionArgs a;
  a.dtype = c.dtype;
  a.batch = c.batch;
  a.heads = c.heads;
  a.length = c.n;
  a.head_dim = c.hd;
  a.half_window = c.half;
  a.q = q.device;
  a.q_strides = q.strides;
  a.k = k.device;
  a.k_strides = k.strides;
  a.v = v.device;
  a.v_strides = v.strides;
  a.out = out.device;
  a.out_strides = out.strides;
  a.globals.count = static_cast<int32_t>(gpos.size());
  for (size_t i = 0; i < gpos.size(); ++i) a.globals.positions[i] = gpos[i];
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.hd)));
  void* workspace = nullptr;
  const size_t ws = wk::window_attention_workspace_bytes(a);
  if (ws > 0) CUDA_CHECK(cudaMalloc(&workspace, ws));
  a.workspace = workspace;
  std::string error;
  try {
    wk::window_attention(a);
  } catch (const std::exception& e) {
    error = e.what();
  }
  CUDA_CHECK(cudaDeviceSynchronize());
  CUDA_CHECK(cudaMemcpy(out.host.data(), out.device, out.host.size(), cudaMemcpyDeviceToHost));

  std::vector<char> is_global(static_cast<size_t>(c.n), 0);
  for (int32_t p : gpos) is_global[static_cast<size_t>(p)] = 1;
  double diff2 = 0, ref2 = 0;
  int64_t bad = 0, guards = 0;
  std::vector<double> scores(static_cast<size_t>(c.n)), acc(static_cast<size_t>(c.hd));
  std::vector<int64_t> keys;
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.hd));
  for (int64_t b = 0; b < c.batch; ++b) {
    for (int64_t h = 0; h < c.heads; ++h) {
      for (int64_t i = 0; i < c.n; ++i) {
        // The keys query i sees: all for a global query, else its window and the global keys.
        keys.clear();
        if (is_global[i]) {
          for (int64_t j = 0; j < c.n; ++j) keys.push_back(j);
        } else {
          for (int64_t j = std::max<int64_t>(0, i - c.half); j <= std::min(c.n - 1, i + c.half); ++j) keys.push_back(j);
          for (int32_t p : gpos) {
            if (std::llabs(i - p) > c.half) keys.push_back(p);
          }
        }
        double mx = -INFINITY;
        for (size_t u = 0; u < keys.size(); ++u) {
          double s = 0;
          for (int64_t d = 0; d < c.hd; ++d) {
            s += static_cast<double>(get(c.dtype, q.host.data(), q.at(b, h, i) + d)) *
                 get(c.dtype, k.host.data(), k.at(b, h, keys[u]) + d);
          }
          scores[u] = s * scale;
          mx = std::max(mx, scores[u]);
        }
        double sum = 0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (size_t u = 0; u < keys.size(); ++u) {
          const double p = std::exp(scores[u] - mx);
          sum += p;
          for (int64_t d = 0; d < c.hd; ++d) acc[d] += p * get(c.dtype, v.host.data(), v.at(b, h, keys[u]) + d);
        }
        for (int64_t d = 0; d < c.hd; ++d) {
          const double want = acc[d] / sum;
          const double got = get(c.dtype, out.host.data(), out.at(b, h, i) + d);
          if (!std::isfinite(got)) ++bad;
          diff2 += (got - want) * (got - want);
          ref2 += want * want;
        }
      }
    }
    for (int64_t t = 0; t < c.n; ++t)
      for (int64_t p = 0; p < out.pad; ++p)
        if (get(c.dtype, out.host.data(), out.at(b, c.heads - 1, t) + c.hd + p) != guard) ++guards;
  }
  const double rel = std::sqrt(diff2 / std::max(ref2, 1e-300));
  const bool ok = error.empty() && bad == 0 && guards == 0 && rel <= tolerance(c.dtype);
  std::printf("%s %s B=%lld H=%lld n=%lld hd=%lld half=%lld globals=%zu %s x%.0f: rel %.3g (tol %.1g)%s%s%s\n",
              ok ? "PASS" : "FAIL", dtype_name(c.dtype), (long long)c.batch, (long long)c.heads, (long long)c.n,
              (long long)c.hd, (long long)c.half, gpos.size(), c.token_major ? "token-major" : "head-major",
              c.magnitude, rel, tolerance(c.dtype), bad ? (" non-finite=" + std::to_string(bad)).c_str() : "",
              guards ? (" guards-overwritten=" + std::to_string(guards)).c_str() : "",
              error.empty() ? "" : (" threw: " + error).c_str());
  for (Operand* o : {&q, &k, &v, &out}) CUDA_CHECK(cudaFree(o->device));
  if (workspace) CUDA_CHECK(cudaFree(workspace));
  return ok;
}

int bench() {
  const int64_t heads = 12, hd = 64, half = 32;
  for (int64_t n : {8192LL, 65536LL}) {
    for (int64_t globals : {4LL, 0LL}) {
      Operand q = make_operand(DType::kBFloat16, 1, heads, n, hd, false, 0);
      Operand k = make_operand(DType::kBFloat16, 1, heads, n, hd, false, 0);
      Operand v = make_operand(DType::kBFloat16, 1, heads, n, hd, false, 0);
      Operand out = make_operand(DType::kBFloat16, 1, heads, n, hd, true, 0);
      Rng rng(7);
      for (Operand* o : {&q, &k, &v}) {
        for (size_t i = 0; i < o->elements; ++i) put(DType::kBFloat16, o->host.data(), i, rng.uniform(-1, 1));
        CUDA_CHECK(cudaMemcpy(o->device, o->host.data(), o->host.size(), cudaMemcpyHostToDevice));
      }
      wk::WindowAttentionArgs a;
      a.dtype = DType::kBFloat16;
      a.batch = 1;
      a.heads = heads;
      a.length = n;
      a.head_dim = hd;
      a.half_window = half;
      a.q = q.device;
      a.q_strides = q.strides;
      a.k = k.device;
      a.k_strides = k.strides;
      a.v = v.device;
      a.v_strides = v.strides;
      a.out = out.device;
      a.out_strides = out.strides;
      const auto gpos = global_positions(n, globals);
      a.globals.count = static_cast<int32_t>(gpos.size());
      for (size_t i = 0; i < gpos.size(); ++i) a.globals.positions[i] = gpos[i];
      a.scale = 0.125f;
      void* workspace = nullptr;
      const size_t ws = wk::window_attention_workspace_bytes(a);
      if (ws > 0) CUDA_CHECK(cudaMalloc(&workspace, ws));
      a.workspace = workspace;
      cudaEvent_t start, stop;
      CUDA_CHECK(cudaEventCreate(&start));
      CUDA_CHECK(cudaEventCreate(&stop));
      for (int i = 0; i < 5; ++i) wk::window_attention(a);
      std::vector<float> ms;
      for (int i = 0; i < 50; ++i) {
        CUDA_CHECK(cudaEventRecord(start));
        wk::window_attention(a);
        CUDA_CHECK(cudaEventRecord(stop));
        CUDA_CHECK(cudaEventSynchronize(stop));
        float t = 0;
        CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
        ms.push_back(t);
      }
      std::sort(ms.begin(), ms.end());
      const double bytes = 4.0 * n * heads * hd * 2;
      std::printf("bench local_global core n=%lld globals=%lld bf16: %.4f ms (%.0f GB/s of q,k,v,out)\n", (long long)n,
                  (long long)globals, ms[ms.size() / 2], bytes / (ms[ms.size() / 2] * 1e-3) / 1e9);
      for (Operand* o : {&q, &k, &v, &out}) CUDA_CHECK(cudaFree(o->device));
      if (workspace) CUDA_CHECK(cudaFree(workspace));
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--bench") return bench();
  Rng rng(2026);
  std::vector<Case> cases;
  for (DType t : {DType::kBFloat16, DType::kFloat16, DType::kFloat32}) {
    cases.push_back({t, 1, 2, 1, 64, 32, 4, false});
    cases.push_back({t, 2, 3, 7, 64, 4, 2, true});
    cases.push_back({t, 2, 3, 200, 64, 32, 4, true});
    cases.push_back({t, 1, 2, 333, 64, 32, 0, false});
    cases.push_back({t, 1, 2, 257, 32, 16, 3, false});
    cases.push_back({t, 1, 2, 190, 128, 64, 5, true});
    cases.push_back({t, 1, 2, 150, 64, 8, 16, false});
    cases.push_back({t, 1, 2, 300, 16, 12, 4, true});
    cases.push_back({t, 1, 1, 500, 64, 80, 4, false});  // wider than the tensor-core kernel takes
    cases.push_back({t, 1, 2, 12, 64, 2, 12, false});   // every token global
    cases.push_back({t, 1, 2, 1000, 64, 32, 4, true, 4.0f});
  }
  cases.push_back({DType::kBFloat16, 1, 12, 4100, 64, 32, 4, true});
  int failed = 0;
  for (const Case& c : cases) failed += run_case(c, rng) ? 0 : 1;
  std::printf("%s: %d of %zu cases failed\n", failed ? "FAILED" : "ALL PASSED", failed, cases.size());
  return failed ? 1 : 0;
}
