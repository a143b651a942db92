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

/// exp(u - shift[..., None]) + add for u [..., m] (one pass): the tail of Performer's softmax
/// feature map. `shift` [...] is float32 on u's device. Returns a tensor like u.
at::Tensor performer_features(const at::Tensor& u, const at::Tensor& shift, double add);

/// The conv and scan stages of one MambaLayer pass on CUDA (the twins of MambaLayerImpl's
/// conv_stage and scan_stage; see attention/cuda/mamba_kernels.h for the math).
/// xz [B, L, 2E] (x | z) in the layer's dtype; conv_weight [E, 1, K] and conv_bias [E] are the
/// conv1d parameters; conv_state [B, E, K-1] float32 is replaced by the state after the pass.
/// Returns u = silu(conv(x)) [B, L, E].
at::Tensor mamba_conv(const at::Tensor& xz, const at::Tensor& conv_weight, const at::Tensor& conv_bias,
                      at::Tensor& conv_state);
/// u [B, L, E]; x_dbl [B, L, R + 2N] (dt | B | C); dt_weight [E, R] and dt_bias [E] (dt_proj,
/// applied here: delta = softplus(dt x_dbl[..., :R]^T + bias) inside the kernel); A_log [E, N];
/// D [E]; xz as above (z = its second half); ssm_state [B, E, N] float32, updated in place.
/// Returns y [B, L, E] (before out_proj).
at::Tensor mamba_scan(const at::Tensor& u, const at::Tensor& x_dbl, const at::Tensor& dt_weight,
                      const at::Tensor& dt_bias, const at::Tensor& A_log, const at::Tensor& D, const at::Tensor& xz,
                      at::Tensor& ssm_state);

}  // namespace hvlm::cuda
