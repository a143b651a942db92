// LocalGlobalAttention's core on CUDA (contract in window_attention.h). Three kernels:
//
// 1. window_mma_kernel (bf16/fp16, head_dim 32/64/128, half_window <= 64): tensor cores.
//    A CTA of 4 warps takes 64 consecutive queries of one (batch, head); each warp owns 16
//    of them. Every key any of the 64 queries can see (64 + 2 * half, rounded up to whole
//    16-key tiles) and the global keys (one tile of 16, zero-padded) are staged once into
//    shared memory, rows padded by 16 bytes so that both the 32-bit fragment loads of K and
//    the ldmatrix.trans loads of V are free of bank conflicts. A warp computes its 16 x
//    (16 * WT + 16) score block with mma.sync m16n8k16 (Q fragments straight from global
//    memory), masks it to the window and to the global keys outside it, takes one softmax
//    over the row in registers (quad shuffles; the whole window fits, so no online
//    rescaling), and multiplies the probabilities - re-packed from the accumulator layout
//    into A fragments without touching memory - by V. Work per warp is fixed by the window,
//    not by n: at half = 32 that is 5 + 1 key tiles, ~2.5x the useful products, which is
//    still far below the memory time.
// 2. window_fma_kernel (float32, other head dims or wider windows): CUDA cores, one query
//    per thread, keys staged in shared memory, an online softmax over blocks of keys.
// 3. global_rows_partial + global_rows_merge: the rows of the global queries, which attend
//    to every key. The keys are split into chunks (enough CTAs to fill the GPU once); each
//    CTA runs an online softmax over its chunk for all global queries at once and writes
//    (max, sum, weighted values) to the workspace; the merge folds the chunks and writes the
//    rows over what kernel 1 or 2 put there (same stream, so in order).
//
// Softmax arithmetic is float32 throughout, in base 2 (scores pre-multiplied by log2 e).
#include "attention/cuda/window_attention.h"

#include "attention/cuda/element.cuh"
#include "attention/cuda/fast_math.cuh"
#include "attention/cuda/mma.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

namespace hvlm::kernels::cuda {
namespace {

// One operand as the kernels see it: typed pointer plus strides (elements).
template <typename P>
struct Operand {
  P* data;
  HeadStrides strides;
  // Start of (batch, head) group `group` of a tensor with `heads` heads.
  __device__ __forceinline__ P* group_start(int group, int heads) const {
    const int64_t b = group / heads, h = group % heads;
    return data + b * strides.batch + h * strides.head;
  }
};

template <typename T>
struct Operands {
  Operand<const T> q, k, v;
  Operand<T> out;
};

// ---------------------------------------------------------------------------------------------
// Tensor-core window kernel (mma, ldmatrix and pack2: attention/cuda/mma.cuh)
// ---------------------------------------------------------------------------------------------

// Two adjacent 16-bit elements as one register (4-byte aligned p).
template <typename T>
__device__ __forceinline__ uint32_t load32(const T* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

constexpr int kMmaWarps = 4;
constexpr int kMmaQueries = 16 * kMmaWarps;  // queries per CTA

// Shared-memory layout of window_mma_kernel: K then V, each (48 + 16 WT window rows + 16
// global rows) x (HD + 8) elements.
template <typename T, int HD, int WT>
struct MmaShape {
  static constexpr int kStride = HD + 8;           // elements per staged row (16-byte padded)
  static constexpr int kWindowRows = 16 * (kMmaWarps - 1) + 16 * WT;
  static constexpr int kRows = kWindowRows + 16;   // + the global keys' tile
  static constexpr size_t kSharedBytes = 2 * static_cast<size_t>(kRows) * kStride * sizeof(T);
};

template <typename T, int HD, int WT>
__global__ void __launch_bounds__(32 * kMmaWarps) window_mma_kernel(Operands<T> ops, int heads, int length, int half,
                                                                    float scale_log2, GlobalKeys globals) {
  using Shape = MmaShape<T, HD, WT>;
  constexpr int kStride = Shape::kStride;
  constexpr int kVectors = HD * static_cast<int>(sizeof(T)) / 16;  // 16-byte vectors per row
  constexpr int kElementsPerVector = 16 / static_cast<int>(sizeof(T));
  extern __shared__ __align__(16) unsigned char shared_raw[];
  T* k_s = reinterpret_cast<T*>(shared_raw);
  T* v_s = k_s + Shape::kRows * kStride;
  __shared__ int global_pos[kMaxGlobalKeys];

  const int group = static_cast<int>(blockIdx.x);
  const T* q = ops.q.group_start(group, heads);
  const T* k = ops.k.group_start(group, heads);
  const T* v = ops.v.group_start(group, heads);
  T* out = ops.out.group_start(group, heads);
  const int64_t q_token = ops.q.strides.token, k_token = ops.k.strides.token, v_token = ops.v.strides.token;
  const int64_t out_token = ops.out.strides.token;
  const int q0 = static_cast<int>(blockIdx.y) * kMmaQueries;
  const int key0 = q0 - half;  // the key of staged row 0

  if (threadIdx.x < kMaxGlobalKeys) {
    global_pos[threadIdx.x] = static_cast<int>(threadIdx.x) < globals.count ? globals.positions[threadIdx.x] : -1;
  }
  // Stage the window rows [key0, key0 + kWindowRows) and the global rows; zeros where there
  // is no key (before 0, past the end, unused global slots).
  for (int idx = threadIdx.x; idx < Shape::kRows * kVectors; idx += 32 * kMmaWarps) {
    const int row = idx / kVectors, vec = idx % kVectors;
    int key;
    if (row < Shape::kWindowRows) {
      key = key0 + row;
    } else {
      const int slot = row - Shape::kWindowRows;
      key = slot < globals.count ? globals.positions[slot] : -1;
    }
    uint4 kk = make_uint4(0, 0, 0, 0), vv = kk;
    if (key >= 0 && key < length) {
      kk = *reinterpret_cast<const uint4*>(k + key * k_token + vec * kElementsPerVector);
      vv = *reinterpret_cast<const uint4*>(v + key * v_token + vec * kElementsPerVector);
    }
    *reinterpret_cast<uint4*>(k_s + row * kStride + vec * kElementsPerVector) = kk;
    *reinterpret_cast<uint4*>(v_s + row * kStride + vec * kElementsPerVector) = vv;
  }
  __syncthreads();

  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  const int gid = lane >> 2, tig = lane & 3;  // mma fragment coordinates
  const int r0 = q0 + 16 * warp;
  if (r0 >= length) return;  // no barrier follows
  const int row_a = r0 + gid, row_b = row_a + 8;

  // Q as A fragments, one per 16 dims (rows past the end repeat the last row; not stored).
  uint32_t qa[HD / 16][4];
  {
    const T* qa_row = q + min(row_a, length - 1) * q_token + 2 * tig;
    const T* qb_row = q + min(row_b, length - 1) * q_token + 2 * tig;
#pragma unroll
    for (int ks = 0; ks < HD / 16; ++ks) {
      qa[ks][0] = load32(qa_row + 16 * ks);
      qa[ks][1] = load32(qb_row + 16 * ks);
      qa[ks][2] = load32(qa_row + 16 * ks + 8);
      qa[ks][3] = load32(qb_row + 16 * ks + 8);
    }
  }

  // Scores: 2 WT window tiles of 8 keys (this warp's keys start at staged row 16 warp), then
  // 2 tiles of global keys.
  constexpr int kTiles = 2 * WT + 2;
  float s[kTiles][4];
#pragma unroll
  for (int nt = 0; nt < kTiles; ++nt) {
    s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
    const int staged_row = nt < 2 * WT ? 16 * warp + 8 * nt : Shape::kWindowRows + 8 * (nt - 2 * WT);
    const T* k_row = k_s + (staged_row + gid) * kStride + 2 * tig;
#pragma unroll
    for (int ks = 0; ks < HD / 16; ++ks) {
      mma_16816<T>(s[nt], qa[ks], load32(k_row + 16 * ks), load32(k_row + 16 * ks + 8));
    }
  }

  // Mask, scale to base 2, and take each row's max. Accumulator element e of tile nt holds
  // row gid (e < 2) or gid + 8 (e >= 2), column 2 tig + (e & 1).
  float max_a = -INFINITY, max_b = -INFINITY;
#pragma unroll
  for (int nt = 0; nt < kTiles; ++nt) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int column = 8 * nt + 2 * tig + e;
      bool ok_a, ok_b;
      if (nt < 2 * WT) {
        const int key = r0 - half + column;
        const bool real = key >= 0 && key < length;
        ok_a = real && abs(row_a - key) <= half;
        ok_b = real && abs(row_b - key) <= half;
      } else {
        const int pos = global_pos[column - 16 * WT];
        ok_a = pos >= 0 && abs(row_a - pos) > half;  // inside the window it is counted there
        ok_b = pos >= 0 && abs(row_b - pos) > half;
      }
      s[nt][e] = ok_a ? s[nt][e] * scale_log2 : -INFINITY;
      s[nt][e + 2] = ok_b ? s[nt][e + 2] * scale_log2 : -INFINITY;
      max_a = fmaxf(max_a, s[nt][e]);
      max_b = fmaxf(max_b, s[nt][e + 2]);
    }
  }
#pragma unroll
  for (int offset = 1; offset <= 2; offset <<= 1) {
    max_a = fmaxf(max_a, __shfl_xor_sync(0xffffffffu, max_a, offset));
    max_b = fmaxf(max_b, __shfl_xor_sync(0xffffffffu, max_b, offset));
  }
  // A real query always sees itself; only rows past the end can have no key.
  if (max_a == -INFINITY) max_a = 0.0f;
  if (max_b == -INFINITY) max_b = 0.0f;
  float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
  for (int nt = 0; nt < kTiles; ++nt) {
    s[nt][0] = exp2f(s[nt][0] - max_a);
    s[nt][1] = exp2f(s[nt][1] - max_a);
    s[nt][2] = exp2f(s[nt][2] - max_b);
    s[nt][3] = exp2f(s[nt][3] - max_b);
    sum_a += s[nt][0] + s[nt][1];
    sum_b += s[nt][2] + s[nt][3];
  }
#pragma unroll
  for (int offset = 1; offset <= 2; offset <<= 1) {
    sum_a += __shfl_xor_sync(0xffffffffu, sum_a, offset);
    sum_b += __shfl_xor_sync(0xffffffffu, sum_b, offset);
  }

  // out = P V: key tile t (16 keys) is one k-step; its probabilities are tiles 2t and 2t + 1
  // of s, whose accumulator layout is exactly the A-fragment layout.
  float o[HD / 8][4];
#pragma unroll
  for (int nd = 0; nd < HD / 8; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.0f;
  const int matrix = lane >> 3, matrix_row = lane & 7;
#pragma unroll
  for (int t = 0; t <= WT; ++t) {
    const uint32_t pa[4] = {pack2<T>(s[2 * t][0], s[2 * t][1]), pack2<T>(s[2 * t][2], s[2 * t][3]),
                            pack2<T>(s[2 * t + 1][0], s[2 * t + 1][1]), pack2<T>(s[2 * t + 1][2], s[2 * t + 1][3])};
    const int staged_row = t < WT ? 16 * warp + 16 * t : Shape::kWindowRows;
    // Matrices: (keys 0-7, dims 0-7), (keys 8-15, dims 0-7), (keys 0-7, dims 8-15), (keys 8-15, dims 8-15).
    const T* v_row = v_s + (staged_row + matrix_row + 8 * (matrix & 1)) * kStride + 8 * (matrix >> 1);
#pragma unroll
    for (int nd = 0; nd < HD / 8; nd += 2) {
      uint32_t b[4];
      ldsm_x4_trans(b[0], b[1], b[2], b[3], static_cast<uint32_t>(__cvta_generic_to_shared(v_row + 8 * nd)));
      mma_16816<T>(o[nd], pa, b[0], b[1]);
      mma_16816<T>(o[nd + 1], pa, b[2], b[3]);
    }
  }

  const float inv_a = sum_a > 0.0f ? 1.0f / sum_a : 0.0f;
  const float inv_b = sum_b > 0.0f ? 1.0f / sum_b : 0.0f;
  if (row_a < length) {
    T* out_row = out + row_a * out_token + 2 * tig;
#pragma unroll
    for (int nd = 0; nd < HD / 8; ++nd) {
      *reinterpret_cast<uint32_t*>(out_row + 8 * nd) = pack2<T>(o[nd][0] * inv_a, o[nd][1] * inv_a);
    }
  }
  if (row_b < length) {
    T* out_row = out + row_b * out_token + 2 * tig;
#pragma unroll
    for (int nd = 0; nd < HD / 8; ++nd) {
      *reinterpret_cast<uint32_t*>(out_row + 8 * nd) = pack2<T>(o[nd][2] * inv_b, o[nd][3] * inv_b);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// CUDA-core window kernel (float32 and the shapes the tensor-core kernel does not take)
// ---------------------------------------------------------------------------------------------

constexpr int kFmaQueries = 64;             // queries (threads) per CTA
constexpr int kFmaSharedBytes = 40 * 1024;  // K and V staging, under the 48 KB default

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
__host__ __device__ constexpr int fma_row_stride() {
  return HD + static_cast<int>(4 / sizeof(T));
}

template <typename T, int HD>
__host__ __device__ constexpr int fma_chunk_rows() {
  constexpr int rows = kFmaSharedBytes / (2 * fma_row_stride<T, HD>() * static_cast<int>(sizeof(T)));
  return rows >= 256 ? 256 : (rows >= 128 ? 128 : (rows >= 64 ? 64 : 32));
}

// Copies K and V rows [first, first + rows) of one group into shared rows padded to
// fma_row_stride (one extra 32-bit word, so that 32 threads reading 32 rows hit 32 banks), the
// CTA's kThreads threads sharing the work: 16-byte loads (rows are HD * sizeof(T) >= 16 bytes,
// 16-byte aligned), stored as 32-bit words (padded rows are only 4-byte aligned), unrolled so
// that several loads are in flight. The caller synchronises before and after.
template <typename T, int HD, int kThreads>
__device__ __forceinline__ void stage_padded_rows(const T* k, int64_t k_token, const T* v, int64_t v_token, int first,
                                                  int rows, T* k_s, T* v_s) {
  constexpr int kVectorsPerRow = HD * static_cast<int>(sizeof(T)) / 16;
  constexpr int kRowWords = fma_row_stride<T, HD>() * static_cast<int>(sizeof(T)) / 4;
  uint32_t* k_words = reinterpret_cast<uint32_t*>(k_s);
  uint32_t* v_words = reinterpret_cast<uint32_t*>(v_s);
#pragma unroll 4
  for (int idx = threadIdx.x; idx < rows * kVectorsPerRow; idx += kThreads) {
    const int row = idx / kVectorsPerRow, vec = idx % kVectorsPerRow;
    const uint4 kk = reinterpret_cast<const uint4*>(k + (first + row) * k_token)[vec];
    const uint4 vv = reinterpret_cast<const uint4*>(v + (first + row) * v_token)[vec];
    const int at = row * kRowWords + vec * 4;
    k_words[at] = kk.x;
    k_words[at + 1] = kk.y;
    k_words[at + 2] = kk.z;
    k_words[at + 3] = kk.w;
    v_words[at] = vv.x;
    v_words[at + 1] = vv.y;
    v_words[at + 2] = vv.z;
    v_words[at + 3] = vv.w;
  }
}

// One CTA: kFmaQueries consecutive queries of one group, one per thread. The keys and values
// of their windows are staged through shared memory in chunks (rows padded by one word, so 32
// threads reading 32 rows hit 32 banks); each thread keeps its pre-scaled query and output in
// registers and runs an online softmax over blocks of its window's keys, then over the global
// keys outside its window (read from global memory; the same row for every thread).
template <typename T, int HD>
__global__ void __launch_bounds__(kFmaQueries) window_fma_kernel(Operands<T> ops, int heads, int length, int half,
                                                                 float scale_log2, GlobalKeys globals) {
  constexpr int kStride = fma_row_stride<T, HD>();
  constexpr int kChunk = fma_chunk_rows<T, HD>();
  // Keys per online-softmax step: as many as registers allow beside q and acc (2 * HD).
  constexpr int kKeyBlock = HD >= 64 ? 4 : 8;
  __shared__ __align__(16) T k_s[kChunk * kStride];
  __shared__ __align__(16) T v_s[kChunk * kStride];

  const int group = static_cast<int>(blockIdx.x);
  const T* q = ops.q.group_start(group, heads);
  const T* k = ops.k.group_start(group, heads);
  const T* v = ops.v.group_start(group, heads);
  T* out = ops.out.group_start(group, heads);
  const int64_t k_token = ops.k.strides.token, v_token = ops.v.strides.token;
  const int first_query = static_cast<int>(blockIdx.y) * kFmaQueries;
  const int i = first_query + static_cast<int>(threadIdx.x);
  const bool active = i < length;

  float qr[HD];
  float acc[HD];
#pragma unroll
  for (int d = 0; d < HD; ++d) {
    qr[d] = active ? to_float(q[i * ops.q.strides.token + d]) * scale_log2 : 0.0f;
    acc[d] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;

  // Keys any query of this CTA can see, and those of this thread's warp.
  const int cta_begin = max(0, first_query - half);
  const int cta_end = min(length, first_query + kFmaQueries + half);
  const int warp_first = first_query + (static_cast<int>(threadIdx.x) & ~31);
  const int warp_begin = max(0, warp_first - half);
  const int warp_end = min(length, warp_first + 32 + half);

  for (int chunk_begin = cta_begin; chunk_begin < cta_end; chunk_begin += kChunk) {
    const int rows = min(kChunk, cta_end - chunk_begin);
    __syncthreads();  // the previous chunk is no longer read
    stage_padded_rows<T, HD, kFmaQueries>(k, k_token, v, v_token, chunk_begin, rows, k_s, v_s);
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
      const float alpha = exp2f(m - m_new);  // 0 for the first keys (m = -inf)
      float p[kKeyBlock];
      float p_sum = 0.0f;
#pragma unroll
      for (int u = 0; u < kKeyBlock; ++u) {
        p[u] = exp2f(s[u] - m_new);  // 0 for keys outside the window
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
  for (int g = 0; g < globals.count; ++g) {
    const int pos = globals.positions[g];
    if (pos >= i - half && pos <= i + half) continue;  // already counted in the window
    const T* k_row = k + pos * k_token;
    const T* v_row = v + pos * v_token;
    float s = 0.0f;
#pragma unroll
    for (int d = 0; d < HD; ++d) s = fmaf(qr[d], to_float(k_row[d]), s);
    const float m_new = fmaxf(m, s);
    const float alpha = exp2f(m - m_new);
    const float p = exp2f(s - m_new);
    l = l * alpha + p;
#pragma unroll
    for (int d = 0; d < HD; ++d) acc[d] = fmaf(acc[d], alpha, p * to_float(v_row[d]));
    m = m_new;
  }

  const float inv = 1.0f / l;  // l >= 1: the query's own key is in its window
  T* out_row = out + i * ops.out.strides.token;
#pragma unroll
  for (int d = 0; d < HD; ++d) out_row[d] = from_float<T>(acc[d] * inv);
}

// ---------------------------------------------------------------------------------------------
// The global queries' rows
// ---------------------------------------------------------------------------------------------

constexpr int kGlobalThreads = 128;
constexpr int kGlobalTile = 64;                // keys per online-softmax step
constexpr int kGlobalPerWarp = kMaxGlobalKeys / (kGlobalThreads / 32);

// Workspace record of one (group, chunk, global query): running max (base 2), sum, HD values.
template <int HD>
__host__ __device__ constexpr int partial_floats() {
  return HD + 2;
}

// Dynamic shared memory of global_rows_partial: one tile of K and one of V, padded rows.
template <typename T, int HD>
constexpr size_t global_tile_bytes() {
  return 2 * static_cast<size_t>(kGlobalTile) * fma_row_stride<T, HD>() * sizeof(T);
}

// One CTA per (group, chunk of keys): an online softmax of every global query over the chunk,
// 64 keys at a time. Each tile of K and V is staged in shared memory with coalesced 16-byte
// loads (rows padded by one 32-bit word, so the score loop's 64 threads reading 64 different
// rows are free of bank conflicts). Scores: thread t takes key (t % 64) against global queries
// 8 (t / 64) .. + 7; then warp w owns queries w, w + 4, w + 8, w + 12, its lanes over the dims.
template <typename T, int HD>
__global__ void __launch_bounds__(kGlobalThreads) global_rows_partial(Operands<T> ops, int heads, int length,
                                                                      int chunk_length, float scale_log2,
                                                                      GlobalKeys globals, float* workspace) {
  constexpr int kLaneDims = (HD + 31) / 32;
  constexpr int kStride = fma_row_stride<T, HD>();  // HD + one 32-bit word
  __shared__ float q_s[kMaxGlobalKeys][HD];
  __shared__ float p_s[kMaxGlobalKeys][kGlobalTile];
  extern __shared__ __align__(16) unsigned char tile_raw[];  // global_tile_bytes<T, HD>()
  T* k_s = reinterpret_cast<T*>(tile_raw);
  T* v_s = k_s + kGlobalTile * kStride;

  const int group = static_cast<int>(blockIdx.x), chunk = static_cast<int>(blockIdx.y);
  const int chunks = static_cast<int>(gridDim.y);
  const int begin = chunk * chunk_length, end = min(length, begin + chunk_length);
  const int count = globals.count;
  const T* q = ops.q.group_start(group, heads);
  const T* k = ops.k.group_start(group, heads);
  const T* v = ops.v.group_start(group, heads);
  const int64_t k_token = ops.k.strides.token, v_token = ops.v.strides.token;

  for (int idx = threadIdx.x; idx < kMaxGlobalKeys * HD; idx += kGlobalThreads) {
    const int g = idx / HD, d = idx % HD;
    q_s[g][d] = g < count ? to_float(q[globals.positions[g] * ops.q.strides.token + d]) * scale_log2 : 0.0f;
  }

  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  const int key_slot = static_cast<int>(threadIdx.x) % kGlobalTile;
  const int query_half = static_cast<int>(threadIdx.x) / kGlobalTile;  // queries 8 h .. 8 h + 7
  float run_max[kGlobalPerWarp], run_sum[kGlobalPerWarp], o[kGlobalPerWarp][kLaneDims];
#pragma unroll
  for (int i = 0; i < kGlobalPerWarp; ++i) {
    run_max[i] = -INFINITY;
    run_sum[i] = 0.0f;
#pragma unroll
    for (int c = 0; c < kLaneDims; ++c) o[i][c] = 0.0f;
  }

  for (int tile = begin; tile < end; tile += kGlobalTile) {
    const int tile_keys = min(kGlobalTile, end - tile);
    __syncthreads();  // q_s is written / the previous tile is no longer read
    stage_padded_rows<T, HD, kGlobalThreads>(k, k_token, v, v_token, tile, tile_keys, k_s, v_s);
    __syncthreads();
    float dot[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    if (key_slot < tile_keys) {
      const T* k_row = k_s + key_slot * kStride;
#pragma unroll 8
      for (int d = 0; d < HD; d += 2) {
        const float2 kk = load_pair(k_row + d);
#pragma unroll
        for (int g = 0; g < 8; ++g) {
          dot[g] = fmaf(q_s[8 * query_half + g][d], kk.x, dot[g]);
          dot[g] = fmaf(q_s[8 * query_half + g][d + 1], kk.y, dot[g]);
        }
      }
    }
#pragma unroll
    for (int g = 0; g < 8; ++g) {
      p_s[8 * query_half + g][key_slot] = key_slot < tile_keys && 8 * query_half + g < count ? dot[g] : -INFINITY;
    }
    __syncthreads();

    // Each warp: its queries' tile max, probabilities (written back in place), sums.
#pragma unroll
    for (int i = 0; i < kGlobalPerWarp; ++i) {
      const int g = warp + 4 * i;
      if (g >= count) break;  // warp-uniform
      const float s0 = p_s[g][lane], s1 = p_s[g][lane + 32];
      float tile_max = fmaxf(s0, s1);
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, offset));
      const float m_new = fmaxf(run_max[i], tile_max);  // finite: the tile has a key
      const float alpha = exp2f(run_max[i] - m_new);
      const float p0 = exp2f(s0 - m_new), p1 = exp2f(s1 - m_new);
      p_s[g][lane] = p0;
      p_s[g][lane + 32] = p1;
      float p_sum = p0 + p1;
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) p_sum += __shfl_xor_sync(0xffffffffu, p_sum, offset);
      run_sum[i] = run_sum[i] * alpha + p_sum;
      run_max[i] = m_new;
#pragma unroll
      for (int c = 0; c < kLaneDims; ++c) o[i][c] *= alpha;
    }
    __syncwarp();
#pragma unroll 4
    for (int j = 0; j < tile_keys; ++j) {
      const T* v_row = v_s + j * kStride;
      float vals[kLaneDims];
#pragma unroll
      for (int c = 0; c < kLaneDims; ++c) {
        const int d = lane + 32 * c;
        vals[c] = d < HD ? to_float(v_row[d]) : 0.0f;
      }
#pragma unroll
      for (int i = 0; i < kGlobalPerWarp; ++i) {
        const int g = warp + 4 * i;
        if (g >= count) break;
        const float p = p_s[g][j];
#pragma unroll
        for (int c = 0; c < kLaneDims; ++c) o[i][c] = fmaf(p, vals[c], o[i][c]);
      }
    }
  }

#pragma unroll
  for (int i = 0; i < kGlobalPerWarp; ++i) {
    const int g = warp + 4 * i;
    if (g >= count) break;
    float* record = workspace + ((static_cast<int64_t>(group) * chunks + chunk) * kMaxGlobalKeys + g) * partial_floats<HD>();
    if (lane == 0) {
      record[0] = run_max[i];
      record[1] = run_sum[i];
    }
#pragma unroll
    for (int c = 0; c < kLaneDims; ++c) {
      const int d = lane + 32 * c;
      if (d < HD) record[2 + d] = o[i][c];
    }
  }
}

// One CTA per (group, global query): folds the chunks' records and writes the row.
template <typename T, int HD>
__global__ void global_rows_merge(Operand<T> out_op, int heads, int chunks, GlobalKeys globals,
                                  const float* workspace) {
  const int group = static_cast<int>(blockIdx.x), g = static_cast<int>(blockIdx.y);
  const int d = static_cast<int>(threadIdx.x);
  const int64_t chunk_stride = static_cast<int64_t>(kMaxGlobalKeys) * partial_floats<HD>();
  const float* record = workspace + (static_cast<int64_t>(group) * chunks * kMaxGlobalKeys + g) * partial_floats<HD>();
  float m = -INFINITY;
  for (int c = 0; c < chunks; ++c) m = fmaxf(m, record[c * chunk_stride]);
  float sum = 0.0f, value = 0.0f;
  for (int c = 0; c < chunks; ++c) {
    const float* r = record + c * chunk_stride;
    const float f = exp2f(r[0] - m);
    sum = fmaf(r[1], f, sum);
    if (d < HD) value = fmaf(r[2 + d], f, value);
  }
  if (d < HD) {
    T* out = out_op.group_start(group, heads);
    out[globals.positions[g] * out_op.strides.token + d] = from_float<T>(value / sum);
  }
}

// ---------------------------------------------------------------------------------------------
// Launch
// ---------------------------------------------------------------------------------------------

template <typename T>
Operands<T> operands(const WindowAttentionArgs& a) {
  return {{static_cast<const T*>(a.q), a.q_strides},
          {static_cast<const T*>(a.k), a.k_strides},
          {static_cast<const T*>(a.v), a.v_strides},
          {static_cast<T*>(a.out), a.out_strides}};
}

int64_t groups_of(const WindowAttentionArgs& a) { return a.batch * a.heads; }

// Chunks of keys per group for the global rows: about eight CTAs per SM in all (enough loads
// in flight to stream K and V at full bandwidth), at least 64 keys each. Returns {chunks,
// chunk_length}.
std::pair<int, int> global_chunks(const WindowAttentionArgs& a) {
  int device = 0, sms = 132;
  if (cudaGetDevice(&device) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    sms = 132;
  }
  const int64_t groups = std::max<int64_t>(1, groups_of(a));
  const int64_t max_chunks = (a.length + kGlobalTile - 1) / kGlobalTile;
  const int64_t wanted = std::clamp<int64_t>((8LL * sms + groups - 1) / groups, 1, std::max<int64_t>(1, max_chunks));
  const int64_t chunk_length = (a.length + wanted - 1) / wanted;
  const int64_t chunks = (a.length + chunk_length - 1) / chunk_length;
  return {static_cast<int>(chunks), static_cast<int>(chunk_length)};
}

void check_launch(const char* what) {
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("window_attention: ") + what + " launch failed: " + cudaGetErrorString(status));
  }
}

template <typename T, int HD, int WT>
void launch_mma(const WindowAttentionArgs& a, float scale_log2, cudaStream_t stream) {
  constexpr size_t kBytes = MmaShape<T, HD, WT>::kSharedBytes;
  auto kernel = window_mma_kernel<T, HD, WT>;
  if (kBytes > 48 * 1024) {
    // Per device and idempotent; cheap next to the launch.
    const cudaError_t status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kBytes));
    if (status != cudaSuccess) {
      throw std::runtime_error(std::string("window_attention: shared memory opt-in failed: ") + cudaGetErrorString(status));
    }
  }
  const dim3 grid(static_cast<unsigned>(groups_of(a)), static_cast<unsigned>((a.length + kMmaQueries - 1) / kMmaQueries));
  kernel<<<grid, 32 * kMmaWarps, kBytes, stream>>>(operands<T>(a), static_cast<int>(a.heads), static_cast<int>(a.length),
                                                   static_cast<int>(a.half_window), scale_log2, a.globals);
  check_launch("window (tensor cores)");
}

template <typename T, int HD>
void launch_fma(const WindowAttentionArgs& a, float scale_log2, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(groups_of(a)), static_cast<unsigned>((a.length + kFmaQueries - 1) / kFmaQueries));
  window_fma_kernel<T, HD><<<grid, kFmaQueries, 0, stream>>>(operands<T>(a), static_cast<int>(a.heads),
                                                              static_cast<int>(a.length), static_cast<int>(a.half_window),
                                                              scale_log2, a.globals);
  check_launch("window");
}

template <typename T, int HD>
void launch_global_rows(const WindowAttentionArgs& a, float scale_log2, cudaStream_t stream) {
  const auto [chunks, chunk_length] = global_chunks(a);
  const auto ops = operands<T>(a);
  float* workspace = static_cast<float*>(a.workspace);
  constexpr size_t kTileBytes = global_tile_bytes<T, HD>();
  auto partial = global_rows_partial<T, HD>;
  if (kTileBytes > 48 * 1024) {
    const cudaError_t status = cudaFuncSetAttribute(partial, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kTileBytes));
    if (status != cudaSuccess) {
      throw std::runtime_error(std::string("window_attention: shared memory opt-in failed: ") + cudaGetErrorString(status));
    }
  }
  partial<<<dim3(static_cast<unsigned>(groups_of(a)), static_cast<unsigned>(chunks)), kGlobalThreads, kTileBytes, stream>>>(
      ops, static_cast<int>(a.heads), static_cast<int>(a.length), chunk_length, scale_log2, a.globals, workspace);
  check_launch("global rows");
  const int threads = std::max(32, HD);
  global_rows_merge<T, HD><<<dim3(static_cast<unsigned>(groups_of(a)), static_cast<unsigned>(a.globals.count)), threads, 0,
                             stream>>>(ops.out, static_cast<int>(a.heads), chunks, a.globals, workspace);
  check_launch("global rows merge");
}

template <typename T, int HD>
void run(const WindowAttentionArgs& a) {
  const auto stream = static_cast<cudaStream_t>(a.stream);
  const float scale_log2 = a.scale * kLog2e;
  constexpr bool kTensorCores = !std::is_same_v<T, float> && HD >= 32;
  bool done = false;
  if constexpr (kTensorCores) {
    if (a.half_window <= 16) {
      launch_mma<T, HD, 3>(a, scale_log2, stream);
      done = true;
    } else if (a.half_window <= 32) {
      launch_mma<T, HD, 5>(a, scale_log2, stream);
      done = true;
    } else if (a.half_window <= 64) {
      launch_mma<T, HD, 9>(a, scale_log2, stream);
      done = true;
    }
  }
  if (!done) launch_fma<T, HD>(a, scale_log2, stream);
  if (a.globals.count > 0) launch_global_rows<T, HD>(a, scale_log2, stream);
}

template <typename T>
void dispatch_head_dim(const WindowAttentionArgs& a) {
  switch (a.head_dim) {
    case 8: return run<T, 8>(a);
    case 16: return run<T, 16>(a);
    case 32: return run<T, 32>(a);
    case 64: return run<T, 64>(a);
    case 128: return run<T, 128>(a);
    default: throw std::invalid_argument("window_attention: unsupported head_dim " + std::to_string(a.head_dim));
  }
}

size_t element_size(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

bool aligned(const void* p, const HeadStrides& s, size_t element) {
  const int64_t per_vector = static_cast<int64_t>(16 / element);
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && s.batch % per_vector == 0 && s.head % per_vector == 0 &&
         s.token % per_vector == 0;
}

}  // namespace

bool window_attention_supported(int64_t head_dim, int64_t num_global) {
  const bool dim_ok = head_dim == 8 || head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128;
  return dim_ok && num_global >= 0 && num_global <= kMaxGlobalKeys;
}

bool window_attention_aligned(const WindowAttentionArgs& a) {
  const size_t element = element_size(a.dtype);
  return aligned(a.q, a.q_strides, element) && aligned(a.k, a.k_strides, element) && aligned(a.v, a.v_strides, element) &&
         aligned(a.out, a.out_strides, element);
}

size_t window_attention_workspace_bytes(const WindowAttentionArgs& a) {
  if (a.globals.count <= 0 || groups_of(a) <= 0 || a.length <= 0) return 0;
  const int chunks = global_chunks(a).first;
  return static_cast<size_t>(groups_of(a)) * chunks * kMaxGlobalKeys * (a.head_dim + 2) * sizeof(float);
}

void window_attention(const WindowAttentionArgs& a) {
  if (!window_attention_supported(a.head_dim, a.globals.count)) {
    throw std::invalid_argument("window_attention: unsupported head_dim " + std::to_string(a.head_dim) +
                                " or global key count " + std::to_string(a.globals.count));
  }
  if (a.batch <= 0 || a.heads <= 0 || a.length <= 0) return;
  if (a.half_window < 1 || a.length > 65535LL * kFmaQueries || groups_of(a) > (1LL << 31) - 1) {
    throw std::invalid_argument("window_attention: need half_window >= 1, length <= 4194240, batch * heads < 2^31");
  }
  if (!window_attention_aligned(a)) {
    throw std::invalid_argument("window_attention: pointers and strides must be 16-byte aligned");
  }
  for (int g = 0; g < a.globals.count; ++g) {
    const int32_t p = a.globals.positions[g];
    if (p < 0 || p >= a.length || (g > 0 && p <= a.globals.positions[g - 1])) {
      throw std::invalid_argument("window_attention: global positions must be sorted, distinct and in [0, length)");
    }
  }
  if (a.globals.count > 0 && a.workspace == nullptr) {
    throw std::invalid_argument("window_attention: global keys need the workspace");
  }
  switch (a.dtype) {
    case DType::kFloat32: dispatch_head_dim<float>(a); break;
    case DType::kBFloat16: dispatch_head_dim<__nv_bfloat16>(a); break;
    case DType::kFloat16: dispatch_head_dim<__half>(a); break;
  }
}

}  // namespace hvlm::kernels::cuda
