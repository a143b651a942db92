// Standalone correctness check and benchmark of attention/cuda/mamba_kernels (no LibTorch, no
// gtest). For a set of shapes and the three dtypes it fills inputs with fresh random values,
// runs the conv and the scan on the GPU, and compares with a float64 host reference that
// follows the scalar definition of attention/selective_scan_cpu.h:
//   conv:  out[b,t,c] = silu(bias[c] + sum_k w[k,c] * xx[b,t+k,c]), xx = [state_in, x] in time,
//          state_out = last kernel-1 steps of xx;
//   scan:  dt = softplus?(delta + delta_bias); h = exp(dt A) h + dt B u;
//          y = (C . h + D u) * silu(z).
// Each output is poisoned (NaN bytes) before each run, every element must be written and
// finite, guard bytes after each output must stay untouched, and a sequence run in two pieces
// with the state carried must match one run. Errors are norm-wise, ||out - ref|| / ||ref||.
//
// The delta projection (attention/cuda/delta_projection.h) is checked the same way against
//   delta[r,c] = softplus(sum_k dt[r,k] w[c,k] + bias[c]), elementwise as well as norm-wise,
// and the scan's FMA-pipe exp (fast_math.cuh's exp2_poly) against exp2 in float64 over its range.
// The fused input stage (attention/cuda/mamba_input.h) must give the conv kernel's u and conv
// state bit for bit, x_dbl within the dtype's rounding of u x_proj^T in float64, and
// delta_projection's delta (run on its x_dbl) bit for bit.
//
//   nvcc -std=c++17 -O3 -arch=sm_90 -o check tests/cuda/mamba_kernels_check.cu \
//        attention/cuda/mamba_kernels.cu attention/cuda/delta_projection.cu attention/cuda/mamba_input.cu
//   ./check [--seed N]      correctness; exit code 0 only if every case passes
//   ./check --bench         times conv and scan at batch 1, length 8192, 1536 channels,
//                           16 states, bf16 (median of 50 after warm-up); --lengths 8192,65536
//                           for other lengths; ends with an overlap probe (the input stage and
//                           the scan on two streams at once against one after the other)
#include "../../attention/cuda/delta_projection.h"
#include "../../attention/cuda/fast_math.cuh"
#include "../../attention/cuda/mamba_input.h"
#include "../../attention/cuda/mamba_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace mk = hvlm::kernels::cuda;
using mk::DType;

#define CUDA_CHECK(expr)                                                                 \
  do {                                                                                   \
    const cudaError_t err_ = (expr);                                                     \
    if (err_ != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #expr,          \
                   cudaGetErrorString(err_));                                            \
      std::exit(2);                                                                      \
    }                                                                                    \
  } while (0)

namespace {

// A small self-contained generator (splitmix64): <random> trips nvcc 11.8's front end with
// libstdc++ 12, and the check needs only uniform floats.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float uniform(float lo, float hi) {  // in [lo, hi)
    const float u01 = static_cast<float>(next() >> 40) * (1.0f / 16777216.0f);
    return lo + (hi - lo) * u01;
  }

 private:
  uint64_t state_;
};

// ------------------------------------------------------------------------------------------
// Host storage in a dtype
// ------------------------------------------------------------------------------------------

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "fp32";
    case DType::kBFloat16: return "bf16";
    case DType::kFloat16: return "fp16";
  }
  return "?";
}

size_t dtype_size(DType t) { return t == DType::kFloat32 ? 4 : 2; }

void put(DType t, std::vector<uint8_t>& buf, size_t i, float v) {
  if (t == DType::kFloat32) {
    std::memcpy(buf.data() + 4 * i, &v, 4);
  } else if (t == DType::kBFloat16) {
    const __nv_bfloat16 h = __float2bfloat16_rn(v);
    std::memcpy(buf.data() + 2 * i, &h, 2);
  } else {
    const __half h = __float2half_rn(v);
    std::memcpy(buf.data() + 2 * i, &h, 2);
  }
}

float get(DType t, const std::vector<uint8_t>& buf, size_t i) {
  if (t == DType::kFloat32) {
    float v;
    std::memcpy(&v, buf.data() + 4 * i, 4);
    return v;
  }
  if (t == DType::kBFloat16) {
    __nv_bfloat16 h;
    std::memcpy(&h, buf.data() + 2 * i, 2);
    return __bfloat162float(h);
  }
  __half h;
  std::memcpy(&h, buf.data() + 2 * i, 2);
  return __half2float(h);
}

// A host tensor: its values as the GPU will see them (already rounded to the dtype) and the
// same values encoded in the dtype.
struct HostTensor {
  DType dtype = DType::kFloat32;
  std::vector<float> values;
  std::vector<uint8_t> bytes;
};

HostTensor make_tensor(DType t, size_t n) {
  HostTensor h;
  h.dtype = t;
  h.values.assign(n, 0.0f);
  h.bytes.assign(n * dtype_size(t), 0);
  return h;
}

void fill_uniform(HostTensor& h, Rng& rng, float lo, float hi) {
  for (size_t i = 0; i < h.values.size(); ++i) {
    put(h.dtype, h.bytes, i, rng.uniform(lo, hi));
    h.values[i] = get(h.dtype, h.bytes, i);
  }
}

HostTensor uniform(DType t, size_t n, Rng& rng, float lo, float hi) {
  HostTensor h = make_tensor(t, n);
  fill_uniform(h, rng, lo, hi);
  return h;
}

// Rows [t0, t0 + len) of a [batch, length, width] tensor, as a [batch, len, width] tensor.
HostTensor slice_time(const HostTensor& h, int64_t batch, int64_t length, int64_t width,
                      int64_t t0, int64_t len) {
  HostTensor s = make_tensor(h.dtype, static_cast<size_t>(batch * len * width));
  const size_t es = dtype_size(h.dtype);
  for (int64_t b = 0; b < batch; ++b) {
    const size_t src = static_cast<size_t>((b * length + t0) * width);
    const size_t dst = static_cast<size_t>(b * len * width);
    const size_t n = static_cast<size_t>(len * width);
    std::copy_n(h.values.begin() + src, n, s.values.begin() + dst);
    std::memcpy(s.bytes.data() + dst * es, h.bytes.data() + src * es, n * es);
  }
  return s;
}

// ------------------------------------------------------------------------------------------
// Device buffers with a guard zone
// ------------------------------------------------------------------------------------------

constexpr size_t kGuardBytes = 256;
constexpr uint8_t kPoison = 0xFF;  // NaN in fp32, bf16 and fp16

struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;  // usable bytes; a guard zone of kGuardBytes follows
  explicit DeviceBuffer(size_t n) : bytes(n) {
    CUDA_CHECK(cudaMalloc(&ptr, bytes + kGuardBytes));
    CUDA_CHECK(cudaMemset(ptr, kPoison, bytes + kGuardBytes));
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr(o.ptr), bytes(o.bytes) { o.ptr = nullptr; }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(DeviceBuffer&&) = delete;
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
  void upload(const void* src, size_t n) {
    CUDA_CHECK(cudaMemcpy(ptr, src, n, cudaMemcpyHostToDevice));
  }
  // Copies the contents back; false if the guard zone was written.
  bool download(void* dst) const {
    std::vector<uint8_t> all(bytes + kGuardBytes);
    CUDA_CHECK(cudaMemcpy(all.data(), ptr, all.size(), cudaMemcpyDeviceToHost));
    if (bytes > 0) std::memcpy(dst, all.data(), bytes);
    for (size_t i = bytes; i < all.size(); ++i) {
      if (all[i] != kPoison) return false;
    }
    return true;
  }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr); }
};

DeviceBuffer to_device(const HostTensor& h) {
  DeviceBuffer d(h.bytes.size());
  d.upload(h.bytes.data(), h.bytes.size());
  return d;
}

DeviceBuffer to_device(const std::vector<float>& v) {
  DeviceBuffer d(v.size() * sizeof(float));
  d.upload(v.data(), d.bytes);
  return d;
}

// ------------------------------------------------------------------------------------------
// Float64 references
// ------------------------------------------------------------------------------------------

template <typename F>
void parallel_for(int64_t n, F f) {
  const int64_t workers =
      std::max<int64_t>(1, std::min<int64_t>(n, std::thread::hardware_concurrency()));
  std::vector<std::thread> threads;
  for (int64_t w = 0; w < workers; ++w) {
    threads.emplace_back([=] {
      for (int64_t i = w; i < n; i += workers) f(i);
    });
  }
  for (auto& t : threads) t.join();
}

double silu_ref(double x) { return x / (1.0 + std::exp(-x)); }

struct ConvProblem {
  int64_t batch, length, channels, kernel, row_stride_x;
  HostTensor x;       // [batch, length, row_stride_x]
  HostTensor weight;  // [kernel, channels]
  HostTensor bias;    // [channels]
  std::vector<float> state_in;  // [batch, channels, kernel - 1]
};

void conv_reference(const ConvProblem& p, std::vector<double>& out,
                    std::vector<double>& state_out) {
  const int64_t hist = p.kernel - 1;
  out.assign(static_cast<size_t>(p.batch * p.length * p.channels), 0.0);
  state_out.assign(static_cast<size_t>(p.batch * p.channels * hist), 0.0);
  parallel_for(p.batch * p.channels, [&](int64_t bc) {
    const int64_t b = bc / p.channels, c = bc % p.channels;
    auto xx = [&](int64_t tau) -> double {
      if (tau < hist) return p.state_in[(b * p.channels + c) * hist + tau];
      return p.x.values[(b * p.length + tau - hist) * p.row_stride_x + c];
    };
    for (int64_t t = 0; t < p.length; ++t) {
      double acc = p.bias.values[c];
      for (int64_t k = 0; k < p.kernel; ++k) acc += p.weight.values[k * p.channels + c] * xx(t + k);
      out[(b * p.length + t) * p.channels + c] = silu_ref(acc);
    }
    for (int64_t j = 0; j < hist; ++j) state_out[(b * p.channels + c) * hist + j] = xx(p.length + j);
  });
}

struct ScanProblem {
  int64_t batch, length, channels, state_size, row_stride_bc, bc_offset, row_stride_z;
  bool delta_softplus;
  HostTensor u, delta;        // [batch, length, channels]
  HostTensor xdbl;            // [batch, length, row_stride_bc]: B at bc_offset, C after it
  HostTensor xz;              // [batch, length, row_stride_z]: z at column `channels`
  std::vector<float> delta_bias;  // empty: none
  std::vector<float> a, d, h0;    // [channels, N], [channels], [batch, channels, N]
};

void scan_reference(const ScanProblem& p, std::vector<double>& y, std::vector<double>& h_out) {
  const int64_t n = p.state_size, C = p.channels;
  y.assign(static_cast<size_t>(p.batch * p.length * C), 0.0);
  h_out.assign(static_cast<size_t>(p.batch * C * n), 0.0);
  parallel_for(p.batch * C, [&](int64_t bc) {
    const int64_t b = bc / C, c = bc % C;
    std::vector<double> h(n);
    for (int64_t s = 0; s < n; ++s) h[s] = p.h0[(b * C + c) * n + s];
    for (int64_t t = 0; t < p.length; ++t) {
      const int64_t row = b * p.length + t;
      double dt = p.delta.values[row * C + c];
      if (!p.delta_bias.empty()) dt += p.delta_bias[c];
      if (p.delta_softplus) dt = dt > 20.0 ? dt : std::log1p(std::exp(dt));
      const double u = p.u.values[row * C + c];
      double acc = static_cast<double>(p.d[c]) * u;
      for (int64_t s = 0; s < n; ++s) {
        const double bs = p.xdbl.values[row * p.row_stride_bc + p.bc_offset + s];
        const double cs = p.xdbl.values[row * p.row_stride_bc + p.bc_offset + n + s];
        h[s] = std::exp(dt * p.a[c * n + s]) * h[s] + dt * bs * u;
        acc += cs * h[s];
      }
      y[row * C + c] = acc * silu_ref(p.xz.values[row * p.row_stride_z + C + c]);
    }
    for (int64_t s = 0; s < n; ++s) h_out[(b * C + c) * n + s] = h[s];
  });
}

// ------------------------------------------------------------------------------------------
// Comparison
// ------------------------------------------------------------------------------------------

struct Compare {
  double rel = 0;      // ||out - ref|| / ||ref||
  size_t bad = 0;      // non-finite outputs (unwritten or broken)
};

Compare compare(const std::vector<float>& out, const std::vector<double>& ref) {
  Compare r;
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(out[i])) {
      ++r.bad;
      continue;
    }
    const double e = out[i] - ref[i];
    num += e * e;
    den += ref[i] * ref[i];
  }
  r.rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  return r;
}

std::vector<float> decode(DType t, const std::vector<uint8_t>& bytes, size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = get(t, bytes, i);
  return v;
}

int g_failures = 0;

// Counts a failed check; the label its line starts with.
const char* verdict(bool ok) {
  if (!ok) ++g_failures;
  return ok ? "PASS" : "FAIL";
}

void report(const std::string& name, const char* what, const Compare& c, bool guards_ok,
            double tol) {
  const bool ok = c.bad == 0 && guards_ok && c.rel <= tol && std::isfinite(c.rel);
  std::printf("  %-6s %-44s %-10s rel %.3e (tol %.1e)%s%s  %s\n", verdict(ok),
              name.c_str(), what, c.rel, tol,
              c.bad ? (" unwritten/non-finite " + std::to_string(c.bad)).c_str() : "",
              guards_ok ? "" : " GUARD OVERWRITTEN", "");
}

// ------------------------------------------------------------------------------------------
// Cases
// ------------------------------------------------------------------------------------------

struct Case {
  int64_t batch, length, channels, state_size, kernel;
  bool delta_softplus, delta_bias;
};

// Runs the conv over rows [t0, t0 + len) with state `state_in` on the device, into host `out`.
struct ConvRun {
  std::vector<float> out, state_out;
  bool guards_ok = true;
};

ConvRun run_conv(const ConvProblem& p, const std::vector<float>& state_in) {
  const int64_t hist = p.kernel - 1;
  DeviceBuffer x = to_device(p.x), w = to_device(p.weight), bias = to_device(p.bias);
  DeviceBuffer sin = to_device(state_in);
  DeviceBuffer sout(state_in.size() * sizeof(float));
  const size_t out_n = static_cast<size_t>(p.batch * p.length * p.channels);
  DeviceBuffer out(out_n * dtype_size(p.x.dtype));
  mk::CausalConvArgs a;
  a.batch = p.batch;
  a.length = p.length;
  a.channels = p.channels;
  a.kernel = p.kernel;
  a.dtype = p.x.dtype;
  a.x = x.ptr;
  a.row_stride_x = p.row_stride_x;
  a.weight = w.ptr;
  a.bias = bias.ptr;
  a.state_in = hist > 0 ? sin.as<float>() : nullptr;
  a.state_out = hist > 0 ? sout.as<float>() : nullptr;
  a.out = out.ptr;
  mk::causal_conv_silu(a);
  CUDA_CHECK(cudaDeviceSynchronize());
  ConvRun r;
  std::vector<uint8_t> ob(out.bytes);
  r.guards_ok &= out.download(ob.data());
  r.out = decode(p.x.dtype, ob, out_n);
  r.state_out.resize(state_in.size());
  r.guards_ok &= sout.download(r.state_out.data());
  return r;
}

struct ScanRun {
  std::vector<float> y, h;
  bool guards_ok = true;
};

ScanRun run_scan(const ScanProblem& p, const std::vector<float>& h_in) {
  const DType t = p.u.dtype;
  DeviceBuffer u = to_device(p.u), delta = to_device(p.delta), xdbl = to_device(p.xdbl),
               xz = to_device(p.xz), a = to_device(p.a), d = to_device(p.d), h = to_device(h_in);
  std::vector<float> bias_host = p.delta_bias.empty() ? std::vector<float>(1) : p.delta_bias;
  DeviceBuffer bias = to_device(bias_host);
  const size_t y_n = static_cast<size_t>(p.batch * p.length * p.channels);
  DeviceBuffer y(y_n * dtype_size(t));
  mk::SelectiveScanArgs s;
  s.batch = p.batch;
  s.length = p.length;
  s.channels = p.channels;
  s.state_size = p.state_size;
  s.dtype = t;
  s.u = u.ptr;
  s.delta = delta.ptr;
  s.delta_bias = p.delta_bias.empty() ? nullptr : bias.as<float>();
  s.delta_softplus = p.delta_softplus;
  s.a = a.as<float>();
  const size_t es = dtype_size(t);
  s.b = xdbl.as<uint8_t>() + p.bc_offset * es;
  s.c = xdbl.as<uint8_t>() + (p.bc_offset + p.state_size) * es;
  s.row_stride_bc = p.row_stride_bc;
  s.d = d.as<float>();
  s.z = xz.as<uint8_t>() + p.channels * es;
  s.row_stride_z = p.row_stride_z;
  s.h = h.as<float>();
  s.y = y.ptr;
  const size_t ws_bytes = mk::selective_scan_workspace_bytes(s);
  DeviceBuffer ws(ws_bytes);  // poisoned: the scan must not depend on its contents
  s.workspace = ws_bytes > 0 ? ws.ptr : nullptr;
  mk::selective_scan(s);
  CUDA_CHECK(cudaDeviceSynchronize());
  ScanRun r;
  std::vector<uint8_t> yb(y.bytes);
  r.guards_ok &= y.download(yb.data());
  r.y = decode(t, yb, y_n);
  r.h.resize(h_in.size());
  r.guards_ok &= h.download(r.h.data());
  return r;
}

void run_case(const Case& cs, DType t, Rng& rng) {
  const int64_t B = cs.batch, L = cs.length, C = cs.channels, N = cs.state_size, K = cs.kernel;
  const int64_t hist = K - 1;
  const double tol = t == DType::kFloat32 ? 1e-4 : 2e-2;
  const double tol_state = 1e-4;  // states are float32 whatever the dtype
  char name_buf[160];
  std::snprintf(name_buf, sizeof(name_buf), "%s B%lld L%lld E%lld N%lld K%lld%s%s", dtype_name(t),
                (long long)B, (long long)L, (long long)C, (long long)N, (long long)K,
                cs.delta_softplus ? " softplus" : "", cs.delta_bias ? "+bias" : "");
  const std::string name = name_buf;
  const int64_t L1 = L / 2, L2 = L - L1;  // the streaming split (L1 may be 0)

  // ---- conv: x is the first half of an [B, L, 2E] in_proj output, as in the layer.
  ConvProblem cp;
  cp.batch = B;
  cp.length = L;
  cp.channels = C;
  cp.kernel = K;
  cp.row_stride_x = 2 * C;
  cp.x = uniform(t, static_cast<size_t>(B * L * 2 * C), rng, -2.0f, 2.0f);
  cp.weight = uniform(t, static_cast<size_t>(K * C), rng, -0.6f, 0.6f);
  cp.bias = uniform(t, static_cast<size_t>(C), rng, -0.5f, 0.5f);
  cp.state_in.resize(static_cast<size_t>(B * C * hist));
  for (auto& v : cp.state_in) v = rng.uniform(-2.0f, 2.0f);
  std::vector<double> conv_ref, conv_state_ref;
  conv_reference(cp, conv_ref, conv_state_ref);
  {
    const ConvRun r = run_conv(cp, cp.state_in);
    report(name, "conv out", compare(r.out, conv_ref), r.guards_ok, tol);
    report(name, "conv state", compare(r.state_out, conv_state_ref), r.guards_ok, tol_state);
  }
  {  // two pieces with the state carried
    ConvProblem p1 = cp, p2 = cp;
    p1.length = L1;
    p1.x = slice_time(cp.x, B, L, 2 * C, 0, L1);
    p2.length = L2;
    p2.x = slice_time(cp.x, B, L, 2 * C, L1, L2);
    const ConvRun r1 = run_conv(p1, cp.state_in);
    const ConvRun r2 = run_conv(p2, r1.state_out);
    std::vector<float> out(static_cast<size_t>(B * L * C));
    for (int64_t b = 0; b < B; ++b) {
      std::copy_n(r1.out.begin() + b * L1 * C, L1 * C, out.begin() + b * L * C);
      std::copy_n(r2.out.begin() + b * L2 * C, L2 * C, out.begin() + (b * L + L1) * C);
    }
    report(name, "conv strm", compare(out, conv_ref), r1.guards_ok && r2.guards_ok, tol);
    report(name, "conv st2", compare(r2.state_out, conv_state_ref), true, tol_state);
  }

  // ---- scan: B/C inside an x_proj-like row [dt (R) | B | C], z in the second half of xz.
  ScanProblem sp;
  sp.batch = B;
  sp.length = L;
  sp.channels = C;
  sp.state_size = N;
  sp.bc_offset = 3;  // an odd dt rank: B and C start unaligned
  sp.row_stride_bc = sp.bc_offset + 2 * N;
  sp.row_stride_z = 2 * C;
  sp.delta_softplus = cs.delta_softplus;
  sp.u = uniform(t, static_cast<size_t>(B * L * C), rng, -1.0f, 1.0f);
  // delta: pre-activations around the dt_proj bias range, or small positive steps.
  sp.delta = cs.delta_softplus ? uniform(t, static_cast<size_t>(B * L * C), rng, -4.0f, 1.0f)
                               : uniform(t, static_cast<size_t>(B * L * C), rng, 0.002f, 0.6f);
  sp.xdbl = uniform(t, static_cast<size_t>(B * L * sp.row_stride_bc), rng, -1.0f, 1.0f);
  sp.xz = uniform(t, static_cast<size_t>(B * L * sp.row_stride_z), rng, -3.0f, 3.0f);
  auto unit = [&] { return rng.uniform(0.0f, 1.0f); };
  if (cs.delta_bias) {  // without softplus, keep delta + bias > 0 (else exp(dt A) overflows)
    sp.delta_bias.resize(static_cast<size_t>(C));
    for (auto& v : sp.delta_bias) v = cs.delta_softplus ? -2.0f + 2.0f * unit() : 0.3f * unit();
  }
  sp.a.resize(static_cast<size_t>(C * N));
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t s = 0; s < N; ++s) {  // S4D-real A = -(s+1), perturbed as after training
      sp.a[c * N + s] = -std::exp(std::log(static_cast<float>(s + 1)) + 0.6f * (unit() - 0.5f));
    }
  }
  sp.d.resize(static_cast<size_t>(C));
  for (auto& v : sp.d) v = 0.5f + unit();
  sp.h0.resize(static_cast<size_t>(B * C * N));
  for (auto& v : sp.h0) v = 2.0f * unit() - 1.0f;
  std::vector<double> y_ref, h_ref;
  scan_reference(sp, y_ref, h_ref);
  {
    const ScanRun r = run_scan(sp, sp.h0);
    report(name, "scan y", compare(r.y, y_ref), r.guards_ok, tol);
    report(name, "scan h", compare(r.h, h_ref), r.guards_ok, tol_state);
  }
  {  // two pieces with h carried
    ScanProblem p1 = sp, p2 = sp;
    p1.length = L1;
    p2.length = L2;
    p1.u = slice_time(sp.u, B, L, C, 0, L1);
    p2.u = slice_time(sp.u, B, L, C, L1, L2);
    p1.delta = slice_time(sp.delta, B, L, C, 0, L1);
    p2.delta = slice_time(sp.delta, B, L, C, L1, L2);
    p1.xdbl = slice_time(sp.xdbl, B, L, sp.row_stride_bc, 0, L1);
    p2.xdbl = slice_time(sp.xdbl, B, L, sp.row_stride_bc, L1, L2);
    p1.xz = slice_time(sp.xz, B, L, sp.row_stride_z, 0, L1);
    p2.xz = slice_time(sp.xz, B, L, sp.row_stride_z, L1, L2);
    const ScanRun r1 = run_scan(p1, sp.h0);
    const ScanRun r2 = run_scan(p2, r1.h);
    std::vector<float> y(static_cast<size_t>(B * L * C));
    for (int64_t b = 0; b < B; ++b) {
      std::copy_n(r1.y.begin() + b * L1 * C, L1 * C, y.begin() + b * L * C);
      std::copy_n(r2.y.begin() + b * L2 * C, L2 * C, y.begin() + (b * L + L1) * C);
    }
    report(name, "scan strm", compare(y, y_ref), r1.guards_ok && r2.guards_ok, tol);
    report(name, "scan h2", compare(r2.h, h_ref), true, tol_state);
  }
}

// One argument check: `call` must throw std::invalid_argument.
template <typename F>
void expect_rejects(const std::string& what, F call) {
  bool threw = false;
  try {
    call();
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  std::printf("  %-6s rejects %s\n", verdict(threw), what.c_str());
}

void check_rejects() {
  mk::SelectiveScanArgs s;
  s.batch = 1;
  s.length = 1;
  s.channels = 1;
  for (int64_t bad : {0, 65, -1}) {
    s.state_size = bad;
    expect_rejects("state_size " + std::to_string(bad), [&] { mk::selective_scan(s); });
  }
  mk::CausalConvArgs c;
  c.batch = 1;
  c.length = 1;
  c.channels = 1;
  c.kernel = 0;
  expect_rejects("kernel 0", [&] { mk::causal_conv_silu(c); });
}

// ------------------------------------------------------------------------------------------
// exp2_poly (fast_math.cuh), which the scan uses for a few states' decays
// ------------------------------------------------------------------------------------------

__global__ void exp2_poly_kernel(const float* x, float* y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = mk::exp2_poly(x[i]);
}

// Every 2^-12 over [-130, 130], every 2^-23 over [-0.5, 0.5] (each reduced argument f the
// polynomial sees near 0) and the edges: relative error <= 1.9e-7 (exp2_approx's bound is
// 2^-22 = 2.4e-7) on [-126, 126], exactly 1 at 0, and clamped to 2^-126 / 2^126 outside
// (infinities included).
void check_exp2_poly() {
  std::vector<float> x;
  for (int i = -130 * 4096; i <= 130 * 4096; ++i) x.push_back(static_cast<float>(i) / 4096.0f);
  for (int i = -(1 << 22); i <= (1 << 22); ++i) x.push_back(std::ldexp(static_cast<float>(i), -23));
  for (float v : {-0.0f, 1e-30f, -1e-30f, -125.99999f, 125.99999f, -1e4f, 1e4f, -INFINITY, INFINITY}) {
    x.push_back(v);
  }
  const int n = static_cast<int>(x.size());
  DeviceBuffer dx = to_device(x), dy(x.size() * sizeof(float));
  exp2_poly_kernel<<<(n + 255) / 256, 256>>>(dx.as<float>(), dy.as<float>(), n);
  CUDA_CHECK(cudaGetLastError());
  std::vector<float> y(x.size());
  CUDA_CHECK(cudaMemcpy(y.data(), dy.ptr, y.size() * sizeof(float), cudaMemcpyDeviceToHost));
  double worst = 0.0;
  int bad = 0;
  for (int i = 0; i < n; ++i) {
    const double want = std::exp2(std::min(std::max(static_cast<double>(x[i]), -126.0), 126.0));
    const double rel = std::abs(y[i] / want - 1.0);
    worst = std::max(worst, std::isfinite(rel) ? rel : 1e30);
    if (!(rel <= 1.9e-7) || (x[i] == 0.0f && y[i] != 1.0f)) ++bad;
  }
  std::printf("  %-6s exp2_poly over [-130, 130]: max rel %.2e (tol 1.9e-7), %d bad of %d\n", verdict(bad == 0),
              worst, bad, n);
}

// ------------------------------------------------------------------------------------------
// Delta projection
// ------------------------------------------------------------------------------------------

double softplus_ref(double x) { return x > 20.0 ? x : std::log1p(std::exp(x)); }

// One shape: dt is the first `rank` columns of a [rows, stride] matrix starting `offset`
// elements into its buffer (an offset not a multiple of 8 takes the unaligned path).
void check_delta_projection(DType t, int64_t rows, int64_t channels, int64_t rank, int64_t stride,
                            int64_t offset, bool with_bias, Rng& rng) {
  HostTensor dt = uniform(t, static_cast<size_t>(offset + rows * stride), rng, -1.0f, 1.0f);
  HostTensor w = uniform(t, static_cast<size_t>(channels * rank), rng, -0.5f, 0.5f);
  // Biases over the softplus's three regimes: its series (x < -3.5), its log, and x > 20.
  std::vector<float> bias(static_cast<size_t>(channels), 0.0f);
  if (with_bias) {
    for (auto& v : bias) v = rng.uniform(-12.0f, 24.0f);
  }
  std::vector<double> ref(static_cast<size_t>(rows * channels));
  parallel_for(rows, [&](int64_t r) {
    for (int64_t c = 0; c < channels; ++c) {
      double acc = bias[c];
      for (int64_t k = 0; k < rank; ++k) acc += static_cast<double>(dt.values[offset + r * stride + k]) * w.values[c * rank + k];
      ref[r * channels + c] = softplus_ref(acc);
    }
  });
  DeviceBuffer ddt = to_device(dt), dw = to_device(w), dbias = to_device(bias);
  DeviceBuffer out(static_cast<size_t>(rows * channels) * dtype_size(t));
  mk::DeltaProjectionArgs a;
  a.dtype = t;
  a.rows = rows;
  a.channels = channels;
  a.rank = rank;
  a.dt = ddt.as<uint8_t>() + offset * dtype_size(t);
  a.row_stride_dt = stride;
  a.weight = dw.ptr;
  a.bias = with_bias ? dbias.as<float>() : nullptr;
  a.delta = out.ptr;
  mk::delta_projection(a);
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<uint8_t> ob(out.bytes);
  const bool guards_ok = out.download(ob.data());
  const std::vector<float> got = decode(t, ob, ref.size());
  // Elementwise: the output's own rounding (at most half a unit in the last place: 2^-8 of the
  // value for bf16, 2^-11 for fp16) plus float32 accumulation and the softplus's ~4e-6; 5% of
  // that rounding bound is left for the latter. Norm-wise, within the rounding bound itself.
  const double half_ulp = t == DType::kBFloat16 ? 1.0 / 256 : 1.0 / 2048;
  const double max_tol = 1.05 * half_ulp;
  // Relative to the value, or below the dtype's smallest normal number (fp16 6.1e-5, where
  // softplus(x < -9.7) lands) relative to that number: subnormals have fixed absolute steps.
  const double smallest_normal = t == DType::kBFloat16 ? 1.1754943508222875e-38 : 6.103515625e-05;
  double max_rel = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (std::isfinite(got[i])) {
      max_rel = std::max(max_rel, std::abs(got[i] - ref[i]) / std::max(std::abs(ref[i]), smallest_normal));
    }
  }
  char name[160];
  std::snprintf(name, sizeof(name), "%s rows %lld E%lld R%lld stride %lld +%lld%s", dtype_name(t), (long long)rows,
                (long long)channels, (long long)rank, (long long)stride, (long long)offset, with_bias ? " bias" : "");
  report(name, "delta", compare(got, ref), guards_ok, half_ulp);
  std::printf("  %-6s %-44s %-10s max elementwise rel %.3e (tol %.2e)\n", verdict(max_rel <= max_tol), name,
              "delta", max_rel, max_tol);
}

void check_delta_projection_all(Rng& rng) {
  struct Shape {
    int64_t rows, channels, rank, stride, offset;
    bool bias;
  };
  const std::vector<Shape> shapes = {
      {1, 8, 16, 16, 0, true},          // one row
      {1000, 1536, 48, 80, 0, true},    // the layer's x_dbl rows (R = 48, N = 16), vector path
      {130, 200, 48, 80, 0, true},      // partial tiles in both directions
      {257, 136, 3, 7, 1, true},        // odd rank, stride and offset: scalar loads and stores
      {300, 1536, 48, 80, 3, false},    // unaligned dt only, no bias
      {64, 128, 128, 128, 0, true},     // the largest rank
      {200, 300, 100, 132, 4, true},    // rank not a multiple of 16, channels of 8s plus 4
      {300, 256, 40, 80, 0, true},      // vector path with zeroed padding (rank 40 of 48)
      // Enough row tiles (40) that each block walks several (at most ~16 blocks per channel
      // tile on an H200): the double-buffered copies, vector and scalar.
      {5000, 1536, 48, 80, 0, true},
      {5000, 1540, 48, 80, 0, true},
  };
  for (DType t : {DType::kBFloat16, DType::kFloat16}) {
    for (const Shape& s : shapes) check_delta_projection(t, s.rows, s.channels, s.rank, s.stride, s.offset, s.bias, rng);
  }
  auto rejects = [](const std::string& what, const mk::DeltaProjectionArgs& a) {
    expect_rejects("delta_projection: " + what, [&] { mk::delta_projection(a); });
  };
  mk::DeltaProjectionArgs a;
  a.rows = 1;
  a.channels = 1;
  a.rank = 1;
  a.row_stride_dt = 1;
  a.dtype = DType::kFloat32;
  rejects("float32", a);
  a.dtype = DType::kBFloat16;
  a.rank = 0;
  rejects("rank 0", a);
  a.rank = mk::kDeltaProjectionMaxRank + 1;
  a.row_stride_dt = a.rank;
  rejects("rank past the maximum", a);
  a.rank = 8;
  a.row_stride_dt = 4;
  rejects("a row stride below the rank", a);
  a.row_stride_dt = 8;
  rejects("null pointers", a);
}

// ------------------------------------------------------------------------------------------
// The fused input stage
// ------------------------------------------------------------------------------------------

struct InputShape {
  int64_t batch, length, channels, kernel, rank, proj;
  bool bias, state;  // a dt_proj bias; a nonzero conv state in
};

// Bytes that differ between two equally long buffers.
size_t differing(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  size_t n = 0;
  for (size_t i = 0; i < a.size(); ++i) n += a[i] != b[i];
  return n;
}

void check_mamba_input(DType t, const InputShape& sh, Rng& rng) {
  const int64_t B = sh.batch, L = sh.length, E = sh.channels, K = sh.kernel, R = sh.rank, P = sh.proj;
  const int64_t hist = K - 1;
  const size_t es = dtype_size(t);
  ConvProblem cp{B, L, E, K, 2 * E, uniform(t, B * L * 2 * E, rng, -2.0f, 2.0f), uniform(t, K * E, rng, -0.5f, 0.5f),
                 uniform(t, E, rng, -0.5f, 0.5f), std::vector<float>(B * E * hist, 0.0f)};
  if (sh.state) {
    for (auto& v : cp.state_in) v = rng.uniform(-1.0f, 1.0f);
  }
  HostTensor wx = uniform(t, P * E, rng, -0.08f, 0.08f), wdt = uniform(t, E * R, rng, -0.3f, 0.3f);
  std::vector<float> bias(E, 0.0f);
  if (sh.bias) {
    for (auto& v : bias) v = rng.uniform(-6.0f, 2.0f);
  }
  DeviceBuffer x = to_device(cp.x), cw = to_device(cp.weight), cb = to_device(cp.bias), dwx = to_device(wx),
               dwdt = to_device(wdt), dbias = to_device(bias), sin = to_device(cp.state_in);
  DeviceBuffer sout(cp.state_in.size() * sizeof(float)), u(B * L * E * es), xdbl(B * L * P * es), delta(B * L * E * es);
  mk::MambaInputArgs a;
  a.dtype = t;
  a.batch = B;
  a.length = L;
  a.channels = E;
  a.kernel = K;
  a.rank = R;
  a.proj = P;
  a.x = x.ptr;
  a.row_stride_x = 2 * E;
  a.conv_weight = cw.ptr;
  a.conv_bias = cb.ptr;
  a.conv_state_in = hist > 0 ? sin.as<float>() : nullptr;
  a.conv_state_out = hist > 0 ? sout.as<float>() : nullptr;
  a.x_proj_weight = dwx.ptr;
  a.dt_weight = dwdt.ptr;
  a.dt_bias = sh.bias ? dbias.as<float>() : nullptr;
  a.u = u.ptr;
  a.x_dbl = xdbl.ptr;
  a.delta = delta.ptr;
  char name[160];
  std::snprintf(name, sizeof(name), "%s B%lld L%lld E%lld K%lld R%lld P%lld%s%s", dtype_name(t), (long long)B,
                (long long)L, (long long)E, (long long)K, (long long)R, (long long)P, sh.bias ? " bias" : "",
                sh.state ? " state" : "");
  if (!mk::mamba_input_supported(a)) {
    std::printf("  %-6s %-44s not supported\n", verdict(false), name);
    return;
  }
  mk::mamba_input_stage(a);
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<uint8_t> ub(u.bytes), xb(xdbl.bytes), db(delta.bytes), sb(sout.bytes);
  bool guards_ok = u.download(ub.data()) && xdbl.download(xb.data()) && delta.download(db.data()) &&
                   sout.download(sb.data());

  // u and the conv state: the conv kernel's, bit for bit.
  const ConvRun conv = run_conv(cp, cp.state_in);
  std::vector<uint8_t> conv_u(ub.size());
  for (size_t i = 0; i < conv.out.size(); ++i) put(t, conv_u, i, conv.out[i]);
  std::vector<uint8_t> conv_s(sb.size());
  if (!conv_s.empty()) std::memcpy(conv_s.data(), conv.state_out.data(), conv_s.size());
  const size_t u_diff = differing(ub, conv_u), s_diff = differing(sb, conv_s);
  std::printf("  %-6s %-44s %-10s %zu of %zu bytes differ from causal_conv_silu's%s\n",
              verdict(u_diff == 0 && s_diff == 0 && guards_ok && conv.guards_ok), name, "u, state", u_diff + s_diff,
              ub.size() + sb.size(), guards_ok ? "" : " GUARD OVERWRITTEN");

  // x_dbl: u (as stored) x_proj^T in float64, within the output's rounding.
  const std::vector<float> uv = decode(t, ub, B * L * E);
  std::vector<double> ref(B * L * P);
  parallel_for(B * L, [&](int64_t r) {
    for (int64_t n = 0; n < P; ++n) {
      double acc = 0;
      for (int64_t c = 0; c < E; ++c) acc += static_cast<double>(uv[r * E + c]) * wx.values[n * E + c];
      ref[r * P + n] = acc;
    }
  });
  const double half_ulp = t == DType::kBFloat16 ? 1.0 / 256 : 1.0 / 2048;
  report(name, "x_dbl", compare(decode(t, xb, B * L * P), ref), guards_ok, half_ulp);

  // delta: delta_projection on this x_dbl, bit for bit.
  DeviceBuffer delta_ref(delta.bytes);
  mk::DeltaProjectionArgs dp;
  dp.dtype = t;
  dp.rows = B * L;
  dp.channels = E;
  dp.rank = R;
  dp.dt = xdbl.ptr;
  dp.row_stride_dt = P;
  dp.weight = dwdt.ptr;
  dp.bias = sh.bias ? dbias.as<float>() : nullptr;
  dp.delta = delta_ref.ptr;
  mk::delta_projection(dp);
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<uint8_t> rb(delta_ref.bytes);
  delta_ref.download(rb.data());
  const size_t d_diff = differing(db, rb);
  std::printf("  %-6s %-44s %-10s %zu of %zu bytes differ from delta_projection's\n", verdict(d_diff == 0), name,
              "delta", d_diff, db.size());
}

void check_mamba_input_all(Rng& rng) {
  const std::vector<InputShape> shapes = {
      {1, 1000, 1536, 4, 48, 80, true, true},  // the layer's shape (dim 768), a partial last tile
      {2, 130, 64, 4, 8, 24, true, false},     // one slice, two tiles a sequence, batch 2
      {3, 5, 128, 3, 16, 48, false, true},     // a sequence shorter than a warp's rows
      {1, 2, 192, 4, 32, 96, true, true},      // shorter than the conv's history
      {1, 300, 256, 2, 64, 128, true, true},   // the largest rank and projection
      {2, 257, 128, 1, 24, 90, true, false},   // kernel 1; a rank that ends mid k step
      {1, 4096, 512, 4, 32, 64, true, true},   // dim 256's layer, many tiles
  };
  for (DType t : {DType::kBFloat16, DType::kFloat16}) {
    for (const InputShape& s : shapes) check_mamba_input(t, s, rng);
  }
  auto rejects = [](const std::string& what, const mk::MambaInputArgs& a) {
    expect_rejects("mamba_input_stage: " + what, [&] { mk::mamba_input_stage(a); });
  };
  mk::MambaInputArgs a;
  a.batch = 1;
  a.length = 1;
  a.channels = 64;
  a.kernel = 4;
  a.rank = 8;
  a.proj = 16;
  a.row_stride_x = 128;
  a.dtype = DType::kFloat32;
  rejects("float32", a);
  a.dtype = DType::kBFloat16;
  rejects("null pointers", a);
  a.channels = 96;
  rejects("channels not a multiple of 64", a);
  a.channels = 64;
  a.rank = 12;
  rejects("a rank not a multiple of 8", a);
  a.rank = 8;
  a.proj = 8;
  rejects("proj not above the rank", a);
  a.proj = 16;
  a.kernel = 5;
  rejects("kernel 5", a);
}

// ------------------------------------------------------------------------------------------
// Benchmark
// ------------------------------------------------------------------------------------------

template <typename F>
double median_us(F f, int warmup = 10, int reps = 50) {
  for (int i = 0; i < warmup; ++i) f();
  CUDA_CHECK(cudaDeviceSynchronize());
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    CUDA_CHECK(cudaEventRecord(start));
    f();
    CUDA_CHECK(cudaEventRecord(stop));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms * 1000.0);
  }
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

int bench(Rng& rng, int64_t L) {
  const int64_t B = 1, E = 1536, N = 16, R = 48, K = 4;
  const DType t = DType::kBFloat16;
  const size_t es = 2;
  HostTensor xz = uniform(t, B * L * 2 * E, rng, -2.0f, 2.0f);
  HostTensor xdbl = uniform(t, B * L * (R + 2 * N), rng, -1.0f, 1.0f);
  HostTensor u = uniform(t, B * L * E, rng, -1.0f, 1.0f);
  HostTensor delta_pre = uniform(t, B * L * E, rng, -1.0f, 1.0f);  // dt_proj(dt) without bias
  HostTensor delta_sp = uniform(t, B * L * E, rng, 0.001f, 0.1f);  // already softplus'ed
  HostTensor w = uniform(t, K * E, rng, -0.5f, 0.5f), cb = uniform(t, E, rng, -0.5f, 0.5f);
  std::vector<float> bias(E), a(E * N), d(E, 1.0f), h(B * E * N, 0.0f), cs((K - 1) * E * B, 0.0f);
  auto unit = [&] { return rng.uniform(0.0f, 1.0f); };
  for (auto& v : bias) v = std::log(std::expm1(0.001f + 0.099f * unit()));  // inverse softplus
  for (int64_t c = 0; c < E; ++c) {
    for (int64_t s = 0; s < N; ++s) a[c * N + s] = -static_cast<float>(s + 1);
  }
  DeviceBuffer dxz = to_device(xz), dxdbl = to_device(xdbl), du = to_device(u),
               ddp = to_device(delta_pre), dds = to_device(delta_sp), dw = to_device(w),
               dcb = to_device(cb), dbias = to_device(bias), da = to_device(a), dd = to_device(d),
               dh = to_device(h), dcs_in = to_device(cs), dcs_out = to_device(cs);
  DeviceBuffer dy(B * L * E * es), dconv(B * L * E * es);

  mk::CausalConvArgs ca;
  ca.batch = B;
  ca.length = L;
  ca.channels = E;
  ca.kernel = K;
  ca.dtype = t;
  ca.x = dxz.ptr;
  ca.row_stride_x = 2 * E;
  ca.weight = dw.ptr;
  ca.bias = dcb.ptr;
  ca.state_in = dcs_in.as<float>();
  ca.state_out = dcs_out.as<float>();
  ca.out = dconv.ptr;

  mk::SelectiveScanArgs s;
  s.batch = B;
  s.length = L;
  s.channels = E;
  s.state_size = N;
  s.dtype = t;
  s.u = du.ptr;
  s.delta = ddp.ptr;
  s.delta_bias = dbias.as<float>();
  s.delta_softplus = true;
  s.a = da.as<float>();
  s.b = dxdbl.as<uint8_t>() + R * es;
  s.c = dxdbl.as<uint8_t>() + (R + N) * es;
  s.row_stride_bc = R + 2 * N;
  s.d = dd.as<float>();
  s.z = dxz.as<uint8_t>() + E * es;
  s.row_stride_z = 2 * E;
  s.h = dh.as<float>();
  s.y = dy.ptr;
  const size_t ws_bytes = mk::selective_scan_workspace_bytes(s);
  DeviceBuffer ws(ws_bytes);
  s.workspace = ws.ptr;
  const int64_t chunks = ws_bytes / (B * E * (N + 1) * sizeof(float));

  // The layer's path for 2-byte dtypes: dt_proj + bias + softplus as one product
  // (delta_projection), then the scan on the ready delta.
  HostTensor w_dt = uniform(t, E * R, rng, -0.15f, 0.15f);
  DeviceBuffer dw_dt = to_device(w_dt), ddelta(B * L * E * es);
  mk::DeltaProjectionArgs dp;
  dp.dtype = t;
  dp.rows = B * L;
  dp.channels = E;
  dp.rank = R;
  dp.dt = dxdbl.ptr;
  dp.row_stride_dt = R + 2 * N;
  dp.weight = dw_dt.ptr;
  dp.bias = dbias.as<float>();
  dp.delta = ddelta.ptr;

  mk::SelectiveScanArgs s_plain = s;  // delta already softplus'ed
  s_plain.delta = dds.ptr;
  s_plain.delta_bias = nullptr;
  s_plain.delta_softplus = false;

  // The fused input stage (conv + x_proj + dt_proj/softplus) on the same operands.
  HostTensor w_x = uniform(t, (R + 2 * N) * E, rng, -0.05f, 0.05f);
  DeviceBuffer dw_x = to_device(w_x), in_u(B * L * E * es), in_xdbl(B * L * (R + 2 * N) * es),
               in_delta(B * L * E * es);
  mk::MambaInputArgs ia;
  ia.dtype = t;
  ia.batch = B;
  ia.length = L;
  ia.channels = E;
  ia.kernel = K;
  ia.rank = R;
  ia.proj = R + 2 * N;
  ia.x = dxz.ptr;
  ia.row_stride_x = 2 * E;
  ia.conv_weight = dw.ptr;
  ia.conv_bias = dcb.ptr;
  ia.conv_state_in = dcs_in.as<float>();
  ia.conv_state_out = dcs_out.as<float>();
  ia.x_proj_weight = dw_x.ptr;
  ia.dt_weight = nullptr;  // set below, once dt_proj's weight exists
  ia.dt_bias = dbias.as<float>();
  ia.u = in_u.ptr;
  ia.x_dbl = in_xdbl.ptr;
  ia.delta = in_delta.ptr;

  const double conv_us = median_us([&] { mk::causal_conv_silu(ca); });
  const double scan_us = median_us([&] { mk::selective_scan(s); });
  const double plain_us = median_us([&] { mk::selective_scan(s_plain); });
  const double proj_us = median_us([&] { mk::delta_projection(dp); });
  ia.dt_weight = dw_dt.ptr;
  const double input_us = median_us([&] { mk::mamba_input_stage(ia); });
  const double act = static_cast<double>(B * L * E) * es;  // bytes of one [B, L, E] activation
  const double conv_bytes = 2 * act;                        // x in, u out
  const double scan_bytes = 4 * act + B * L * 2 * N * es;   // u, delta, z in, y out; B, C
  std::printf("bench: batch %lld, length %lld, channels %lld, state %lld, kernel %lld, bf16\n",
              (long long)B, (long long)L, (long long)E, (long long)N, (long long)K);
  if (ws_bytes == 0) {
    std::printf("  scan: one pass (no workspace)\n");
  } else {
    std::printf("  scan chunks: %lld (workspace %.2f MB)\n", (long long)std::max<int64_t>(chunks, 1), ws_bytes / 1e6);
  }
  std::printf("  %-34s %9.1f us  %7.0f GB/s\n", "causal_conv_silu", conv_us,
              conv_bytes / conv_us * 1e-3);
  std::printf("  %-34s %9.1f us  %7.0f GB/s\n", "selective_scan (softplus+bias)", scan_us,
              scan_bytes / scan_us * 1e-3);
  std::printf("  %-34s %9.1f us  %7.0f GB/s\n", "selective_scan (delta ready)", plain_us,
              scan_bytes / plain_us * 1e-3);
  std::printf("  %-34s %9.1f us  %7.0f GB/s\n", "delta_projection (dt_proj+softplus)", proj_us,
              (act + B * L * (R + 2 * N) * es) / proj_us * 1e-3);
  std::printf("  %-34s %9.1f us\n", "delta_projection + scan (layer)", proj_us + plain_us);
  std::printf("  %-34s %9.1f us  %7.0f GB/s  (conv + delta_projection apart: %.1f us, plus x_proj)\n",
              "mamba_input_stage (conv+x_proj+dt)", input_us, (3 * act + 2 * B * L * (R + 2 * N) * es) / input_us * 1e-3,
              conv_us + proj_us);
  const double updates = static_cast<double>(B * L * E * N);
  std::printf("  scan: %.2f G state updates/s (exp unit floor ~48 us per pass at 16/clk/SM)\n",
              updates / scan_us * 1e-3);

  // Overlap probe: the input stage and the scan on a ready delta (independent operands) on two
  // streams at once, the scan launched first, against the two one after the other. How much of
  // the input stage's time the GPU hides behind the exp-bound scan when their blocks share SMs.
  cudaStream_t first, second;
  CUDA_CHECK(cudaStreamCreateWithFlags(&first, cudaStreamNonBlocking));
  CUDA_CHECK(cudaStreamCreateWithFlags(&second, cudaStreamNonBlocking));
  cudaEvent_t fork, join1, join2;
  CUDA_CHECK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventCreateWithFlags(&join1, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventCreateWithFlags(&join2, cudaEventDisableTiming));
  mk::SelectiveScanArgs s_first = s_plain;
  s_first.stream = first;
  mk::MambaInputArgs ia_second = ia;
  ia_second.stream = second;
  const double both_us = median_us([&] {
    CUDA_CHECK(cudaEventRecord(fork, nullptr));
    CUDA_CHECK(cudaStreamWaitEvent(first, fork, 0));
    CUDA_CHECK(cudaStreamWaitEvent(second, fork, 0));
    mk::selective_scan(s_first);
    mk::mamba_input_stage(ia_second);
    CUDA_CHECK(cudaEventRecord(join1, first));
    CUDA_CHECK(cudaEventRecord(join2, second));
    CUDA_CHECK(cudaStreamWaitEvent(nullptr, join1, 0));
    CUDA_CHECK(cudaStreamWaitEvent(nullptr, join2, 0));
  });
  const double serial_us = median_us([&] {
    mk::selective_scan(s_plain);
    mk::mamba_input_stage(ia);
  });
  std::printf("  overlap: scan %.1f us + input stage %.1f us one after the other %.1f us; on two streams at once %.1f us\n",
              plain_us, input_us, serial_us, both_us);
  CUDA_CHECK(cudaStreamSynchronize(first));
  CUDA_CHECK(cudaStreamSynchronize(second));
  for (cudaEvent_t e : {fork, join1, join2}) CUDA_CHECK(cudaEventDestroy(e));
  CUDA_CHECK(cudaStreamDestroy(first));
  CUDA_CHECK(cudaStreamDestroy(second));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  bool do_bench = false;
  std::vector<int64_t> bench_lengths = {8192};
  uint64_t seed = static_cast<uint64_t>(
      std::chrono::high_resolution_clock::now().time_since_epoch().count());
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--bench") {
      do_bench = true;
    } else if (arg == "--seed" && i + 1 < argc) {
      seed = std::strtoull(argv[++i], nullptr, 10);
    } else if (arg == "--lengths" && i + 1 < argc) {
      bench_lengths.clear();
      for (char* p = argv[++i]; *p != '\0';) {
        bench_lengths.push_back(std::strtoll(p, &p, 10));
        if (*p == ',') ++p;
      }
    } else {
      std::fprintf(stderr, "usage: %s [--bench [--lengths N,N]] [--seed N]\n", argv[0]);
      return 2;
    }
  }
  Rng rng(seed);
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (%d SMs), seed %llu\n", prop.name, prop.multiProcessorCount,
              (unsigned long long)seed);
  try {
    if (do_bench) {
      for (const int64_t length : bench_lengths) {
        if (length < 1 || bench(rng, length) != 0) return 1;
      }
      return 0;
    }
    const std::vector<Case> cases = {
        // batch, length, channels, state, kernel, softplus, bias
        {1, 1, 1, 1, 4, false, false},
        {1, 3, 5, 4, 4, true, true},
        {2, 17, 33, 16, 1, true, false},
        {3, 17, 100, 33, 4, false, false},
        {1, 64, 129, 16, 4, true, true},     // longest single chunk
        {3, 65, 64, 8, 2, false, true},      // shortest chunked
        {2, 300, 257, 1, 3, true, true},
        {1, 300, 1536, 16, 4, true, true},
        {1, 1000, 7, 64, 6, true, true},     // generic conv, 64 states
        {2, 777, 130, 2, 4, false, false},
        {1, 8192, 96, 16, 4, true, true},    // few channels: many chunks
        {2, 333, 45, 12, 4, true, false},    // 12 states padded to 16, odd channels, partial group
        {1, 130, 3, 5, 4, false, true},      // 5 states padded to 8, one partial block
        {1, 500, 264, 16, 4, true, true},    // a second channel block of 8 channels
        {1, 8192, 1536, 16, 4, true, true},  // the layer's shape
    };
    for (DType t : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
      std::printf("%s\n", dtype_name(t));
      for (const Case& c : cases) run_case(c, t, rng);
    }
    check_rejects();
    std::printf("fast math\n");
    check_exp2_poly();
    std::printf("delta projection\n");
    check_delta_projection_all(rng);
    std::printf("mamba input stage\n");
    check_mamba_input_all(rng);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "exception: %s\n", e.what());
    return 3;
  }
  std::printf("%s: %d failure(s)\n", g_failures ? "FAIL" : "PASS", g_failures);
  return g_failures ? 1 : 0;
}
