// AttentionStack: an ordered list of HierarchicalAttentionBlocks and LinearAttentionBlocks
// built from a StackSpec. Parameters are blocks.{i}.<block path>, equal to the Python twin's
// AttentionStack.state_dict() keys. Per-sequence state (cross_memory memories, mamba states)
// is passed in and returned, never kept, so one stack serves every session.
// Inference only: forward runs under c10::InferenceMode; call eval() to turn dropout off.
// Thread-safety: forward is safe to call concurrently in eval mode.
#pragma once

#include "attention/stack_spec.h"

#include <ATen/core/Tensor.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <vector>

namespace hvlm {

struct StackOutput {
  /// [B, T, D]
  at::Tensor y;
  /// One entry per block: the next state for mamba blocks, undefined for the others.
  std::vector<MambaState> states;
  /// One entry per block: for cross_memory blocks the [B, T, D] hidden states that entered the
  /// block (what a session's memory bank stores), undefined for the others.
  std::vector<at::Tensor> memory_inputs;
};

class AttentionStackImpl : public torch::nn::Cloneable<AttentionStackImpl> {
 public:
  explicit AttentionStackImpl(StackSpec spec);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  /// x [B, T, D]. `memories` is empty or has one entry per block: a [B or 1, m, D] memory for
  /// cross_memory blocks (undefined: none), undefined for the others. `states` is empty or has
  /// one entry per block: the mamba state to continue from (undefined: zeros), undefined for
  /// the others.
  StackOutput forward(const at::Tensor& x, const std::vector<at::Tensor>& memories = {},
                      const std::vector<MambaState>& states = {});

  const StackSpec& spec() const { return spec_; }
  size_t num_blocks() const { return spec_.blocks.size(); }
  /// Indices of the cross_memory blocks, and of the mamba blocks.
  std::vector<size_t> memory_blocks() const;
  std::vector<size_t> mamba_blocks() const;

  torch::nn::ModuleList blocks{nullptr};

 private:
  StackSpec spec_;
};
TORCH_MODULE(AttentionStack);

}  // namespace hvlm
