// PerformerAttention: FAVOR+ non-causal linear attention (Choromanski et al. 2020),
//   out = phi(q) (phi(k)^T v) / (phi(q) . sum_j phi(k_j)),
// with positive orthogonal random features ('softmax'), or the 'relu' / 'elu' feature maps.
// The projection W [m, head_dim] is the registered buffer `projection_matrix`, saved and
// loaded with the weights, so serving is deterministic. Cost O(n * m) per head.
// Thread-safety: safe to call concurrently in eval mode; the module holds weights only.
#pragma once

#include "attention/multi_head.h"

#include <ATen/core/Tensor.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include <string>

namespace hvlm {

enum class PerformerKernel { kSoftmax, kRelu, kElu };

// Parses "softmax" | "relu" | "elu"; throws naming the value otherwise.
PerformerKernel parse_performer_kernel(const std::string& name);

// The feature map phi of q or k [G, n, hd] for projection W [m, hd] -> [G, n, m].
at::Tensor performer_features(const at::Tensor& x, const at::Tensor& projection,
                              PerformerKernel kernel, bool is_query);

// The attention core on q, k, v [G, n, hd] -> [G, n, hd].
at::Tensor performer_attention_core(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& projection, PerformerKernel kernel);

// A fresh random W [m, hd]: stacked orthogonal blocks, rows scaled by chi-distributed norms.
at::Tensor orthogonal_random_features(int64_t num_features, int64_t head_dim);

/// Options for PerformerAttention.
/// Example: PerformerAttention(PerformerAttentionOptions(768, 12).kernel_type("elu"))
struct PerformerAttentionOptions {
  PerformerAttentionOptions(int64_t dim, int64_t num_heads) : dim_(dim), num_heads_(num_heads) {}
  /// Model dimension D (features per token).
  TORCH_ARG(int64_t, dim);
  /// Number of heads; must divide dim.
  TORCH_ARG(int64_t, num_heads);
  /// Number of random features m (>= 1); more features approximate softmax more closely.
  TORCH_ARG(int64_t, num_random_features) = 256;
  /// Feature map: "softmax" (FAVOR+), "relu" or "elu".
  TORCH_ARG(std::string, kernel_type) = "softmax";
  /// Dropout on the attention output, applied only in training mode.
  TORCH_ARG(double, dropout) = 0.0;
};

class PerformerAttentionImpl : public torch::nn::Cloneable<PerformerAttentionImpl> {
 public:
  explicit PerformerAttentionImpl(const PerformerAttentionOptions& options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  /// x [B, T, D] -> [B, T, D].
  at::Tensor forward(const at::Tensor& x);
  /// The attention between projected heads, q, k, v [B, H, T, hd] -> [B, H, T, hd], run over
  /// bounded groups of heads. forward() is out_proj(merge(attention_core(split(q_proj(x)), ...))).
  at::Tensor attention_core(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

  PerformerAttentionOptions options;
  QkvProjections proj;
  /// W [num_random_features, head_dim], shared by all heads.
  at::Tensor projection_matrix;

 private:
  PerformerKernel kernel_ = PerformerKernel::kSoftmax;
};
TORCH_MODULE(PerformerAttention);

}  // namespace hvlm
