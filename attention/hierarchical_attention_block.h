// HierarchicalAttentionBlock: a pre-norm residual block around one sparse attention module,
//   x = x + dropout(attn(norm1(x)))      (cross_memory: attn(norm1(x), memory, residual=false))
//   x = x + mlp(norm2(x))
// with attention_type strided, local_global or cross_memory (docs/attention.md).
// Thread-safety: safe to call concurrently in eval mode; memory is an argument, not state.
#pragma once

#include "attention/cross_memory_attention.h"
#include "attention/local_global_attention.h"
#include "attention/mlp.h"
#include "attention/strided_attention.h"

#include <ATen/core/Tensor.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <string>

namespace hvlm {

/// Options for HierarchicalAttentionBlock; the names match the Python twin's keyword arguments.
/// Example: HierarchicalAttentionBlock(HierarchicalAttentionBlockOptions(768, 12)
///              .attention_type("local_global").local_window(64).num_global_tokens(4))
struct HierarchicalAttentionBlockOptions {
  HierarchicalAttentionBlockOptions(int64_t dim = 768, int64_t num_heads = 12)
      : dim_(dim), num_heads_(num_heads) {}
  /// Model dimension D.
  TORCH_ARG(int64_t, dim);
  /// Number of heads; must divide dim.
  TORCH_ARG(int64_t, num_heads);
  /// "strided", "local_global" or "cross_memory".
  TORCH_ARG(std::string, attention_type) = "strided";
  /// strided: distance between attended tokens.
  TORCH_ARG(int64_t, stride) = 4;
  /// local_global: window width w in tokens (even, >= 2).
  TORCH_ARG(int64_t, local_window) = 64;
  /// local_global: number of global tokens g.
  TORCH_ARG(int64_t, num_global_tokens) = 4;
  /// MLP hidden width as a multiple of dim.
  TORCH_ARG(double, mlp_ratio) = 4.0;
  /// Dropout in training mode.
  TORCH_ARG(double, dropout) = 0.0;
};

class HierarchicalAttentionBlockImpl
    : public torch::nn::Cloneable<HierarchicalAttentionBlockImpl> {
 public:
  explicit HierarchicalAttentionBlockImpl(const HierarchicalAttentionBlockOptions& options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  /// x [B, T, D] -> [B, T, D]. `memory` [B or 1, m, D] is read by cross_memory blocks only
  /// (undefined or m = 0: the attention adds nothing); other types reject a memory.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& memory = {});

  bool uses_memory() const { return options.attention_type() == "cross_memory"; }

  HierarchicalAttentionBlockOptions options;
  torch::nn::LayerNorm norm1{nullptr};
  torch::nn::LayerNorm norm2{nullptr};
  Mlp mlp{nullptr};
  // Exactly one of these is set, registered as "attn".
  StridedAttention strided{nullptr};
  LocalGlobalAttention local_global{nullptr};
  CrossMemoryAttention cross_memory{nullptr};
};
TORCH_MODULE(HierarchicalAttentionBlock);

}  // namespace hvlm
