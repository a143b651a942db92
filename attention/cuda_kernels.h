// LibTorch-facing wrappers of hvlm's own CUDA kernels (attention/cuda/*.cu): they check the
// tensors, pick the kernel for the dtype, and launch it on the current CUDA stream. Compiled
// only when HVLM_WITH_CUDA is set (a CUDA-enabled LibTorch); callers guard with
// `#if HVLM_WITH_CUDA`. Errors are c10::Errors naming the tensor.
// Thread-safety: stateless; concurrent calls on different streams are fine.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace hvlm::cuda {

/// Whether window_attention handles q of shape [G, n, head_dim] with `num_global` global keys.
bool window_attention_supported(int64_t head_dim, int64_t num_global);

/// The local part of LocalGlobalAttention for non-global queries: q, k, v [G, n, hd] on one
/// CUDA device, one floating dtype; `global_positions` the sorted int64 positions (any device).
/// Returns [G, n, hd]; rows of global queries are to be overwritten by the caller.
at::Tensor window_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t half_window,
                            const at::Tensor& global_positions);

}  // namespace hvlm::cuda
