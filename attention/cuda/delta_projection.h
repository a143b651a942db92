// The CUDA kernel of MambaLayer's step sizes: dt_proj, its bias and the softplus as one
// tensor-core product, so that the selective scan reads delta ready to use.
//
//   delta[r, c] = softplus(sum_{k < rank} dt[r, k] * weight[c, k] + bias[c])
//
// with softplus as torch's (beta 1, threshold 20). This is `softplus(dt_proj(x_dbl[..., :R]))`
// of MambaLayer, the CPU path's two steps, with the product accumulated in float32 and delta
// rounded once to the storage dtype (the CPU path rounds the product, then the softplus).
//
// Why a kernel of our own: the product is a thin GEMM (rank R = dim / 16 = 48 at dim 768)
// whose time is the write of delta, [rows, E]. cuBLAS has no softplus epilogue, so the scan
// applied bias + softplus itself, in both of its passes (~22 instructions a step each, in
// kernels bound by instruction issue). Here it is applied once, in the epilogue of the product.
//
// Plain CUDA C++ without LibTorch or cuda_runtime.h; the common contract of
// attention/cuda/mamba_kernels.h holds (device pointers of the current device, work enqueued on
// `stream` and not waited for, std::invalid_argument for bad arguments, std::runtime_error for
// a failed launch, stateless).
#pragma once

#include "attention/cuda/dtype.h"

#include <cstdint>

namespace hvlm::kernels::cuda {

struct DeltaProjectionArgs {
  DType dtype = DType::kBFloat16;  // of dt, weight and delta: kBFloat16 or kFloat16
  int64_t rows = 0;                // batch * length
  int64_t channels = 0;            // E
  int64_t rank = 0;                // R: 1 .. kDeltaProjectionMaxRank
  const void* dt = nullptr;        // [rows, row_stride_dt], columns 0 .. rank - 1 used
  int64_t row_stride_dt = 0;       // >= rank
  const void* weight = nullptr;    // [channels, rank], contiguous (dt_proj.weight)
  const float* bias = nullptr;     // [channels] float32 (dt_proj.bias), or nullptr
  void* delta = nullptr;           // [rows, channels], contiguous; must not alias the inputs
  void* stream = nullptr;          // cudaStream_t
};

/// The largest rank the kernel takes (the operand tiles live in shared memory whole).
constexpr int64_t kDeltaProjectionMaxRank = 128;

/// Whether delta_projection takes this dtype and rank.
bool delta_projection_supported(DType dtype, int64_t rank);

/// Enqueues the product. Any alignment works; 16-byte aligned pointers with row strides, rank
/// and channels that are multiples of 8 take the vector loads and stores.
void delta_projection(const DeltaProjectionArgs& args);

}  // namespace hvlm::kernels::cuda
