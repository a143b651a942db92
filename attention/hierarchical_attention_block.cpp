#include "attention/hierarchical_attention_block.h"

#include "attention/tensor_checks.h"

#include <ATen/ATen.h>

namespace hvlm {

HierarchicalAttentionBlockImpl::HierarchicalAttentionBlockImpl(
    const HierarchicalAttentionBlockOptions& options_)
    : options(options_) {
  reset();
}

void HierarchicalAttentionBlockImpl::reset() {
  const auto& o = options;
  const auto& type = o.attention_type();
  TORCH_CHECK(type == "strided" || type == "local_global" || type == "cross_memory",
              "HierarchicalAttentionBlock: attention_type must be strided, local_global or "
              "cross_memory, got '", type, "'");
  const int64_t hidden = mlp_hidden_dim(o.dim(), o.mlp_ratio());
  TORCH_CHECK(o.dropout() >= 0.0 && o.dropout() < 1.0,
              "HierarchicalAttentionBlock: dropout must be in [0, 1), got ", o.dropout());
  norm1 = register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.dim()})));
  if (type == "strided") {
    strided = register_module(
        "attn", StridedAttention(
                    StridedAttentionOptions(o.dim(), o.num_heads(), o.stride()).dropout(o.dropout())));
  } else if (type == "local_global") {
    local_global = register_module(
        "attn", LocalGlobalAttention(LocalGlobalAttentionOptions(o.dim(), o.num_heads())
                                         .local_window(o.local_window())
                                         .num_global_tokens(o.num_global_tokens())
                                         .dropout(o.dropout())));
  } else {
    cross_memory = register_module(
        "attn", CrossMemoryAttention(
                    CrossMemoryAttentionOptions(o.dim(), o.num_heads()).dropout(o.dropout())));
  }
  norm2 = register_module("norm2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.dim()})));
  mlp = register_module("mlp", Mlp(MlpOptions(o.dim(), hidden).dropout(o.dropout())));
}

void HierarchicalAttentionBlockImpl::pretty_print(std::ostream& stream) const {
  stream << "hvlm::HierarchicalAttentionBlock(dim=" << options.dim()
         << ", attention_type=" << options.attention_type() << ")";
}

at::Tensor HierarchicalAttentionBlockImpl::forward(const at::Tensor& x, const at::Tensor& memory) {
  check_tokens(x, options.dim(), "x", norm1->weight.scalar_type());
  at::Tensor attn;
  auto normed = norm1->forward(x);
  if (cross_memory) {
    // No memory at all adds nothing; an empty one is validated and adds zeros.
    if (memory.defined()) attn = cross_memory->forward(normed, memory, /*residual=*/false);
  } else {
    TORCH_CHECK(!memory.defined(), "a ", options.attention_type(),
                " block takes no memory; only cross_memory blocks do");
    attn = strided ? strided->forward(normed) : local_global->forward(normed);
  }
  auto h = attn.defined() ? x + at::dropout(attn, options.dropout(), is_training()) : x;
  return h + mlp->forward(norm2->forward(h));
}

}  // namespace hvlm
