// The CUDA kernel of PerformerAttention's softmax feature map: the elementwise tail
//   out[r, f] = exp(u[r, f] - shift[r]) + add
// in one pass over u (the projections u = x' P^T and the per-row shift come from LibTorch).
// Plain CUDA C++ without LibTorch; see window_attention.h for the conventions.
#pragma once

#include "attention/cuda/window_attention.h"

#include <cstdint>

namespace hvlm::kernels::cuda {

struct PerformerFeatureArgs {
  DType dtype = DType::kFloat32;  // of u and out
  int64_t rows = 0;          // G * n
  int64_t features = 0;      // m
  const void* u = nullptr;   // [rows, features], contiguous
  const float* shift = nullptr;  // [rows], float32
  float add = 0.0f;
  void* out = nullptr;       // [rows, features], may alias u
  void* stream = nullptr;    // cudaStream_t
};

/// Launches the kernel; throws std::runtime_error with CUDA's message when the launch fails.
void performer_features(const PerformerFeatureArgs& args);

}  // namespace hvlm::kernels::cuda
