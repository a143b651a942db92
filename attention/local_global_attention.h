// LocalGlobalAttention (Longformer-style): token i attends to every j with |i - j| <= w/2,
// plus the g global positions p_t = floor(t * n / g); the global positions attend to all n
// tokens. One softmax over the union, each key counted once (docs/attention.md).
// Computed blockwise: each block of queries against its window span plus the global keys, so
// working memory is O(n * (w + g)); no n x n mask is ever built.
// Thread-safety: forward is safe to call concurrently in eval mode; the module holds weights only.
#pragma once

#include "attention/multi_head.h"

#include <ATen/core/Tensor.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include <vector>

namespace hvlm {

// The sorted, distinct global positions {floor(t * n / g) : t < g} (empty when g == 0), an
// int64 tensor on `device` (computed there: no copy, no synchronisation).
at::Tensor global_positions(int64_t n, int64_t num_global_tokens, const at::Device& device = at::kCPU);
// The same positions as a host list (what the CUDA kernels take by value).
std::vector<int64_t> global_position_list(int64_t n, int64_t num_global_tokens);

// The attention core on q, k, v [G, n, hd] -> [G, n, hd]. `block_size` 0 picks one.
at::Tensor local_global_attention_core(const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, int64_t local_window,
                                       int64_t num_global_tokens, int64_t block_size = 0);

/// Options for LocalGlobalAttention.
/// Example: LocalGlobalAttention(LocalGlobalAttentionOptions(768, 12).local_window(64))
struct LocalGlobalAttentionOptions {
  LocalGlobalAttentionOptions(int64_t dim, int64_t num_heads) : dim_(dim), num_heads_(num_heads) {}
  /// Model dimension D (features per token).
  TORCH_ARG(int64_t, dim);
  /// Number of heads; must divide dim.
  TORCH_ARG(int64_t, num_heads);
  /// Window width w in tokens (even, >= 2): token i sees j with |i - j| <= w / 2.
  TORCH_ARG(int64_t, local_window) = 64;
  /// Number of global tokens g (>= 0), spread evenly over the sequence.
  TORCH_ARG(int64_t, num_global_tokens) = 4;
  /// Dropout on the attention output, applied only in training mode.
  TORCH_ARG(double, dropout) = 0.0;
};

class LocalGlobalAttentionImpl : public torch::nn::Cloneable<LocalGlobalAttentionImpl> {
 public:
  explicit LocalGlobalAttentionImpl(const LocalGlobalAttentionOptions& options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  /// x [B, T, D] -> [B, T, D].
  at::Tensor forward(const at::Tensor& x);
  /// The attention between projected heads, q, k, v [B, H, T, hd] -> [B, H, T, hd], run over
  /// bounded groups of heads. forward() is out_proj(merge(attention_core(split(q_proj(x)), ...))).
  at::Tensor attention_core(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

  LocalGlobalAttentionOptions options;
  QkvProjections proj;
};
TORCH_MODULE(LocalGlobalAttention);

}  // namespace hvlm
