#include "attention/selective_scan_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

// Each kernel body is compiled twice, for AVX2+FMA and for the baseline ISA, and the entry
// points pick one from the running CPU's features. (target_clones("arch=haswell") is no use
// here: its resolver checks the CPU model and so never picks the fast clone on AMD.)
// Helpers are forced inline so that each copy gets them compiled for its own ISA.
#define HVLM_INLINE inline __attribute__((always_inline))
#if defined(__x86_64__) && defined(__GNUC__)
#define HVLM_X86_DISPATCH 1
#define HVLM_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define HVLM_X86_DISPATCH 0
#endif

namespace hvlm::kernels {
namespace {

// Eight floats; GCC and Clang lower it to one AVX register or two SSE registers. Written with
// vector types so the hot loops vectorize whatever the auto-vectorizer decides.
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
constexpr int64_t kLanes = 8;
static_assert(kScanChannelBlock % kLanes == 0, "channel block must be whole vectors");

HVLM_INLINE v8f splat(float x) { return v8f{} + x; }

// exp(x) to about 1 ulp: Cody-Waite reduction x = k ln2 + r with |r| <= ln2/2, the Cephes
// polynomial for e^r, and 2^k built in the exponent bits. Inputs are clamped to the float range.
HVLM_INLINE v8f vexp(v8f x) {
  const v8f hi = splat(88.3762626647949f), lo = splat(-87.3365447505531f);
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
  // Round to nearest by adding and removing 1.5 * 2^23.
  const v8f round = splat(12582912.0f);
  const v8f k = (x * 1.44269504088896341f + round) - round;
  const v8f r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  v8f p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const v8i bits = (__builtin_convertvector(k, v8i) + 127) << 23;
  return p * (v8f)bits;  // GCC vector casts reinterpret the bits
}

HVLM_INLINE v8f vsilu(v8f x) { return x / (1.0f + vexp(-x)); }

HVLM_INLINE v8f load(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

HVLM_INLINE void store(float* p, v8f v) { std::memcpy(p, &v, sizeof(v)); }

}  // namespace

namespace {

HVLM_INLINE void conv_body(const CausalConvArgs& a, int64_t item_begin, int64_t item_end) {
  constexpr int64_t CB = kScanChannelBlock;
  constexpr int64_t kVecs = CB / kLanes;
  const int64_t blocks = (a.channels + CB - 1) / CB;
  const int64_t hist = a.kernel - 1;
  std::vector<float> weights(a.kernel * CB);  // [kernel][CB], zero-padded
  for (int64_t item = item_begin; item < item_end; ++item) {
    const int64_t bi = item / blocks;
    const int64_t c0 = (item % blocks) * CB;
    const int64_t nc = std::min(CB, a.channels - c0);
    const bool full = nc == CB;
    // Input at time tau of the concatenation [state_in, x], channel c.
    auto input = [&](int64_t tau, int64_t c) -> float {
      if (tau < hist) return a.state_in[(bi * a.channels + c) * hist + tau];
      return a.x[(bi * a.length + (tau - hist)) * a.row_stride_x + c];
    };
    alignas(32) float bias[CB] = {};
    std::memcpy(bias, a.bias + c0, nc * sizeof(float));
    std::fill(weights.begin(), weights.end(), 0.0f);
    for (int64_t k = 0; k < a.kernel; ++k) {
      std::memcpy(weights.data() + k * CB, a.weight + k * a.channels + c0, nc * sizeof(float));
    }
    alignas(32) float staged[CB];
    for (int64_t t = 0; t < a.length; ++t) {
      v8f acc[kVecs];
      for (int64_t v = 0; v < kVecs; ++v) acc[v] = load(bias + v * kLanes);
      for (int64_t k = 0; k < a.kernel; ++k) {
        const int64_t tau = t + k;
        const float* src;
        if (full && tau >= hist) {
          src = a.x + (bi * a.length + tau - hist) * a.row_stride_x + c0;
        } else {  // the carried-in history or a partial block: stage with zero padding
          for (int64_t c = 0; c < CB; ++c) staged[c] = c < nc ? input(tau, c0 + c) : 0.0f;
          src = staged;
        }
        const float* wk = weights.data() + k * CB;
        for (int64_t v = 0; v < kVecs; ++v) {
          acc[v] += load(wk + v * kLanes) * load(src + v * kLanes);
        }
      }
      float* out = a.out + (bi * a.length + t) * a.channels + c0;
      float* dst = full ? out : staged;
      for (int64_t v = 0; v < kVecs; ++v) store(dst + v * kLanes, vsilu(acc[v]));
      if (!full) std::memcpy(out, staged, nc * sizeof(float));
    }
    // New history: the last `hist` steps of the concatenation.
    for (int64_t c = 0; c < nc; ++c) {
      for (int64_t j = 0; j < hist; ++j) {
        a.state_out[(bi * a.channels + c0 + c) * hist + j] = input(a.length + j, c0 + c);
      }
    }
  }
}

HVLM_INLINE void scan_body(const SelectiveScanArgs& a, int64_t item_begin, int64_t item_end) {
  const int64_t blocks = (a.channels + kScanChannelBlock - 1) / kScanChannelBlock;
  const int64_t n_state = a.state_size;
  constexpr int64_t CB = kScanChannelBlock;
  // State and A of one channel block, laid out [state][channel] so the inner loop runs over
  // contiguous channels.
  std::vector<float> h(n_state * CB), at(n_state * CB);
  for (int64_t item = item_begin; item < item_end; ++item) {
    const int64_t bi = item / blocks;
    const int64_t c0 = (item % blocks) * CB;
    const int64_t nc = std::min(CB, a.channels - c0);
    float* hb = h.data();
    float* ab = at.data();
    std::fill(h.begin(), h.end(), 0.0f);
    std::fill(at.begin(), at.end(), 0.0f);
    for (int64_t c = 0; c < nc; ++c) {
      for (int64_t s = 0; s < n_state; ++s) {
        hb[s * CB + c] = a.h[(bi * a.channels + c0 + c) * n_state + s];
        ab[s * CB + c] = a.a[(c0 + c) * n_state + s];
      }
    }
    alignas(32) float dvec[CB] = {};  // D of the block, zero-padded
    std::memcpy(dvec, a.d + c0, nc * sizeof(float));
    for (int64_t t = 0; t < a.length; ++t) {
      const int64_t row = bi * a.length + t;
      const float* u = a.u + row * a.channels + c0;
      const float* dt = a.delta + row * a.channels + c0;
      const float* bt = a.b + row * a.row_stride_bc;
      const float* ct = a.c + row * a.row_stride_bc;
      const float* z = a.z + row * a.row_stride_z + c0;
      float* y = a.y + row * a.channels + c0;
      // A partial last block is staged through zero-padded copies, so every vector is full.
      alignas(32) float dtl[CB], ul[CB], zl[CB], yl[CB];
      const bool full = nc == CB;
      if (!full) {
        for (int64_t c = 0; c < CB; ++c) {
          const bool live = c < nc;
          dtl[c] = live ? dt[c] : 0.0f;
          ul[c] = live ? u[c] : 0.0f;
          zl[c] = live ? z[c] : 0.0f;
        }
      }
      const float* dts = full ? dt : dtl;
      const float* us = full ? u : ul;
      const float* zs = full ? z : zl;
      float* ys = full ? y : yl;
      // All vectors of the block advance together through the states: independent chains
      // that keep the FMA units busy.
      constexpr int64_t kVecs = CB / kLanes;
      v8f dtv[kVecs], duv[kVecs], accv[kVecs];
      for (int64_t v = 0; v < kVecs; ++v) {
        const v8f uv = load(us + v * kLanes);
        dtv[v] = load(dts + v * kLanes);
        duv[v] = dtv[v] * uv;
        accv[v] = load(dvec + v * kLanes) * uv;
      }
      for (int64_t s = 0; s < n_state; ++s) {
        const float bs = bt[s], cs = ct[s];
        float* hs = hb + s * CB;
        const float* as = ab + s * CB;
        for (int64_t v = 0; v < kVecs; ++v) {
          const v8f hv = vexp(dtv[v] * load(as + v * kLanes)) * load(hs + v * kLanes) + duv[v] * bs;
          store(hs + v * kLanes, hv);
          accv[v] += hv * cs;
        }
      }
      for (int64_t v = 0; v < kVecs; ++v) {
        store(ys + v * kLanes, accv[v] * vsilu(load(zs + v * kLanes)));
      }
      if (!full) std::memcpy(y, yl, nc * sizeof(float));
    }
    for (int64_t c = 0; c < nc; ++c) {
      for (int64_t s = 0; s < n_state; ++s) {
        a.h[(bi * a.channels + c0 + c) * n_state + s] = hb[s * CB + c];
      }
    }
  }
}

#if HVLM_X86_DISPATCH
HVLM_TARGET_AVX2 void conv_avx2(const CausalConvArgs& a, int64_t begin, int64_t end) {
  conv_body(a, begin, end);
}
HVLM_TARGET_AVX2 void scan_avx2(const SelectiveScanArgs& a, int64_t begin, int64_t end) {
  scan_body(a, begin, end);
}
bool cpu_has_avx2_fma() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#endif

}  // namespace

void causal_conv_silu(const CausalConvArgs& args, int64_t item_begin, int64_t item_end) {
#if HVLM_X86_DISPATCH
  if (cpu_has_avx2_fma()) return conv_avx2(args, item_begin, item_end);
#endif
  conv_body(args, item_begin, item_end);
}

void selective_scan(const SelectiveScanArgs& args, int64_t item_begin, int64_t item_end) {
#if HVLM_X86_DISPATCH
  if (cpu_has_avx2_fma()) return scan_avx2(args, item_begin, item_end);
#endif
  scan_body(args, item_begin, item_end);
}

}  // namespace hvlm::kernels
