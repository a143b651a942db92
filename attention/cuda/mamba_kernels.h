// The CUDA kernels of MambaLayer: the causal depthwise conv + SiLU and the selective scan
// (fused with the optional delta bias + softplus, the D skip and the SiLU(z) gate). They are
// the GPU twins of attention/selective_scan_cpu.h and compute the same functions.
//
// Plain C++ interface on raw device pointers, without LibTorch or cuda_runtime.h, so it can be
// included from any .cpp and the .cu compiles in seconds, independent of the LibTorch version.
// All arithmetic is float32 whatever the storage dtype (load -> float, compute, store); the
// recurrent states (conv state, SSM state h) are always float32.
//
// Common contract of both entry points:
//  - Every pointer is a device pointer of the current CUDA device; work is enqueued on
//    `stream` (a cudaStream_t; nullptr = the legacy default stream) and not waited for.
//  - Sizes are element counts; a "row stride" is the distance in elements between the starts
//    of consecutive time steps. Element types are those stated per field; 2-byte dtypes need
//    only 2-byte alignment (no vector loads are assumed).
//  - batch, length == 0 is a no-op (except that the conv still writes its state_out).
//  - Invalid arguments throw std::invalid_argument; a failed launch throws std::runtime_error
//    carrying the CUDA error string. Neither synchronizes the stream.
//  - Thread-safety: stateless; concurrent calls on different streams are safe when their
//    outputs (and the scan's workspace) are disjoint.
#pragma once

#include "attention/cuda/dtype.h"

#include <cstddef>
#include <cstdint>

namespace hvlm::kernels::cuda {

// DType (attention/cuda/dtype.h): the storage type of the activations and weights (u, delta,
// z, y, B, C, x, conv weight/bias).

/// silu(causal depthwise conv1d(x)) continuing from a carried conv state.
///   out[b, t, c] = silu(bias[c] + sum_{k<kernel} weight[k, c] * xx[b, t + k, c])
/// where xx[b, :, c] is state_in[b, c, :] (kernel - 1 steps) followed by x[b, :, c] along time;
/// state_out[b, c, :] receives the last kernel - 1 steps of xx (so for length < kernel - 1 part
/// of it comes from state_in), exactly as the CPU kernel.
struct CausalConvArgs {
  int64_t batch = 0, length = 0, channels = 0;
  int64_t kernel = 0;            // >= 1 (d_conv); kernels 1..4 are specialised, larger ones generic
  DType dtype = DType::kFloat32; // of x, weight, bias, out
  const void* x = nullptr;       // [batch, length, row_stride_x], first `channels` columns used
  int64_t row_stride_x = 0;      // >= channels
  const void* weight = nullptr;  // [kernel, channels] (the conv1d weight transposed), dtype
  const void* bias = nullptr;    // [channels], dtype
  const float* state_in = nullptr;  // [batch, channels, kernel - 1], float32, oldest first
  float* state_out = nullptr;       // [batch, channels, kernel - 1], float32; must not alias
                                    // state_in (both may be nullptr when kernel == 1)
  void* out = nullptr;              // [batch, length, channels], dtype; must not alias x
  void* stream = nullptr;           // cudaStream_t
};

/// The selective scan, per batch b, channel c and state s (state_size N):
///   v      = delta[b,t,c] + delta_bias[c]          (delta_bias nullptr: + 0)
///   dt_t   = delta_softplus ? softplus(v) : v     (softplus as torch: v > 20 ? v : log1p(exp(v)))
///   h_t[s] = exp(dt_t * a[c, s]) * h_{t-1}[s] + dt_t * b[b,t,s] * u[b,t,c]
///   y[b,t,c] = (sum_s c[b,t,s] * h_t[s] + d[c] * u[b,t,c]) * silu(z[b,t,c])
/// h holds h_{-1} on entry and h_{length-1} on return, so running a sequence in pieces with h
/// carried equals one run.
/// Supported: state_size 1..64 (sizes 1, 2, 4, 8, 16, 32, 64 run exactly; other sizes run as the
/// next one of these with zero padding); any batch, length, channels >= 0; row strides >= the
/// used width. y must not alias any input; h must not alias anything else.
struct SelectiveScanArgs {
  int64_t batch = 0, length = 0, channels = 0, state_size = 0;
  DType dtype = DType::kFloat32;   // of u, delta, b, c, z, y
  const void* u = nullptr;         // [batch, length, channels]
  const void* delta = nullptr;     // [batch, length, channels]: softplus'ed unless delta_softplus
  const float* delta_bias = nullptr;  // [channels] float32 (dt_proj.bias), or nullptr
  bool delta_softplus = false;     // apply softplus(delta + delta_bias) in the kernel
  const float* a = nullptr;        // [channels, state_size] float32, A = -exp(A_log)
  const void* b = nullptr;         // [batch, length, row_stride_bc], columns 0..state_size
  const void* c = nullptr;         // same layout as b
  int64_t row_stride_bc = 0;       // >= state_size
  const float* d = nullptr;        // [channels] float32
  const void* z = nullptr;         // [batch, length, row_stride_z]: the gate input
  int64_t row_stride_z = 0;        // >= channels
  float* h = nullptr;              // [batch, channels, state_size] float32, updated in place
  void* y = nullptr;               // [batch, length, channels]
  // Scratch of at least selective_scan_workspace_bytes(*this) bytes, 16-byte aligned (nullptr
  // allowed when that is 0). Contents need no initialisation; it is in use until the work on
  // `stream` completes, so it must not be shared with concurrent calls.
  void* workspace = nullptr;
  void* stream = nullptr;          // cudaStream_t
};

/// Enqueues the conv. Throws std::invalid_argument / std::runtime_error as described above.
void causal_conv_silu(const CausalConvArgs& args);

/// Bytes of workspace that selective_scan(args) needs; 0 when the sequence runs as one chunk.
/// Depends on batch, length, channels, state_size, dtype and the current device (its SM
/// count), so query it on the device the scan will run on, with the same arguments.
size_t selective_scan_workspace_bytes(const SelectiveScanArgs& args);

/// Enqueues the scan. Throws std::invalid_argument / std::runtime_error as described above.
void selective_scan(const SelectiveScanArgs& args);

}  // namespace hvlm::kernels::cuda
