// Mlp: the feed-forward half of every block, fc1 -> GELU (exact, erf) -> fc2, with dropout
// after each linear in training mode. Parameter names mlp.fc1.*, mlp.fc2.* as in the twin.
// Thread-safety: safe to call concurrently in eval mode.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

namespace hvlm {

/// Options for Mlp.
/// Example: Mlp(MlpOptions(768, 3072))
struct MlpOptions {
  MlpOptions(int64_t dim, int64_t hidden) : dim_(dim), hidden_(hidden) {}
  /// Input and output features.
  TORCH_ARG(int64_t, dim);
  /// Hidden features.
  TORCH_ARG(int64_t, hidden);
  /// Dropout after the activation and after fc2, applied only in training mode.
  TORCH_ARG(double, dropout) = 0.0;
};

class MlpImpl : public torch::nn::Cloneable<MlpImpl> {
 public:
  explicit MlpImpl(const MlpOptions& options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  /// x [..., dim] -> [..., dim].
  at::Tensor forward(const at::Tensor& x);

  MlpOptions options;
  torch::nn::Linear fc1{nullptr};
  torch::nn::Linear fc2{nullptr};
};
TORCH_MODULE(Mlp);

// int(dim * mlp_ratio), checked to be >= 1.
int64_t mlp_hidden_dim(int64_t dim, double mlp_ratio);

}  // namespace hvlm
