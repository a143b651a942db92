// Standard (dense) softmax attention: the O(n^2) baseline of the seed's efficiency table, the
// dense masked-attention oracle of the semantics tests, and the core that the efficient
// mechanisms use on their small dense pieces (global queries, memory tokens).
// Thread-safety: stateless functions; the module is safe to call concurrently in eval mode.
#pragma once

#include "attention/multi_head.h"

#include <ATen/core/Tensor.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

namespace hvlm {

// softmax(q k^T / sqrt(hd)) v over the last two dims: q [..., Tq, hd], k, v [..., Tk, hd].
// `allowed`, when defined, is a bool tensor broadcastable to [..., Tq, Tk]: key j is visible to
// query i iff allowed[i, j]. Each query must see at least one key. Without a mask, on CUDA
// with LibTorch >= 2.0, this runs at::scaled_dot_product_attention (fused kernels).
// Makes LibTorch's scaled_dot_product_attention leave out cuDNN's fused attention, process-wide
// (a no-op before LibTorch 2.4). cuDNN builds an execution plan for every new shape, measured at
// ~65 ms per new shape on an H200 with LibTorch 2.11; a server meets a new shape with every batch
// size and memory length, and flash attention has no per-shape setup. Call before serving.
void prefer_flash_attention();

at::Tensor dense_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& allowed = {});

/// Options for StandardAttention, the dense multi-head baseline.
/// Example: StandardAttention(StandardAttentionOptions(768, 12))
struct StandardAttentionOptions {
  StandardAttentionOptions(int64_t dim, int64_t num_heads) : dim_(dim), num_heads_(num_heads) {}
  /// Model dimension D (features per token).
  TORCH_ARG(int64_t, dim);
  /// Number of heads; must divide dim.
  TORCH_ARG(int64_t, num_heads);
};

class StandardAttentionImpl : public torch::nn::Cloneable<StandardAttentionImpl> {
 public:
  explicit StandardAttentionImpl(const StandardAttentionOptions& options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  /// x [B, T, D] -> [B, T, D]; every token attends to every token.
  at::Tensor forward(const at::Tensor& x);
  /// dense_attention over all heads at once, q, k, v [B, H, T, hd] -> [B, H, T, hd]: the
  /// textbook O(T^2)-memory baseline.
  at::Tensor attention_core(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

  StandardAttentionOptions options;
  QkvProjections proj;
};
TORCH_MODULE(StandardAttention);

}  // namespace hvlm
