// LinearAttentionBlock: a pre-norm residual block around a linear-time mixer,
//   x = x + dropout(attn(norm1(x)));  x = x + mlp(norm2(x))
// with attention_type performer or mamba. A mamba block carries the layer's recurrent state
// through forward_stream; the state is an argument, never module state.
// Thread-safety: safe to call concurrently in eval mode.
#pragma once

#include "attention/mamba_layer.h"
#include "attention/mlp.h"
#include "attention/performer_attention.h"

#include <ATen/core/Tensor.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <utility>

namespace hvlm {

/// Options for LinearAttentionBlock; the names match the Python twin's keyword arguments.
/// Example: LinearAttentionBlock(LinearAttentionBlockOptions(768).attention_type("mamba"))
struct LinearAttentionBlockOptions {
  LinearAttentionBlockOptions(int64_t dim = 768) : dim_(dim) {}
  /// Model dimension D.
  TORCH_ARG(int64_t, dim);
  /// "performer" or "mamba".
  TORCH_ARG(std::string, attention_type) = "performer";
  /// performer: number of heads; must divide dim. Ignored by mamba.
  TORCH_ARG(int64_t, num_heads) = 12;
  /// performer: number of random features m.
  TORCH_ARG(int64_t, num_random_features) = 256;
  /// performer: "softmax", "relu" or "elu".
  TORCH_ARG(std::string, kernel_type) = "softmax";
  /// mamba: SSM state size N.
  TORCH_ARG(int64_t, state_size) = 16;
  /// mamba: inner channels = int(expand_factor * dim).
  TORCH_ARG(double, expand_factor) = 2.0;
  /// mamba: causal conv width.
  TORCH_ARG(int64_t, d_conv) = 4;
  /// mamba: delta projection rank; 0 means ceil(dim / 16).
  TORCH_ARG(int64_t, dt_rank) = 0;
  /// mamba: "constant" or "random".
  TORCH_ARG(std::string, dt_init) = "random";
  /// mamba: smallest initial step size.
  TORCH_ARG(double, dt_min) = 1e-3;
  /// mamba: largest initial step size.
  TORCH_ARG(double, dt_max) = 0.1;
  /// mamba: floor of the initial step size.
  TORCH_ARG(double, dt_init_floor) = 1e-4;
  /// MLP hidden width as a multiple of dim.
  TORCH_ARG(double, mlp_ratio) = 4.0;
  /// Dropout in training mode.
  TORCH_ARG(double, dropout) = 0.0;
};

class LinearAttentionBlockImpl : public torch::nn::Cloneable<LinearAttentionBlockImpl> {
 public:
  explicit LinearAttentionBlockImpl(const LinearAttentionBlockOptions& options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  /// x [B, T, D] -> [B, T, D] (mamba: from the zero state).
  at::Tensor forward(const at::Tensor& x);

  /// x continuing from `state` (mamba only; undefined state: zeros) -> (y, next state).
  /// Performer blocks ignore the state and return an undefined one.
  std::pair<at::Tensor, MambaState> forward_stream(const at::Tensor& x, const MambaState& state);

  bool uses_state() const { return options.attention_type() == "mamba"; }

  LinearAttentionBlockOptions options;
  torch::nn::LayerNorm norm1{nullptr};
  torch::nn::LayerNorm norm2{nullptr};
  Mlp mlp{nullptr};
  // Exactly one of these is set, registered as "attn".
  PerformerAttention performer{nullptr};
  MambaLayer mamba{nullptr};
};
TORCH_MODULE(LinearAttentionBlock);

}  // namespace hvlm
