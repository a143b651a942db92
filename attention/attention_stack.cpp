#include "attention/attention_stack.h"

#include "attention/tensor_checks.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

namespace hvlm {

AttentionStackImpl::AttentionStackImpl(StackSpec spec) : spec_(std::move(spec)) { reset(); }

void AttentionStackImpl::reset() {
  TORCH_CHECK(spec_.dim > 0, "stack dim must be positive, got ", spec_.dim);
  TORCH_CHECK(!spec_.blocks.empty(), "a stack needs at least one block");
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (size_t i = 0; i < spec_.blocks.size(); ++i) {
    const auto& b = spec_.blocks[i];
    try {
      if (const auto* h = std::get_if<HierarchicalAttentionBlockOptions>(&b.options)) {
        blocks->push_back(HierarchicalAttentionBlock(*h));
      } else {
        blocks->push_back(LinearAttentionBlock(std::get<LinearAttentionBlockOptions>(b.options)));
      }
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, "blocks[", i, "] (", b.type, "): ", e.what_without_backtrace());
    }
  }
}

void AttentionStackImpl::pretty_print(std::ostream& stream) const {
  stream << "hvlm::AttentionStack(dim=" << spec_.dim << ", blocks=" << spec_.blocks.size()
         << ")";
}

std::vector<size_t> AttentionStackImpl::memory_blocks() const {
  std::vector<size_t> out;
  for (size_t i = 0; i < spec_.blocks.size(); ++i) {
    if (spec_.blocks[i].type == "cross_memory") out.push_back(i);
  }
  return out;
}

std::vector<size_t> AttentionStackImpl::mamba_blocks() const {
  std::vector<size_t> out;
  for (size_t i = 0; i < spec_.blocks.size(); ++i) {
    if (spec_.blocks[i].type == "mamba") out.push_back(i);
  }
  return out;
}

StackOutput AttentionStackImpl::forward(const at::Tensor& x,
                                        const std::vector<at::Tensor>& memories,
                                        const std::vector<MambaState>& states) {
  c10::InferenceMode inference;
  const size_t n = blocks->size();
  TORCH_CHECK(memories.empty() || memories.size() == n, "memories must be empty or have one entry "
              "per block (", n, "), got ", memories.size());
  TORCH_CHECK(states.empty() || states.size() == n, "states must be empty or have one entry per "
              "block (", n, "), got ", states.size());
  check_tokens(x, spec_.dim, "x", blocks->parameters().front().scalar_type());
  // Every input's values are checked here, once; the blocks skip their own value checks (on a
  // GPU each would wait for the device: tensor_checks.h).
  for (size_t i = 0; i < memories.size(); ++i) {
    if (memories[i].defined()) check_finite(memories[i], ("memories[" + std::to_string(i) + "]").c_str());
  }
  for (size_t i = 0; i < states.size(); ++i) {
    if (states[i].conv_state.defined()) {
      check_finite(states[i].conv_state, ("states[" + std::to_string(i) + "].conv_state").c_str());
    }
    if (states[i].ssm_state.defined()) {
      check_finite(states[i].ssm_state, ("states[" + std::to_string(i) + "].ssm_state").c_str());
    }
  }
  const FiniteValuesChecked checked;
  StackOutput out;
  out.states.resize(n);
  out.memory_inputs.resize(n);
  at::Tensor h = x;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor memory = memories.empty() ? at::Tensor() : memories[i];
    const MambaState state = states.empty() ? MambaState{} : states[i];
    try {
      // The blocks are looked up in `blocks` itself (not in holders kept aside), so a clone()
      // of the stack, whose ModuleList holds cloned blocks, runs its own blocks.
      const auto module = blocks->ptr(i);
      if (const auto hb = std::dynamic_pointer_cast<HierarchicalAttentionBlockImpl>(module)) {
        TORCH_CHECK(!state.conv_state.defined() && !state.ssm_state.defined(),
                    "only mamba blocks take a state");
        if (spec_.blocks[i].type == "cross_memory") out.memory_inputs[i] = h;
        h = hb->forward(h, memory);
      } else {
        TORCH_CHECK(!memory.defined(), "only cross_memory blocks take a memory");
        const auto lb = std::dynamic_pointer_cast<LinearAttentionBlockImpl>(module);
        TORCH_CHECK(lb != nullptr, "unexpected module type");
        std::tie(h, out.states[i]) = lb->forward_stream(h, state);
      }
    } catch (const c10::OutOfMemoryError&) {
      throw;  // keeps its type: the server answers RESOURCE_EXHAUSTED, not INTERNAL
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, "blocks[", i, "] (", spec_.blocks[i].type, "): ",
                  e.what_without_backtrace());
    }
  }
  out.y = h;
  return out;
}

}  // namespace hvlm
