// Pieces shared by the multi-head attention modules: the q/k/v/out projections (registered
// under the names q_proj, k_proj, v_proj, out_proj, as in the Python twin), head split/merge,
// and a driver that runs an attention core over bounded groups of heads.
// Stateless apart from the registered parameters; a module's forward is safe to call from
// several threads at once in eval mode.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include <functional>

namespace hvlm {

// Working memory a core may use for one group of heads; bounds the peak extra memory of long
// sequences (docs/benchmarks.md) while keeping the per-group matmuls large.
constexpr int64_t kHeadChunkBudgetBytes = 64LL << 20;
// On a GPU, launches are what cost: one group of up to 1 GiB.
constexpr int64_t kCudaHeadChunkBudgetBytes = 1LL << 30;

struct QkvProjections {
  torch::nn::Linear q_proj{nullptr};
  torch::nn::Linear k_proj{nullptr};
  torch::nn::Linear v_proj{nullptr};
  torch::nn::Linear out_proj{nullptr};

  // Creates the four Linear(dim, dim) layers and registers them on `owner`.
  void register_in(torch::nn::Module& owner, int64_t dim);

  // Self-attention of x [B, T, dim] through `core` (q, k, v [B, H, T, hd] -> [B, H, T, hd]):
  // checks x, projects, splits heads, runs the core, merges, applies dropout (training only)
  // and the output projection.
  at::Tensor self_attention(
      const at::Tensor& x, int64_t num_heads, double dropout, bool training,
      const std::function<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>&
          core);
};

// Checks dim > 0, num_heads > 0 and num_heads | dim, naming the module in the error.
void check_head_options(const char* module, int64_t dim, int64_t num_heads);

// [B, T, H * hd] -> [B, H, T, hd]
at::Tensor split_heads(const at::Tensor& x, int64_t num_heads);
// [B, H, T, hd] -> [B, T, H * hd]
at::Tensor merge_heads(const at::Tensor& x);

// An attention core on one group of sequences: q [G, Tq, hd], k and v [G, Tk, hd] -> [G, Tq, hd].
using HeadCore = std::function<at::Tensor(const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v)>;

// Runs `core` over q [B, H, Tq, hd], k, v [B, H, Tk, hd] in groups of (batch, head) pairs
// sized so that one group's working memory (bytes_per_head each) stays within
// kHeadChunkBudgetBytes (kCudaHeadChunkBudgetBytes on a GPU); returns [B, H, Tq, hd].
at::Tensor run_head_chunks(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           int64_t bytes_per_head, const HeadCore& core);

}  // namespace hvlm
