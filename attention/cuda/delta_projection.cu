// dt_proj + bias + softplus on tensor cores (contract in delta_projection.h).
//
// A block computes a 128 x 128 tile of delta (128 rows, 128 channels) with 8 warps of 32 x 64:
//   1. the block's 128 rows of dt and 128 rows of the weight, the rank zero-padded to a multiple
//      of 16, go into shared memory (row pitch rank + 8 elements, so ldmatrix's 8 rows fall in
//      8 distinct 16-byte bank groups);
//   2. per 16 of the rank, 2 x 8 mma.sync m16n8k16 a warp (float32 accumulators);
//   3. the epilogue adds the bias, applies the softplus, rounds to the dtype and stages the
//      tile in shared memory (over the operands), from where the block writes whole 16-byte
//      pieces of rows.
// The time is the write of delta (2 bytes per element); the product and the softplus hide
// under it across the 2-3 blocks resident per SM.
#include "attention/cuda/delta_projection.h"

#include "attention/cuda/element.cuh"
#include "attention/cuda/fast_math.cuh"
#include "attention/cuda/mma.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace hvlm::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kTileRows = 128, kTileChannels = 128;
constexpr int kOutPitch = kTileChannels + 8;  // elements; staging rows keep 4-byte stores conflict-free

// Rank rounded up to whole mma k-steps.
int64_t padded_rank(int64_t rank) { return (rank + 15) / 16 * 16; }
// Shared-memory row pitch (elements) of the operand tiles.
__host__ __device__ constexpr int operand_pitch(int kp) { return kp + 8; }

size_t smem_bytes(int64_t rank, size_t element) {
  const int64_t kp = padded_rank(rank);
  const size_t operands = 2 * static_cast<size_t>(kTileRows) * operand_pitch(static_cast<int>(kp)) * element;
  const size_t staging = static_cast<size_t>(kTileRows) * kOutPitch * element;
  return operands > staging ? operands : staging;
}

// softplus(x) (torch: x > 20 ? x : log1p(e^x)) to a relative error below ~4e-6, well under the
// 2-byte rounding that follows: log1p(e) is its series up to e^4 where e < 2^-5 (truncation
// < e^4 / 5 relative), else ln 2 * lg2(1 + e) (lg2's absolute error ~2^-22 is < 4e-6 of a
// result >= lg2(1 + 2^-5)). Two MUFU operations and ~10 others.
__device__ __forceinline__ float softplus_for_2byte(float x) {
  const float e = exp2_approx(kLog2e * x);  // +inf for large x: then not selected
  const float series = e * fmaf(e, fmaf(e, fmaf(e, -0.25f, 1.0f / 3.0f), -0.5f), 1.0f);
  const float via_log = kLn2 * log2_approx(1.0f + e);
  const float log1p_e = e < 0.03125f ? series : via_log;
  return x > 20.0f ? x : log1p_e;
}

// Copies a [kTileRows, rank] tile (rows `first` .. of a [limit, stride] matrix) into shared
// memory at the operand pitch, zero-filling the rows past `limit` and the columns past `rank`.
// kVec: 16-byte loads (stride, rank and the base 16-byte aligned).
template <typename T, bool kVec>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int64_t first, int64_t limit, int64_t stride,
                                          int rank, int kp) {
  const int pitch = operand_pitch(kp);
  const int pieces_per_row = kp / 8;
  for (int piece = threadIdx.x; piece < kTileRows * pieces_per_row; piece += kThreads) {
    const int r = piece / pieces_per_row, k0 = (piece % pieces_per_row) * 8;
    const int64_t row = first + r;
    T* out = dst + r * pitch + k0;
    if constexpr (kVec) {
      uint4 v = make_uint4(0, 0, 0, 0);
      if (row < limit && k0 < rank) v = __ldg(reinterpret_cast<const uint4*>(src + row * stride + k0));
      *reinterpret_cast<uint4*>(out) = v;
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        out[j] = (row < limit && k0 + j < rank) ? src[row * stride + k0 + j] : from_float<T>(0.0f);
      }
    }
  }
}

template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads)
    delta_projection_kernel(const T* __restrict__ dt, int64_t stride_dt, const T* __restrict__ weight,
                            const float* __restrict__ bias, T* __restrict__ delta, int64_t rows,
                            int64_t channels, int rank, int kp) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* const a_tile = reinterpret_cast<T*>(smem_raw);
  T* const b_tile = a_tile + kTileRows * operand_pitch(kp);
  T* const out_tile = reinterpret_cast<T*>(smem_raw);  // over the operands, after the product

  const int64_t channel_tiles = (channels + kTileChannels - 1) / kTileChannels;
  // Consecutive blocks share their rows of dt (channels vary fastest).
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) / channel_tiles * kTileRows;
  const int64_t ch0 = static_cast<int64_t>(blockIdx.x) % channel_tiles * kTileChannels;
  load_tile<T, kVec>(a_tile, dt, row0, rows, stride_dt, rank, kp);
  load_tile<T, kVec>(b_tile, weight, ch0, channels, rank, rank, kp);
  __syncthreads();

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int wm = warp % 4 * 32, wn = warp / 4 * 64;  // the warp's tile within the block's
  float acc[2][8][4] = {};
  const int pitch = operand_pitch(kp);
  const uint32_t a_base = static_cast<uint32_t>(__cvta_generic_to_shared(a_tile));
  const uint32_t b_base = static_cast<uint32_t>(__cvta_generic_to_shared(b_tile));
  for (int k = 0; k < kp; k += 16) {
    uint32_t a[2][4];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
      // Lanes 0-15: rows 0-15 at k; lanes 16-31: the same rows at k + 8 (a0..a3 in mma order).
      const int r = wm + mi * 16 + lane % 16, col = k + lane / 16 * 8;
      ldsm_x4(a[mi][0], a[mi][1], a[mi][2], a[mi][3], a_base + (r * pitch + col) * sizeof(T));
    }
#pragma unroll
    for (int nj = 0; nj < 8; nj += 2) {
      // Weight rows are the mma's B columns: lanes 0-7 / 8-15 give tile nj's k and k + 8, lanes
      // 16-31 tile nj + 1's.
      const int r = wn + nj * 8 + lane / 16 * 8 + lane % 8, col = k + lane / 8 % 2 * 8;
      uint32_t b0, b1, b2, b3;
      ldsm_x4(b0, b1, b2, b3, b_base + (r * pitch + col) * sizeof(T));
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        mma_16816<T>(acc[mi][nj], a[mi], b0, b1);
        mma_16816<T>(acc[mi][nj + 1], a[mi], b2, b3);
      }
    }
  }
  __syncthreads();  // the staging tile overwrites the operands

  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int nj = 0; nj < 8; ++nj) {
    const int col = wn + nj * 8 + 2 * t;
    const int64_t c = ch0 + col;
    const float bias0 = (bias != nullptr && c < channels) ? bias[c] : 0.0f;
    const float bias1 = (bias != nullptr && c + 1 < channels) ? bias[c + 1] : 0.0f;
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {  // rows g and g + 8
        const int r = wm + mi * 16 + g + 8 * h;
        const uint32_t packed = pack2<T>(softplus_for_2byte(acc[mi][nj][2 * h] + bias0),
                                         softplus_for_2byte(acc[mi][nj][2 * h + 1] + bias1));
        *reinterpret_cast<uint32_t*>(out_tile + r * kOutPitch + col) = packed;
      }
    }
  }
  __syncthreads();

  constexpr int kPiecesPerRow = kTileChannels / 8;
  for (int piece = threadIdx.x; piece < kTileRows * kPiecesPerRow; piece += kThreads) {
    const int r = piece / kPiecesPerRow, col = piece % kPiecesPerRow * 8;
    const int64_t row = row0 + r, c = ch0 + col;
    if (row >= rows || c >= channels) continue;
    const T* src = out_tile + r * kOutPitch + col;
    T* dst = delta + row * channels + c;
    if (kVec && c + 8 <= channels) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
      for (int j = 0; j < 8 && c + j < channels; ++j) dst[j] = src[j];
    }
  }
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
  if (row_tiles * channel_tiles > INT32_MAX) fail("too many rows");

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
    if (err == cudaSuccess) {
      kernel<<<static_cast<unsigned>(row_tiles * channel_tiles), kThreads, smem, stream>>>(
          static_cast<const T*>(a.dt), a.row_stride_dt, static_cast<const T*>(a.weight), a.bias,
          static_cast<T*>(a.delta), a.rows, a.channels, static_cast<int>(a.rank), kp);
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
