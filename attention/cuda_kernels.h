// LibTorch-facing wrappers of hvlm's own CUDA kernels (attention/cuda/*.cu): they check the
// tensors, pick the kernel for the dtype, and launch it on the current CUDA stream. Compiled
// only when HVLM_WITH_CUDA is set (a CUDA-enabled LibTorch); callers guard with
// `#if HVLM_WITH_CUDA`. Errors are c10::Errors naming the tensor.
// Thread-safety: stateless; concurrent calls on different streams are fine.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace hvlm::cuda {

/// Whether local_global_attention handles this head dim and number of global tokens.
bool local_global_supported(int64_t head_dim, int64_t num_global);

/// LocalGlobalAttention's whole core on CUDA: q, k, v [B, H, n, hd] on one CUDA device, one
/// floating dtype, any strides with hd contiguous (e.g. the projections' head views);
/// `global_positions` sorted, distinct, in [0, n). Returns [B, H, n, hd], a transposed view of
/// a contiguous [B, n, H, hd] tensor (so merging the heads afterwards is a free view).
at::Tensor local_global_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t half_window,
                                  const std::vector<int64_t>& global_positions);

/// exp(u - shift[..., None]) + add for u [..., m] (one pass): the tail of Performer's softmax
/// feature map. `shift` [...] is float32 on u's device. Returns a tensor like u.
at::Tensor performer_features(const at::Tensor& u, const at::Tensor& shift, double add);

/// Whether performer_attention handles this dtype (bfloat16, float16), head_dim and number of
/// random features; callers fall back to the generic path otherwise.
bool performer_attention_supported(at::ScalarType dtype, int64_t head_dim, int64_t num_features);

/// PerformerAttention's softmax-kernel core (performer_attention_core with kSoftmax), fused:
/// q, k, v [B, H, n, hd] on one CUDA device, one dtype; read in place when stride(3) == 1, the
/// data is 16-byte aligned and the other strides are multiples of 8 (as the projections'
/// [B, n, H * hd] output viewed per head), copied otherwise; projection [m, hd] of that dtype. Returns [B, H, n, hd] as a transposed view of a contiguous
/// [B, n, H, hd] tensor, so merge_heads on it is free.
at::Tensor performer_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& projection);

/// The conv and scan stages of one MambaLayer pass on CUDA (the twins of MambaLayerImpl's
/// conv_stage and scan_stage; see attention/cuda/mamba_kernels.h for the math). The constant
/// operands come in the kernels' layout (MambaLayerImpl prepares them once per weight version).
/// xz [B, L, 2E] (x | z) in the layer's dtype; conv_weight [K, E] (the conv1d weight
/// transposed) and conv_bias [E], contiguous, in xz's dtype; conv_state [B, E, K-1] float32 is
/// replaced by the state after the pass. Returns u = silu(conv(x)) [B, L, E].
at::Tensor mamba_conv(const at::Tensor& xz, const at::Tensor& conv_weight, const at::Tensor& conv_bias,
                      at::Tensor& conv_state);
/// The outputs of MambaLayer's input stage: u = silu(conv(x)), x_dbl = u x_proj^T and delta =
/// softplus(x_dbl[..., :R] dt_proj^T + dt_bias), each [B, L, *] in the layer's dtype.
struct MambaInputs {
  at::Tensor u, x_dbl, delta;
};
/// The conv, x_proj and dt_proj + softplus in one kernel (attention/cuda/mamba_input.h), for
/// bfloat16/float16 layers whose shapes it takes: operands as mamba_conv's, plus x_proj_weight
/// [P, E] (x_proj.weight, P = R + 2N) and dt_weight [E, R] (dt_proj.weight) in xz's dtype and
/// dt_bias [E] float32. Returns std::nullopt, having changed nothing, where the kernel does not
/// take them or is not the faster choice (too few rows to fill the GPU: see
/// mamba_input_preferred); callers then run mamba_conv, x_proj and mamba_scan's own delta. Otherwise
/// conv_state is replaced by the state after the pass.
std::optional<MambaInputs> mamba_input(const at::Tensor& xz, const at::Tensor& conv_weight,
                                       const at::Tensor& conv_bias, at::Tensor& conv_state,
                                       const at::Tensor& x_proj_weight, const at::Tensor& dt_weight,
                                       const at::Tensor& dt_bias);
/// u [B, L, E]; x_dbl [B, L, R + 2N] (dt | B | C); dt_weight [E, R] (dt_proj.weight); dt_bias
/// [E] float32 (dt_proj.bias: delta = softplus(x_dbl[..., :R] dt_weight^T + dt_bias); for
/// bfloat16/float16 one kernel computes delta whole (attention/cuda/delta_projection.h), for
/// float32 the scan applies the bias and softplus to the product); a [E, N] float32
/// (= -exp(A_log)); d [E] float32; xz as above (z = its second half); ssm_state [B, E, N]
/// float32, updated in place. Operands of other shapes, dtypes or devices are refused.
/// `delta`, when defined, is delta ready to use ([B, L, E] contiguous in u's dtype, as
/// mamba_input returns it), and dt_weight and dt_bias are then not used.
/// Returns y [B, L, E] (before out_proj).
at::Tensor mamba_scan(const at::Tensor& u, const at::Tensor& x_dbl, const at::Tensor& dt_weight,
                      const at::Tensor& dt_bias, const at::Tensor& a, const at::Tensor& d, const at::Tensor& xz,
                      at::Tensor& ssm_state, const at::Tensor& delta = {});

/// Concatenates `parts` along dim 0 into a new contiguous tensor on `device` (a CUDA device),
/// one kernel per 64 parts on the current stream, not waited for (attention/cuda/piece_copy.h):
/// a batch's per-session tensors with the host cost of a launch rather than of a copy (or of
/// at::cat's work) per part. Every part: contiguous, one dtype, one shape past dim 0, either
/// on `device` or in pinned host memory, which is read across the bus directly (no staging copy
/// on the host). The caller keeps the parts alive and unchanged until the stream is past the
/// copy.
at::Tensor concat_rows(const std::vector<at::Tensor>& parts, at::Device device);
/// Whether concat_rows can read `part` for `device`: contiguous, and on that device (no index:
/// the current one) or in pinned host memory (or empty on the host).
bool concat_rows_reads(const at::Tensor& part, at::Device device);

}  // namespace hvlm::cuda
