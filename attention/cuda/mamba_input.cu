// MambaLayer's input stage in one kernel (contract in mamba_input.h).
//
// A block owns a tile of 128 rows (time steps) of one sequence, with 8 warps of 16 rows, and
// walks the channels in slices of 64 twice:
//   phase A, per slice: the slice's inputs for the tile's rows and the 3 before them are staged
//     in shared memory by cp.async a slice ahead (rows outside the sequence zero-filled; the
//     3 before the sequence's start come from the conv state), as is the slice of x_proj's
//     weight. Each lane computes the conv + SiLU of one channel pair over its warp's 16 rows,
//     stores u to memory and into the warp's own 16 x 64 tile in shared memory; the warp then
//     multiplies that tile by the weight slice (m16n8k16 mma, float32 accumulators that stay
//     in registers over all slices).
//   between: the accumulators are x_dbl for the warp's rows: stored, and their dt columns,
//     rounded as stored, become the A operand of dt_proj directly (the C layout of one product
//     is the A layout of the next), so dt never goes through memory.
//   phase B, per slice: dt (16 x R) times the slice of dt_proj's weight (copied a slice ahead
//     with the bias), softplus in the epilogue, rounded into the warp's tile, and stored as
//     whole 16-byte pieces of rows.
// Every copy's addresses are planned once per thread (recomputing them per slice was ~16% of
// the first version's instructions), and the conv's weights come with the inputs.
// Measured on the H200 (65536 rows, 1536 channels, rank 48, bf16): 267 us against ~315 for the
// conv, cuBLAS's x_proj and delta_projection apart; with 64 blocks (8192 rows) 104 against ~68,
// hence mamba_input_preferred. Per-version timings and ncu figures: docs/benchmarks.md, "The
// tenth session".
// No block barrier separates the conv of a warp from its product: a warp reads only the u rows
// it wrote. Each phase has one barrier per slice, for the shared weight slices.
// The conv and softplus are the formulas of causal_conv_silu and delta_projection (silu and
// softplus_rounded in fast_math.cuh), so u and delta match those kernels bit for bit.
#include "attention/cuda/mamba_input.h"

#include "attention/cuda/async_copy.cuh"
#include "attention/cuda/element.cuh"
#include "attention/cuda/fast_math.cuh"
#include "attention/cuda/mma.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace hvlm::kernels::cuda {
namespace {

// Warps a block (HVLM_INPUT_WARPS, a tuning knob for experiments with -D): each owns 16 rows,
// and the blocks an SM holds give it 16 warps (128 registers a thread). Measured at 65536
// rows: 8 warps 266 us, 4 warps 277 (more copies of the weights, more long-scoreboard stalls).
#ifndef HVLM_INPUT_WARPS
#define HVLM_INPUT_WARPS 8
#endif
constexpr int kWarps = HVLM_INPUT_WARPS;
constexpr int kThreads = kWarps * 32;
constexpr int kBlocksPerSm = 16 / kWarps;
constexpr int kWarpRows = 16;                  // one m16 tile of rows a warp
constexpr int kTileRows = kWarps * kWarpRows;  // a block's rows
constexpr int kSlice = 64;                     // channels a step of either phase; a lane's pair
constexpr int kPitch = kSlice + 8;             // elements a shared row: ldmatrix's 8 rows in 8 bank groups
constexpr int kMaxKernel = 4;
constexpr int kHalo = kMaxKernel - 1;          // inputs before a warp's first row
constexpr int kInputs = kWarpRows + kHalo;     // a lane's inputs per slice
constexpr int kMaxRank = 64;                   // dt's columns fit one shared row (kPitch)
constexpr int kMaxProj = 128;

template <typename T>
struct Params {
  const T* x;
  int64_t row_stride_x;
  const T* conv_weight;
  const T* conv_bias;
  const float* state_in;
  float* state_out;
  const T* x_proj_weight;
  const T* dt_weight;
  const float* dt_bias;
  T* u;
  T* x_dbl;
  T* delta;
  int64_t length, channels;
  int kernel, rank, proj;
};

// Shared memory: the dt_proj bias slices (2 x 64 floats), x_proj weight slices (2 x NT*8 rows),
// dt_proj weight slices (2 x 64 rows), the warps' tiles (8 x 16 rows); rows kPitch elements.
constexpr int kTileInputs = kTileRows + kHalo;  // rows of a staged input slice
constexpr int kConvRows = kMaxKernel + 1;       // a staged conv slice: the taps' weights, the bias

// Shared memory: the dt_proj bias slices (2 x 64 floats), the warps' tiles (kWarps x 16 rows of
// kPitch), then one region that phase A uses for the x_proj weight slices (2 x NT*8 rows of
// kPitch), the conv slices (2 x kConvRows rows of 64) and the input slices (2 x kTileInputs
// rows of 64), and phase B for the dt_proj weight slices (2 x 64 rows of kPitch).
template <typename T, int NT>
constexpr size_t phase_a_elems() {
  return (2 * NT * 8) * kPitch + 2 * (kConvRows + kTileInputs) * kSlice;
}
template <typename T, int NT>
constexpr size_t smem_bytes() {
  constexpr size_t a = phase_a_elems<T, NT>(), b = 2 * kSlice * kPitch;
  return 2 * kSlice * sizeof(float) + (kWarps * kWarpRows * kPitch + (a > b ? a : b)) * sizeof(T);
}

// The conv + SiLU of one lane's channel pair at row r of its warp's 16, kernel size K: the
// K - 1 inputs before the row, then the row's. Input i is the pair at step (warp's first row)
// - 3 + i: head[i] for i < 3 (possibly from the conv state), else raw[i]. The taps run in
// causal_conv_silu's order, so the result is that kernel's bit for bit.
template <typename T, int K>
__device__ __forceinline__ uint32_t conv_row(int r, const uint32_t (&raw)[kInputs], const float (&head)[kHalo][2],
                                             const float (&w)[kMaxKernel][2], const float (&bias)[2]) {
  float out[2];
#pragma unroll
  for (int v = 0; v < 2; ++v) {
    float acc = bias[v];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int i = r + kMaxKernel - K + k;
      const float2 f = unpack2<T>(raw[i]);
      acc = fmaf(w[k][v], i < kHalo ? head[i][v] : (v == 0 ? f.x : f.y), acc);
    }
    out[v] = silu(acc);
  }
  return pack2<T>(out[0], out[1]);
}

template <typename T, int NT>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) mamba_input_kernel(const Params<T> p) {
  static_assert(NT % 2 == 0 && NT * 8 <= kMaxProj && NT >= 8, "n tiles in pairs, room for dt's k steps");
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* const bias_s = reinterpret_cast<float*>(smem_raw);  // [2][kSlice]
  T* const tiles = reinterpret_cast<T*>(smem_raw + 2 * kSlice * sizeof(float));
  T* const wx_s = tiles + kWarps * kWarpRows * kPitch;  // phase A: [2][NT * 8][kPitch]
  T* const cw_s = wx_s + 2 * NT * 8 * kPitch;           // phase A: [2][kConvRows][kSlice]: taps (zeros past the kernel), bias
  T* const x_s = cw_s + 2 * kConvRows * kSlice;         // phase A: [2][kTileInputs][kSlice]
  T* const wdt_s = wx_s;                                // phase B: [2][kSlice][kPitch]

  const int tid = static_cast<int>(threadIdx.x), lane = tid % 32, warp = tid / 32;
  const int g = lane / 4, t4 = lane % 4;  // mma fragment coordinates
  const int64_t length = p.length, channels = p.channels, stride_x = p.row_stride_x;
  const int64_t b = blockIdx.y;
  const int64_t row0 = b * length;                                             // the sequence's first row
  const int64_t tw = static_cast<int64_t>(blockIdx.x) * kTileRows + warp * kWarpRows;  // the warp's first step
  const int slices = static_cast<int>(channels / kSlice);
  const int proj = p.proj, rank = p.rank, hist = p.kernel - 1;
  T* const tile = tiles + warp * kWarpRows * kPitch;
  // The warp's rows that are steps of the sequence (the others are computed, never stored).
  const int rows_here = static_cast<int>(min(max(length - tw, static_cast<int64_t>(0)), static_cast<int64_t>(kWarpRows)));

  // What no copy writes must be zeros: the x_proj weight rows past proj, the conv rows past
  // the kernel (phase A's weights and conv slices, here), the dt_proj weight columns past the
  // rank (phase B's, when it starts), and the bias when there is none.
  {
    constexpr int kWords = (2 * NT * 8 * kPitch + 2 * kConvRows * kSlice) * static_cast<int>(sizeof(T)) / 16;
    uint4* const w16 = reinterpret_cast<uint4*>(wx_s);
    for (int i = tid; i < kWords; i += kThreads) w16[i] = make_uint4(0, 0, 0, 0);
    if (p.dt_bias == nullptr) {
      for (int i = tid; i < 2 * kSlice; i += kThreads) bias_s[i] = 0.0f;
    }
  }
  // The conv's next state: the last kernel - 1 steps of [state_in, x], by the first tile's block.
  if (blockIdx.x == 0 && hist > 0) {
    for (int64_t i = tid; i < channels * hist; i += kThreads) {
      const int64_t c = i / hist;
      const int j = static_cast<int>(i % hist);
      const int64_t tau = length - hist + j;  // step of x; negative: of the old state
      const float v = tau >= 0 ? to_float(p.x[(row0 + tau) * stride_x + c])
                               : p.state_in[(b * channels + c) * hist + hist + tau];
      p.state_out[(b * channels + c) * hist + j] = v;
    }
  }
  __syncthreads();

  // The copies of every slice, planned once (per-slice address arithmetic was most of the
  // copy loops' instructions): thread tid copies the 16-byte piece tid % 8 of rows tid / 8 +
  // 32 k of the x_proj weight and of the staged inputs, and pieces tid % 4 and tid % 4 + 4 of
  // dt_proj weight row tid / 4.
  constexpr int kRowsPerPass = kThreads / 8;
  const int piece = tid % 8, prow = tid / 8;
  const T* const wx_src = p.x_proj_weight + static_cast<int64_t>(prow) * channels + piece * 8;
  T* const wx_dst = wx_s + prow * kPitch + piece * 8;
  auto issue_wx = [&](int j, int buf) {
#pragma unroll
    for (int k = 0; k < (NT * 8 + kRowsPerPass - 1) / kRowsPerPass; ++k) {
      if (prow + k * kRowsPerPass < proj) {
        cp_async16(wx_dst + (buf * NT * 8 + k * kRowsPerPass) * kPitch,
                   wx_src + static_cast<int64_t>(k * kRowsPerPass) * channels + j * kSlice);
      }
    }
  };
  constexpr int kDtThreadsPerRow = kThreads / kSlice;  // of a dt_proj weight row's 8 pieces
  static_assert(kThreads % kSlice == 0 && 8 % kDtThreadsPerRow == 0, "whole weight rows per pass");
  const int dt_pieces = rank / 8, dt_piece = tid % kDtThreadsPerRow;
  const T* const wdt_src = p.dt_weight + static_cast<int64_t>(tid / kDtThreadsPerRow) * rank + dt_piece * 8;
  T* const wdt_dst = wdt_s + (tid / kDtThreadsPerRow) * kPitch + dt_piece * 8;
  auto issue_wdt = [&](int j, int buf) {
#pragma unroll
    for (int k = 0; k < 8 / kDtThreadsPerRow; ++k) {
      if (dt_piece + kDtThreadsPerRow * k < dt_pieces) {
        cp_async16(wdt_dst + buf * kSlice * kPitch + 8 * kDtThreadsPerRow * k,
                   wdt_src + static_cast<int64_t>(j) * kSlice * rank + 8 * kDtThreadsPerRow * k);
      }
    }
    if (p.dt_bias != nullptr && tid < kSlice / 4) {
      cp_async16(bias_s + buf * kSlice + tid * 4, p.dt_bias + j * kSlice + tid * 4);
    }
  };
  // Slice j's inputs, steps t0 - 3 .. t0 + kTileRows - 1 of the block (zeros outside the sequence).
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  constexpr int kInputPasses = (kTileInputs + kRowsPerPass - 1) / kRowsPerPass;
  const int64_t x_off = (row0 + t0 - kHalo + prow) * stride_x + piece * 8;  // at pass 0 (may be < 0)
  T* const x_dst = x_s + prow * kSlice + piece * 8;
  unsigned x_valid = 0;  // bit k: pass k's row is a step of the sequence
#pragma unroll
  for (int k = 0; k < kInputPasses; ++k) {
    const int64_t tau = t0 - kHalo + prow + k * kRowsPerPass;
    if (prow + k * kRowsPerPass < kTileInputs && tau >= 0 && tau < length) x_valid |= 1u << k;
  }
  auto issue_x = [&](int j, int buf) {
#pragma unroll
    for (int k = 0; k < kInputPasses; ++k) {
      if (prow + k * kRowsPerPass < kTileInputs) {
        const bool valid = (x_valid >> k) & 1u;
        // A row outside the sequence reads nothing, but its address must still be a valid one.
        const T* const src = valid ? p.x + x_off + static_cast<int64_t>(k * kRowsPerPass) * stride_x + j * kSlice : p.x;
        cp_async16_or_zero(x_dst + (buf * kTileInputs + k * kRowsPerPass) * kSlice, src, valid);
      }
    }
    // The conv's weight rows (the kernel's taps; the others stay zero) and bias for the slice.
    if (prow < kConvRows && (prow < p.kernel || prow == kMaxKernel)) {
      const T* const src = prow < kMaxKernel ? p.conv_weight + static_cast<int64_t>(prow) * channels : p.conv_bias;
      cp_async16(cw_s + (buf * kConvRows + prow) * kSlice + piece * 8, src + j * kSlice + piece * 8);
    }
  };
  issue_wx(0, 0);
  issue_x(0, 0);
  cp_async_commit();

  uint32_t raw[kInputs];  // the lane's channel pair at steps tw - 3 .. tw + 15 of the slice
  float acc[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nt][e] = 0.0f;
  }
  const uint32_t tile_addr = static_cast<uint32_t>(__cvta_generic_to_shared(tile));
  const uint32_t wx_addr = static_cast<uint32_t>(__cvta_generic_to_shared(wx_s));
  const uint32_t wdt_addr = static_cast<uint32_t>(__cvta_generic_to_shared(wdt_s));

  // The warp's tile (16 rows x 64 channels) to rows tw.. of a [*, channels] output at `out`,
  // as whole 16-byte pieces of rows; rows past the sequence are not stored.
  auto store_tile = [&](T* out) {
#pragma unroll
    for (int i = 0; i < kWarpRows * 8 / 32; ++i) {
      const int r = i * 4 + lane / 8, piece = lane % 8;
      if (r < rows_here) {
        *reinterpret_cast<uint4*>(out + r * channels + piece * 8) =
            *reinterpret_cast<const uint4*>(tile + r * kPitch + piece * 8);
      }
    }
  };

  // Phase A: conv + SiLU -> u, and x_dbl += u W_x^T, a slice of 64 channels at a time.
  for (int j = 0; j < slices; ++j) {
    cp_async_wait<0>();  // slice j's weights (issued a slice ago)
    __syncthreads();     // ... visible to all, and every warp is past slice j - 1's product
    if (j + 1 < slices) {
      issue_wx(j + 1, (j + 1) % 2);
      issue_x(j + 1, (j + 1) % 2);
    }
    cp_async_commit();
    {  // the lane's inputs from the staged slice
      const uint32_t* const src = reinterpret_cast<const uint32_t*>(x_s + (j % 2) * kTileInputs * kSlice +
                                                                    warp * kWarpRows * kSlice) + lane;
#pragma unroll
      for (int i = 0; i < kInputs; ++i) raw[i] = src[i * kSlice / 2];
    }

    const int64_t c = static_cast<int64_t>(j) * kSlice + 2 * lane;
    float w[kMaxKernel][2], bias[2], head[kHalo][2];
    {
      const uint32_t* const cw = reinterpret_cast<const uint32_t*>(cw_s + (j % 2) * kConvRows * kSlice) + lane;
#pragma unroll
      for (int k = 0; k < kMaxKernel; ++k) {
        const float2 wk = unpack2<T>(cw[k * kSlice / 2]);
        w[k][0] = wk.x;
        w[k][1] = wk.y;
      }
      const float2 bk = unpack2<T>(cw[kMaxKernel * kSlice / 2]);
      bias[0] = bk.x;
      bias[1] = bk.y;
    }
#pragma unroll
    for (int i = 0; i < kHalo; ++i) {
      const float2 f = unpack2<T>(raw[i]);
      head[i][0] = f.x;
      head[i][1] = f.y;
    }
    if (tw < kHalo) {  // the sequence's first rows: the steps before come from the conv state
#pragma unroll
      for (int i = 0; i < kHalo; ++i) {
        const int64_t tau = tw - kHalo + i;
#pragma unroll
        for (int v = 0; v < 2; ++v) {
          if (tau < 0) head[i][v] = tau >= -hist ? p.state_in[(b * channels + c + v) * hist + hist + tau] : 0.0f;
        }
      }
    }
    // Into the warp's tile (rows past the sequence too: finite, never stored, and a row of the
    // product depends on its own A row only).
    auto conv_rows = [&](auto kernel_size) {
      constexpr int K = decltype(kernel_size)::value;
#pragma unroll
      for (int r = 0; r < kWarpRows; ++r) {
        *reinterpret_cast<uint32_t*>(tile + r * kPitch + 2 * lane) = conv_row<T, K>(r, raw, head, w, bias);
      }
    };
    switch (p.kernel) {  // uniform across the block
      case 4: conv_rows(std::integral_constant<int, 4>{}); break;
      case 3: conv_rows(std::integral_constant<int, 3>{}); break;
      case 2: conv_rows(std::integral_constant<int, 2>{}); break;
      default: conv_rows(std::integral_constant<int, 1>{}); break;
    }
    __syncwarp();
    store_tile(p.u + (row0 + tw) * channels + static_cast<int64_t>(j) * kSlice);

    const uint32_t wx_buf = wx_addr + (j % 2) * NT * 8 * kPitch * static_cast<uint32_t>(sizeof(T));
#pragma unroll
    for (int kk = 0; kk < kSlice / 16; ++kk) {
      uint32_t a[4];
      ldsm_x4(a[0], a[1], a[2], a[3], tile_addr + ((lane % 16) * kPitch + kk * 16 + lane / 16 * 8) * sizeof(T));
#pragma unroll
      for (int nt = 0; nt < NT; nt += 2) {
        const int n = nt * 8 + lane / 16 * 8 + lane % 8, col = kk * 16 + lane / 8 % 2 * 8;
        uint32_t b0, b1, b2, b3;
        ldsm_x4(b0, b1, b2, b3, wx_buf + (n * kPitch + col) * sizeof(T));
        mma_16816<T>(acc[nt], a, b0, b1);
        mma_16816<T>(acc[nt + 1], a, b2, b3);
      }
    }
    __syncwarp();  // the product has read the tile before the next slice overwrites it
  }

  // x_dbl for the warp's rows; dt (its first `rank` columns, rounded as stored) as A fragments.
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int col = nt * 8 + 2 * t4;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = g + 8 * h;
      if (col < proj && r < rows_here) {
        *reinterpret_cast<uint32_t*>(p.x_dbl + (row0 + tw + r) * proj + col) = pack2<T>(acc[nt][2 * h], acc[nt][2 * h + 1]);
      }
    }
  }
  const int kr = (rank + 15) / 16;  // k steps of dt_proj
  uint32_t dt_a[kMaxRank / 16][4];
#pragma unroll
  for (int kk = 0; kk < kMaxRank / 16; ++kk) {
    // n tiles 2kk, 2kk + 1 hold columns 16kk .. 16kk + 15; those past the rank are zeros.
    const bool lo = 16 * kk < rank, hi = 16 * kk + 8 < rank;
    dt_a[kk][0] = lo ? pack2<T>(acc[2 * kk][0], acc[2 * kk][1]) : 0u;
    dt_a[kk][1] = lo ? pack2<T>(acc[2 * kk][2], acc[2 * kk][3]) : 0u;
    dt_a[kk][2] = hi ? pack2<T>(acc[2 * kk + 1][0], acc[2 * kk + 1][1]) : 0u;
    dt_a[kk][3] = hi ? pack2<T>(acc[2 * kk + 1][2], acc[2 * kk + 1][3]) : 0u;
  }

  // Phase B: delta = softplus(dt W_dt^T + bias), a slice of 64 channels at a time, in the
  // shared region phase A has finished with: zero the weight columns past the rank, fetch the
  // first slice.
  __syncthreads();
  for (int i = tid; i < 2 * kSlice * (kPitch - rank); i += kThreads) {
    const int row = i / (kPitch - rank), col = rank + i % (kPitch - rank);
    wdt_s[row * kPitch + col] = from_float<T>(0.0f);
  }
  issue_wdt(0, 0);
  cp_async_commit();
  for (int j = 0; j < slices; ++j) {
    cp_async_wait<0>();
    __syncthreads();
    if (j + 1 < slices) issue_wdt(j + 1, (j + 1) % 2);
    cp_async_commit();

    const float* const bias = bias_s + (j % 2) * kSlice;
    float d[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      const float2 bv = *reinterpret_cast<const float2*>(bias + nt * 8 + 2 * t4);
      d[nt][0] = d[nt][2] = bv.x;
      d[nt][1] = d[nt][3] = bv.y;
    }
    const uint32_t wdt_buf = wdt_addr + (j % 2) * kSlice * kPitch * static_cast<uint32_t>(sizeof(T));
#pragma unroll
    for (int kk = 0; kk < kMaxRank / 16; ++kk) {
      if (kk < kr) {
#pragma unroll
        for (int nt = 0; nt < 8; nt += 2) {
          const int n = nt * 8 + lane / 16 * 8 + lane % 8, col = kk * 16 + lane / 8 % 2 * 8;
          uint32_t b0, b1, b2, b3;
          ldsm_x4(b0, b1, b2, b3, wdt_buf + (n * kPitch + col) * sizeof(T));
          mma_16816<T>(d[nt], dt_a[kk], b0, b1);
          mma_16816<T>(d[nt + 1], dt_a[kk], b2, b3);
        }
      }
    }
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float v0 = softplus_rounded<kBf16>(d[nt][2 * h]), v1 = softplus_rounded<kBf16>(d[nt][2 * h + 1]);
        *reinterpret_cast<uint32_t*>(tile + (g + 8 * h) * kPitch + nt * 8 + 2 * t4) = pack2<T>(v0, v1);
      }
    }
    __syncwarp();
    store_tile(p.delta + (row0 + tw) * channels + static_cast<int64_t>(j) * kSlice);
    __syncwarp();  // read before the next slice's values overwrite the tile
  }
  cp_async_wait<0>();  // none left in flight
}

bool aligned(const void* ptr, uintptr_t n) { return reinterpret_cast<uintptr_t>(ptr) % n == 0; }

// The x_proj n tiles a kernel is built for: the fewest of 8, 10, 12, 16 that hold proj.
int n_tiles(int64_t proj) {
  const int64_t needed = (proj + 7) / 8;
  return needed <= 8 ? 8 : needed <= 10 ? 10 : needed <= 12 ? 12 : 16;
}

}  // namespace

bool mamba_input_preferred(const MambaInputArgs& a) {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    return false;
  }
  // Whole tiles' worth of rows for 15/16 of a wave of blocks (H200: 247 x 128 rows, ~31.6k).
  const int64_t wave_rows = static_cast<int64_t>(sms) * kBlocksPerSm * kTileRows;
  return a.length >= kTileRows && a.batch * a.length >= wave_rows * 15 / 16;
}

bool mamba_input_supported(const MambaInputArgs& a) {
  return (a.dtype == DType::kBFloat16 || a.dtype == DType::kFloat16) && a.batch >= 1 && a.batch <= 65535 &&
         a.length >= 1 && a.kernel >= 1 && a.kernel <= kMaxKernel && a.channels >= kSlice &&
         a.channels % kSlice == 0 && a.rank >= 8 && a.rank <= kMaxRank && a.rank % 8 == 0 &&
         a.proj > a.rank && a.proj <= kMaxProj && a.proj % 2 == 0 && a.row_stride_x >= a.channels &&
         a.row_stride_x % 8 == 0 && aligned(a.x, 16) && aligned(a.u, 16) && aligned(a.delta, 16) &&
         aligned(a.x_proj_weight, 16) && aligned(a.dt_weight, 16) && aligned(a.conv_weight, 16) &&
         aligned(a.conv_bias, 16) && aligned(a.x_dbl, 4) && aligned(a.dt_bias, 16);
}

void mamba_input_stage(const MambaInputArgs& a) {
  auto fail = [](const std::string& what) {
    throw std::invalid_argument("hvlm::kernels::cuda::mamba_input_stage: " + what);
  };
  if (!mamba_input_supported(a)) fail("unsupported arguments (see mamba_input_supported)");
  if (!a.x || !a.conv_weight || !a.conv_bias || !a.x_proj_weight || !a.dt_weight || !a.u || !a.x_dbl ||
      !a.delta) {
    fail("null operand pointer");
  }
  if (a.kernel > 1 && (!a.conv_state_in || !a.conv_state_out)) fail("null conv state pointer");
  const auto stream = static_cast<cudaStream_t>(a.stream);
  const dim3 grid(static_cast<unsigned>((a.length + kTileRows - 1) / kTileRows), static_cast<unsigned>(a.batch));
  auto launch = [&](auto kernel, auto tag, size_t smem) {
    using T = decltype(tag);
    Params<T> p;
    p.x = static_cast<const T*>(a.x);
    p.row_stride_x = a.row_stride_x;
    p.conv_weight = static_cast<const T*>(a.conv_weight);
    p.conv_bias = static_cast<const T*>(a.conv_bias);
    p.state_in = a.conv_state_in;
    p.state_out = a.conv_state_out;
    p.x_proj_weight = static_cast<const T*>(a.x_proj_weight);
    p.dt_weight = static_cast<const T*>(a.dt_weight);
    p.dt_bias = a.dt_bias;
    p.u = static_cast<T*>(a.u);
    p.x_dbl = static_cast<T*>(a.x_dbl);
    p.delta = static_cast<T*>(a.delta);
    p.length = a.length;
    p.channels = a.channels;
    p.kernel = static_cast<int>(a.kernel);
    p.rank = static_cast<int>(a.rank);
    p.proj = static_cast<int>(a.proj);
    // The attribute is per device, so it is set on every call (a microsecond of host time).
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err == cudaSuccess) {
      kernel<<<grid, kThreads, smem, stream>>>(p);
      err = cudaGetLastError();
    }
    if (err != cudaSuccess) {
      throw std::runtime_error(std::string("hvlm mamba_input_stage: launch failed: ") + cudaGetErrorString(err));
    }
  };
  auto dispatch = [&](auto tag) {
    using T = decltype(tag);
    switch (n_tiles(a.proj)) {
      case 8: launch(mamba_input_kernel<T, 8>, T{}, smem_bytes<T, 8>()); break;
      case 10: launch(mamba_input_kernel<T, 10>, T{}, smem_bytes<T, 10>()); break;
      case 12: launch(mamba_input_kernel<T, 12>, T{}, smem_bytes<T, 12>()); break;
      default: launch(mamba_input_kernel<T, 16>, T{}, smem_bytes<T, 16>()); break;
    }
  };
  if (a.dtype == DType::kBFloat16) {
    dispatch(__nv_bfloat16{});
  } else {
    dispatch(__half{});
  }
}

}  // namespace hvlm::kernels::cuda
