// One pass of exp(u - shift[row]) + add over the Performer feature matrix: each thread takes
// 8 consecutive features of one row (16-byte loads for 2-byte types) when the row length
// allows, one otherwise. Memory-bound: read u once, write out once.
#include "attention/cuda/performer_kernels.h"

#include "attention/cuda/element.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

namespace hvlm::kernels::cuda {
namespace {


constexpr int kThreads = 256;

// Vectorised: `features` is a multiple of kVec; each thread handles kVec elements of a row.
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
void launch(const PerformerFeatureArgs& a) {
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

}  // namespace

void performer_features(const PerformerFeatureArgs& a) {
  if (a.rows <= 0 || a.features <= 0) return;
  switch (a.dtype) {
    case DType::kFloat32: launch<float>(a); break;
    case DType::kBFloat16: launch<__nv_bfloat16>(a); break;
    case DType::kFloat16: launch<__half>(a); break;
  }
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("performer_features: launch failed: ") + cudaGetErrorString(status));
  }
}

}  // namespace hvlm::kernels::cuda
