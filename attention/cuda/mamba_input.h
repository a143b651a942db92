// The CUDA kernel of MambaLayer's input stage: everything between in_proj and the selective
// scan, in one pass over the rows,
//
//   u      = silu(causal depthwise conv1d(x))        (as causal_conv_silu, mamba_kernels.h)
//   x_dbl  = u x_proj_weight^T                        (dt | B | C, float32 accumulation)
//   delta  = softplus(x_dbl[:, :R] dt_weight^T + dt_bias)   (as delta_projection.h)
//
// so that u is read once (by the product, from registers and shared memory, not from memory)
// and dt never goes to memory and back. Each output is rounded once to the storage dtype; u
// equals causal_conv_silu's bit for bit, and delta equals delta_projection applied to this
// x_dbl bit for bit (the same products in the same order); x_dbl differs from a separate
// matmul by float32 summation order only.
//
// Why: run apart, the three steps moved ~810 MB at the layer's shape at 64k (1536 channels,
// bf16: x read and u written by the conv, u read again by x_proj, delta written by
// delta_projection) in three launches; fused, ~610 MB in one.
//
// Plain CUDA C++ without LibTorch or cuda_runtime.h; the common contract of
// attention/cuda/mamba_kernels.h holds (device pointers of the current device, work enqueued on
// `stream` and not waited for, std::invalid_argument for bad arguments, std::runtime_error for
// a failed launch, stateless).
#pragma once

#include "attention/cuda/dtype.h"

#include <cstdint>

namespace hvlm::kernels::cuda {

struct MambaInputArgs {
  DType dtype = DType::kBFloat16;  // of x, the weights, u, x_dbl and delta: kBFloat16 or kFloat16
  int64_t batch = 0, length = 0;
  int64_t channels = 0;  // E (d_inner)
  int64_t kernel = 0;    // d_conv
  int64_t rank = 0;      // R (dt_rank)
  int64_t proj = 0;      // P = R + 2N: x_proj's output features
  const void* x = nullptr;       // [batch, length, row_stride_x], columns 0 .. E - 1 used (xz)
  int64_t row_stride_x = 0;      // >= channels
  const void* conv_weight = nullptr;     // [kernel, E] (the conv1d weight transposed)
  const void* conv_bias = nullptr;       // [E]
  const float* conv_state_in = nullptr;  // [batch, E, kernel - 1] float32, oldest first
  float* conv_state_out = nullptr;       // the same shape; must not alias conv_state_in
  const void* x_proj_weight = nullptr;   // [P, E] contiguous (x_proj.weight)
  const void* dt_weight = nullptr;       // [E, R] contiguous (dt_proj.weight)
  const float* dt_bias = nullptr;        // [E] float32 (dt_proj.bias), or nullptr
  void* u = nullptr;      // [batch, length, E] contiguous
  void* x_dbl = nullptr;  // [batch, length, P] contiguous
  void* delta = nullptr;  // [batch, length, E] contiguous
  void* stream = nullptr;  // cudaStream_t
};

/// Whether mamba_input_stage takes these arguments: a 2-byte dtype, batch 1..65535, length >= 1,
/// kernel 1..4, channels a multiple of 64, rank a multiple of 8 up to 64, proj even with
/// rank < proj <= 128, row_stride_x a multiple of 8; x, u, delta, the four weights and dt_bias
/// 16-byte aligned, x_dbl 4-byte aligned. Callers run the separate kernels otherwise.
bool mamba_input_supported(const MambaInputArgs& args);

/// Whether the fused stage is the faster choice for these sizes on the current device: rows
/// enough to fill about a wave of its blocks (batch * length >= ~31.6k rows on an H200, length
/// >= 128). Below that it leaves SMs idle: on the H200 at batch 1 it took 104 us at length
/// 8192 against ~68 for the separate kernels (conv, cuBLAS's x_proj, delta_projection), but
/// 148 against ~166 at 32768 and 267 against ~315 at 65536.
bool mamba_input_preferred(const MambaInputArgs& args);

/// Enqueues the stage. Throws std::invalid_argument when !mamba_input_supported(args) or a
/// pointer is null, std::runtime_error when the launch fails.
void mamba_input_stage(const MambaInputArgs& args);

}  // namespace hvlm::kernels::cuda
