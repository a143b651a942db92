// CrossMemoryAttention: queries from the current segment's tokens, keys and values from the
// memory tokens of earlier segments. The memory is an argument, never module state, so one
// module instance serves every session; its length may change from call to call.
// An empty memory (m = 0) has nothing to attend to: the attention output is zero, so the
// residual and fused forms return `local` unchanged (docs/attention.md).
// Thread-safety: safe to call concurrently in eval mode; the module holds weights only.
#pragma once

#include "attention/multi_head.h"

#include <ATen/core/Tensor.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

namespace hvlm {

/// Options for CrossMemoryAttention.
/// Example: CrossMemoryAttention(CrossMemoryAttentionOptions(768, 12))
struct CrossMemoryAttentionOptions {
  CrossMemoryAttentionOptions(int64_t dim, int64_t num_heads) : dim_(dim), num_heads_(num_heads) {}
  /// Model dimension D of both local and memory tokens.
  TORCH_ARG(int64_t, dim);
  /// Number of heads; must divide dim.
  TORCH_ARG(int64_t, num_heads);
  /// Dropout on the attention output, applied only in training mode.
  TORCH_ARG(double, dropout) = 0.0;
};

class CrossMemoryAttentionImpl : public torch::nn::Cloneable<CrossMemoryAttentionImpl> {
 public:
  explicit CrossMemoryAttentionImpl(const CrossMemoryAttentionOptions& options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  /// local [B, n, D], memory [B or 1, m, D] (m >= 0) -> local + attn, or attn when
  /// `residual` is false.
  at::Tensor forward(const at::Tensor& local, const at::Tensor& memory, bool residual = true);

  /// (1 - fusion_ratio) * local + fusion_ratio * attn, fusion_ratio in [0, 1].
  at::Tensor fuse_with_memory(const at::Tensor& local, const at::Tensor& memory,
                              double fusion_ratio);

  /// The attention term alone (zeros for an empty memory). Inputs must be validated.
  at::Tensor attend(const at::Tensor& local, const at::Tensor& memory);

  CrossMemoryAttentionOptions options;
  QkvProjections proj;

 private:
  void check_inputs(const at::Tensor& local, const at::Tensor& memory) const;
};
TORCH_MODULE(CrossMemoryAttention);

}  // namespace hvlm
