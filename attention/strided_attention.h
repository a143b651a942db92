// StridedAttention: query i attends to key j iff (i - j) mod stride == 0 (the non-causal
// strided pattern of Child et al. 2019). Computed by regrouping positions into `stride`
// residue classes and attending within each class; no n x n mask is ever built.
// Thread-safety: forward is safe to call concurrently in eval mode; the module holds weights only.
#pragma once

#include "attention/multi_head.h"

#include <ATen/core/Tensor.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

namespace hvlm {

// The attention core on q, k, v [G, n, hd] -> [G, n, hd]; any n >= 1 (the last, partial
// group of each residue class is padded and masked).
at::Tensor strided_attention_core(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  int64_t stride);

// The same result without a mask, for fused attention kernels: the residue classes that hold
// ceil(n / s) tokens and those that hold one fewer go through dense_attention separately.
// StridedAttention uses it on CUDA (where dense_attention is LibTorch's fused SDPA).
at::Tensor strided_attention_unmasked(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      int64_t stride);

/// Options for StridedAttention.
/// Example: StridedAttention(StridedAttentionOptions(768, 12, 4))
struct StridedAttentionOptions {
  StridedAttentionOptions(int64_t dim, int64_t num_heads, int64_t stride)
      : dim_(dim), num_heads_(num_heads), stride_(stride) {}
  /// Model dimension D (features per token).
  TORCH_ARG(int64_t, dim);
  /// Number of heads; must divide dim.
  TORCH_ARG(int64_t, num_heads);
  /// Distance between attended tokens (>= 1); stride 1 is dense attention.
  TORCH_ARG(int64_t, stride);
  /// Dropout on the attention output, applied only in training mode.
  TORCH_ARG(double, dropout) = 0.0;
};

class StridedAttentionImpl : public torch::nn::Cloneable<StridedAttentionImpl> {
 public:
  explicit StridedAttentionImpl(const StridedAttentionOptions& options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  /// x [B, T, D] -> [B, T, D].
  at::Tensor forward(const at::Tensor& x);
  /// The attention between projected heads, q, k, v [B, H, T, hd] -> [B, H, T, hd], run over
  /// bounded groups of heads. forward() is out_proj(merge(attention_core(split(q_proj(x)), ...))).
  at::Tensor attention_core(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

  StridedAttentionOptions options;
  QkvProjections proj;
};
TORCH_MODULE(StridedAttention);

}  // namespace hvlm
