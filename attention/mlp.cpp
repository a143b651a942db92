#include "attention/mlp.h"

#include <ATen/ATen.h>

#include <cmath>

namespace hvlm {

MlpImpl::MlpImpl(const MlpOptions& options_) : options(options_) { reset(); }

void MlpImpl::reset() {
  TORCH_CHECK(options.dim() >= 1 && options.hidden() >= 1,
              "Mlp: dim and hidden must be >= 1, got ", options.dim(), " and ", options.hidden());
  fc1 = register_module("fc1", torch::nn::Linear(options.dim(), options.hidden()));
  fc2 = register_module("fc2", torch::nn::Linear(options.hidden(), options.dim()));
}

void MlpImpl::pretty_print(std::ostream& stream) const {
  stream << "hvlm::Mlp(dim=" << options.dim() << ", hidden=" << options.hidden() << ")";
}

at::Tensor MlpImpl::forward(const at::Tensor& x) {
  auto h = at::dropout(at::gelu(fc1->forward(x)), options.dropout(), is_training());
  return at::dropout(fc2->forward(h), options.dropout(), is_training());
}

int64_t mlp_hidden_dim(int64_t dim, double mlp_ratio) {
  TORCH_CHECK(std::isfinite(mlp_ratio) && mlp_ratio > 0, "mlp_ratio must be positive, got ",
              mlp_ratio);
  const auto hidden = static_cast<int64_t>(static_cast<double>(dim) * mlp_ratio);
  TORCH_CHECK(hidden >= 1, "mlp_ratio * dim must be >= 1, got ", mlp_ratio, " * ", dim);
  return hidden;
}

}  // namespace hvlm
