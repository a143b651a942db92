// The CUDA kernel of LocalGlobalAttention's local part: every query attends to the keys of
// its sliding window (|i - j| <= half_window) plus the global keys outside that window, with
// one softmax over both. Exactly the semantics of local_global_attention_core for
// non-global queries (docs/attention.md); the rows of global queries, which attend to every
// key, are computed by the caller and written over this kernel's rows.
//
// Plain CUDA C++ without LibTorch, so it compiles in seconds and does not depend on the
// LibTorch version; the caller passes device pointers and the stream to launch on.
// Thread-safety: launches are asynchronous on the given stream; inputs must stay alive and
// unchanged until the work completes (LibTorch's stream semantics take care of that).
#pragma once

#include "attention/cuda/dtype.h"

#include <cstdint>

namespace hvlm::kernels::cuda {

struct WindowAttentionArgs {
  DType dtype = DType::kFloat32;
  int64_t groups = 0;       // batch * heads
  int64_t length = 0;       // n tokens
  int64_t head_dim = 0;     // see window_attention_supported
  int64_t half_window = 0;  // w / 2 (>= 1)
  const void* q = nullptr;  // [groups, length, head_dim], contiguous, dtype
  const void* k = nullptr;  // same
  const void* v = nullptr;  // same
  // Sorted, distinct global token positions in [0, length), device memory; may be nullptr
  // when num_global is 0.
  const int32_t* global_positions = nullptr;
  int64_t num_global = 0;
  float scale = 1.0f;       // applied to q . k
  void* out = nullptr;      // [groups, length, head_dim], dtype; must not alias the inputs
  void* stream = nullptr;   // cudaStream_t
};

/// Whether the kernel handles this shape (head_dim in {8, 16, 32, 64}, at most
/// kMaxGlobalKeys global keys); callers fall back to the generic path otherwise.
constexpr int64_t kMaxGlobalKeys = 64;
bool window_attention_supported(int64_t head_dim, int64_t num_global);

/// Launches the kernel. Throws std::invalid_argument for an unsupported shape and
/// std::runtime_error with CUDA's message when the launch fails.
void window_attention(const WindowAttentionArgs& args);

}  // namespace hvlm::kernels::cuda
