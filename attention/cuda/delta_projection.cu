// dt_proj + bias + softplus on tensor cores (contract in delta_projection.h).
//
// A block owns a tile of 64 channels and walks row tiles of 128 rows (the blocks of one channel
// tile take every n-th row tile), with 8 warps of 32 rows x 32 channels:
//   1. the block's 64 rows of the weight, the rank zero-padded to a multiple of 16, go into
//      shared memory once (row pitch rank + 8 elements, so ldmatrix's 8 rows fall in 8 distinct
//      16-byte bank groups);
//   2. each row tile of dt is copied by cp.async into one of two buffers while the block works
//      on the tile in the other, so the copies' latency hides behind a tile of work;
//   3. per 16 of the rank, 2 x 4 mma.sync m16n8k16 a warp (float32 accumulators);
//   4. the epilogue applies the softplus (fast_math.cuh: one MUFU; the bias is where the
//      accumulators start) and rounds to the dtype into the warp's own staging tile in shared
//      memory (no block barrier), from which each store instruction writes whole 64-byte row
//      pieces (full 32-byte sectors).
// The time is the write of delta (2 bytes per element) and the epilogue's instructions.
// Measured on the H200 at 65536 rows, 1536 channels, rank 48 (cuBLAS's product alone: 77 us):
//  - one tile a block, staged for the whole block (barriers between load, product, store): 197 us;
//  - persistent blocks of 128 x 128, stores straight from the mma layout (16 bytes of each
//    32-byte sector a store): 168 us, bound by L2 (79% busy, DRAM 24%), as slow without softplus;
//  - with the warp staging: 135 us (83 us without the softplus), issue-bound at 4 warps a
//    scheduler (128 registers) with a two-MUFU softplus;
//  - 64-channel tiles (80 registers, 3 blocks an SM), the one-MUFU softplus: 150 us; 4 blocks
//    an SM (64 registers, small spills) 148 us. 84 M instructions were issued, 27 a value, at
//    0.66 a cycle per scheduler: the tile copies divided by the rank per piece;
//  - copies planned once per thread, the bias as the accumulators' start: 131 us;
//  - the degree-4 softplus for bf16: docs/benchmarks.md.
#include "attention/cuda/delta_projection.h"

#include "attention/cuda/async_copy.cuh"
#include "attention/cuda/element.cuh"
#include "attention/cuda/fast_math.cuh"
#include "attention/cuda/mma.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace hvlm::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kTileRows = 128, kTileChannels = 64;
constexpr int kWarpRows = 32, kWarpChannels = 32;         // a warp's part of the tile: 4 x 2 warps
constexpr int kStagingPitch = kWarpChannels + 8;          // elements; conflict-free 4-byte writes
constexpr int kStagingElems = kWarpRows * kStagingPitch;  // per warp
// Blocks per SM asked of the register allocator: 3 caps registers at 85 a thread (the kernel
// needs ~80). HVLM_DELTA_BLOCKS_PER_SM is a tuning knob for experiments with -D.
#ifndef HVLM_DELTA_BLOCKS_PER_SM
#define HVLM_DELTA_BLOCKS_PER_SM 3
#endif
constexpr int kMinBlocksPerSm = HVLM_DELTA_BLOCKS_PER_SM;

// Rank rounded up to whole mma k-steps.
int64_t padded_rank(int64_t rank) { return (rank + 15) / 16 * 16; }
// Shared-memory row pitch (elements) of the operand tiles.
__host__ __device__ constexpr int operand_pitch(int kp) { return kp + 8; }

// The weight tile, two dt tiles and the warps' staging tiles.
size_t smem_bytes(int64_t rank, size_t element) {
  const size_t pitch = operand_pitch(static_cast<int>(padded_rank(rank)));
  return ((kTileChannels + 2 * kTileRows) * pitch + static_cast<size_t>(kThreads / 32) * kStagingElems) * element;
}

// Which 16-byte pieces of a [rows, rank] tile one thread copies: piece `piece` (8 elements)
// of rows row0, row0 + row_step, ... Computed once, so the copies of every tile divide nothing.
struct CopyPlan {
  int piece, row0, row_step;
  bool active;  // threads past rows_per_pass * pieces copy nothing
};
__device__ __forceinline__ CopyPlan copy_plan(int rank) {
  const int pieces = rank / 8;  // per row; rank % 8 == 0 on the vector path
  CopyPlan c;
  c.piece = static_cast<int>(threadIdx.x) % pieces;
  c.row0 = static_cast<int>(threadIdx.x) / pieces;
  c.row_step = kThreads / pieces;
  c.active = c.row0 < c.row_step;
  return c;
}

// Copies rows first .. first + count - 1 (those below `limit`) of a [limit, stride] matrix,
// columns 0 .. rank - 1, into a tile at the operand pitch. kVec: by cp.async in 16-byte pieces
// as `plan` assigns them (stride, rank and the base 16-byte aligned; the caller commits and
// waits), else by plain loads. The padding columns are zeroed by zero_padding once; rows past
// `limit` keep stale values, whose products are never stored.
template <typename T, bool kVec>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int64_t first, int count, int64_t limit,
                                          int64_t stride, int rank, int kp, const CopyPlan& plan) {
  const int pitch = operand_pitch(kp);
  if constexpr (kVec) {
    if (!plan.active) return;
    const int k0 = plan.piece * 8;
    const int valid = static_cast<int>(limit - first < count ? limit - first : count);
    const T* s = src + (first + plan.row0) * stride + k0;
    T* d = dst + plan.row0 * pitch + k0;
    for (int r = plan.row0; r < valid; r += plan.row_step) {
      cp_async16(d, s);
      s += plan.row_step * stride;
      d += plan.row_step * pitch;
    }
  } else {
    for (int i = threadIdx.x; i < count * rank; i += kThreads) {
      const int r = i / rank, k = i % rank;
      if (first + r < limit) dst[r * pitch + k] = src[(first + r) * stride + k];
    }
  }
}

// Zeroes columns rank .. kp - 1 of a tile of `count` rows (nothing when rank is a multiple of 16).
template <typename T>
__device__ __forceinline__ void zero_padding(T* dst, int count, int rank, int kp) {
  const int pad = kp - rank, pitch = operand_pitch(kp);
  for (int i = threadIdx.x; i < count * pad; i += kThreads) dst[i / pad * pitch + rank + i % pad] = from_float<T>(0.0f);
}

template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    delta_projection_kernel(const T* __restrict__ dt, int64_t stride_dt, const T* __restrict__ weight,
                            const float* __restrict__ bias, T* __restrict__ delta, int64_t rows,
                            int64_t channels, int rank, int kp, int channel_tiles) {
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;  // softplus_rounded's fit
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int pitch = operand_pitch(kp);
  T* const w_tile = reinterpret_cast<T*>(smem_raw);
  auto a_tile = [&](int buf) { return w_tile + (kTileChannels + buf * kTileRows) * pitch; };  // dt, 2 buffers

  const int64_t ch0 = static_cast<int64_t>(blockIdx.x % channel_tiles) * kTileChannels;
  const int64_t first_tile = blockIdx.x / channel_tiles;
  const int64_t tile_step = gridDim.x / channel_tiles;
  const int64_t row_tiles = (rows + kTileRows - 1) / kTileRows;

  // The padding columns are zeros in every tile. (Weight rows past the last channel are left
  // as they are: they only feed columns that are never stored.)
  zero_padding(w_tile, kTileChannels, rank, kp);
  zero_padding(a_tile(0), 2 * kTileRows, rank, kp);
  __syncthreads();
  const CopyPlan plan = kVec ? copy_plan(rank) : CopyPlan{};
  load_tile<T, kVec>(w_tile, weight, ch0, kTileChannels, channels, rank, rank, kp, plan);
  if (first_tile < row_tiles) {
    load_tile<T, kVec>(a_tile(0), dt, first_tile * kTileRows, kTileRows, rows, stride_dt, rank, kp, plan);
  }
  if constexpr (kVec) cp_async_commit();

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int wm = warp % 4 * kWarpRows, wn = warp / 4 * kWarpChannels;  // the warp's part
  const int g = lane / 4, t = lane % 4;
  T* const staging = a_tile(2) + warp * kStagingElems;  // after the dt buffers
  // The bias of the thread's 8 channels (2 per n8 tile), loaded once.
  float bias_v[4][2];
#pragma unroll
  for (int nj = 0; nj < 4; ++nj) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int64_t c = ch0 + wn + nj * 8 + 2 * t + j;
      bias_v[nj][j] = (bias != nullptr && c < channels) ? bias[c] : 0.0f;
    }
  }
  const uint32_t w_base = static_cast<uint32_t>(__cvta_generic_to_shared(w_tile));

  int buf = 0;
  for (int64_t tile = first_tile; tile < row_tiles; tile += tile_step, buf ^= 1) {
    const int64_t next = tile + tile_step;
    // The other buffer was last read by the previous tile's product, which every thread
    // finished before the barrier that followed it.
    if (next < row_tiles) {
      load_tile<T, kVec>(a_tile(buf ^ 1), dt, next * kTileRows, kTileRows, rows, stride_dt, rank, kp, plan);
    }
    if constexpr (kVec) {
      cp_async_commit();
      cp_async_wait<1>();  // all but the newest: this tile's
    }
    __syncthreads();

    float acc[2][4][4];  // starts at the bias: the epilogue adds nothing
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
      for (int nj = 0; nj < 4; ++nj) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[mi][nj][j] = bias_v[nj][j % 2];
      }
    }
    const uint32_t a_base = static_cast<uint32_t>(__cvta_generic_to_shared(a_tile(buf)));
    for (int k = 0; k < kp; k += 16) {
      uint32_t a[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        // Lanes 0-15: rows 0-15 at k; lanes 16-31: the same rows at k + 8 (a0..a3 in mma order).
        const int r = wm + mi * 16 + lane % 16, col = k + lane / 16 * 8;
        ldsm_x4(a[mi][0], a[mi][1], a[mi][2], a[mi][3], a_base + (r * pitch + col) * sizeof(T));
      }
#pragma unroll
      for (int nj = 0; nj < 4; nj += 2) {
        // Weight rows are the mma's B columns: lanes 0-7 / 8-15 give tile nj's k and k + 8,
        // lanes 16-31 tile nj + 1's.
        const int r = wn + nj * 8 + lane / 16 * 8 + lane % 8, col = k + lane / 8 % 2 * 8;
        uint32_t b0, b1, b2, b3;
        ldsm_x4(b0, b1, b2, b3, w_base + (r * pitch + col) * sizeof(T));
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          mma_16816<T>(acc[mi][nj], a[mi], b0, b1);
          mma_16816<T>(acc[mi][nj + 1], a[mi], b2, b3);
        }
      }
    }
    __syncthreads();  // every thread is done with a_tile(buf): the next iteration refills it

    if constexpr (kVec) {
      // Through the warp's staging tile, so that each store instruction writes whole 64-byte
      // row pieces (stores straight from the mma layout write 16 of each 32-byte sector).
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {  // rows g and g + 8
          const int r = mi * 16 + 8 * h + g;
#pragma unroll
          for (int nj = 0; nj < 4; ++nj) {
            const float v0 = softplus_rounded<kBf16>(acc[mi][nj][2 * h]);
            const float v1 = softplus_rounded<kBf16>(acc[mi][nj][2 * h + 1]);
            *reinterpret_cast<uint32_t*>(staging + r * kStagingPitch + nj * 8 + 2 * t) = pack2<T>(v0, v1);
          }
        }
      }
      __syncwarp();
      constexpr int kPieces = kWarpChannels / 8;  // 16-byte pieces of a staged row
      const int piece = lane % kPieces;
      const int64_t c = ch0 + wn + piece * 8;
#pragma unroll
      for (int i = 0; i < kWarpRows * kPieces / 32; ++i) {
        const int r = i * (32 / kPieces) + lane / kPieces;
        const int64_t row = tile * kTileRows + wm + r;
        const uint4 v = *reinterpret_cast<const uint4*>(staging + r * kStagingPitch + piece * 8);
        if (row < rows && c < channels) *reinterpret_cast<uint4*>(delta + row * channels + c) = v;
      }
      __syncwarp();  // read before the next tile's values overwrite the staging tile
    } else {
      // Unaligned or odd channel counts: element by element from the mma layout.
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int64_t row = tile * kTileRows + wm + mi * 16 + 8 * h + g;
          if (row >= rows) continue;
#pragma unroll
          for (int nj = 0; nj < 4; ++nj) {
            const int64_t c = ch0 + wn + nj * 8 + 2 * t;
            if (c < channels) delta[row * channels + c] = from_float<T>(softplus_rounded<kBf16>(acc[mi][nj][2 * h]));
            if (c + 1 < channels) {
              delta[row * channels + c + 1] = from_float<T>(softplus_rounded<kBf16>(acc[mi][nj][2 * h + 1]));
            }
          }
        }
      }
    }
  }
  if constexpr (kVec) cp_async_wait<0>();  // none left in flight
}

}  // namespace

bool delta_projection_supported(DType dtype, int64_t rank) {
  return (dtype == DType::kBFloat16 || dtype == DType::kFloat16) && rank >= 1 && rank <= kDeltaProjectionMaxRank;
}

void delta_projection(const DeltaProjectionArgs& a) {
  auto fail = [](const std::string& what) {
    throw std::invalid_argument("hvlm::kernels::cuda::delta_projection: " + what);
  };
  if (a.rows < 0 || a.channels < 0) fail("negative size");
  if (!delta_projection_supported(a.dtype, a.rank)) {
    fail("needs a bfloat16 or float16 dtype and rank in 1.." + std::to_string(kDeltaProjectionMaxRank) +
         ", got rank " + std::to_string(a.rank));
  }
  if (a.rows == 0 || a.channels == 0) return;
  if (a.row_stride_dt < a.rank) fail("row_stride_dt must be >= rank");
  if (!a.dt || !a.weight || !a.delta) fail("null operand pointer");
  const int64_t row_tiles = (a.rows + kTileRows - 1) / kTileRows;
  const int64_t channel_tiles = (a.channels + kTileChannels - 1) / kTileChannels;
  if (channel_tiles > INT32_MAX / 1024) fail("too many channels");

  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const bool vec = a.rank % 8 == 0 && a.row_stride_dt % 8 == 0 && a.channels % 8 == 0 && aligned(a.dt) &&
                   aligned(a.weight) && aligned(a.delta);
  const int kp = static_cast<int>(padded_rank(a.rank));
  const size_t smem = smem_bytes(a.rank, 2);
  const auto stream = static_cast<cudaStream_t>(a.stream);
  auto launch = [&](auto kernel, auto tag) {
    using T = decltype(tag);
    // The attribute is per device, so it is set on every call (a microsecond of host time).
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    int device = 0, sms = 0, per_sm = 0;
    if (err == cudaSuccess) err = cudaGetDevice(&device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem);
    if (err == cudaSuccess) {
      // One wave: per channel tile, as many blocks as leave no resident slot of the GPU
      // unused and none waiting (at least one; at most its row tiles).
      const int64_t slots = static_cast<int64_t>(sms) * std::max(per_sm, 1);
      const int64_t per_channel_tile = std::clamp<int64_t>(slots / channel_tiles, 1, row_tiles);
      kernel<<<static_cast<unsigned>(per_channel_tile * channel_tiles), kThreads, smem, stream>>>(
          static_cast<const T*>(a.dt), a.row_stride_dt, static_cast<const T*>(a.weight), a.bias,
          static_cast<T*>(a.delta), a.rows, a.channels, static_cast<int>(a.rank), kp,
          static_cast<int>(channel_tiles));
      err = cudaGetLastError();
    }
    if (err != cudaSuccess) {
      throw std::runtime_error(std::string("hvlm delta_projection: launch failed: ") + cudaGetErrorString(err));
    }
  };
  if (a.dtype == DType::kBFloat16) {
    vec ? launch(delta_projection_kernel<__nv_bfloat16, true>, __nv_bfloat16{})
        : launch(delta_projection_kernel<__nv_bfloat16, false>, __nv_bfloat16{});
  } else {
    vec ? launch(delta_projection_kernel<__half, true>, __half{})
        : launch(delta_projection_kernel<__half, false>, __half{});
  }
}

}  // namespace hvlm::kernels::cuda
