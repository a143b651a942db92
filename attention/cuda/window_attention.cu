// Sliding-window + global-key attention on CUDA cores (see window_attention.h).
//
// Why not tensor cores or SDPA: the window is narrow (w + 1 keys, 65 for w = 64), so the work
// per query is ~17 kFLOP and the whole core at n = 8192, 12 heads of 64 is ~1.7 GFLOP: well
// under a millisecond even on CUDA cores, while flash attention over blocks would need masks
// (the window is not block-aligned) and three launches stitched by their log-sum-exps.
//
// Layout: a CTA takes kQueries consecutive queries of one (batch, head) group, one query per
// thread. The keys and values its window needs are staged through shared memory in chunks;
// rows are padded by one 32-bit word so that 32 threads reading 32 consecutive rows hit 32
// different banks. Each thread keeps its (pre-scaled) query and its output accumulator in
// registers and runs an online softmax over its window keys, then over the global keys that
// lie outside its window, read straight from global memory (the same row for every thread:
// a broadcast).
#include "attention/cuda/window_attention.h"

#include "attention/cuda/element.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

namespace hvlm::kernels::cuda {
namespace {

constexpr int kQueries = 64;               // queries (threads) per CTA
constexpr int kSharedBytes = 40 * 1024;    // K and V staging, under the 48 KB default


// Two consecutive elements of a shared-memory row as floats (16-bit types: one 32-bit load).
__device__ __forceinline__ float2 load_pair(const float* p) { return make_float2(p[0], p[1]); }
__device__ __forceinline__ float2 load_pair(const __nv_bfloat16* p) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}
__device__ __forceinline__ float2 load_pair(const __half* p) {
  return __half22float2(*reinterpret_cast<const __half2*>(p));
}

// Row stride in elements: one extra 32-bit word, so rows map to distinct banks.
template <typename T, int HD>
__host__ __device__ constexpr int row_stride() {
  return HD + static_cast<int>(4 / sizeof(T));
}

template <typename T, int HD>
__host__ __device__ constexpr int chunk_rows() {
  constexpr int rows = kSharedBytes / (2 * row_stride<T, HD>() * static_cast<int>(sizeof(T)));
  return rows >= 256 ? 256 : (rows >= 128 ? 128 : (rows >= 64 ? 64 : 32));
}

// One online-softmax step: fold key score s and value row `v` (fetched by get(d)) into (m, l, acc).
template <int HD, typename GetPair>
__device__ __forceinline__ void accumulate(float s, float& m, float& l, float (&acc)[HD], GetPair get_pair) {
  const float m_new = fmaxf(m, s);
  const float alpha = __expf(m - m_new);  // 0 for the first key (m = -inf)
  const float p = __expf(s - m_new);
  l = l * alpha + p;
#pragma unroll
  for (int d = 0; d < HD; d += 2) {
    const float2 v = get_pair(d);
    acc[d] = fmaf(acc[d], alpha, p * v.x);
    acc[d + 1] = fmaf(acc[d + 1], alpha, p * v.y);
  }
  m = m_new;
}

template <typename T, int HD>
__global__ void __launch_bounds__(kQueries) window_attention_kernel(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const int32_t* __restrict__ global_positions, int num_global, int length, int half,
    float scale, T* __restrict__ out) {
  constexpr int kStride = row_stride<T, HD>();
  constexpr int kChunk = chunk_rows<T, HD>();
  // Keys per online-softmax step: as many as registers allow beside q and acc (2 * HD).
  constexpr int kKeyBlock = HD >= 64 ? 4 : 8;
  __shared__ __align__(16) T k_s[kChunk * kStride];
  __shared__ __align__(16) T v_s[kChunk * kStride];

  const int64_t group_offset = static_cast<int64_t>(blockIdx.x) * length * HD;
  const int first_query = static_cast<int>(blockIdx.y) * kQueries;
  const int i = first_query + static_cast<int>(threadIdx.x);
  const bool active = i < length;

  float qr[HD];
  float acc[HD];
#pragma unroll
  for (int d = 0; d < HD; ++d) {
    qr[d] = active ? to_float(q[group_offset + static_cast<int64_t>(i) * HD + d]) * scale : 0.0f;
    acc[d] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;

  // Keys any query of this CTA can see, and those of this thread's warp.
  const int cta_begin = max(0, first_query - half);
  const int cta_end = min(length, first_query + kQueries + half);
  const int warp_first = first_query + (static_cast<int>(threadIdx.x) & ~31);
  const int warp_begin = max(0, warp_first - half);
  const int warp_end = min(length, warp_first + 32 + half);

  for (int chunk_begin = cta_begin; chunk_begin < cta_end; chunk_begin += kChunk) {
    const int rows = min(kChunk, cta_end - chunk_begin);
    __syncthreads();  // the previous chunk is no longer read
    // 16-byte loads (rows are HD * sizeof(T) >= 16 bytes, 16-byte aligned), stored as 32-bit
    // words into the padded rows; unrolled so that several loads are in flight.
    constexpr int kVectorsPerRow = HD * static_cast<int>(sizeof(T)) / 16;
    constexpr int kRowWords = kStride * static_cast<int>(sizeof(T)) / 4;
    const uint4* k_src = reinterpret_cast<const uint4*>(k + group_offset + static_cast<int64_t>(chunk_begin) * HD);
    const uint4* v_src = reinterpret_cast<const uint4*>(v + group_offset + static_cast<int64_t>(chunk_begin) * HD);
    uint32_t* k_words = reinterpret_cast<uint32_t*>(k_s);
    uint32_t* v_words = reinterpret_cast<uint32_t*>(v_s);
#pragma unroll 4
    for (int idx = threadIdx.x; idx < rows * kVectorsPerRow; idx += kQueries) {
      const uint4 kk = k_src[idx], vv = v_src[idx];
      const int at = (idx / kVectorsPerRow) * kRowWords + (idx % kVectorsPerRow) * 4;
      k_words[at] = kk.x;
      k_words[at + 1] = kk.y;
      k_words[at + 2] = kk.z;
      k_words[at + 3] = kk.w;
      v_words[at] = vv.x;
      v_words[at + 1] = vv.y;
      v_words[at + 2] = vv.z;
      v_words[at + 3] = vv.w;
    }
    __syncthreads();
    // The warp walks the union of its queries' windows within this chunk, kKeyBlock keys at a
    // time; each thread keeps the keys of its own window. Blocks of keys (flash-attention
    // style: one rescale per block) give the scores and the value updates independent work.
    const int begin = max(warp_begin, chunk_begin), end = min(warp_end, chunk_begin + rows);
    for (int j0 = begin; j0 < end; j0 += kKeyBlock) {
      float s[kKeyBlock];
      float block_max = -INFINITY;
#pragma unroll
      for (int u = 0; u < kKeyBlock; ++u) {
        const int j = j0 + u;
        const T* k_row = k_s + (min(j, end - 1) - chunk_begin) * kStride;
        float dot = 0.0f;
#pragma unroll
        for (int d = 0; d < HD; d += 2) {
          const float2 kk = load_pair(k_row + d);
          dot = fmaf(qr[d], kk.x, dot);
          dot = fmaf(qr[d + 1], kk.y, dot);
        }
        const bool visible = active && j < end && j >= i - half && j <= i + half;
        s[u] = visible ? dot : -INFINITY;
        block_max = fmaxf(block_max, s[u]);
      }
      if (block_max == -INFINITY) continue;  // none of these keys is in this query's window
      const float m_new = fmaxf(m, block_max);
      const float alpha = __expf(m - m_new);  // 0 for the first keys (m = -inf)
      float p[kKeyBlock];
      float p_sum = 0.0f;
#pragma unroll
      for (int u = 0; u < kKeyBlock; ++u) {
        p[u] = __expf(s[u] - m_new);  // 0 for keys outside the window
        p_sum += p[u];
      }
      l = l * alpha + p_sum;
#pragma unroll
      for (int d = 0; d < HD; d += 2) {
        float a0 = acc[d] * alpha, a1 = acc[d + 1] * alpha;
#pragma unroll
        for (int u = 0; u < kKeyBlock; ++u) {
          const float2 vv = load_pair(v_s + (min(j0 + u, end - 1) - chunk_begin) * kStride + d);
          a0 = fmaf(p[u], vv.x, a0);
          a1 = fmaf(p[u], vv.y, a1);
        }
        acc[d] = a0;
        acc[d + 1] = a1;
      }
      m = m_new;
    }
  }

  if (!active) return;
  for (int g = 0; g < num_global; ++g) {
    const int p = global_positions[g];
    if (p >= i - half && p <= i + half) continue;  // already counted in the window
    const T* k_row = k + group_offset + static_cast<int64_t>(p) * HD;
    const T* v_row = v + group_offset + static_cast<int64_t>(p) * HD;
    float s = 0.0f;
#pragma unroll
    for (int d = 0; d < HD; ++d) s = fmaf(qr[d], to_float(k_row[d]), s);
    accumulate<HD>(s, m, l, acc,
                   [&](int d) { return make_float2(to_float(v_row[d]), to_float(v_row[d + 1])); });
  }

  const float inv = 1.0f / l;  // l >= 1: the query's own key is in its window
  T* out_row = out + group_offset + static_cast<int64_t>(i) * HD;
#pragma unroll
  for (int d = 0; d < HD; ++d) out_row[d] = from_float<T>(acc[d] * inv);
}

template <typename T, int HD>
void launch(const WindowAttentionArgs& a) {
  const dim3 grid(static_cast<unsigned>(a.groups), static_cast<unsigned>((a.length + kQueries - 1) / kQueries));
  window_attention_kernel<T, HD><<<grid, kQueries, 0, static_cast<cudaStream_t>(a.stream)>>>(
      static_cast<const T*>(a.q), static_cast<const T*>(a.k), static_cast<const T*>(a.v), a.global_positions,
      static_cast<int>(a.num_global), static_cast<int>(a.length), static_cast<int>(a.half_window), a.scale,
      static_cast<T*>(a.out));
}

template <typename T>
void dispatch_head_dim(const WindowAttentionArgs& a) {
  switch (a.head_dim) {
    case 8: return launch<T, 8>(a);
    case 16: return launch<T, 16>(a);
    case 32: return launch<T, 32>(a);
    case 64: return launch<T, 64>(a);
    default: throw std::invalid_argument("window_attention: unsupported head_dim " + std::to_string(a.head_dim));
  }
}

}  // namespace

bool window_attention_supported(int64_t head_dim, int64_t num_global) {
  const bool dim_ok = head_dim == 8 || head_dim == 16 || head_dim == 32 || head_dim == 64;
  return dim_ok && num_global >= 0 && num_global <= kMaxGlobalKeys;
}

void window_attention(const WindowAttentionArgs& a) {
  if (!window_attention_supported(a.head_dim, a.num_global)) {
    throw std::invalid_argument("window_attention: unsupported head_dim " + std::to_string(a.head_dim) +
                                " or num_global " + std::to_string(a.num_global));
  }
  if (a.groups <= 0 || a.length <= 0) return;
  if (a.half_window < 1 || a.length > 65535LL * kQueries || a.groups > (1LL << 31) - 1) {
    throw std::invalid_argument("window_attention: need half_window >= 1, length <= 4194240, groups < 2^31");
  }
  switch (a.dtype) {
    case DType::kFloat32: dispatch_head_dim<float>(a); break;
    case DType::kBFloat16: dispatch_head_dim<__nv_bfloat16>(a); break;
    case DType::kFloat16: dispatch_head_dim<__half>(a); break;
  }
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("window_attention: launch failed: ") + cudaGetErrorString(status));
  }
}

}  // namespace hvlm::kernels::cuda
