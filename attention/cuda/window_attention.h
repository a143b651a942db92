// The CUDA kernels of LocalGlobalAttention's core: every query attends to the keys of its
// sliding window (|i - j| <= half_window) plus the global keys outside that window, with one
// softmax over both, and the global queries attend to every key. Exactly the semantics of
// local_global_attention_core (docs/attention.md), for the whole core in one call:
//   - the window part: on tensor cores (mma.sync, bf16/fp16 in, float32 accumulate) for
//     half_window <= 64 and 2-byte dtypes; on CUDA cores (float32 arithmetic) otherwise;
//   - the global queries' rows: a split-over-keys pass with an online softmax per split, then
//     a merge of the splits that writes those rows over the window part's.
//
// Plain CUDA C++ without LibTorch, so it compiles in seconds and does not depend on the
// LibTorch version; the caller passes device pointers and the stream to launch on.
// Thread-safety: launches are asynchronous on the given stream; inputs, the output and the
// workspace must stay alive (and the inputs unchanged) until the work completes.
#pragma once

#include "attention/cuda/dtype.h"
#include "attention/cuda/head_layout.h"

#include <cstddef>
#include <cstdint>

namespace hvlm::kernels::cuda {

/// Most global tokens the kernels take; callers fall back to the generic path above it.
constexpr int64_t kMaxGlobalKeys = 16;

/// The global token positions, passed by value (no device copy): sorted, distinct, in
/// [0, length).
struct GlobalKeys {
  int32_t count = 0;
  int32_t positions[kMaxGlobalKeys] = {};
};

struct WindowAttentionArgs {
  DType dtype = DType::kFloat32;
  int64_t batch = 0, heads = 0;
  int64_t length = 0;       // n tokens
  int64_t head_dim = 0;     // see window_attention_supported
  int64_t half_window = 0;  // w / 2 (>= 1)
  // [batch, heads, length, head_dim] operands (head_layout.h). Every pointer and stride must
  // be 16-byte aligned (strides in elements: a multiple of 16 / element size).
  const void* q = nullptr;
  HeadStrides q_strides;
  const void* k = nullptr;
  HeadStrides k_strides;
  const void* v = nullptr;
  HeadStrides v_strides;
  void* out = nullptr;      // must not alias the inputs
  HeadStrides out_strides;
  GlobalKeys globals;
  float scale = 1.0f;       // applied to q . k
  // Scratch of window_attention_workspace_bytes(*this) bytes (nullptr when that is 0), in use
  // until the work on `stream` completes.
  void* workspace = nullptr;
  void* stream = nullptr;   // cudaStream_t
};

/// Whether the kernels handle this shape: head_dim in {8, 16, 32, 64, 128} (tensor cores:
/// 32, 64, 128), at most kMaxGlobalKeys global keys.
bool window_attention_supported(int64_t head_dim, int64_t num_global);

/// Whether the pointers and strides meet the 16-byte alignment the kernels load with.
bool window_attention_aligned(const WindowAttentionArgs& args);

/// Bytes of workspace the global rows need (0 without global keys).
size_t window_attention_workspace_bytes(const WindowAttentionArgs& args);

/// Launches the kernels. Throws std::invalid_argument for an unsupported or misaligned shape
/// and std::runtime_error with CUDA's message when a launch fails.
void window_attention(const WindowAttentionArgs& args);

}  // namespace hvlm::kernels::cuda
