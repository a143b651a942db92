// PerformerAttention on CUDA (see performer_kernels.h): the fused softmax-kernel core and the
// elementwise feature-map tail of the generic path.
//
// The fused core, per group g = (b, h), in three launches:
//
//  1. Key pass (tensor cores). A block walks a contiguous range of 64-key tiles of the
//     flattened (group, tile) sequence (ranges balanced over one wave of blocks, so every SM
//     gets the same work whatever the number of groups). Each warp owns 32 features and keeps
//     its slice of P in registers as mma A fragments. Per 32 keys it forms S = P_w k^T (rows =
//     features, columns = keys), keeps a running maximum M_f of S per feature row, and folds
//     e = exp(ds (S - M_f) - diag_key) into E_f += e v and Z_f += e, rescaling both when M_f
//     grows (flash attention's online softmax with features in the role of queries). The
//     accumulator layout of S is the A-fragment layout of e (the flash-attention register
//     trick), and v's B fragments come from ldmatrix.trans. When the range leaves a group (or
//     ends) the block writes a record (E, M, Z, sum of v, max_f M_f) for that part of the
//     group. The exponent is bounded by 0 whatever the data (S <= M_f, diag >= 0), and M_f is
//     only a stabiliser: step 2 moves every record to the exact group maximum s_k (the maximum
//     of the records' maxima), so no exp ever sees an unstabilised argument.
//  2. Combine: KV_f = sum_rec exp(ds (M_f - s_k)) E_f + eps sum_i v_i (the eps term of phi_k
//     exactly, in float32), ksum_f likewise with eps n; KV rounds to bf16 (the query pass's mma
//     operand; bf16 also for fp16 inputs: KV can exceed the fp16 range), ksum stays float32.
//     The factor r of phi cancels in out = num / den and is never applied.
//  3. Query pass (tensor cores). Each warp takes 32 queries (q's A fragments in registers,
//     double-buffered per warp through cp.async); per chunk of 32 features it forms S = q P^T,
//     keeps a running row maximum (which ends as s_q, the exact per-row maximum) and folds
//     e = exp(ds (S - M)) into num += e KV (bf16 mma) and den += e ksum (float32). At the end
//     phi_q = r (e exp(-diag) + eps) gives num = exp(-diag) num + eps sum_f KV_f and
//     den = exp(-diag) den + eps sum_f ksum_f, and out = num / den.
//
// Shared rows are padded by 8 elements (16 bytes) so that the 8 row addresses of each ldmatrix
// phase fall in distinct bank groups. All arithmetic is float32 apart from the 16-bit mma
// operands; exponentials are ex2.approx on pre-scaled (log2) arguments.
#include "attention/cuda/performer_kernels.h"

#include "attention/cuda/async_copy.cuh"
#include "attention/cuda/element.cuh"
#include "attention/cuda/fast_math.cuh"
#include "attention/cuda/mma.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace hvlm::kernels::cuda {
namespace {

// =============================================================================================
// The elementwise feature-map tail: exp(u - shift[row]) + add
// =============================================================================================

constexpr int kThreads = 256;

// Vectorised: `features` is a multiple of kVec; each thread handles kVec elements of a row.
// Memory-bound: read u once, write out once.
template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads) features_kernel(const T* __restrict__ u, const float* __restrict__ shift,
                                                            float add, int64_t rows, int64_t features, T* out) {
  const int64_t groups_per_row = features / kVec;
  const int64_t total = rows * groups_per_row;
  for (int64_t g = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; g < total;
       g += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t row = g / groups_per_row;
    const int64_t offset = g * kVec;
    const float s = shift[row];
    T values[kVec];
    if constexpr (kVec * sizeof(T) == 16) {
      *reinterpret_cast<int4*>(values) = *reinterpret_cast<const int4*>(u + offset);
    } else {
#pragma unroll
      for (int e = 0; e < kVec; ++e) values[e] = u[offset + e];
    }
#pragma unroll
    for (int e = 0; e < kVec; ++e) values[e] = from_float<T>(__expf(to_float(values[e]) - s) + add);
    if constexpr (kVec * sizeof(T) == 16) {
      *reinterpret_cast<int4*>(out + offset) = *reinterpret_cast<const int4*>(values);
    } else {
#pragma unroll
      for (int e = 0; e < kVec; ++e) out[offset + e] = values[e];
    }
  }
}

template <typename T>
void launch_features(const PerformerFeatureArgs& a) {
  constexpr int kVec = static_cast<int>(16 / sizeof(T));
  const bool vectorised = a.features % kVec == 0;
  const int64_t work = a.rows * (vectorised ? a.features / kVec : a.features);
  const int64_t blocks = std::min<int64_t>((work + kThreads - 1) / kThreads, 132LL * 16);
  const auto stream = static_cast<cudaStream_t>(a.stream);
  const T* u = static_cast<const T*>(a.u);
  T* out = static_cast<T*>(a.out);
  if (vectorised) {
    features_kernel<T, kVec><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(u, a.shift, a.add, a.rows,
                                                                                       a.features, out);
  } else {
    features_kernel<T, 1><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(u, a.shift, a.add, a.rows,
                                                                                     a.features, out);
  }
}

// =============================================================================================
// The fused core
// =============================================================================================

using bf16 = __nv_bfloat16;

constexpr float kSoftmaxEps = 1e-4f;  // as kSoftmaxEps in performer_attention.cpp

constexpr int kKeyTile = 64;        // keys per pipeline stage of the key pass
constexpr int kKeyStages = 3;       // cp.async stages (one barrier pair per tile)
constexpr int kKeyStep = 32;        // keys per inner step (S is [32 features, 32 keys] per warp)
constexpr int kWarpFeatures = 32;   // features per warp in the key pass (two m16 tiles)
constexpr int kMaxFeatures = 256;
constexpr int kMaxKeyWarps = kMaxFeatures / kWarpFeatures;

constexpr int kQueryWarps = 4;
constexpr int kWarpQueries = 32;    // queries per warp (two m16 tiles)
constexpr int kQueryTile = kQueryWarps * kWarpQueries;
constexpr int kFeatureChunk = 32;   // features per inner step of the query pass

constexpr int kCombineThreads = 256;
constexpr int kCombineFeatures = 32;  // features per combine block

// Shared row length in elements: 16 bytes of padding, so rows stay 16-byte aligned and the 8
// rows an ldmatrix phase reads start in 8 distinct 16-byte bank groups.
template <int HD>
__host__ __device__ constexpr int row_elems() {
  return HD + 8;
}

// ---------------------------------------------------------------------------------------------
// PTX wrappers
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, asynchronously; fill == false writes zeros and reads nothing.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool fill) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(fill ? 16 : 0)
               : "memory");
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// The running-maximum update shared by both passes, for the thread's four rows (mt, h): the
// new row maximum over the valid columns of s (column 8 nt + 2 tig + e < valid), the rescale
// of the row's accumulators and sum, and bias = c * max for the exponent.
template <int DN, bool kMasked>
__device__ __forceinline__ void update_max(const float (&s)[2][4][4], int valid, float c, float (&rmax)[2][2],
                                           float (&rsum)[2][2], float (&acc)[2][DN][4], float (&bias)[2][2]) {
  const int tig = threadIdx.x & 3;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          if (!kMasked || 8 * nt + 2 * tig + e < valid) mx = fmaxf(mx, s[mt][nt][2 * h + e]);
        }
      }
      mx = quad_max(mx);
      // Every step has a valid column, so mx and m_new are finite; the first step rescales the
      // zero accumulators by exp2(-inf) = 0.
      const float m_new = fmaxf(rmax[mt][h], mx);
      const float scale = exp2_approx(c * (rmax[mt][h] - m_new));
      rmax[mt][h] = m_new;
      rsum[mt][h] *= scale;
#pragma unroll
      for (int dn = 0; dn < DN; ++dn) {
        acc[mt][dn][2 * h] *= scale;
        acc[mt][dn][2 * h + 1] *= scale;
      }
      bias[mt][h] = c * m_new;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 1. Key pass
// ---------------------------------------------------------------------------------------------

struct KeyPassParams {
  const void* k = nullptr;
  const void* v = nullptr;
  HeadStrides k_strides, v_strides;
  const void* projection = nullptr;  // [features, HD]
  int64_t heads = 0, length = 0;
  int64_t tiles_per_group = 0, total_tiles = 0;
  int features = 0;
  float c = 0;   // ds log2(e): exponent units per unit of x . P
  float cd = 0;  // ds^2 log2(e) / 2: exponent units per unit of |x|^2
  float* records = nullptr;
  int64_t record_floats = 0;
};

// A record (float32): E [features, HD], then M [features], Z [features], vsum [HD] and
// max_f M_f (padded to 4 floats, so records stay 16-byte aligned).
__host__ __device__ constexpr int64_t record_floats(int64_t features, int64_t hd) {
  return features * hd + 2 * features + hd + 4;
}

template <int HD>
constexpr size_t key_pass_smem_bytes() {
  return 2 * static_cast<size_t>(kKeyStages) * kKeyTile * row_elems<HD>() * 2  // k, v stages
         + static_cast<size_t>(kKeyStages) * kKeyTile * sizeof(float)          // diag per stage
         + static_cast<size_t>(kMaxKeyWarps) * (HD + 1) * sizeof(float);       // vsum, max reduction
}

// One step of 32 keys (columns j0.. of the stage; `valid` of them are real keys) for the warp's
// 32 features.
template <typename T, int HD, bool kMasked>
__device__ __forceinline__ void key_step(const T* sk, const T* sv, const float* sdiag, int j0, int valid,
                                         const uint32_t (&pa)[2][HD / 16][4], float (&acc)[2][HD / 8][4],
                                         float (&rmax)[2][2], float (&rsum)[2][2], float c) {
  constexpr int kRow = row_elems<HD>(), KT = HD / 16, DN = HD / 8;
  const int lane = threadIdx.x & 31, tig = lane & 3;

  // S = P_w k^T: B fragments of k (n = key, k = hd) straight from k's rows.
  float s[2][4][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.0f;
    }
  }
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
    uint32_t kb[KT][2];
#pragma unroll
    for (int kk = 0; kk < KT / 2; ++kk) {
      const T* ptr = sk + (j0 + 8 * nt + (lane & 7)) * kRow + 32 * kk + 8 * (lane >> 3);
      ldsm_x4(kb[2 * kk][0], kb[2 * kk][1], kb[2 * kk + 1][0], kb[2 * kk + 1][1], shared_address(ptr));
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int kt = 0; kt < KT; ++kt) mma_16816<T>(s[mt][nt], pa[mt][kt], kb[kt][0], kb[kt][1]);
    }
  }

  float bias[2][2];
  update_max<DN, kMasked>(s, valid, c, rmax, rsum, acc, bias);

  // e = 2^(c S - c M - diag2) in the input dtype, laid out as the A fragments of e [features,
  // keys]: n tiles 2j, 2j+1 of S form k tile j.
  uint32_t pe[2][2][4];
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
    const int col = 8 * nt + 2 * tig;
    const float2 d2 = *reinterpret_cast<const float2*>(sdiag + j0 + col);
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float x0 = exp2_approx(fmaf(s[mt][nt][2 * h], c, -(bias[mt][h] + d2.x)));
        float x1 = exp2_approx(fmaf(s[mt][nt][2 * h + 1], c, -(bias[mt][h] + d2.y)));
        if (kMasked) {
          if (col >= valid) x0 = 0.0f;
          if (col + 1 >= valid) x1 = 0.0f;
        }
        const uint32_t w = pack2<T>(x0, x1);
        pe[mt][nt >> 1][(nt & 1) * 2 + h] = w;
        const float2 r = unpack2<T>(w);  // the rounded values, as the mma sees them
        rsum[mt][h] += r.x + r.y;
      }
    }
  }

  // E += e v: B fragments of v (k = key, n = hd) by ldmatrix.trans of v's rows.
#pragma unroll
  for (int kt2 = 0; kt2 < 2; ++kt2) {
#pragma unroll
    for (int dp = 0; dp < HD / 16; ++dp) {
      const T* ptr = sv + (j0 + 16 * kt2 + (lane & 15)) * kRow + 16 * dp + 8 * (lane >> 4);
      uint32_t b0, b1, b2, b3;
      ldsm_x4_trans(b0, b1, b2, b3, shared_address(ptr));
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        mma_16816<T>(acc[mt][2 * dp], pe[mt][kt2], b0, b1);
        mma_16816<T>(acc[mt][2 * dp + 1], pe[mt][kt2], b2, b3);
      }
    }
  }
}

template <typename T, int HD>
__global__ void __launch_bounds__(kMaxKeyWarps * 32, 1) performer_key_pass(const KeyPassParams p) {
  constexpr int kRow = row_elems<HD>(), KT = HD / 16, DN = HD / 8;
  constexpr int kChunksPerRow = HD / 8;  // 16-byte chunks
  constexpr int kPart = HD / 4;          // columns per lane in the diag / vsum sweep
  extern __shared__ __align__(16) unsigned char smem[];
  T* sk = reinterpret_cast<T*>(smem);
  T* sv = sk + kKeyStages * kKeyTile * kRow;
  float* sdiag = reinterpret_cast<float*>(sv + kKeyStages * kKeyTile * kRow);
  float* sred = sdiag + kKeyStages * kKeyTile;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
  const int g = lane >> 2, tig = lane & 3;
  const int m = p.features;
  const int64_t block = blockIdx.x, blocks = gridDim.x;
  const int64_t t_begin = block * p.total_tiles / blocks;
  const int64_t t_end = (block + 1) * p.total_tiles / blocks;

  // The warp's 32 rows of P as A fragments (rows >= m are zero), for the whole block.
  uint32_t pa[2][KT][4];
  {
    const uint32_t* proj = static_cast<const uint32_t*>(p.projection);
    auto load = [&](int row, int col) -> uint32_t {
      return row < m ? __ldg(proj + (row * HD + col) / 2) : 0u;
    };
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int kt = 0; kt < KT; ++kt) {
        const int r0 = warp * kWarpFeatures + 16 * mt + g, c0 = 16 * kt + 2 * tig;
        pa[mt][kt][0] = load(r0, c0);
        pa[mt][kt][1] = load(r0 + 8, c0);
        pa[mt][kt][2] = load(r0, c0 + 8);
        pa[mt][kt][3] = load(r0 + 8, c0 + 8);
      }
    }
  }

  float acc[2][DN][4], rmax[2][2], rsum[2][2], vpart[kPart];
  auto reset = [&] {
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int dn = 0; dn < DN; ++dn) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mt][dn][e] = 0.0f;
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        rmax[mt][h] = -INFINITY;
        rsum[mt][h] = 0.0f;
      }
    }
#pragma unroll
    for (int i = 0; i < kPart; ++i) vpart[i] = 0.0f;
  };
  reset();

  // Stage tile t of k and v; rows past the sequence are zero-filled and read nothing.
  auto issue = [&](int64_t t, int stage) {
    const int64_t group = t / p.tiles_per_group;
    const int64_t key0 = (t - group * p.tiles_per_group) * kKeyTile;
    const int64_t b = group / p.heads, h = group - b * p.heads;
    const T* kbase = static_cast<const T*>(p.k) + b * p.k_strides.batch + h * p.k_strides.head;
    const T* vbase = static_cast<const T*>(p.v) + b * p.v_strides.batch + h * p.v_strides.head;
    for (int i = tid; i < 2 * kKeyTile * kChunksPerRow; i += blockDim.x) {
      const bool is_v = i >= kKeyTile * kChunksPerRow;
      const int rem = is_v ? i - kKeyTile * kChunksPerRow : i;
      const int r = rem / kChunksPerRow, ch = rem - r * kChunksPerRow;
      const int64_t key = key0 + r;
      const bool ok = key < p.length;
      const T* src = is_v ? vbase + (ok ? key * p.v_strides.token : 0) + ch * 8
                          : kbase + (ok ? key * p.k_strides.token : 0) + ch * 8;
      T* dst = (is_v ? sv : sk) + (stage * kKeyTile + r) * kRow + ch * 8;
      cp_async_16(shared_address(dst), src, ok);
    }
  };

  issue(t_begin, 0);
  cp_async_commit();
  if (t_begin + 1 < t_end) issue(t_begin + 1, 1);
  cp_async_commit();

  int stage = 0;
  for (int64_t t = t_begin; t < t_end; ++t) {
    cp_async_wait<1>();  // this thread's copies of tile t are done ...
    __syncthreads();     // ... and everyone's; everyone is also done with tile t - 1's stage
    if (t + 2 < t_end) issue(t + 2, (stage + 2) % kKeyStages);
    cp_async_commit();

    const int64_t group = t / p.tiles_per_group;
    const int64_t key0 = (t - group * p.tiles_per_group) * kKeyTile;
    const int valid = static_cast<int>(min(static_cast<int64_t>(kKeyTile), p.length - key0));
    const T* skt = sk + stage * kKeyTile * kRow;
    const T* svt = sv + stage * kKeyTile * kRow;
    float* sdt = sdiag + stage * kKeyTile;

    // diag2 of each key (4 lanes per key, quad sum) and this lane's running column sums of v.
    for (int kb = warp; kb < kKeyTile / 8; kb += nwarps) {
      const int key = kb * 8 + (lane >> 2), part = lane & 3;
      const T* krow = skt + key * kRow + part * kPart;
      const T* vrow = svt + key * kRow + part * kPart;
      float sq = 0.0f;
#pragma unroll
      for (int i = 0; i < kPart; i += 8) {
        const uint4 kw = *reinterpret_cast<const uint4*>(krow + i);
        const uint4 vw = *reinterpret_cast<const uint4*>(vrow + i);
        const uint32_t kx[4] = {kw.x, kw.y, kw.z, kw.w}, vx[4] = {vw.x, vw.y, vw.z, vw.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float2 kf = unpack2<T>(kx[j]), vf = unpack2<T>(vx[j]);
          sq = fmaf(kf.x, kf.x, fmaf(kf.y, kf.y, sq));
          vpart[i + 2 * j] += vf.x;
          vpart[i + 2 * j + 1] += vf.y;
        }
      }
      sq = quad_sum(sq);
      if (part == 0) sdt[key] = sq * p.cd;
    }
    __syncthreads();

    // Two steps of 32 keys; masked only in a group's last tile, skipped when it has no keys.
    if (valid >= kKeyStep) {
      key_step<T, HD, false>(skt, svt, sdt, 0, valid, pa, acc, rmax, rsum, p.c);
    } else {
      key_step<T, HD, true>(skt, svt, sdt, 0, valid, pa, acc, rmax, rsum, p.c);
    }
    if (valid >= 2 * kKeyStep) {
      key_step<T, HD, false>(skt, svt, sdt, kKeyStep, valid - kKeyStep, pa, acc, rmax, rsum, p.c);
    } else if (valid > kKeyStep) {
      key_step<T, HD, true>(skt, svt, sdt, kKeyStep, valid - kKeyStep, pa, acc, rmax, rsum, p.c);
    }

    const bool flush = t + 1 == t_end || (t + 1) / p.tiles_per_group != group;
    if (flush) {  // block-uniform
      float* rec = p.records + (block + group) * p.record_floats;
      const int64_t m_hd = static_cast<int64_t>(m) * HD;
      float wmax = -INFINITY;
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float z = quad_sum(rsum[mt][h]);
          const int f = warp * kWarpFeatures + 16 * mt + 8 * h + g;
          if (f < m) {
            wmax = fmaxf(wmax, rmax[mt][h]);
#pragma unroll
            for (int dn = 0; dn < DN; ++dn) {
              *reinterpret_cast<float2*>(rec + f * HD + 8 * dn + 2 * tig) =
                  make_float2(acc[mt][dn][2 * h], acc[mt][dn][2 * h + 1]);
            }
            if (tig == 0) {
              rec[m_hd + f] = rmax[mt][h];
              rec[m_hd + m + f] = z;
            }
          }
        }
      }
      // Column sums of v: over the lanes of one part (xor 4, 8, 16), then over the warps; the
      // record's maximum likewise.
#pragma unroll
      for (int i = 0; i < kPart; ++i) {
        float x = vpart[i];
        x += __shfl_xor_sync(0xffffffffu, x, 4);
        x += __shfl_xor_sync(0xffffffffu, x, 8);
        x += __shfl_xor_sync(0xffffffffu, x, 16);
        if (lane < 4) sred[warp * (HD + 1) + lane * kPart + i] = x;
      }
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) wmax = fmaxf(wmax, __shfl_xor_sync(0xffffffffu, wmax, o));
      if (lane == 0) sred[warp * (HD + 1) + HD] = wmax;
      __syncthreads();
      for (int d = tid; d <= HD; d += blockDim.x) {
        float x = d < HD ? 0.0f : -INFINITY;
        for (int w = 0; w < nwarps; ++w) x = d < HD ? x + sred[w * (HD + 1) + d] : fmaxf(x, sred[w * (HD + 1) + d]);
        rec[m_hd + 2 * m + d] = x;
      }
      reset();
    }
    stage = stage + 1 == kKeyStages ? 0 : stage + 1;
  }
}

// ---------------------------------------------------------------------------------------------
// 2. Combine
// ---------------------------------------------------------------------------------------------

struct CombineParams {
  const float* records = nullptr;
  int64_t record_floats = 0;
  int64_t tiles_per_group = 0, total_tiles = 0, key_blocks = 0, length = 0;
  int features = 0, parts = 0;
  float c = 0, eps = 0;
  bf16* kv = nullptr;        // [G, features, HD]
  float* ksum = nullptr;     // [G, features]
  float* colsum = nullptr;   // [G, parts, HD + 4]: sums over this block's features of KV (as
                             // rounded) [HD] and of ksum [1] (then padding)
};

// Row length of the combine's partial column sums: HD + 1 values, padded to 16 bytes.
template <int HD>
__host__ __device__ constexpr int colsum_row() {
  return HD + 4;
}

template <int HD>
__global__ void __launch_bounds__(kCombineThreads) performer_combine(const CombineParams p) {
  __shared__ float skv[kCombineFeatures][HD + 1];
  __shared__ float sks[kCombineFeatures];
  __shared__ float sred[kCombineThreads / 32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int m = p.features;
  const int64_t group = blockIdx.x;
  const int part = blockIdx.y, f0 = part * kCombineFeatures;

  // The key-pass blocks whose ranges meet this group: block c wrote its part to slot c + group.
  auto block_of = [&](int64_t tile) {
    return ((tile + 1) * p.key_blocks + p.total_tiles - 1) / p.total_tiles - 1;
  };
  const int64_t first = block_of(group * p.tiles_per_group);
  const int64_t last = block_of((group + 1) * p.tiles_per_group - 1);
  const int nrec = static_cast<int>(last - first + 1);
  const float* rec0 = p.records + (first + group) * p.record_floats;
  const int64_t m_hd = static_cast<int64_t>(m) * HD;

  // s_k (in units of x . P): the group's maximum, over the maxima of its records.
  float mx = -INFINITY;
  for (int j = tid; j < nrec; j += kCombineThreads) mx = fmaxf(mx, rec0[j * p.record_floats + m_hd + 2 * m + HD]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if (lane == 0) sred[warp] = mx;
  __syncthreads();
  float s = sred[0];
#pragma unroll
  for (int w = 1; w < kCombineThreads / 32; ++w) s = fmaxf(s, sred[w]);

  for (int i = tid; i < kCombineFeatures * (HD / 8); i += kCombineThreads) {
    const int fl = i / (HD / 8), d0 = 8 * (i % (HD / 8));
    const int f = f0 + fl;
    if (f < m) {
      float a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, vs[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      float ks = 0.0f;
#pragma unroll 4
      for (int j = 0; j < nrec; ++j) {
        const float* r = rec0 + j * p.record_floats;
        const float w = exp2_approx(p.c * (r[m_hd + f] - s));
        const float4 e0 = *reinterpret_cast<const float4*>(r + f * HD + d0);
        const float4 e1 = *reinterpret_cast<const float4*>(r + f * HD + d0 + 4);
        const float4 v0 = *reinterpret_cast<const float4*>(r + m_hd + 2 * m + d0);
        const float4 v1 = *reinterpret_cast<const float4*>(r + m_hd + 2 * m + d0 + 4);
        a[0] = fmaf(w, e0.x, a[0]);
        a[1] = fmaf(w, e0.y, a[1]);
        a[2] = fmaf(w, e0.z, a[2]);
        a[3] = fmaf(w, e0.w, a[3]);
        a[4] = fmaf(w, e1.x, a[4]);
        a[5] = fmaf(w, e1.y, a[5]);
        a[6] = fmaf(w, e1.z, a[6]);
        a[7] = fmaf(w, e1.w, a[7]);
        vs[0] += v0.x;
        vs[1] += v0.y;
        vs[2] += v0.z;
        vs[3] += v0.w;
        vs[4] += v1.x;
        vs[5] += v1.y;
        vs[6] += v1.z;
        vs[7] += v1.w;
        ks = fmaf(w, r[m_hd + m + f], ks);
      }
      ks = fmaf(p.eps, static_cast<float>(p.length), ks);
      uint32_t packed[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        packed[k] = pack2<bf16>(fmaf(p.eps, vs[2 * k], a[2 * k]), fmaf(p.eps, vs[2 * k + 1], a[2 * k + 1]));
        const float2 rounded = unpack2<bf16>(packed[k]);
        skv[fl][d0 + 2 * k] = rounded.x;
        skv[fl][d0 + 2 * k + 1] = rounded.y;
      }
      *reinterpret_cast<uint4*>(p.kv + (group * m + f) * HD + d0) = make_uint4(packed[0], packed[1], packed[2], packed[3]);
      if (d0 == 0) {
        p.ksum[group * m + f] = ks;
        sks[fl] = ks;
      }
    } else {
#pragma unroll
      for (int k = 0; k < 8; ++k) skv[fl][d0 + k] = 0.0f;
      if (d0 == 0) sks[fl] = 0.0f;
    }
  }
  __syncthreads();
  for (int d = tid; d < colsum_row<HD>(); d += kCombineThreads) {
    float x = 0.0f;
    if (d <= HD) {
      for (int fl = 0; fl < kCombineFeatures; ++fl) x += d < HD ? skv[fl][d] : sks[fl];
    }
    p.colsum[(group * p.parts + part) * colsum_row<HD>() + d] = x;
  }
}

// ---------------------------------------------------------------------------------------------
// 3. Query pass
// ---------------------------------------------------------------------------------------------

struct QueryPassParams {
  const void* q = nullptr;
  HeadStrides q_strides;
  void* out = nullptr;
  HeadStrides out_strides;
  const void* projection = nullptr;
  const bf16* kv = nullptr;
  const float* ksum = nullptr;
  const float* colsum = nullptr;
  int64_t heads = 0, length = 0;
  int64_t tiles_per_group = 0, total_tiles = 0;
  int features = 0, parts = 0;
  float c = 0, cd = 0, eps = 0;
};

constexpr int kMaxParts = kMaxFeatures / kCombineFeatures;

template <int HD>
size_t query_pass_smem_bytes(int features) {
  const size_t mpad = static_cast<size_t>((features + kFeatureChunk - 1) / kFeatureChunk * kFeatureChunk);
  return mpad * row_elems<HD>() * 2 * 2                                        // P, KV
         + static_cast<size_t>(kQueryWarps) * 2 * kWarpQueries * row_elems<HD>() * 2  // q, 2 buffers
         + mpad * sizeof(float)                                                // ksum
         + static_cast<size_t>(kMaxParts + 1) * colsum_row<HD>() * sizeof(float);  // column sums
}

// One chunk of 32 features (f0.., `valid` of them real) for the warp's 32 queries.
template <typename T, int HD, bool kMasked>
__device__ __forceinline__ void query_step(const T* sP, const bf16* sKV, const float* sks, int f0, int valid,
                                           const uint32_t (&qa)[2][HD / 16][4], float (&acc)[2][HD / 8][4],
                                           float (&rmax)[2][2], float (&rden)[2][2], float c) {
  constexpr int kRow = row_elems<HD>(), KT = HD / 16, DN = HD / 8;
  const int lane = threadIdx.x & 31, tig = lane & 3;

  // S = q P^T: B fragments of P (n = feature, k = hd) straight from P's rows.
  float s[2][4][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.0f;
    }
  }
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
    uint32_t pb[KT][2];
#pragma unroll
    for (int kk = 0; kk < KT / 2; ++kk) {
      const T* ptr = sP + (f0 + 8 * nt + (lane & 7)) * kRow + 32 * kk + 8 * (lane >> 3);
      ldsm_x4(pb[2 * kk][0], pb[2 * kk][1], pb[2 * kk + 1][0], pb[2 * kk + 1][1], shared_address(ptr));
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int kt = 0; kt < KT; ++kt) mma_16816<T>(s[mt][nt], qa[mt][kt], pb[kt][0], pb[kt][1]);
    }
  }

  float bias[2][2];
  update_max<DN, kMasked>(s, valid, c, rmax, rden, acc, bias);

  // e = 2^(c S - c M) in bf16 as A fragments of e [queries, features]; den += e ksum.
  uint32_t pe[2][2][4];
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
    const int col = 8 * nt + 2 * tig;
    const float2 ks = *reinterpret_cast<const float2*>(sks + f0 + col);
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float x0 = exp2_approx(fmaf(s[mt][nt][2 * h], c, -bias[mt][h]));
        float x1 = exp2_approx(fmaf(s[mt][nt][2 * h + 1], c, -bias[mt][h]));
        if (kMasked) {
          if (col >= valid) x0 = 0.0f;
          if (col + 1 >= valid) x1 = 0.0f;
        }
        const uint32_t w = pack2<bf16>(x0, x1);
        pe[mt][nt >> 1][(nt & 1) * 2 + h] = w;
        const float2 r = unpack2<bf16>(w);
        rden[mt][h] = fmaf(r.x, ks.x, fmaf(r.y, ks.y, rden[mt][h]));
      }
    }
  }

  // num += e KV: B fragments of KV (k = feature, n = hd) by ldmatrix.trans of KV's rows.
#pragma unroll
  for (int kt2 = 0; kt2 < 2; ++kt2) {
#pragma unroll
    for (int dp = 0; dp < HD / 16; ++dp) {
      const bf16* ptr = sKV + (f0 + 16 * kt2 + (lane & 15)) * kRow + 16 * dp + 8 * (lane >> 4);
      uint32_t b0, b1, b2, b3;
      ldsm_x4_trans(b0, b1, b2, b3, shared_address(ptr));
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        mma_16816<bf16>(acc[mt][2 * dp], pe[mt][kt2], b0, b1);
        mma_16816<bf16>(acc[mt][2 * dp + 1], pe[mt][kt2], b2, b3);
      }
    }
  }
}

template <typename T, int HD>
__global__ void __launch_bounds__(kQueryWarps * 32, 2) performer_query_pass(const QueryPassParams p) {
  constexpr int kRow = row_elems<HD>(), KT = HD / 16, DN = HD / 8;
  constexpr int kChunksPerRow = HD / 8;
  extern __shared__ __align__(16) unsigned char smem[];
  const int m = p.features;
  const int mpad = (m + kFeatureChunk - 1) / kFeatureChunk * kFeatureChunk;
  T* sP = reinterpret_cast<T*>(smem);
  bf16* sKV = reinterpret_cast<bf16*>(sP + mpad * kRow);
  T* sQ = reinterpret_cast<T*>(sKV + mpad * kRow);
  float* sks = reinterpret_cast<float*>(sQ + kQueryWarps * 2 * kWarpQueries * kRow);
  float* scol = sks + mpad;                         // the combine's partial sums [parts, HD + 4]
  float* sconst = scol + kMaxParts * colsum_row<HD>();  // eps sum_f KV_f [HD], eps sum_f ksum_f

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, tig = lane & 3;
  const int64_t block = blockIdx.x, blocks = gridDim.x;
  const int64_t t_begin = block * p.total_tiles / blocks;
  const int64_t t_end = (block + 1) * p.total_tiles / blocks;

  // P for the whole block (rows >= m zero, so padded features give finite S). Staged with
  // cp.async like everything else: all copies in flight at once.
  for (int i = tid; i < mpad * kChunksPerRow; i += blockDim.x) {
    const int r = i / kChunksPerRow, ch = i - r * kChunksPerRow;
    const T* src = static_cast<const T*>(p.projection) + (r < m ? r * HD : 0) + ch * 8;
    cp_async_16(shared_address(sP + r * kRow + ch * 8), src, r < m);
  }

  // Each warp stages its own 32 query rows (double-buffered), so only __syncwarp guards them.
  T* sq = sQ + warp * 2 * kWarpQueries * kRow;
  auto issue_q = [&](int64_t t, int buf) {
    const int64_t group = t / p.tiles_per_group;
    const int64_t row0 = (t - group * p.tiles_per_group) * kQueryTile + warp * kWarpQueries;
    const int64_t b = group / p.heads, h = group - b * p.heads;
    const T* base = static_cast<const T*>(p.q) + b * p.q_strides.batch + h * p.q_strides.head;
    for (int i = lane; i < kWarpQueries * kChunksPerRow; i += 32) {
      const int r = i / kChunksPerRow, ch = i - r * kChunksPerRow;
      const int64_t row = row0 + r;
      const bool ok = row < p.length;
      const T* src = base + (ok ? row * p.q_strides.token : 0) + ch * 8;
      cp_async_16(shared_address(sq + (buf * kWarpQueries + r) * kRow + ch * 8), src, ok);
    }
  };

  issue_q(t_begin, 0);
  cp_async_commit();
  int64_t loaded_group = -1;
  int buf = 0;
  for (int64_t t = t_begin; t < t_end; ++t, buf ^= 1) {
    const int64_t group = t / p.tiles_per_group;
    if (group != loaded_group) {  // block-uniform
      __syncthreads();            // everyone is done with the previous group's KV
      const bf16* kv = p.kv + group * m * HD;
      for (int i = tid; i < mpad * kChunksPerRow; i += blockDim.x) {
        const int r = i / kChunksPerRow, ch = i - r * kChunksPerRow;
        cp_async_16(shared_address(sKV + r * kRow + ch * 8), kv + (r < m ? r * HD : 0) + ch * 8, r < m);
      }
      const float* ksum = p.ksum + group * m;
      for (int i = tid; i < mpad / 4; i += blockDim.x) {
        cp_async_16(shared_address(sks + 4 * i), ksum + (4 * i < m ? 4 * i : 0), 4 * i < m);
      }
      const float* colsum = p.colsum + group * p.parts * colsum_row<HD>();
      for (int i = tid; i < p.parts * colsum_row<HD>() / 4; i += blockDim.x) {
        cp_async_16(shared_address(scol + 4 * i), colsum + 4 * i, true);
      }
      cp_async_commit();
      cp_async_wait<0>();
      __syncthreads();
      for (int d = tid; d <= HD; d += blockDim.x) {
        float x = 0.0f;
        for (int part = 0; part < p.parts; ++part) x += scol[part * colsum_row<HD>() + d];
        sconst[d] = p.eps * x;
      }
      __syncthreads();
      loaded_group = group;
    }
    if (t + 1 < t_end) issue_q(t + 1, buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();  // tile t's rows have landed
    __syncwarp();

    uint32_t qa[2][KT][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int kt = 0; kt < KT; ++kt) {
        const T* ptr = sq + (buf * kWarpQueries + 16 * mt + (lane & 15)) * kRow + 16 * kt + 8 * (lane >> 4);
        ldsm_x4(qa[mt][kt][0], qa[mt][kt][1], qa[mt][kt][2], qa[mt][kt][3], shared_address(ptr));
      }
    }
    __syncwarp();  // the buffer may be refilled from the next iteration on

    // diag2 of the thread's rows (g, g + 8 of each m tile) from the fragments: registers h and
    // h + 2 of each k tile hold 4 of a row's columns; the quad holds all of them.
    float dg[2][2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float x = 0.0f;
#pragma unroll
        for (int kt = 0; kt < KT; ++kt) {
          const float2 a = unpack2<T>(qa[mt][kt][h]), b = unpack2<T>(qa[mt][kt][h + 2]);
          x = fmaf(a.x, a.x, fmaf(a.y, a.y, fmaf(b.x, b.x, fmaf(b.y, b.y, x))));
        }
        dg[mt][h] = quad_sum(x) * p.cd;
      }
    }

    float acc[2][DN][4], rmax[2][2], rden[2][2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int dn = 0; dn < DN; ++dn) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mt][dn][e] = 0.0f;
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        rmax[mt][h] = -INFINITY;
        rden[mt][h] = 0.0f;
      }
    }
    for (int f0 = 0; f0 < mpad; f0 += kFeatureChunk) {
      if (m - f0 >= kFeatureChunk) {
        query_step<T, HD, false>(sP, sKV, sks, f0, m - f0, qa, acc, rmax, rden, p.c);
      } else {
        query_step<T, HD, true>(sP, sKV, sks, f0, m - f0, qa, acc, rmax, rden, p.c);
      }
    }

    // out = (w num + eps sum KV) / (w den + eps sum ksum), w = exp(-diag).
    const int64_t row0 = (t - group * p.tiles_per_group) * kQueryTile + warp * kWarpQueries;
    const int64_t b = group / p.heads, hh = group - b * p.heads;
    T* obase = static_cast<T*>(p.out) + b * p.out_strides.batch + hh * p.out_strides.head;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float den = quad_sum(rden[mt][h]);
        const float w = exp2_approx(-dg[mt][h]);
        const float inv = 1.0f / fmaf(w, den, sconst[HD]);
        const int64_t row = row0 + 16 * mt + 8 * h + g;
        if (row < p.length) {
          T* orow = obase + row * p.out_strides.token;
#pragma unroll
          for (int dn = 0; dn < DN; ++dn) {
            const int col = 8 * dn + 2 * tig;
            const float o0 = fmaf(w, acc[mt][dn][2 * h], sconst[col]) * inv;
            const float o1 = fmaf(w, acc[mt][dn][2 * h + 1], sconst[col + 1]) * inv;
            *reinterpret_cast<uint32_t*>(orow + col) = pack2<T>(o0, o1);
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------

void check_call(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("hvlm::kernels::cuda::performer_attention: ") + what + ": " +
                             cudaGetErrorString(status));
  }
}

[[noreturn]] void fail(const std::string& what) {
  throw std::invalid_argument("hvlm::kernels::cuda::performer_attention: " + what);
}

// SM count and resident blocks per SM of a kernel at a launch shape, per device; the kernel's
// dynamic shared memory limit is raised to `max_smem` on first sight.
int resident_blocks(const void* kernel, int threads, size_t smem, size_t max_smem) {
  struct Entry {
    int device;
    const void* kernel;
    int threads;
    size_t smem;
    int blocks;
  };
  static std::mutex mu;
  static std::vector<Entry> entries;  // guarded by mu
  int device = 0;
  check_call(cudaGetDevice(&device), "cudaGetDevice");
  const std::lock_guard<std::mutex> lock(mu);
  for (const Entry& e : entries) {
    if (e.device == device && e.kernel == kernel && e.threads == threads && e.smem == smem) return e.blocks;
  }
  check_call(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(max_smem)),
             "cudaFuncSetAttribute");
  // Shared memory before L1: two query-pass blocks of ~112 KB share an SM only in the
  // largest carveout.
  check_call(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                  static_cast<int>(cudaSharedmemCarveoutMaxShared)),
             "cudaFuncSetAttribute");
  int sms = 0, per_sm = 0;
  check_call(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  check_call(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem),
             "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  if (per_sm < 1) fail("a block does not fit on an SM");
  const int blocks = std::max(sms, 1) * per_sm;
  entries.push_back({device, kernel, threads, smem, blocks});
  return blocks;
}

size_t align_up(size_t x) { return (x + 255) / 256 * 256; }

// Grids, sizes and the workspace layout of one call.
struct Plan {
  int64_t groups = 0;
  int key_threads = 0;
  int64_t key_tiles_per_group = 0, key_total = 0, key_blocks = 0;
  int64_t query_tiles_per_group = 0, query_total = 0, query_blocks = 0;
  size_t key_smem = 0, query_smem = 0;
  int parts = 0;
  int64_t record_floats = 0;
  size_t records_offset = 0, kv_offset = 0, ksum_offset = 0, colsum_offset = 0, bytes = 0;
};

template <typename T, int HD>
Plan make_plan(const PerformerAttentionArgs& a) {
  Plan plan;
  const int m = static_cast<int>(a.features);
  plan.groups = a.batch * a.heads;
  plan.key_threads = 32 * ((m + kWarpFeatures - 1) / kWarpFeatures);
  plan.key_smem = key_pass_smem_bytes<HD>();
  plan.query_smem = query_pass_smem_bytes<HD>(m);
  plan.key_tiles_per_group = (a.length + kKeyTile - 1) / kKeyTile;
  plan.key_total = plan.groups * plan.key_tiles_per_group;
  plan.query_tiles_per_group = (a.length + kQueryTile - 1) / kQueryTile;
  plan.query_total = plan.groups * plan.query_tiles_per_group;
  const int64_t key_slots = resident_blocks(reinterpret_cast<const void*>(performer_key_pass<T, HD>),
                                            plan.key_threads, plan.key_smem, key_pass_smem_bytes<HD>());
  const int64_t query_slots =
      resident_blocks(reinterpret_cast<const void*>(performer_query_pass<T, HD>), kQueryWarps * 32,
                      plan.query_smem, query_pass_smem_bytes<HD>(kMaxFeatures));
  const int64_t cap = a.max_blocks > 0 ? a.max_blocks : INT64_MAX;
  plan.key_blocks = std::min({plan.key_total, key_slots, cap});
  plan.query_blocks = std::min({plan.query_total, query_slots, cap});
  plan.parts = (m + kCombineFeatures - 1) / kCombineFeatures;
  plan.record_floats = record_floats(m, HD);
  // At most key_blocks + groups - 1 records: block c writes its part of group g to slot c + g,
  // and c + g grows by at least one from one (block, group) pair of the tile order to the next.
  const size_t records = static_cast<size_t>(plan.key_blocks + plan.groups - 1) * plan.record_floats;
  plan.records_offset = 0;
  plan.kv_offset = align_up(records * sizeof(float));
  plan.ksum_offset = plan.kv_offset + align_up(static_cast<size_t>(plan.groups) * m * HD * sizeof(bf16));
  plan.colsum_offset = plan.ksum_offset + align_up(static_cast<size_t>(plan.groups) * m * sizeof(float));
  plan.bytes = plan.colsum_offset +
               align_up(static_cast<size_t>(plan.groups) * plan.parts * colsum_row<HD>() * sizeof(float));
  return plan;
}

bool is_noop(const PerformerAttentionArgs& a) { return a.batch == 0 || a.heads == 0 || a.length == 0; }

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }
bool strides_multiple_of(const HeadStrides& s, int64_t n) {
  return s.batch % n == 0 && s.head % n == 0 && s.token % n == 0;
}

void validate(const PerformerAttentionArgs& a) {
  if (a.dtype != DType::kBFloat16 && a.dtype != DType::kFloat16) fail("dtype must be bfloat16 or float16");
  if (a.batch < 0 || a.heads < 0 || a.length < 0) fail("negative size");
  if (!performer_attention_supported(a.head_dim, a.features)) {
    fail("unsupported head_dim " + std::to_string(a.head_dim) + " / features " + std::to_string(a.features) +
         " (head_dim 32 or 64, features a multiple of 16 in 16..256)");
  }
  if (is_noop(a)) return;
  if (!a.q || !a.k || !a.v || !a.projection || !a.out) fail("null operand pointer");
  if (!aligned(a.q, 16) || !aligned(a.k, 16) || !aligned(a.v, 16) || !aligned(a.projection, 16)) {
    fail("q, k, v and projection must be 16-byte aligned");
  }
  if (!strides_multiple_of(a.q_strides, 8) || !strides_multiple_of(a.k_strides, 8) ||
      !strides_multiple_of(a.v_strides, 8)) {
    fail("q, k and v strides must be multiples of 8 elements");
  }
  if (!aligned(a.out, 4) || !strides_multiple_of(a.out_strides, 2)) {
    fail("out must be 4-byte aligned with even strides");
  }
}

template <typename F>
void dispatch(const PerformerAttentionArgs& a, F&& f) {
  const bool half = a.dtype == DType::kFloat16;
  if (a.head_dim == 32) {
    half ? f(__half{}, std::integral_constant<int, 32>{}) : f(bf16{}, std::integral_constant<int, 32>{});
  } else {
    half ? f(__half{}, std::integral_constant<int, 64>{}) : f(bf16{}, std::integral_constant<int, 64>{});
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------

bool performer_attention_supported(int64_t head_dim, int64_t features) {
  return (head_dim == 32 || head_dim == 64) && features >= 16 && features <= kMaxFeatures && features % 16 == 0;
}

size_t performer_attention_workspace_bytes(const PerformerAttentionArgs& a) {
  validate(a);
  if (is_noop(a)) return 0;
  size_t bytes = 0;
  dispatch(a, [&](auto tag, auto hd) { bytes = make_plan<decltype(tag), decltype(hd)::value>(a).bytes; });
  return bytes;
}

void performer_attention(const PerformerAttentionArgs& a) {
  validate(a);
  if (is_noop(a)) return;
  if (!a.workspace || !aligned(a.workspace, 16)) fail("workspace must be non-null and 16-byte aligned");
  dispatch(a, [&](auto tag, auto hd_tag) {
    using T = decltype(tag);
    constexpr int HD = decltype(hd_tag)::value;
    const Plan plan = make_plan<T, HD>(a);
    const auto stream = static_cast<cudaStream_t>(a.stream);
    auto* ws = static_cast<unsigned char*>(a.workspace);
    float* records = reinterpret_cast<float*>(ws + plan.records_offset);
    bf16* kv = reinterpret_cast<bf16*>(ws + plan.kv_offset);
    float* ksum = reinterpret_cast<float*>(ws + plan.ksum_offset);
    float* colsum = reinterpret_cast<float*>(ws + plan.colsum_offset);
    const double ds = std::pow(static_cast<double>(HD), -0.25);
    constexpr double kLog2eD = 1.4426950408889634;
    const float c = static_cast<float>(ds * kLog2eD);
    const float cd = static_cast<float>(0.5 * ds * ds * kLog2eD);
    auto record = [&](int i) {
      if (a.stage_events) check_call(cudaEventRecord(static_cast<cudaEvent_t>(a.stage_events[i]), stream), "cudaEventRecord");
    };

    KeyPassParams kp;
    kp.k = a.k;
    kp.v = a.v;
    kp.k_strides = a.k_strides;
    kp.v_strides = a.v_strides;
    kp.projection = a.projection;
    kp.heads = a.heads;
    kp.length = a.length;
    kp.tiles_per_group = plan.key_tiles_per_group;
    kp.total_tiles = plan.key_total;
    kp.features = static_cast<int>(a.features);
    kp.c = c;
    kp.cd = cd;
    kp.records = records;
    kp.record_floats = plan.record_floats;
    record(0);
    performer_key_pass<T, HD><<<static_cast<unsigned>(plan.key_blocks), plan.key_threads, plan.key_smem, stream>>>(kp);
    check_call(cudaGetLastError(), "key pass launch");
    record(1);

    CombineParams cp;
    cp.records = records;
    cp.record_floats = plan.record_floats;
    cp.tiles_per_group = plan.key_tiles_per_group;
    cp.total_tiles = plan.key_total;
    cp.key_blocks = plan.key_blocks;
    cp.length = a.length;
    cp.features = static_cast<int>(a.features);
    cp.parts = plan.parts;
    cp.c = c;
    cp.eps = kSoftmaxEps;
    cp.kv = kv;
    cp.ksum = ksum;
    cp.colsum = colsum;
    performer_combine<HD><<<dim3(static_cast<unsigned>(plan.groups), static_cast<unsigned>(plan.parts)),
                            kCombineThreads, 0, stream>>>(cp);
    check_call(cudaGetLastError(), "combine launch");
    record(2);

    QueryPassParams qp;
    qp.q = a.q;
    qp.q_strides = a.q_strides;
    qp.out = a.out;
    qp.out_strides = a.out_strides;
    qp.projection = a.projection;
    qp.kv = kv;
    qp.ksum = ksum;
    qp.colsum = colsum;
    qp.heads = a.heads;
    qp.length = a.length;
    qp.tiles_per_group = plan.query_tiles_per_group;
    qp.total_tiles = plan.query_total;
    qp.features = static_cast<int>(a.features);
    qp.parts = plan.parts;
    qp.c = c;
    qp.cd = cd;
    qp.eps = kSoftmaxEps;
    performer_query_pass<T, HD>
        <<<static_cast<unsigned>(plan.query_blocks), kQueryWarps * 32, plan.query_smem, stream>>>(qp);
    check_call(cudaGetLastError(), "query pass launch");
    record(3);
  });
}

void performer_features(const PerformerFeatureArgs& a) {
  if (a.rows <= 0 || a.features <= 0) return;
  switch (a.dtype) {
    case DType::kFloat32: launch_features<float>(a); break;
    case DType::kBFloat16: launch_features<__nv_bfloat16>(a); break;
    case DType::kFloat16: launch_features<__half>(a); break;
  }
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("performer_features: launch failed: ") + cudaGetErrorString(status));
  }
}

}  // namespace hvlm::kernels::cuda
