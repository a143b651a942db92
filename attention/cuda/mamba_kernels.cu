// CUDA kernels of MambaLayer (contract in mamba_kernels.h): the causal depthwise conv + SiLU
// and the chunked selective scan. Plain CUDA C++ without LibTorch.
//
// Selective scan: the algorithm and why.
//   The layer's shape that matters is batch 1, length 8192, 1536 channels, 16 states, bf16.
//   Per (t, c, s) the recurrence needs one exp (MUFU.EX2, 16 per clock per SM on Hopper) and
//   ~4 float ops, so the scan is bound by the special-function unit rather than by its ~100 MB
//   of traffic: 201M exps take ~48 us at full rate on 132 SMs, against ~25 us of memory time.
//   The layout [B, L, E] has channels innermost and B_t, C_t shared by all channels, so
//   the natural mapping is one thread per channel (adjacent lanes = adjacent channels:
//   coalesced u/delta/z/y, broadcast B/C from shared memory), each thread keeping its N states
//   in registers and walking time serially. 1536 threads are far too few, so time is split
//   into chunks, one thread per (batch, channel, chunk), in three launches:
//     pass 1  for chunks 0..K-2: run the chunk from h = 0; store its end state and sum(dt)
//             (the chunk's decay is exp(A * sum dt), so no per-state product is stored);
//     pass 2  per (batch, state, channel): fold the K chunk carries serially from the input h
//             (K <= a few hundred FMAs), leaving each chunk's true initial state;
//     pass 3  every chunk again from its true initial state, writing y and, for the last
//             chunk, the final h.
//   This computes the exps twice, against once for a block-wide (decay, value) scan as in the
//   reference Mamba kernel. We take that cost on purpose: a single-pass scan has to keep every
//   step's exp(dt * A) (K items x N states per thread) in registers until its prefix is known,
//   which at N = 16 leaves one block of 8 warps per SM, plus either a transpose through shared
//   memory (the reference kernel's layout is [B, E, L]) or a cross-block look-back with its
//   latency and workspace traffic. (Measured, and reverted: a one-pass kernel with lanes over
//   states, 16 lanes per channel walking the whole sequence, ran 3-5x slower at batch 1: only
//   768 warps, stalled on loads, with more per-step overhead than the exp it saves; and
//   splitting a channel's states over a lane pair here was 25-45% slower; and lanes over state
//   pairs, 8 lanes a channel and one 4-warp block an SM (commit 86e593b), 3x slower: 3182 vs
//   1065 us at 64k, its per-lane 16-byte shared-memory loads 4 wavefronts each with the latency
//   exposed at one warp a scheduler; and lanes over 16-step segments of time with each step's
//   decay kept for a second walk (17 exps per 16 steps instead of 32; commit 73ee3ae), 1.42x
//   slower: 1501 vs 1053 us at 64k, 12.7 instructions per state update issued at 46% with the
//   12 warps an SM that batch 1 gives, every lane reading its own steps' B and C from shared
//   memory (~385 us of its bandwidth at 64k). docs/benchmarks.md.)
//   The chunked form runs at high occupancy with no inter-block
//   waits, is simple to verify, and its pass-1 overhead vanishes where it is not needed: the
//   chunk count is sized so pass 3 fills the GPU in one wave, so a short sequence or a large
//   batch runs as a single chunk (pass 3 only, no workspace).
//   Per step a thread reads u, delta, z (staged a tile ahead in shared memory by cp.async for
//   2-byte dtypes, else loaded into registers a group of 4 steps ahead), reads B_t, C_t from
//   shared memory (staged a tile of 16..32 steps ahead, double-buffered, one barrier per
//   tile), and runs N x (FMUL, EX2, FMUL, 2 FFMA). A group of steps (8 from shared memory, 4
//   from registers) is branch-free straight-line code so the scheduler can overlap the steps;
//   at N = 16, bf16, pass 3 executed ~150 instructions and 18 MUFU per step and pass 1 ~108
//   while the scan applied delta's softplus itself (~22 of them; see delta_projection.h),
//   under the 128-register cap that gives 16 warps per SM. On a ready delta (ncu, 64k): pass 1
//   issued 85 instructions and 16 MUFU a step and was bound by the exp unit (80% busy: a warp's
//   MUFU takes 8 of its cycles, so 16 are 128 cycles against 85 issue slots) with the FMA pipe
//   at 33%; so 2 of every 16 decays a step go to the FMA pipe (exp2_poly, 11 instructions;
//   HVLM_SCAN_POLY_EXPS), which balanced the two (pass 1 473 -> 453 us; 3 or 4 were slower).
//   Pass 3 issues ~126 a step against 17 MUFU and sits at ~65% of both; its y go out through
//   shared memory, one 16-byte store per lane per group (see store_staged_y). Per-step
//   overhead counts as much as the exps: the tile copies are straight-line code per thread (a
//   rolled copy loop cost ~20 instructions per step). Measured on the H200 at the shape above
//   with 16 warps/SM: more registers with fewer warps were slower.
//   Precision: exp via ex2.approx.ftz (max rel. error ~2^-22; exp2_poly's 1.9e-7 is no worse):
//   the decay dA = exp(dt A) then has an absolute error ~2.4e-7, so the state's relative error
//   is ~2.4e-7 / (dt |A|) in the worst case of a long memory, 2.4e-5 at dt |A| = 0.01; the CPU
//   kernel's own exp is ~1e-7.
//   Softplus (float32 only; 2-byte dtypes get delta ready from delta_projection) is
//   softplus_approx (fast_math.cuh, relative error ~2e-6). Nothing relies on --use_fast_math
//   (the intrinsics used are explicit), so the file may be built with or without it.
//
// Causal conv: one thread per (batch, channel or channel pair, tile of 16 steps), lanes over
// channels; the tile's 16 inputs and the kernel - 1 before it are loaded into registers, so
// every input is read about once (the kernel - 1 history steps add ~19% at 16 steps, mostly from
// L2; ~50 MB of traffic at the shape above). 2-byte dtypes take channel pairs (one 4-byte load
// or store for two values) where the layout allows.
//
// Measured on the H200 (CUDA 13.0, batch 1, 1536 channels, 16 states, bf16, median of 50),
// length 8192 / 65536 (44 chunks): u/delta/z loaded into registers a group ahead 215 / 1506 us;
// staged by cp.async 192 / 1352 us; with straight-line tile copies 184 / 1240 us; with groups
// of 8 and the one-MUFU gate 178 / 1208 us (scripts/mamba-scan-variants.sh); softplus_approx
// instead of the exact log1p 173 / 1161 us; on a ready delta (delta_projection.h, the path of
// 2-byte dtypes) 164 / 1094 us; with 2 decays of 16 on the FMA pipe and y staged 162 / 1069 us.
// Conv 24 us (2.1 TB/s) and 139 us; with channel pairs 23 / 135; 16 steps a thread instead of
// 32 (fewer registers, more warps) 22 / 123. Floors: the scan's two passes need ~105 us of exp
// unit time at 8192;
// the conv ~12 us of memory time. A one-pass time-parallel scan (a warp per channel, lanes over
// time, a warp scan of (decay, state) pairs per state; commit a11967f, reverted) computes each
// exp once but ran 242 / 1867 us: ~19 instructions per state update against ~18 for both
// chunked passes together, at 12 warps per SM (one channel per warp leaves 1536 warps).
#include "attention/cuda/mamba_kernels.h"

#include "attention/cuda/async_copy.cuh"
#include "attention/cuda/element.cuh"
#include "attention/cuda/fast_math.cuh"

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

// ---------------------------------------------------------------------------------------------
// Element helpers (to_float / from_float: attention/cuda/element.cuh)
// ---------------------------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ float load(const T* p) { return to_float(__ldg(p)); }

// x * sigmoid(x) with one special-function operation (tanh.approx, max relative error ~2^-11)
// instead of two: sigmoid(x) = (1 + tanh(x / 2)) / 2. The scan's gate for 2-byte outputs, whose
// own rounding (2^-8 for bfloat16, 2^-11 for float16) is as coarse or coarser; float32 outputs
// keep the exact form (HVLM_SCAN_FAST_GATE=0: the exact form everywhere).
__device__ __forceinline__ float silu_tanh(float x) {
  const float half = 0.5f * x;
  float t;
  asm("tanh.approx.f32 %0, %1;" : "=f"(t) : "f"(half));
  return fmaf(half, t, half);
}
#ifndef HVLM_SCAN_FAST_GATE
#define HVLM_SCAN_FAST_GATE 1
#endif

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("hvlm mamba kernels: launch of ") + what +
                             " failed: " + cudaGetErrorString(err));
  }
}

void check_call(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("hvlm mamba kernels: ") + what +
                             " failed: " + cudaGetErrorString(err));
  }
}

// Calls f(T{}) with T the storage type of `dtype`.
template <typename F>
void dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: f(float{}); return;
    case DType::kBFloat16: f(__nv_bfloat16{}); return;
    case DType::kFloat16: f(__half{}); return;
  }
  throw std::invalid_argument("hvlm mamba kernels: unknown dtype");
}

constexpr int64_t kMaxGridYZ = 65535;

// ---------------------------------------------------------------------------------------------
// Causal depthwise conv + SiLU
// ---------------------------------------------------------------------------------------------

// Tuning knobs for experiments with -D (scripts/mamba-scan-variants.sh reports the conv too).
#ifndef HVLM_CONV_THREADS
#define HVLM_CONV_THREADS 128
#endif
#ifndef HVLM_CONV_STEPS
#define HVLM_CONV_STEPS 16
#endif
constexpr int kConvThreads = HVLM_CONV_THREADS;  // channels (or channel pairs) per block
constexpr int kConvSteps = HVLM_CONV_STEPS;      // time steps per thread, all loaded before any math

// V consecutive channels of one row as floats: one 4-byte load for V = 2 (2-byte types).
template <typename T, int V>
__device__ __forceinline__ void load_channels(const T* p, float (&out)[V]) {
  if constexpr (V == 1) {
    out[0] = load(p);
  } else {
    static_assert(V == 2 && sizeof(T) == 2, "pairs of 2-byte elements only");
    const float2 f = unpack2<T>(__ldg(reinterpret_cast<const unsigned*>(p)));
    out[0] = f.x;
    out[1] = f.y;
  }
}
template <typename T, int V>
__device__ __forceinline__ void store_channels(T* p, const float (&v)[V]) {
  if constexpr (V == 1) {
    *p = from_float<T>(v[0]);
  } else {
    *reinterpret_cast<uint32_t*>(p) = pack2<T>(v[0], v[1]);
  }
}

// Grid: x = channel blocks, y = time tiles (grid-stride), z = batch (grid-stride).
// KS > 0: the kernel size, the tile and its history in registers. KS == 0: any kernel size,
// operands read from memory per tap (a rare configuration; correctness only).
// V: channels per thread (2: 4-byte loads and stores of 2-byte pairs, half the memory
// instructions; the caller checks channels, strides and pointers are even / 4-byte aligned).
template <typename T, int KS, int V>
__global__ void __launch_bounds__(kConvThreads)
    conv_silu_kernel(const T* __restrict__ x, const T* __restrict__ weight,
                     const T* __restrict__ bias, const float* __restrict__ state_in,
                     float* __restrict__ state_out, T* __restrict__ out, int64_t batch,
                     int64_t length, int64_t channels, int64_t row_stride_x, int kernel_rt) {
  static_assert(KS > 0 || V == 1, "the generic kernel size runs a channel per thread");
  const int64_t c0 = (static_cast<int64_t>(blockIdx.x) * kConvThreads + threadIdx.x) * V;
  if (c0 >= channels) return;  // no shared memory or barriers below
  const int kernel = KS > 0 ? KS : kernel_rt;
  const int hist = kernel - 1;
  const int64_t num_tiles = (length + kConvSteps - 1) / kConvSteps;
  // (length 0 only copies the state: x, weight, bias and out are then never touched.)
  float bias_c[V];
#pragma unroll
  for (int v = 0; v < V; ++v) bias_c[v] = blockIdx.y < num_tiles ? to_float(bias[c0 + v]) : 0.0f;

  for (int64_t b = blockIdx.z; b < batch; b += gridDim.z) {
    const T* xb = x + b * length * row_stride_x + c0;
    // Step tau of the concatenation [state_in, x] along time, for channel c0 + v.
    auto input = [&](int64_t tau, int v) -> float {
      return tau < hist ? state_in[(b * channels + c0 + v) * hist + tau]
                        : load(xb + (tau - hist) * row_stride_x + v);
    };
    if (blockIdx.y == 0) {
      // The new state: the last `hist` steps of the concatenation (read before any write;
      // state_out must not alias state_in anyway).
#pragma unroll
      for (int v = 0; v < V; ++v) {
        float* sout = state_out + (b * channels + c0 + v) * hist;
        for (int j = 0; j < hist; ++j) sout[j] = input(length + j, v);
      }
    }
    for (int64_t tile = blockIdx.y; tile < num_tiles; tile += gridDim.y) {
      const int64_t t0 = tile * kConvSteps;
      const int count = static_cast<int>(min(length - t0, static_cast<int64_t>(kConvSteps)));
      T* ob = out + (b * length + t0) * channels;
      if constexpr (KS > 0) {
        // Every load of the tile is issued before the first use: one memory round trip.
        float w[KS][V], prev[KS][V], xv[kConvSteps][V];
#pragma unroll
        for (int k = 0; k < KS; ++k) {
#pragma unroll
          for (int v = 0; v < V; ++v) w[k][v] = to_float(weight[k * channels + c0 + v]);
        }
#pragma unroll
        for (int k = 0; k < KS - 1; ++k) {
#pragma unroll
          for (int v = 0; v < V; ++v) prev[k][v] = input(t0 + k, v);  // x steps t0-hist .. t0-1
        }
        const T* px = xb + t0 * row_stride_x;
        T* po = ob + c0;
        // One output row; i compile-time after unrolling.
        auto output = [&](int i) {
          float acc[V];
#pragma unroll
          for (int v = 0; v < V; ++v) {
            acc[v] = bias_c[v];
#pragma unroll
            for (int k = 0; k < KS; ++k) {
              const int xi = i + k - (KS - 1);  // index into xv, or into prev when negative
              acc[v] = fmaf(w[k][v], xi >= 0 ? xv[xi][v] : prev[i + k][v], acc[v]);
            }
            acc[v] = silu(acc[v]);
          }
          store_channels<T, V>(po, acc);
          po += channels;
        };
        if (count == kConvSteps) {  // full tile: no bounds checks
#pragma unroll
          for (int i = 0; i < kConvSteps; ++i) {
            load_channels<T, V>(px, xv[i]);
            px += row_stride_x;
          }
#pragma unroll
          for (int i = 0; i < kConvSteps; ++i) output(i);
        } else {
#pragma unroll
          for (int i = 0; i < kConvSteps; ++i) {
            if (i < count) {
              load_channels<T, V>(px, xv[i]);
            } else {
#pragma unroll
              for (int v = 0; v < V; ++v) xv[i][v] = 0.0f;
            }
            px += row_stride_x;
          }
#pragma unroll
          for (int i = 0; i < kConvSteps; ++i) {
            if (i < count) output(i);
          }
        }
      } else {
        for (int i = 0; i < count; ++i) {
          float acc = bias_c[0];
          for (int k = 0; k < kernel; ++k) {
            acc = fmaf(to_float(weight[k * channels + c0]), input(t0 + i + k, 0), acc);
          }
          ob[i * channels + c0] = from_float<T>(silu(acc));
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Selective scan
// ---------------------------------------------------------------------------------------------

// Channels per block, one per thread. 256 rather than 128: the B/C staging registers per
// thread halve, which keeps the common case under 128 registers without spills.
#ifndef HVLM_SCAN_THREADS
#define HVLM_SCAN_THREADS 256
#endif
constexpr int kScanThreads = HVLM_SCAN_THREADS;
constexpr int64_t kMinChunkSteps = 64;  // shorter sequences always run as one chunk

// Time steps of B (and C) staged in shared memory at once (double-buffered).
template <int NS>
__host__ __device__ constexpr int scan_tile_steps() { return NS <= 16 ? 32 : 16; }

// The operands of one scan launch, as typed pointers.
template <typename T>
struct ScanPtrs {
  const T* u;
  const T* delta;
  const float* delta_bias;  // may be nullptr
  const float* a;
  const T* b;
  const T* c;
  const float* d;
  const T* z;
  float* h;
  T* y;
  float* ws_h;  // [chunks, batch, state_size, channels]: chunk end states, then start states
  float* ws_s;  // [chunks, batch, channels]: sum of dt over the chunk
  int64_t batch, length, channels, row_stride_bc, row_stride_z;
  int state_size;
  bool delta_softplus;
};

// Reads NS consecutive floats of shared memory, as float4 when NS % 4 == 0 (then src must be
// 16-byte aligned): a quarter of the shared-memory instructions, which share the MIO queue
// with the exp unit.
template <int NS>
__device__ __forceinline__ void load_smem_row(const float* src, float (&dst)[NS]) {
  if constexpr (NS % 4 == 0) {
#pragma unroll
    for (int q = 0; q < NS / 4; ++q) {
      const float4 v = reinterpret_cast<const float4*>(src)[q];
      dst[4 * q + 0] = v.x;
      dst[4 * q + 1] = v.y;
      dst[4 * q + 2] = v.z;
      dst[4 * q + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int s = 0; s < NS; ++s) dst[s] = src[s];
  }
}

// The chunked scan's u, delta (and z) may be staged a tile ahead in shared memory by cp.async
// (kAsync) instead of loaded a group ahead into registers: the loads then have a whole tile of
// math to arrive in, and the registers they held are free. For 2-byte dtypes and state sizes
// <= 16 (the tiles of 32 steps x 256 channels x 3 streams take 96 KB, two buffers), when the
// channel count and every row start allow 16-byte copies (and y's start allows the staged
// 16-byte stores of pass 3; an unaligned y takes the register path for both passes).
#ifndef HVLM_SCAN_ASYNC
#define HVLM_SCAN_ASYNC 1
#endif
template <typename T, int NS, bool kFinal>
__host__ __device__ constexpr size_t scan_stream_smem_bytes() {
  return 2 * (kFinal ? 3 : 2) * static_cast<size_t>(scan_tile_steps<NS>()) * kScanThreads * sizeof(T);
}

// Steps per straight-line group: the body of a group has no branch or barrier, so the
// compiler can overlap one step's loads and arithmetic with the previous step's exps. Groups of
// 8 where u/delta/z come from shared memory (kAsync); 4 where the next group's u/delta/z are
// loaded into registers before the current group is computed (8 would spill those registers).
// (HVLM_SCAN_GROUP, HVLM_SCAN_GROUP_ASYNC, HVLM_SCAN_THREADS, HVLM_SCAN_WARPS_PER_SM,
// HVLM_SCAN_FAST_GATE, HVLM_SCAN_POLY_EXPS(_FINAL), HVLM_SCAN_STAGE_Y and HVLM_SCAN_WAVES are
// tuning knobs for experiments with -D, as in scripts/mamba-scan-variants.sh; the defaults are
// the measured best on the H200. Measured in the eighth session: 128 threads a block at 16,
// 20 or 24 warps an SM ran 1130, 1185, 1259 us at 64k against 1058 for the default.)
#ifndef HVLM_SCAN_GROUP
#define HVLM_SCAN_GROUP 4
#endif
#ifndef HVLM_SCAN_GROUP_ASYNC
#define HVLM_SCAN_GROUP_ASYNC 8
#endif

// Warps per SM to ask of the register allocator for the common state sizes (<= 16): 16 warps
// leave 128 registers a thread (measured: 12 or 8 warps with more registers are slower). The
// large state sizes get what they need.
#ifndef HVLM_SCAN_WARPS_PER_SM
#define HVLM_SCAN_WARPS_PER_SM 16
#endif
template <int NS>
__host__ __device__ constexpr int scan_min_blocks() {
  return NS <= 16 ? HVLM_SCAN_WARPS_PER_SM * 32 / kScanThreads : 1;
}

// States per 16 whose decay exp(dt A) a step computes on the FMA pipe (exp2_poly, 11
// instructions) instead of the exp unit (one MUFU, 8 of its cycles per warp): HVLM_SCAN_POLY_EXPS
// in pass 1, HVLM_SCAN_POLY_EXPS_FINAL in pass 3. Pass 1 is bound by the exp unit (ncu at 64k:
// 80% busy, 85 instructions issued a step against 16 MUFUs = 128 of its cycles), so moving a
// few exps to the idle FMA pipe balances the two; pass 3 issues ~126 instructions a step
// against 17 MUFUs and gained nothing measurable from 1 (so 0).
#ifndef HVLM_SCAN_POLY_EXPS
#define HVLM_SCAN_POLY_EXPS 2
#endif
#ifndef HVLM_SCAN_POLY_EXPS_FINAL
#define HVLM_SCAN_POLY_EXPS_FINAL 0
#endif
// Pass 3 with staged streams stores y through shared memory (see store_staged_y); 0: a 2-byte
// store per step.
#ifndef HVLM_SCAN_STAGE_Y
#define HVLM_SCAN_STAGE_Y 1
#endif
template <int NS, bool kFinal>
__host__ __device__ constexpr int scan_poly_exps() {
  return (kFinal ? HVLM_SCAN_POLY_EXPS_FINAL : HVLM_SCAN_POLY_EXPS) * NS / 16;
}

// Passes 1 (kFinal false) and 3 (kFinal true); see the file comment.
// Grid: x = channel blocks, y = chunk, z = batch (grid-stride). NS: compile-time state count
// >= state_size; states past state_size run with A = B = C = h = 0 and so stay 0.
template <typename T, int NS, bool kFinal, bool kAsync>
__global__ void __launch_bounds__(kScanThreads, scan_min_blocks<NS>())
    scan_chunk_kernel(const ScanPtrs<T> p, const int64_t chunk_steps, const int num_chunks) {
  constexpr int kTile = scan_tile_steps<NS>();
  constexpr int kGroup = kAsync ? HVLM_SCAN_GROUP_ASYNC : HVLM_SCAN_GROUP;
  static_assert(kTile % kGroup == 0, "tiles must hold whole groups");
  constexpr int kCols = kFinal ? 2 * NS : NS;  // staged floats per step: B (and C)
  constexpr int kTileElems = kTile * kCols;
  constexpr int kPerThread = (kTileElems + kScanThreads - 1) / kScanThreads;
  __shared__ __align__(16) float tiles[2][kTileElems];

  const int n = p.state_size;
  const int64_t channels = p.channels, length = p.length, stride_z = p.row_stride_z;
  const int64_t c_raw = static_cast<int64_t>(blockIdx.x) * kScanThreads + threadIdx.x;
  // Threads past the last channel mirror the last channel (valid loads, same barriers) and
  // store nothing.
  const bool active = c_raw < channels;
  const int64_t c = active ? c_raw : channels - 1;
  const int chunk = blockIdx.y;
  const int64_t t_begin = chunk * chunk_steps;
  const int64_t steps = min(length, t_begin + chunk_steps) - t_begin;  // >= 1 by the plan
  const int num_tiles = static_cast<int>((steps + kTile - 1) / kTile);

  // A in base 2, so that exp(dt * A) is one ex2.
  float a2[NS];
#pragma unroll
  for (int s = 0; s < NS; ++s) a2[s] = s < n ? p.a[c * n + s] * kLog2e : 0.0f;
  const float dt_bias = p.delta_bias != nullptr ? p.delta_bias[c] : 0.0f;
  const float d_skip = kFinal ? p.d[c] : 0.0f;
  const bool do_softplus = p.delta_softplus, has_bias = p.delta_bias != nullptr;

  for (int64_t bi = blockIdx.z; bi < p.batch; bi += gridDim.z) {
    const int64_t row0 = bi * length + t_begin;  // first row of this chunk

    // B/C staging: the block fetches tile m + 1 into registers (kPerThread elements a thread)
    // right after tile m becomes visible, and stores it into the other buffer when tile m is
    // done, so global latency hides behind a tile of math; one barrier per tile.
    float stage[kPerThread];
    auto fetch = [&](int tile) {
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
        const int e = threadIdx.x + i * kScanThreads;
        const int tt = e / kCols, col = e % kCols;
        const int s = col % NS;
        const int64_t step = static_cast<int64_t>(tile) * kTile + tt;
        float v = 0.0f;
        if (e < kTileElems && step < steps && s < n) {
          const T* src = (kFinal && col >= NS) ? p.c : p.b;
          v = load(src + (row0 + step) * p.row_stride_bc + s);
        }
        stage[i] = v;
      }
    };
    auto commit = [&](int buf) {
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
        const int e = threadIdx.x + i * kScanThreads;
        if (e < kTileElems) tiles[buf][e] = stage[i];
      }
    };

    float h[NS];
    if (kFinal && num_chunks == 1) {
      const float* hin = p.h + (bi * channels + c) * n;
#pragma unroll
      for (int s = 0; s < NS; ++s) h[s] = s < n ? hin[s] : 0.0f;
    } else if (kFinal) {
      const float* hin = p.ws_h + ((static_cast<int64_t>(chunk) * p.batch + bi) * n) * channels + c;
#pragma unroll
      for (int s = 0; s < NS; ++s) h[s] = s < n ? hin[s * channels] : 0.0f;
    } else {
#pragma unroll
      for (int s = 0; s < NS; ++s) h[s] = 0.0f;
    }
    float dt_sum = 0.0f;

    // Pointers to the rows of the next group to load, and of the group to store.
    // kAsync: streams[buffer][u, delta, z][step of the tile][channel of the block].
    constexpr int kStreams = kFinal ? 3 : 2;
    extern __shared__ __align__(16) unsigned char stream_smem[];
    T* const streams = reinterpret_cast<T*>(stream_smem);
    auto stream_row = [&](int buf, int which, int tt) {
      return streams + ((buf * kStreams + which) * kTile + tt) * kScanThreads;
    };
    // Pass 3 with staged streams writes a group's y into the u slots it has just read (each
    // thread its own channel's: only its warp reads or writes them until the next tile's
    // barrier), and each warp then stores the group's 8 rows x 32 channels as one 16-byte piece
    // a lane: a quarter of a per-step store's work (each step's 2-byte store needed a 64-bit
    // address of its own). Needs y 16-byte aligned and channels % 8 == 0 (scan_async_ok).
    constexpr int kPieceElems = 16 / static_cast<int>(sizeof(T));  // of a 16-byte store
    constexpr int kLanesPerRow = 32 / kPieceElems;                    // a warp's 32 channels
    constexpr bool kStageY = HVLM_SCAN_STAGE_Y && kAsync && kFinal && kGroup * kLanesPerRow == 32;
    auto store_staged_y = [&](const T* rows, int64_t j0) {
      if constexpr (kStageY) {
        __syncwarp();
        const int lane = static_cast<int>(threadIdx.x) & 31, warp_c0 = static_cast<int>(threadIdx.x) & ~31;
        const int r = lane / kLanesPerRow, col = warp_c0 + (lane % kLanesPerRow) * kPieceElems;
        const int64_t ch = static_cast<int64_t>(blockIdx.x) * kScanThreads + col;
        if (j0 + r < steps && ch < channels) {
          *reinterpret_cast<uint4*>(p.y + (row0 + j0 + r) * channels + ch) =
              *reinterpret_cast<const uint4*>(rows + r * kScanThreads + col);
        }
      }
    };
    // Copies the tile's rows of u, delta (and z) for the block's channels into buffer `buf`:
    // one cp.async group per tile. A thread copies the same 16-byte piece of kTile /
    // kRowsPerPass rows per stream (straight-line code: the copy loop is per-step overhead of
    // both passes). Rows past the chunk and channels past the last are skipped (their slots
    // are never read by a thread that stores).
    auto issue_streams = [&](int tile_index, int buf) {
      if constexpr (kAsync) {
        constexpr int kVec = 16 / static_cast<int>(sizeof(T));
        constexpr int kPerRow = kScanThreads / kVec;
        constexpr int kRowsPerPass = kScanThreads / kPerRow;
        static_assert(kScanThreads % kPerRow == 0 && kTile % kRowsPerPass == 0, "whole rows per pass");
        const int part = static_cast<int>(threadIdx.x) % kPerRow, r0 = static_cast<int>(threadIdx.x) / kPerRow;
        const int64_t ch = static_cast<int64_t>(blockIdx.x) * kScanThreads + part * kVec;
        const int64_t t0 = static_cast<int64_t>(tile_index) * kTile + r0;
        if (ch < channels) {
#pragma unroll
          for (int which = 0; which < kStreams; ++which) {
            const int64_t stride = which == 2 ? stride_z : channels;
            const T* src = (which == 0 ? p.u : which == 1 ? p.delta : p.z) + (row0 + t0) * stride + ch;
#pragma unroll
            for (int j = 0; j < kTile / kRowsPerPass; ++j) {
              if (t0 + j * kRowsPerPass < steps) {
                cp_async16(stream_row(buf, which, r0 + j * kRowsPerPass) + part * kVec, src + j * kRowsPerPass * stride);
              }
            }
          }
        }
        cp_async_commit();
      }
    };

    const T* lu = p.u + row0 * channels + c;
    const T* ld = p.delta + row0 * channels + c;
    const T* lz = kFinal ? p.z + row0 * stride_z + c : nullptr;
    T* yp = kFinal ? p.y + row0 * channels + c : nullptr;

    // u, delta (and z) of the group starting at step j0 (the load pointers are on its first
    // row); rows past the chunk's end re-read its last row (in bounds, never used).
    auto load_group = [&](int64_t j0, float (&gu)[kGroup], float (&gd)[kGroup],
                          float (&gz)[kGroup]) {
      if (j0 + kGroup <= steps) {
#pragma unroll
        for (int r = 0; r < kGroup; ++r) {
          gu[r] = load(lu + r * channels);
          gd[r] = load(ld + r * channels);
          gz[r] = kFinal ? load(lz + r * stride_z) : 0.0f;
        }
      } else {
        const int64_t last = steps - 1 - j0;  // >= 0
#pragma unroll
        for (int r = 0; r < kGroup; ++r) {
          const int64_t jr = r <= last ? r : last;
          gu[r] = load(lu + jr * channels);
          gd[r] = load(ld + jr * channels);
          gz[r] = kFinal ? load(lz + jr * stride_z) : 0.0f;
        }
      }
    };

    // delta's bias and softplus for a group, where the caller asked for them: a branch per
    // group, uniform across the block, so a delta that comes ready (delta_projection) costs
    // nothing a step, and the softpluses of a group are independent of each other.
    auto prepare_delta = [&](float (&gd)[kGroup]) {
      if (do_softplus) {
#pragma unroll
        for (int r = 0; r < kGroup; ++r) gd[r] = softplus_approx(gd[r] + dt_bias);
      } else if (has_bias) {
#pragma unroll
        for (int r = 0; r < kGroup; ++r) gd[r] += dt_bias;
      }
    };

    // exp(dt A) of state s: the last kPoly states on the FMA pipe, the others on the exp unit
    // (s is a compile-time index after unrolling).
    constexpr int kPoly = scan_poly_exps<NS, kFinal>();
    auto decay = [&](float dt, int s) {
      const float x = dt * a2[s];
      return s >= NS - kPoly ? exp2_poly(x) : exp2_approx(x);
    };

    // One step: row = its B (and C) in shared memory, r = its index in the group.
    auto step = [&](float u_v, float dt, float z_v, const float* row, int r, T* ys) {
      const float du = dt * u_v;
      float bv[NS];
      load_smem_row<NS>(row, bv);
      if constexpr (kFinal) {
        float cv[NS];
        load_smem_row<NS>(row + NS, cv);
        // Four partial sums of C . h: shorter dependency chains than one.
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int s = 0; s < NS; ++s) {
          h[s] = fmaf(decay(dt, s), h[s], du * bv[s]);
          acc[s & 3] = fmaf(cv[s], h[s], acc[s & 3]);
        }
        const float gate = (HVLM_SCAN_FAST_GATE && sizeof(T) == 2) ? silu_tanh(z_v) : silu(z_v);
        const T y = from_float<T>(((acc[0] + acc[1]) + (acc[2] + acc[3]) + d_skip * u_v) * gate);
        if constexpr (kStageY) {
          ys[r * kScanThreads] = y;
        } else if (active) {
          yp[r * channels] = y;
        }
      } else {
#pragma unroll
        for (int s = 0; s < NS; ++s) h[s] = fmaf(decay(dt, s), h[s], du * bv[s]);
        dt_sum += dt;
      }
    };

    fetch(0);
    commit(0);
    if constexpr (kAsync) {
      issue_streams(0, 0);
      cp_async_wait<0>();
    }
    __syncthreads();
    if (num_tiles > 1) {
      fetch(1);
      issue_streams(1, 1);
    }
    float gu[kGroup], gd[kGroup], gz[kGroup];
    if constexpr (!kAsync) load_group(0, gu, gd, gz);
    int tile = 0, tt = 0;  // tile of the group, and the group's first row in it
    for (int64_t j0 = 0; j0 < steps; j0 += kGroup) {
      if (tt == kTile) {  // uniform across the block
        tt = 0;
        ++tile;
        commit(tile & 1);
        if constexpr (kAsync) cp_async_wait<0>();  // this tile's streams, issued a tile ago
        __syncthreads();
        if (tile + 1 < num_tiles) {
          fetch(tile + 1);
          issue_streams(tile + 1, (tile + 1) & 1);  // into the buffer read last tile
        }
      }
      T* ys = nullptr;  // kStageY: where the group's y go, row r at ys[r * kScanThreads]
      if constexpr (kAsync) {  // rows past the chunk's end: garbage, never used
        T* const su = stream_row(tile & 1, 0, tt) + threadIdx.x;
        ys = su;
        const T* sd = stream_row(tile & 1, 1, tt) + threadIdx.x;
        const T* sz = stream_row(tile & 1, kFinal ? 2 : 1, tt) + threadIdx.x;
#pragma unroll
        for (int r = 0; r < kGroup; ++r) {
          gu[r] = to_float(su[r * kScanThreads]);
          gd[r] = to_float(sd[r * kScanThreads]);
          gz[r] = kFinal ? to_float(sz[r * kScanThreads]) : 0.0f;
        }
      }
      float nu[kGroup] = {}, nd[kGroup] = {}, nz[kGroup] = {};
      if (!kAsync && j0 + kGroup < steps) {
        lu += kGroup * channels;
        ld += kGroup * channels;
        if (kFinal) lz += kGroup * stride_z;
        load_group(j0 + kGroup, nu, nd, nz);
      }
      prepare_delta(gd);
      const float* rows = tiles[tile & 1] + tt * kCols;
      if (j0 + kGroup <= steps) {
#pragma unroll
        for (int r = 0; r < kGroup; ++r) step(gu[r], gd[r], gz[r], rows + r * kCols, r, ys);
      } else {  // the chunk's last, partial group
#pragma unroll
        for (int r = 0; r < kGroup; ++r) {
          if (j0 + r < steps) step(gu[r], gd[r], gz[r], rows + r * kCols, r, ys);
        }
      }
      if constexpr (kStageY) {
        store_staged_y(stream_row(tile & 1, 0, tt), j0);
      } else if (kFinal) {
        yp += kGroup * channels;
      }
#pragma unroll
      for (int r = 0; r < kGroup; ++r) {
        gu[r] = nu[r];
        gd[r] = nd[r];
        gz[r] = nz[r];
      }
      tt += kGroup;
    }
    __syncthreads();  // the next batch row overwrites the tiles

    if (active) {
      if constexpr (kFinal) {
        if (chunk == num_chunks - 1) {
          float* hout = p.h + (bi * channels + c) * n;
#pragma unroll
          for (int s = 0; s < NS; ++s) {
            if (s < n) hout[s] = h[s];
          }
        }
      } else {
        // Chunk k's end state goes to slot k + 1, which pass 2 turns into chunk k+1's start.
        const int64_t slot = static_cast<int64_t>(chunk + 1) * p.batch + bi;
        float* hout = p.ws_h + slot * n * channels + c;
#pragma unroll
        for (int s = 0; s < NS; ++s) {
          if (s < n) hout[s * channels] = h[s];
        }
        p.ws_s[slot * channels + c] = dt_sum;
      }
    }
  }
}

// Pass 2: one thread per (batch, state, channel) folds the chunk carries in time order:
// start[0] = h_in, start[k] = exp(A * sum_dt[k-1]) * start[k-1] + end_local[k-1].
template <typename T>
__global__ void __launch_bounds__(256) scan_carry_kernel(const ScanPtrs<T> p, const int num_chunks) {
  const int n = p.state_size;
  const int64_t channels = p.channels;
  const int64_t total = p.batch * n * channels;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = i % channels;
    const int s = static_cast<int>((i / channels) % n);
    const int64_t bi = i / (channels * n);
    const float a2 = p.a[c * n + s] * kLog2e;
    float h = p.h[(bi * channels + c) * n + s];
    const int64_t slot_stride = p.batch * n * channels;  // ws_h, between chunks
    const int64_t sum_stride = p.batch * channels;       // ws_s, between chunks
    float* wh = p.ws_h + (bi * n + s) * channels + c;
    const float* wsum = p.ws_s + bi * channels + c;
    wh[0] = h;
    // Loads of a group of chunks first, so they are in flight together; the chain is FMAs.
    constexpr int kGroup = 8;
    for (int k0 = 1; k0 < num_chunks; k0 += kGroup) {
      float end_local[kGroup], dt_sum[kGroup];
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        const int k = k0 + g;
        end_local[g] = k < num_chunks ? wh[k * slot_stride] : 0.0f;
        dt_sum[g] = k < num_chunks ? wsum[k * sum_stride] : 0.0f;
      }
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        const int k = k0 + g;
        if (k < num_chunks) {
          h = fmaf(exp2_approx(a2 * dt_sum[g]), h, end_local[g]);
          wh[k * slot_stride] = h;
        }
      }
    }
  }
}

// How a scan is split into chunks, and the workspace that needs.
struct ScanPlan {
  int num_chunks = 1;
  int64_t chunk_steps = 0;
  size_t workspace_bytes = 0;
  size_t sum_offset = 0;  // byte offset of ws_s in the workspace
};

int round_state_size(int64_t n) {
  int ns = 1;
  while (ns < n) ns *= 2;
  return ns;
}

// Calls f(T{}, std::integral_constant<int, NS>{}) for the dtype and the padded state size.
template <typename F>
void dispatch_scan(DType dtype, int64_t state_size, F&& f) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    switch (round_state_size(state_size)) {
      case 1: f(T{}, std::integral_constant<int, 1>{}); return;
      case 2: f(T{}, std::integral_constant<int, 2>{}); return;
      case 4: f(T{}, std::integral_constant<int, 4>{}); return;
      case 8: f(T{}, std::integral_constant<int, 8>{}); return;
      case 16: f(T{}, std::integral_constant<int, 16>{}); return;
      case 32: f(T{}, std::integral_constant<int, 32>{}); return;
      case 64: f(T{}, std::integral_constant<int, 64>{}); return;
    }
    throw std::invalid_argument("hvlm mamba kernels: state_size must be in 1..64");
  });
}

// Whether the chunked scan can stage its streams by cp.async (see scan_stream_smem_bytes):
// 16-byte copies need the channel count, z's row stride and the base pointers of u, delta and z
// aligned; pass 3's staged stores need y aligned too (checked for both passes: one plan).
template <typename T, int NS>
bool scan_async_ok(const SelectiveScanArgs& a) {
  if constexpr (!HVLM_SCAN_ASYNC || sizeof(T) != 2 || NS > 16) {
    return false;
  } else {
    constexpr int64_t kVec = 16 / sizeof(T);
    auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
    return a.channels % kVec == 0 && a.row_stride_z % kVec == 0 && aligned(a.u) && aligned(a.delta) &&
           aligned(a.z) && aligned(a.y);
  }
}

// The pass's kernel with its dynamic shared memory allowed (the attribute is per device, so it
// is set on every call; it costs a microsecond of host time).
template <typename T, int NS, bool kFinal, bool kAsync>
auto chunk_kernel(size_t* smem) {
  auto kernel = scan_chunk_kernel<T, NS, kFinal, kAsync>;
  *smem = kAsync ? scan_stream_smem_bytes<T, NS, kFinal>() : 0;
  if (*smem > 0) {
    check_call(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(*smem)),
               "cudaFuncSetAttribute");
  }
  return kernel;
}

// Enough chunks that pass 3 fills every resident block slot of the GPU HVLM_SCAN_WAVES times,
// at most (whole waves where the channel blocks divide the slots: a partial last wave would
// idle SMs), but chunks of at least kMinChunkSteps.
// One wave leaves each SM's two blocks to finish apart (ncu: 13.6 of 16 warps active on
// average), but more, shorter chunks gained little (H200, 64k, delta ready, median of 3: 1, 2,
// 3, 4, 6, 8 waves 1058, 1047, 1048, 1053, 1071, 1088 us) and cost at 8192 (162 against 168
// us at 2 waves), so one wave stays the default.
#ifndef HVLM_SCAN_WAVES
#define HVLM_SCAN_WAVES 1
#endif
template <typename T, int NS>
ScanPlan make_plan(const SelectiveScanArgs& a) {
  ScanPlan plan;
  plan.chunk_steps = std::max<int64_t>(a.length, 1);
  if (a.length <= kMinChunkSteps) return plan;
  int device = 0, sms = 0, per_sm = 0;
  check_call(cudaGetDevice(&device), "cudaGetDevice");
  check_call(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
             "cudaDeviceGetAttribute");
  size_t smem = 0;
  const auto pass3 = scan_async_ok<T, NS>(a) ? chunk_kernel<T, NS, true, true>(&smem)
                                             : chunk_kernel<T, NS, true, false>(&smem);
  check_call(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, pass3, kScanThreads, smem),
             "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  const int64_t slots = static_cast<int64_t>(std::max(sms, 1)) * std::max(per_sm, 1);
  const int64_t units = ((a.channels + kScanThreads - 1) / kScanThreads) *
                        std::min<int64_t>(a.batch, kMaxGridYZ);
  constexpr int64_t kWaves = HVLM_SCAN_WAVES;
  int64_t chunks = std::max<int64_t>(1, kWaves * slots / units);
  chunks = std::min(chunks, (a.length + kMinChunkSteps - 1) / kMinChunkSteps);
  chunks = std::min<int64_t>(chunks, kMaxGridYZ);
  plan.chunk_steps = (a.length + chunks - 1) / chunks;
  plan.num_chunks = static_cast<int>((a.length + plan.chunk_steps - 1) / plan.chunk_steps);
  if (plan.num_chunks > 1) {
    const size_t per_chunk = static_cast<size_t>(a.batch) * static_cast<size_t>(a.channels);
    const size_t h_bytes = plan.num_chunks * per_chunk * a.state_size * sizeof(float);
    plan.sum_offset = (h_bytes + 255) / 256 * 256;
    plan.workspace_bytes = plan.sum_offset + plan.num_chunks * per_chunk * sizeof(float);
  }
  return plan;
}

bool is_noop(const SelectiveScanArgs& a) { return a.batch == 0 || a.length == 0 || a.channels == 0; }

void validate(const SelectiveScanArgs& a) {
  auto fail = [](const std::string& what) {
    throw std::invalid_argument("hvlm::kernels::cuda::selective_scan: " + what);
  };
  if (a.batch < 0 || a.length < 0 || a.channels < 0) fail("negative size");
  if (a.state_size < 1 || a.state_size > 64) {
    fail("state_size must be in 1..64, got " + std::to_string(a.state_size));
  }
  if (a.dtype != DType::kFloat32 && a.dtype != DType::kBFloat16 && a.dtype != DType::kFloat16) {
    fail("unknown dtype");
  }
  if (is_noop(a)) return;
  if (a.row_stride_bc < a.state_size) fail("row_stride_bc must be >= state_size");
  if (a.row_stride_z < a.channels) fail("row_stride_z must be >= channels");
  if (!a.u || !a.delta || !a.a || !a.b || !a.c || !a.d || !a.z || !a.h || !a.y) {
    fail("null operand pointer");
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------

void causal_conv_silu(const CausalConvArgs& a) {
  auto fail = [](const std::string& what) {
    throw std::invalid_argument("hvlm::kernels::cuda::causal_conv_silu: " + what);
  };
  if (a.batch < 0 || a.length < 0 || a.channels < 0) fail("negative size");
  if (a.kernel < 1) fail("kernel must be >= 1, got " + std::to_string(a.kernel));
  if (a.kernel > 1024) fail("kernel must be <= 1024");
  if (a.dtype != DType::kFloat32 && a.dtype != DType::kBFloat16 && a.dtype != DType::kFloat16) {
    fail("unknown dtype");
  }
  if (a.batch == 0 || a.channels == 0) return;
  if (a.kernel > 1 && (!a.state_in || !a.state_out)) fail("null conv state pointer");
  if (a.length > 0) {
    if (a.row_stride_x < a.channels) fail("row_stride_x must be >= channels");
    if (!a.x || !a.weight || !a.bias || !a.out) fail("null operand pointer");
  } else if (a.kernel == 1) {
    return;  // nothing to write; with kernel > 1, length 0 copies state_in to state_out
  }
  const auto stream = static_cast<cudaStream_t>(a.stream);
  // Channel pairs per thread where 4-byte accesses line up: 2-byte dtypes, an even channel
  // count and row stride, 4-byte aligned x, weight, bias and out, a specialised kernel size.
  auto aligned4 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 4 == 0; };
  const bool pairs = a.dtype != DType::kFloat32 && a.kernel <= 4 && a.channels % 2 == 0 &&
                     a.row_stride_x % 2 == 0 && aligned4(a.x) && aligned4(a.weight) && aligned4(a.bias) &&
                     aligned4(a.out);
  const int64_t per_thread = pairs ? 2 : 1;
  const int64_t threads_needed = (a.channels + per_thread - 1) / per_thread;
  const dim3 grid(static_cast<unsigned>((threads_needed + kConvThreads - 1) / kConvThreads),
                  static_cast<unsigned>(std::clamp<int64_t>(
                      (a.length + kConvSteps - 1) / kConvSteps, 1, kMaxGridYZ)),
                  static_cast<unsigned>(std::min<int64_t>(a.batch, kMaxGridYZ)));
  dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    auto launch = [&](auto kernel_fn) {
      kernel_fn<<<grid, kConvThreads, 0, stream>>>(
          static_cast<const T*>(a.x), static_cast<const T*>(a.weight),
          static_cast<const T*>(a.bias), a.state_in, a.state_out, static_cast<T*>(a.out), a.batch,
          a.length, a.channels, a.row_stride_x, static_cast<int>(a.kernel));
      check_launch("conv_silu_kernel");
    };
    constexpr bool kPairs = sizeof(T) == 2;
    if (kPairs && pairs) {
      switch (a.kernel) {
        case 1: launch(conv_silu_kernel<T, 1, kPairs ? 2 : 1>); return;
        case 2: launch(conv_silu_kernel<T, 2, kPairs ? 2 : 1>); return;
        case 3: launch(conv_silu_kernel<T, 3, kPairs ? 2 : 1>); return;
        case 4: launch(conv_silu_kernel<T, 4, kPairs ? 2 : 1>); return;
      }
    }
    switch (a.kernel) {
      case 1: launch(conv_silu_kernel<T, 1, 1>); break;
      case 2: launch(conv_silu_kernel<T, 2, 1>); break;
      case 3: launch(conv_silu_kernel<T, 3, 1>); break;
      case 4: launch(conv_silu_kernel<T, 4, 1>); break;
      default: launch(conv_silu_kernel<T, 0, 1>); break;
    }
  });
}

size_t selective_scan_workspace_bytes(const SelectiveScanArgs& a) {
  validate(a);
  if (is_noop(a)) return 0;
  size_t bytes = 0;
  dispatch_scan(a.dtype, a.state_size, [&](auto tag, auto ns) {
    bytes = make_plan<decltype(tag), decltype(ns)::value>(a).workspace_bytes;
  });
  return bytes;
}

void selective_scan(const SelectiveScanArgs& a) {
  validate(a);
  if (is_noop(a)) return;
  const auto stream = static_cast<cudaStream_t>(a.stream);
  dispatch_scan(a.dtype, a.state_size, [&](auto tag, auto ns) {
    using T = decltype(tag);
    constexpr int NS = decltype(ns)::value;
    const ScanPlan plan = make_plan<T, NS>(a);
    if (plan.workspace_bytes > 0 && a.workspace == nullptr) {
      throw std::invalid_argument(
          "hvlm::kernels::cuda::selective_scan: workspace required (selective_scan_workspace_bytes)");
    }
    ScanPtrs<T> p;
    p.u = static_cast<const T*>(a.u);
    p.delta = static_cast<const T*>(a.delta);
    p.delta_bias = a.delta_bias;
    p.a = a.a;
    p.b = static_cast<const T*>(a.b);
    p.c = static_cast<const T*>(a.c);
    p.d = a.d;
    p.z = static_cast<const T*>(a.z);
    p.h = a.h;
    p.y = static_cast<T*>(a.y);
    p.ws_h = static_cast<float*>(a.workspace);
    p.ws_s = plan.workspace_bytes > 0
                 ? reinterpret_cast<float*>(static_cast<char*>(a.workspace) + plan.sum_offset)
                 : nullptr;
    p.batch = a.batch;
    p.length = a.length;
    p.channels = a.channels;
    p.row_stride_bc = a.row_stride_bc;
    p.row_stride_z = a.row_stride_z;
    p.state_size = static_cast<int>(a.state_size);
    p.delta_softplus = a.delta_softplus;

    const unsigned channel_blocks =
        static_cast<unsigned>((a.channels + kScanThreads - 1) / kScanThreads);
    const unsigned batch_grid = static_cast<unsigned>(std::min<int64_t>(a.batch, kMaxGridYZ));
    const bool async = scan_async_ok<T, NS>(a);
    size_t smem = 0;
    if (plan.num_chunks > 1) {
      const dim3 grid1(channel_blocks, plan.num_chunks - 1, batch_grid);
      const auto pass1 = async ? chunk_kernel<T, NS, false, true>(&smem) : chunk_kernel<T, NS, false, false>(&smem);
      pass1<<<grid1, kScanThreads, smem, stream>>>(p, plan.chunk_steps, plan.num_chunks);
      check_launch("scan_chunk_kernel (pass 1)");
      const int64_t carries = a.batch * a.state_size * a.channels;
      const unsigned blocks2 = static_cast<unsigned>(std::min<int64_t>((carries + 255) / 256, 1 << 20));
      scan_carry_kernel<T><<<blocks2, 256, 0, stream>>>(p, plan.num_chunks);
      check_launch("scan_carry_kernel (pass 2)");
    }
    const dim3 grid3(channel_blocks, plan.num_chunks, batch_grid);
    const auto pass3 = async ? chunk_kernel<T, NS, true, true>(&smem) : chunk_kernel<T, NS, true, false>(&smem);
    pass3<<<grid3, kScanThreads, smem, stream>>>(p, plan.chunk_steps, plan.num_chunks);
    check_launch("scan_chunk_kernel (pass 3)");
  });
}

}  // namespace hvlm::kernels::cuda
